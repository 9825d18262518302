"""PaDiM features (Defard et al.): the tapped maps (finest first), coarser ones upsampled to the
finest grid by nearest neighbour (as the reference implementations), concatenated on channels,
then `dim` channels chosen at random (seeded, without replacement, kept in ascending order)."""
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def select_channels(key: jax.Array, total: int, dim: int) -> np.ndarray:
    """`dim` distinct channel indices of `total`, ascending, drawn with `key`."""
    if not 0 < dim <= total:
        raise ValueError(f"padim.dim={dim} must lie in 1..{total} (the tapped channels)")
    return np.sort(np.asarray(jax.random.choice(key, total, (dim,), replace=False)))


def padim_features(maps: Sequence[jnp.ndarray], channels: np.ndarray) -> jnp.ndarray:
    """[(B, H_l, W_l, C_l)] finest first -> (B, H_0*W_0, len(channels))."""
    b, h0, w0, _ = maps[0].shape
    parts = []
    for x in maps:
        _, h, w, _ = x.shape
        if (h, w) != (h0, w0):  # nearest: output pixel i takes input floor(i * h / h0)
            x = x[:, (np.arange(h0) * h) // h0][:, :, (np.arange(w0) * w) // w0]
        parts.append(x)
    feats = jnp.concatenate(parts, axis=-1)
    return jnp.take(feats, jnp.asarray(channels), axis=-1).reshape(b, h0 * w0, len(channels))
