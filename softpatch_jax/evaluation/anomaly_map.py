"""Patch-score grid -> full-resolution anomaly map: bilinear upsampling (PyTorch,
align_corners=False) then a Gaussian blur equal to scipy.ndimage.gaussian_filter(sigma, mode
'reflect', truncate 4). Both are linear and separable, so they fold into one (S, h) matrix per
axis and the whole map is K @ grid @ K.T.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy.ndimage import gaussian_filter1d

from softpatch_jax import shapes
from softpatch_jax.features.patch import bilinear_matrix


def gaussian_blur_matrix(size: int, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """(size, size) matrix of scipy's 1-D gaussian_filter with mode='reflect' (d c b a | a b c d):
    the filter applied to the identity's columns."""
    return gaussian_filter1d(np.eye(size), sigma, axis=0, mode="reflect", truncate=truncate)


@functools.lru_cache(maxsize=8)
def map_operator(grid: int, size: int, sigma: float) -> np.ndarray:
    """(size, grid) operator: upsample a grid axis to `size`, then blur it (sigma 0: no blur)."""
    up = bilinear_matrix(grid, size)
    if sigma <= 0:
        return up.astype(np.float32)
    return (gaussian_blur_matrix(size, sigma) @ up).astype(np.float32)


def anomaly_maps(grids: np.ndarray, size, sigma: float = 4.0) -> np.ndarray:
    """(T, h, w) patch-score grids -> (T, H, W) blurred anomaly maps; `size` N or (H, W)."""
    _, h, w = grids.shape
    height, width = shapes.hw(size)
    ky = jnp.asarray(map_operator(h, height, sigma))
    kx = jnp.asarray(map_operator(w, width, sigma))
    return np.asarray(apply_operators(jnp.asarray(grids, jnp.float32), ky, kx))


@jax.jit
def apply_operators(grids, ky, kx):
    return jnp.einsum("yh,thw,xw->tyx", ky, grids, kx, precision=jax.lax.Precision.HIGHEST)
