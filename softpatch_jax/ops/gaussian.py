"""Multivariate Gaussians and Mahalanobis distances: PaDiM's per-position Gaussians and the
Gaussian discriminator share these (the unbiased covariance + reg * I, its Cholesky factor).

`fit` and `score` run many independent Gaussians (one per patch position) in chunks of positions
under a memory budget.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from softpatch_jax.ops.chunking import chunk_size, map_chunks


def fit_one(x: jnp.ndarray, reg: float = 0.01):
    """(B, d) samples -> (mean (d,), lower Cholesky factor (d, d) of the unbiased cov + reg * I)."""
    b, d = x.shape
    mean = jnp.mean(x, axis=0)
    delta = x - mean
    cov = jnp.matmul(delta.T, delta, precision=jax.lax.Precision.HIGHEST) / (b - 1)
    return mean, jnp.linalg.cholesky(cov + reg * jnp.eye(d, dtype=x.dtype))


def mahalanobis(delta: jnp.ndarray, chol: jnp.ndarray) -> jnp.ndarray:
    """(T, d) differences from the mean, (d, d) lower Cholesky factor -> (T,) distances."""
    z = jax.scipy.linalg.solve_triangular(chol, delta.T, lower=True)  # (d, T)
    return jnp.sqrt(jnp.sum(z * z, axis=0))


@dataclasses.dataclass
class Gaussians:
    mean: np.ndarray        # (P, d)
    chol: np.ndarray        # (P, d, d) lower Cholesky factor of cov + reg * I


@functools.partial(jax.jit, static_argnames=("reg",))
def _fit_chunk(x: jnp.ndarray, reg: float):
    """x: (P, B, d) -> mean (P, d), Cholesky (P, d, d)."""
    return jax.vmap(lambda xp: fit_one(xp, reg))(x)


@jax.jit
def score_chunk(x: jnp.ndarray, mean: jnp.ndarray, chol: jnp.ndarray):
    """x: (P, T, d) -> (P, T) Mahalanobis distances."""
    return jax.vmap(lambda xp, m, c: mahalanobis(xp - m, c))(x, mean, chol)


def fit(train: np.ndarray, reg: float = 0.01, budget_mb: float = 1024,
        progress: bool = False) -> Gaussians:
    """(B, P, d) training features -> per-position Gaussians, positions chunked to the budget."""
    b, p, d = train.shape
    if b < 2:
        raise ValueError(f"a Gaussian per position needs at least 2 samples, got {b}")
    step = chunk_size(4 * (3 * d * d + 2 * b * d), budget_mb)
    mean, chol = map_chunks(lambda x: _fit_chunk(jnp.asarray(x), reg),
                            [np.transpose(train, (1, 0, 2))], step, progress=progress,
                            desc="gaussians")
    return Gaussians(mean, chol)


def score(test: np.ndarray, model: Gaussians, budget_mb: float = 1024) -> np.ndarray:
    """(T, P, d) -> (T, P) Mahalanobis distances to each position's Gaussian."""
    t, p, d = test.shape
    step = chunk_size(4 * (d * d + 3 * t * d), budget_mb)
    (out,) = map_chunks(lambda x, m, c: score_chunk(jnp.asarray(x), jnp.asarray(m),
                                                     jnp.asarray(c)),
                        [np.transpose(test, (1, 0, 2)), model.mean, model.chol], step)
    return out.T
