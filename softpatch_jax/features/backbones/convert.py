"""PyTorch state dict -> Flax variables (OIHW -> HWIO, BatchNorm stats into `batch_stats`).

Each architecture gives a key map {torch key: flat Flax path}; `convert_state_dict` checks the file
against it (every missing and unexpected key is named) and transposes the arrays.
"""
import hashlib
import logging
import os
from typing import Dict, Tuple

import numpy as np
from flax import traverse_util

from softpatch_jax.features.backbones import efficientnet_lite, resnet
from softpatch_jax.io.files import atomic_path

_BN = {"weight": ("params", "scale"), "bias": ("params", "bias"),
       "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}

KeyMap = Dict[str, Tuple[str, ...]]
CONVERSION_VERSION = 1  # part of the cache key: bump when the key maps or layouts change


def _expand(pairs: Dict[str, Tuple[str, ...]], fc: Tuple[str, str]) -> KeyMap:
    """{torch module: Flax module path (last element 'conv' or 'bn' kind)} -> full key map."""
    out = {}
    for tk, (kind, *path) in pairs.items():
        if kind == "conv":
            out[f"{tk}.weight"] = ("params", *path, "kernel")
        else:
            for leaf, (col, name) in _BN.items():
                out[f"{tk}.{leaf}"] = (col, *path, name)
    out[f"{fc[0]}.weight"] = ("params", fc[1], "kernel")
    out[f"{fc[0]}.bias"] = ("params", fc[1], "bias")
    return out


def efficientnet_key_map(variant: str) -> KeyMap:
    pairs = {"_conv_stem": ("conv", "stem", "conv"), "_bn0": ("bn", "stem", "bn"),
             "_conv_head": ("conv", "head", "conv"), "_bn1": ("bn", "head", "bn")}
    for i, (_, _, _, expand, _, _) in enumerate(efficientnet_lite.block_specs(variant)):
        b = f"blocks_{i}"
        if expand != 1:
            pairs[f"_blocks.{i}._expand_conv"] = ("conv", b, "expand", "conv")
            pairs[f"_blocks.{i}._bn0"] = ("bn", b, "expand", "bn")
        pairs[f"_blocks.{i}._depthwise_conv"] = ("conv", b, "depthwise", "conv")
        pairs[f"_blocks.{i}._bn1"] = ("bn", b, "depthwise", "bn")
        pairs[f"_blocks.{i}._project_conv"] = ("conv", b, "project", "conv")
        pairs[f"_blocks.{i}._bn2"] = ("bn", b, "project", "bn")
    return _expand(pairs, ("_fc", "fc"))


def resnet_key_map(variant: str) -> KeyMap:
    kind, counts, _ = resnet.VARIANTS[variant]
    pairs = {"conv1": ("conv", "conv1"), "bn1": ("bn", "bn1")}
    convs = 2 if kind == "basic" else 3
    for li, n in enumerate(counts):
        for bi in range(n):
            t, f = f"layer{li + 1}.{bi}", f"layer{li + 1}_{bi}"
            for c in range(1, convs + 1):
                pairs[f"{t}.conv{c}"] = ("conv", f, f"conv{c}")
                pairs[f"{t}.bn{c}"] = ("bn", f, f"bn{c}")
            if bi == 0 and (li > 0 or kind == "bottleneck"):
                pairs[f"{t}.downsample.0"] = ("conv", f, "downsample_0")
                pairs[f"{t}.downsample.1"] = ("bn", f, "downsample_1")
    return _expand(pairs, ("fc", "fc"))


def key_map(backbone: str) -> KeyMap:
    if backbone in efficientnet_lite.VARIANTS:
        return efficientnet_key_map(backbone)
    if backbone in resnet.VARIANTS:
        return resnet_key_map(backbone)
    raise ValueError(f"unknown backbone {backbone!r}")


def _to_flax(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:  # conv OIHW -> HWIO (depthwise: (C,1,k,k) -> (k,k,1,C))
        return np.transpose(value, (2, 3, 1, 0))
    if value.ndim == 2:  # linear (out, in) -> (in, out)
        return value.T
    return value


def convert_state_dict(state_dict: Dict[str, np.ndarray], backbone: str) -> dict:
    """Converts a PyTorch state dict of `backbone` into Flax variables.

    Raises ValueError naming every missing or unexpected key.
    """
    kmap = key_map(backbone)
    sd = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(kmap) - set(sd))
    unexpected = sorted(set(sd) - set(kmap))
    if missing or unexpected:
        def show(keys):
            return f"{keys[:8]}{'...' if len(keys) > 8 else ''}"
        raise ValueError(
            f"state dict does not match {backbone}: missing keys {show(missing)}, unexpected "
            f"keys {show(unexpected)}; check model.backbone and model.weights")
    flat = {kmap[k]: np.asarray(_to_flax(v), np.float32) for k, v in sd.items()}
    return traverse_util.unflatten_dict(flat)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cached_conversion(path: str, backbone: str, cache_dir: str) -> dict:
    """Converts once; later calls read `cache_dir/<backbone>-<sha256[:16]>.npz`."""
    from softpatch_jax.features.backbones.state_dict import load_state_dict

    digest = file_sha256(path)[:16]
    cache = os.path.join(cache_dir, f"{backbone}-v{CONVERSION_VERSION}-{digest}.npz")
    if os.path.isfile(cache):
        with np.load(cache) as z:
            flat = {tuple(k.split("/")): z[k] for k in z.files}
        return traverse_util.unflatten_dict(flat)
    logging.info("Converting %s weights from %s (cached at %s)", backbone, path, cache)
    variables = convert_state_dict(load_state_dict(path), backbone)
    os.makedirs(cache_dir, exist_ok=True)
    flat = traverse_util.flatten_dict(variables)
    with atomic_path(cache) as tmp:  # a killed conversion never leaves a half-written cache
        np.savez(tmp, **{"/".join(k): v for k, v in flat.items()})
    return variables
