"""PaDiM (Defard et al.): a multivariate Gaussian per patch position over randomly selected
channels of the first three feature levels; the anomaly map is the Mahalanobis distance.

Features: the tapped maps (finest first), coarser ones upsampled to the finest grid by nearest
neighbour (as the reference implementations), concatenated on channels, then `dim` channels chosen
at random (seeded, without replacement, kept in ascending order).
"""
import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from softpatch_jax.distances import chunk_size


def select_channels(key: jax.Array, total: int, dim: int) -> np.ndarray:
    if not 0 < dim <= total:
        raise ValueError(f"model.padim_dim={dim} must lie in 1..{total} (the tapped channels)")
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


@dataclasses.dataclass
class Gaussians:
    mean: np.ndarray        # (P, d)
    chol: np.ndarray        # (P, d, d) lower Cholesky factor of cov + reg * I


@functools.partial(jax.jit, static_argnames=("reg",))
def _fit_chunk(x: jnp.ndarray, reg: float):
    """x: (P, B, d) -> mean (P, d), Cholesky (P, d, d) of the unbiased covariance + reg * I."""
    b, d = x.shape[1], x.shape[2]
    mean = x.mean(axis=1)
    delta = x - mean[:, None]
    cov = jnp.einsum("pbi,pbj->pij", delta, delta, precision=jax.lax.Precision.HIGHEST) / (b - 1)
    return mean, jnp.linalg.cholesky(cov + reg * jnp.eye(d, dtype=x.dtype))


@jax.jit
def _score_chunk(x: jnp.ndarray, mean: jnp.ndarray, chol: jnp.ndarray):
    """x: (P, T, d) -> (P, T) Mahalanobis distances."""
    delta = x - mean[:, None]
    z = jax.vmap(lambda c, d: jax.scipy.linalg.solve_triangular(c, d.T, lower=True))(chol, delta)
    return jnp.sqrt(jnp.sum(z * z, axis=1))


def _chunks(p: int, bytes_per_position: int, budget_mb: float):
    step = min(p, chunk_size(bytes_per_position, budget_mb))
    return range(0, p, step), step


def fit(train: np.ndarray, reg: float = 0.01, budget_mb: float = 1024,
        progress: bool = False) -> Gaussians:
    """(B, P, d) training features -> per-position Gaussians, positions chunked to the budget."""
    b, p, d = train.shape
    if b < 2:
        raise ValueError("PaDiM needs at least 2 training images")
    starts, step = _chunks(p, 4 * (3 * d * d + 2 * b * d), budget_mb)
    means, chols = [], []
    for s in tqdm(starts, desc="padim gaussians", disable=not progress, leave=False):
        m, c = _fit_chunk(jnp.asarray(np.transpose(train[:, s:s + step], (1, 0, 2))), reg)
        means.append(np.asarray(m))
        chols.append(np.asarray(c))
    return Gaussians(np.concatenate(means), np.concatenate(chols))


def score(test: np.ndarray, model: Gaussians, budget_mb: float = 1024) -> np.ndarray:
    """(T, P, d) -> (T, P) Mahalanobis distances to each position's Gaussian."""
    t, p, d = test.shape
    starts, step = _chunks(p, 4 * (d * d + 3 * t * d), budget_mb)
    out = np.empty((p, t), np.float32)
    for s in starts:
        x = jnp.asarray(np.transpose(test[:, s:s + step], (1, 0, 2)))
        out[s:s + step] = np.asarray(_score_chunk(x, jnp.asarray(model.mean[s:s + step]),
                                                  jnp.asarray(model.chol[s:s + step])))
    return out.T
