"""PyTorch state dict -> Flax variables (OIHW -> HWIO, BatchNorm stats into `batch_stats`).

Each architecture gives a key map {torch key: flat Flax path}; `convert_state_dict` checks the file
against it (every missing and unexpected key is named, and every tensor's shape) and transposes the
arrays. `cached_conversion` keeps the result as an .npz; a cache file that cannot be read or does
not fit the backbone is deleted and rebuilt from the weights file, with a warning.
"""
import functools
import logging
import os
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from softpatch_jax.features.backbones import efficientnet_lite, resnet
from softpatch_jax.files import atomic_path, file_sha256

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


@functools.lru_cache(maxsize=None)
def expected_shapes(backbone: str) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
    """{flat Flax path: shape} of every variable of `backbone` (abstract init: no compute)."""
    if backbone in efficientnet_lite.VARIANTS:
        module = efficientnet_lite.EfficientNetLite(variant=backbone, taps=())
    elif backbone in resnet.VARIANTS:
        module = resnet.ResNet(variant=backbone, taps=())
    else:
        raise ValueError(f"unknown backbone {backbone!r}")
    abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                              jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(abstract).items()}


def _torch_shape(flax_shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """Inverse of `_to_flax` on shapes: HWIO -> OIHW, (in, out) -> (out, in)."""
    if len(flax_shape) == 4:
        return tuple(flax_shape[i] for i in (3, 2, 0, 1))
    return tuple(reversed(flax_shape)) if len(flax_shape) == 2 else tuple(flax_shape)


def _to_flax(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:  # conv OIHW -> HWIO (depthwise: (C,1,k,k) -> (k,k,1,C))
        return np.transpose(value, (2, 3, 1, 0))
    if value.ndim == 2:  # linear (out, in) -> (in, out)
        return value.T
    return value


def _show(keys) -> str:
    return f"{keys[:8]}{'...' if len(keys) > 8 else ''}"


def convert_state_dict(state_dict: Dict[str, np.ndarray], backbone: str, source: str = "") -> dict:
    """Converts a PyTorch state dict of `backbone` into Flax variables.

    Raises ValueError (one line naming backbone.weights, `source` (its path) and backbone.name)
    naming every missing or unexpected key, or the tensors whose shapes differ.
    """
    kmap = key_map(backbone)
    sd = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    what = f"backbone.weights={source!r}" if source else "the state dict of backbone.weights"
    fix = (f"give a state dict saved from a {backbone} or set backbone.name to the network it "
           "was saved from")
    missing = sorted(set(kmap) - set(sd))
    unexpected = sorted(set(sd) - set(kmap))
    if missing or unexpected:
        raise ValueError(
            f"{what} does not match backbone.name={backbone!r}: missing keys {_show(missing)}, "
            f"unexpected keys {_show(unexpected)}; {fix}")
    shapes = expected_shapes(backbone)
    wrong = [k for k in kmap if tuple(_to_flax(sd[k]).shape) != shapes[kmap[k]]]
    if wrong:
        k = wrong[0]
        raise ValueError(
            f"{what} does not match backbone.name={backbone!r}: {len(wrong)} tensor(s) have "
            f"other shapes, e.g. {k} is {tuple(np.shape(sd[k]))} where {backbone} has "
            f"{_torch_shape(shapes[kmap[k]])}; {fix}")
    flat = {kmap[k]: np.asarray(_to_flax(v), np.float32) for k, v in sd.items()}
    return traverse_util.unflatten_dict(flat)


def _read_cache(cache: str, backbone: str) -> dict:
    """The variables in a cache file; raises if it cannot be read or does not fit `backbone`."""
    with np.load(cache) as z:
        flat = {tuple(k.split("/")): z[k] for k in z.files}
    shapes = expected_shapes(backbone)
    missing, extra = sorted(set(shapes) - set(flat)), sorted(set(flat) - set(shapes))
    if missing or extra:
        raise ValueError(f"{len(missing)} arrays missing, {len(extra)} unexpected")
    for k, shape in shapes.items():
        if flat[k].shape != shape or flat[k].dtype != np.float32:
            raise ValueError(f"{'/'.join(k)} is {flat[k].dtype}{list(flat[k].shape)}, "
                             f"expected float32{list(shape)}")
    return traverse_util.unflatten_dict(flat)


def cached_conversion(path: str, backbone: str, cache_dir: str) -> dict:
    """Converts once; later calls read `cache_dir/<backbone>-v<N>-<sha256[:16]>.npz`. A cache file
    that cannot be read, or does not fit the backbone, is deleted (with a warning) and rebuilt; a
    cache that cannot be written is skipped (with a warning)."""
    from softpatch_jax.features.backbones.state_dict import check_file, load_state_dict

    check_file(path)
    digest = file_sha256(path)[:16]
    cache = os.path.join(cache_dir, f"{backbone}-v{CONVERSION_VERSION}-{digest}.npz")
    if os.path.lexists(cache):
        try:
            return _read_cache(cache, backbone)
        except Exception as e:  # truncated or garbled zip, missing keys, wrong shapes, ...
            reason = " ".join(f"{type(e).__name__}: {e}".split())[:160]
            logging.warning("Converted-weights cache %s is unreadable (%s); deleting it and "
                            "converting %s again", cache, reason, path)
            try:
                os.remove(cache)
            except OSError as e2:
                logging.warning("Cannot delete %s (%s)", cache, e2)
    logging.info("Converting %s weights from %s (cached at %s)", backbone, path, cache)
    variables = convert_state_dict(load_state_dict(path), backbone, source=path)
    flat = traverse_util.flatten_dict(variables)
    try:
        os.makedirs(cache_dir, exist_ok=True)
        with atomic_path(cache) as tmp:  # a killed conversion never leaves a half-written cache
            np.savez(tmp, **{"/".join(k): v for k, v in flat.items()})
    except OSError as e:
        logging.warning("Cannot write the converted-weights cache %s (%s); converting again "
                        "next time", cache, e)
    return variables
