"""Weighted approximate greedy coreset (METHOD.md step 6), the k-center selection of PatchCore
with SoftPatch's sampling weights; `GreedyCoreset` is the sampling strategy a memory bank is built
with (its random projection and its starts).

Distances are the official ones: sqrt(max(|a|^2 + |b|^2 - 2 a.b, 0)) on 128-d projections. The loop
runs in `lax.fori_loop` blocks; between blocks the host only updates a progress bar.

One deliberate difference from the official code: the initial min-distances (mean distance to the
random starts) are multiplied by the sampling weights too. The official code multiplies only the
later updates, so its very first pick may be an excluded (noisy) patch; METHOD.md states that
excluded patches are never chosen, and with this change they never are.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from softpatch_jax.ops.distances import project, random_projection


def _dist_to(x: jnp.ndarray, sq_norms: jnp.ndarray, c: jnp.ndarray) -> jnp.ndarray:
    """(N, d), (N,), (S, d) -> (N, S) Euclidean distances in the official GEMM form."""
    cc = jnp.sum(c * c, axis=-1)
    ab = jnp.matmul(x, c.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.sqrt(jnp.maximum(-2.0 * ab + sq_norms[:, None] + cc[None, :], 0.0))


@jax.jit
def _init(x: jnp.ndarray, weights: jnp.ndarray, starts: jnp.ndarray):
    sq_norms = jnp.sum(x * x, axis=-1)
    min_dist = jnp.mean(_dist_to(x, sq_norms, x[starts]), axis=1) * weights
    return sq_norms, min_dist


@functools.partial(jax.jit, static_argnames=("count",), donate_argnames=("min_dist",))
def _advance(x, sq_norms, weights, min_dist, count: int):
    """Runs `count` greedy steps; returns (new min_dist, (count,) chosen indices)."""

    def body(i, carry):
        md, chosen = carry
        sel = jnp.argmax(md)
        d = _dist_to(x, sq_norms, jax.lax.dynamic_slice_in_dim(x, sel, 1))[:, 0] * weights
        return jnp.minimum(md, d), chosen.at[i].set(sel.astype(jnp.int32))

    return jax.lax.fori_loop(0, count, body, (min_dist, jnp.zeros((count,), jnp.int32)))


def greedy_coreset(x: jnp.ndarray, num_centers: int, key: jax.Array,
                   weights: jnp.ndarray = None, num_starts: int = 10, block: int = 1000,
                   progress: bool = False) -> np.ndarray:
    """Selects `num_centers` indices of the rows of x (N, d) by weighted greedy k-center.

    weights: (N,) sampling weights (0 = never pick); None = all ones (PatchCore).
    The random starts are drawn without replacement from `key`; see `start_indices`.
    """
    n = x.shape[0]
    if not 0 < num_centers <= n:
        raise ValueError(f"coreset size {num_centers} must be in 1..{n}")
    x = jnp.asarray(x, jnp.float32)
    weights = jnp.ones((n,), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    sq_norms, min_dist = _init(x, weights, jnp.asarray(start_indices(key, n, num_starts)))
    chosen = []
    with tqdm(total=num_centers, desc="greedy coreset", disable=not progress, leave=False) as bar:
        while len(chosen) * block < num_centers:
            count = min(block, num_centers - len(chosen) * block)
            min_dist, idx = _advance(x, sq_norms, weights, min_dist, count)
            chosen.append(np.asarray(idx))
            bar.update(count)
    return np.concatenate(chosen)


def start_indices(key: jax.Array, n: int, num_starts: int = 10) -> np.ndarray:
    """The random starting points: min(num_starts, n) distinct indices in [0, n)."""
    return np.asarray(jax.random.choice(key, n, (min(num_starts, n),), replace=False))


@dataclasses.dataclass(frozen=True)
class GreedyCoreset:
    """Weighted greedy k-center on a random `projection_dim` projection, from `num_starts` random
    starts. `project` draws the projection; `select` picks the centres."""
    projection_dim: int = 128
    num_starts: int = 10
    budget_mb: float = 1024
    progress: bool = False

    def project(self, features: np.ndarray, key: jax.Array) -> jnp.ndarray:
        """(..., D) -> (N, projection_dim): the coreset's own random projection, rows flattened."""
        matrix = random_projection(key, features.shape[-1], self.projection_dim)
        return project(features, matrix, self.budget_mb).reshape(-1, self.projection_dim)

    def select(self, reduced: jnp.ndarray, count: int, key: jax.Array,
               weights: jnp.ndarray = None) -> np.ndarray:
        """(N, d) projected rows -> (count,) chosen indices, in pick order."""
        return greedy_coreset(reduced, count, key, weights, self.num_starts,
                              progress=self.progress)
