"""Noise discriminators (METHOD.md step 4): outlier scores of training patches, per position group.

Each scorer is a pure function of one group (B, D) -> (B,) scores; `group_scores` vmaps it over
positions and runs the positions in chunks so that the per-chunk working set stays under a memory
budget (never all P x B x B distances at once).
"""
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from softpatch_jax.distances import chunk_size, self_distances

METHODS = ("nearest", "gaussian", "lof")


def nearest_scores(x: jnp.ndarray) -> jnp.ndarray:
    """(B, D) -> (B,): 1 + distance to the nearest other member of the group."""
    d = self_distances(x)
    d = d + jnp.diag(jnp.full(x.shape[0], jnp.inf, d.dtype))
    return 1.0 + jnp.min(d, axis=1)


def gaussian_scores(x: jnp.ndarray, reg: float = 0.01) -> jnp.ndarray:
    """(B, D) -> (B,): 1 + Mahalanobis distance to the group mean (unbiased cov + reg * I)."""
    b, dim = x.shape
    delta = x - jnp.mean(x, axis=0)
    cov = jnp.matmul(delta.T, delta, precision=jax.lax.Precision.HIGHEST) / (b - 1) + reg * jnp.eye(dim, dtype=x.dtype)
    chol = jnp.linalg.cholesky(cov)
    z = jax.scipy.linalg.solve_triangular(chol, delta.T, lower=True)  # (D, B)
    return 1.0 + jnp.sqrt(jnp.sum(z * z, axis=0))


def lof_scores(x: jnp.ndarray, k: int) -> jnp.ndarray:
    """(B, D) -> (B,): Local Outlier Factor with k neighbours, as scikit-learn computes it
    (`-negative_outlier_factor_` after `LocalOutlierFactor(n_neighbors=k).fit(x)`)."""
    d = self_distances(x)
    d = d + jnp.diag(jnp.full(x.shape[0], jnp.inf, d.dtype))  # a point is not its own neighbour
    neg, idx = jax.lax.top_k(-d, k)  # (B, k) nearest, ascending distance
    knn = -neg
    k_distance = knn[:, -1]
    reach = jnp.maximum(knn, k_distance[idx])
    lrd = 1.0 / (jnp.mean(reach, axis=1) + 1e-10)
    return jnp.mean(lrd[idx], axis=1) / lrd


def scorer(method: str, lof_k: int = 6) -> Callable[[jnp.ndarray], jnp.ndarray]:
    if method == "nearest":
        return nearest_scores
    if method == "gaussian":
        return gaussian_scores
    if method == "lof":
        return functools.partial(lof_scores, k=lof_k)
    raise ValueError(f"unknown discriminator {method!r}; choose none, {', '.join(METHODS)}")


def _bytes_per_position(method: str, b: int, d: int) -> int:
    if method == "gaussian":
        return 4 * (4 * d * d + 3 * b * d)
    return 4 * (6 * b * b + 2 * b * d)


@functools.partial(jax.jit, static_argnames=("method", "lof_k"))
def _score_chunk(groups: jnp.ndarray, method: str, lof_k: int) -> jnp.ndarray:
    return jax.vmap(scorer(method, lof_k))(groups)


def group_scores(groups: jnp.ndarray, method: str, lof_k: int = 6, budget_mb: float = 1024,
                 progress: bool = False) -> np.ndarray:
    """(P, B, D) position groups -> (P, B) discriminator scores, positions chunked to the budget."""
    p, b, d = groups.shape
    scorer(method, lof_k)  # validates the method name
    if method == "lof" and not 0 < lof_k < b:
        raise ValueError(f"model.lof_k={lof_k} needs more than {lof_k} training images per "
                         f"position, but there are {b}; lower model.lof_k or add training images")
    if b < 2:
        raise ValueError(f"the {method} discriminator needs at least 2 training images, got {b}; "
                         "add training images or use model.discriminator=none")
    step = min(p, chunk_size(_bytes_per_position(method, b, d), budget_mb))
    out = np.empty((p, b), np.float32)
    starts = range(0, p, step)
    for s in tqdm(starts, desc=f"{method} discriminator", disable=not progress, leave=False):
        chunk = groups[s:s + step]
        n = chunk.shape[0]
        if n < step:  # pad to one compiled shape
            chunk = jnp.concatenate([chunk, jnp.repeat(chunk[-1:], step - n, axis=0)])
        out[s:s + n] = np.asarray(_score_chunk(chunk, method, lof_k))[:n]
    return out
