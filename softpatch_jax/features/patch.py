"""Locally aware patch features (METHOD.md step 3), as in PatchCore/SoftPatch.

Every resampling step is a fixed linear map built in NumPy from PyTorch's exact rule (bilinear with
align_corners=False; adaptive average pooling bins [floor(i*L/O), ceil((i+1)*L/O))), so the JAX
graph is a few matmuls and the maps can be tested against direct loops.
"""
import functools
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np


def adaptive_pool_matrix(length: int, out: int) -> np.ndarray:
    """(out, length) matrix of torch.nn.functional.adaptive_avg_pool1d from `length` to `out`."""
    m = np.zeros((out, length), np.float64)
    for i in range(out):
        start = (i * length) // out
        end = -((-(i + 1) * length) // out)  # ceil
        m[i, start:end] = 1.0 / (end - start)
    return m


def bilinear_matrix(size_in: int, size_out: int, align_corners: bool = False) -> np.ndarray:
    """(size_out, size_in) matrix of 1-D linear interpolation, PyTorch's with `align_corners`."""
    m = np.zeros((size_out, size_in), np.float64)
    scale = size_in / size_out
    for o in range(size_out):
        if align_corners:
            src = o * (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
        else:
            src = max((o + 0.5) * scale - 0.5, 0.0)
        i0 = min(int(np.floor(src)), size_in - 1)
        i1 = min(i0 + 1, size_in - 1)
        frac = src - i0
        m[o, i0] += 1.0 - frac
        m[o, i1] += frac
    return m


def unfold3x3(x: jnp.ndarray, patch_size: int = 3) -> jnp.ndarray:
    """(B, H, W, C) -> (B, H, W, C*p*p) neighbourhoods, zero padded, flattened channel-major."""
    pad = (patch_size - 1) // 2
    b, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    shifts = [xp[:, dy:dy + h, dx:dx + w, :] for dy in range(patch_size) for dx in range(patch_size)]
    return jnp.stack(shifts, axis=-1).reshape(b, h, w, c * patch_size * patch_size)


@functools.lru_cache(maxsize=32)
def layer_maps(dims: Tuple[int, ...], embed_dim: int) -> Tuple[Tuple[np.ndarray, int, int], ...]:
    """For layers of unfolded sizes `dims`: per layer (matrix, first col, last col + 1).

    Pooling each layer to embed_dim, stacking layer-major and pooling the stack to embed_dim is one
    linear map per layer, pool_l @ agg[l*E:(l+1)*E]; its non-zero output columns form a range
    (for two layers: the first and the second half), so each layer only computes its range.
    """
    agg = adaptive_pool_matrix(len(dims) * embed_dim, embed_dim).T  # (L*E, E)
    out = []
    for i, dim in enumerate(dims):
        m = adaptive_pool_matrix(dim, embed_dim).T @ agg[i * embed_dim:(i + 1) * embed_dim]
        cols = np.nonzero(np.abs(m).sum(0))[0]
        lo, hi = int(cols.min()), int(cols.max()) + 1
        out.append((m[:, lo:hi].astype(np.float32), lo, hi))
    return tuple(out)


def patch_features(maps: Sequence[jnp.ndarray], embed_dim: int = 1024,
                   patch_size: int = 3) -> jnp.ndarray:
    """Feature maps [(B, H_l, W_l, C_l)], finest first -> (B, H_0*W_0, embed_dim) patch features.

    Equal to PatchCore's unfold -> bilinear resize of the neighbourhood grid -> per-layer adaptive
    pooling -> stack -> adaptive pooling, computed in a cheaper order: pooling is linear along the
    feature axis and resizing linear along the spatial axes, so pooling runs first, on the coarse
    grid, and only the pooled maps are resized.
    """
    b, h0, w0, _ = maps[0].shape
    dims = tuple(m.shape[-1] * patch_size * patch_size for m in maps)
    out = jnp.zeros((b, h0, w0, embed_dim), jnp.float32)
    for x, (mat, lo, hi) in zip(maps, layer_maps(dims, embed_dim)):
        _, h, w, _ = x.shape
        y = jnp.matmul(unfold3x3(x, patch_size), jnp.asarray(mat),
                       precision=jax.lax.Precision.HIGHEST)  # (B, h, w, hi - lo)
        if (h, w) != (h0, w0):
            ry = jnp.asarray(bilinear_matrix(h, h0), jnp.float32)
            rx = jnp.asarray(bilinear_matrix(w, w0), jnp.float32)
            y = jnp.einsum("yh,bhwc,xw->byxc", ry, y, rx, precision=jax.lax.Precision.HIGHEST)
        out = out.at[..., lo:hi].add(y)
    return out.reshape(b, h0 * w0, embed_dim)
