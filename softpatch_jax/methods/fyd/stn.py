"""Spatial transformers (Jaderberg et al.) for FYD's coarse alignment, as Flax modules.

A small localisation net reads the input (resized to `loc_size`), regresses raw parameters with a
zero-initialised last layer, and `params_to_theta` turns them into a bounded affine warp, so every
transformer starts as the identity and cannot collapse the image (the guard against degenerate
warps: scale, shear, rotation and translation are clamped smoothly by tanh).

Families and their raw parameters:
- `translation` (2): tx, ty.
- `rotation_scale` (2): rotation, log-scale (about the centre).
- `similarity` (4): rotation, log-scale, tx, ty.
- `affine` (6): the 2x2 linear part as identity + bounded offsets, tx, ty.
"""
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from softpatch_jax.ops import warp as affine

FAMILIES = {"translation": 2, "rotation_scale": 2, "similarity": 4, "affine": 6}


def check_family(family: str) -> int:
    """-> the number of raw parameters of a transform family."""
    if family not in FAMILIES:
        raise ValueError(f"unknown transform family {family!r}; choose one of "
                         f"{', '.join(FAMILIES)}")
    return FAMILIES[family]


def params_to_theta(raw: jnp.ndarray, family: str, max_scale: float = 1.25,
                    max_rotation: float = 30.0, max_translation: float = 0.2,
                    max_shear: float = 0.2) -> jnp.ndarray:
    """raw (B, n) -> theta (B, 2, 3) (output -> input coordinates, see `ops.warp`).

    Bounds: scale in [1/max_scale, max_scale], rotation within +-max_rotation degrees,
    translation within +-max_translation of the image size, affine offsets within +-max_shear.
    raw = 0 gives the identity."""
    check_family(family)
    b = raw.shape[0]
    t = jnp.zeros((b, 2), raw.dtype)
    if family == "affine":
        lin = jnp.eye(2, dtype=raw.dtype) + max_shear * jnp.tanh(raw[:, :4]).reshape(b, 2, 2)
        t = 2.0 * max_translation * jnp.tanh(raw[:, 4:6])
    else:
        angle = jnp.zeros((b,), raw.dtype)
        scale = jnp.ones((b,), raw.dtype)
        if family in ("rotation_scale", "similarity"):
            angle = math.radians(max_rotation) * jnp.tanh(raw[:, 0])
            scale = jnp.exp(math.log(max_scale) * jnp.tanh(raw[:, 1]))
        if family in ("translation", "similarity"):
            t = 2.0 * max_translation * jnp.tanh(raw[:, -2:])
        cos, sin = jnp.cos(angle) * scale, jnp.sin(angle) * scale
        lin = jnp.stack([jnp.stack([cos, -sin], -1), jnp.stack([sin, cos], -1)], -2)
    return jnp.concatenate([lin, t[..., None]], axis=-1)


class LocalisationNet(nn.Module):
    """(B, H, W, C) -> (B, n_params) raw warp parameters; zeros at initialisation.

    Input resized to loc_size x loc_size, strided 3x3 convs with ReLU, flattened (keeps where
    things are, which a global pool would lose), a hidden dense layer, a zero-initialised output."""
    n_params: int
    loc_size: int = 64
    features: Sequence[int] = (16, 32, 64)
    hidden: int = 64

    @nn.compact
    def __call__(self, x):
        b, _, _, c = x.shape
        x = jax.image.resize(x.astype(jnp.float32), (b, self.loc_size, self.loc_size, c),
                             "linear", antialias=True)
        for i, f in enumerate(self.features):
            x = nn.relu(nn.Conv(f, (3, 3), strides=2, name=f"conv{i}")(x))
        x = nn.relu(nn.Dense(self.hidden, name="hidden")(x.reshape(b, -1)))
        return nn.Dense(self.n_params, kernel_init=nn.initializers.zeros,
                        bias_init=nn.initializers.zeros, name="out")(x)


class SpatialTransformer(nn.Module):
    """x (B, H, W, C) -> (warped x, theta (B, 2, 3))."""
    family: str = "similarity"
    padding: str = "zeros"
    loc_size: int = 64
    max_scale: float = 1.25
    max_rotation: float = 30.0
    max_translation: float = 0.2
    max_shear: float = 0.2

    @nn.compact
    def __call__(self, x):
        raw = LocalisationNet(FAMILIES[self.family], self.loc_size, name="loc")(x)
        theta = params_to_theta(raw, self.family, self.max_scale, self.max_rotation,
                                self.max_translation, self.max_shear)
        return affine.warp(x, theta, self.padding), theta
