"""Certified upper bounds on leave-own-group-out nearest-neighbour scores, from a cheap search.

A training patch's left-out score is brute force's float32 squared distance to its nearest bank
entry of another group (image), times that entry's soft weight where the method has them
(`patchcore.patch_scores` with `exclude`). Most patches never decide anything that calibration
reports (an image's score is its largest patch score; the pixel threshold is a high quantile),
so `upper_bounds` bounds every score from above cheaply and the caller computes exactly only the
patches whose bound leaves the answer open (evaluation/pruned.py). Scores are >= 0, so 0 is the
lower bound.

The bound (u = 2^-24, g(n) = 2 (n + 6) u, D the feature dimension):
1. Candidates. A GEMM in a k + 1 = 32-dimensional sketch of the bank (its top principal
   directions and the norm of the rest, float32) ranks the entries; of the `candidates` best,
   those of other groups are kept. Any such entry gives a valid bound; the sketch only makes it
   tight.
2. Their distances, fl(sum (q - b)^2) in float32: nonnegative terms, so the exact |q - b|^2 <=
   fl(...) (1 + 2 g(D)) whatever the summation order. best = the smallest.
3. Brute force's value. Its float32 distance d^_j = max(fl(fl(|b_j|^2 - 2 fl(q.b_j)) +
   fl(|q|^2)), 0) errs from |q - b_j|^2 by at most E_bf := g(D) (|q| + B)^2, B = max |b| (as in
   ops/coreset.py, derivation 2.). It picks the entry n with the smallest partial, so for the
   best candidate j, d^_n <= d^_j <= best (1 + 2 g(D)) + E_bf =: upper_d.
4. Soft weights. The score fl(d^_n w_n) <= upper_d max(w) (1 + 4u).
A query without another-group candidate gets inf (the exact path then decides).
"""
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from softpatch_jax.ops.chunking import chunk_size, map_chunks
from softpatch_jax.ops.distances import sketch_basis

_U32 = 2.0 ** -24
HIGHEST = jax.lax.Precision.HIGHEST
SKETCH_DIM = 31  # k: a GEMM 32 deep instead of D
CANDIDATES = 8


def _g(n: int) -> float:
    return 2 * (n + 6) * _U32


def _sketch(x, mu, axes):
    """(n, D) -> (n, k + 1): coordinates on the axes and the norm of the rest (float32)."""
    c = x - mu
    z = jnp.matmul(c, axes, precision=HIGHEST)
    rest = jnp.sum(c * c, axis=1) - jnp.sum(z * z, axis=1)
    return jnp.concatenate([z, jnp.sqrt(jnp.maximum(rest, 0.0))[:, None]], axis=1)


@functools.partial(jax.jit, static_argnames=("candidates",))
def _best_candidate(queries, groups, mu, axes, bank, z_bank, n_bank, bank_groups,
                    candidates: int):
    """(n, D) queries -> (n,) float32 smallest distance to their `candidates` nearest
    other-group entries in the sketch (inf where there are none)."""
    zq = _sketch(queries, mu, axes)
    t = n_bank[None, :] - 2.0 * jnp.matmul(zq, z_bank.T, precision=HIGHEST)
    # no mask over all M columns (it costs as much as the GEMM): own-group candidates are
    # dropped afterwards; a query whose candidates are all its own gets inf
    _, idx = jax.lax.optimization_barrier(jax.lax.top_k(-t, candidates))
    diff = queries[:, None, :] - bank[idx]
    d = jnp.sum(diff * diff, axis=2)
    return jnp.min(jnp.where(bank_groups[idx] != groups[:, None], d, jnp.inf), axis=1)


def upper_bounds(queries: np.ndarray, groups: np.ndarray, bank: np.ndarray,
                 bank_groups: np.ndarray, weights: Optional[np.ndarray] = None,
                 budget_mb: float = 1024, sketch_dim: int = SKETCH_DIM,
                 candidates: int = CANDIDATES, desc: str = "") -> np.ndarray:
    """Certified upper bounds on each query's left-out score (module docstring).

    queries (N, D) float32, groups (N,) int, bank (M, D) float32, bank_groups (M,) int, weights
    (M,) soft weights or None (score = distance) -> (N,) float64, >= the exact score (inf where
    every candidate is the query's own group's). `desc`: a progress bar of that name."""
    queries = np.asarray(queries, np.float32)
    host = np.asarray(bank, np.float32)
    m, d = host.shape
    mu, axes = sketch_basis(host, sketch_dim)
    mu, axes = jnp.asarray(mu, jnp.float32), jnp.asarray(axes, jnp.float32)
    bank_dev = jnp.asarray(host)
    z_bank = _sketch(bank_dev, mu, axes)
    n_bank = jnp.sum(z_bank * z_bank, axis=1)
    bank_groups = jnp.asarray(np.asarray(bank_groups, np.int32))
    c = min(candidates, m)
    step = min(1024, chunk_size(3 * 4 * m + 4 * c * d, budget_mb, minimum=8))
    (best,) = map_chunks(
        lambda q, g: _best_candidate(jnp.asarray(q), jnp.asarray(g), mu, axes, bank_dev, z_bank,
                                     n_bank, bank_groups, c),
        [queries, np.asarray(groups, np.int32)], step, progress=bool(desc), desc=desc)
    # |q| from a float32 sum of squares: relative error <= g(D), covered by the factor
    q_norm = np.sqrt(np.einsum("ij,ij->i", queries, queries).astype(np.float64) * (1 + _g(d)))
    b_norm = float(np.sqrt((host.astype(np.float64) ** 2).sum(axis=1).max()))
    e_bf = _g(d) * ((q_norm + b_norm) * (1 + 1e-9)) ** 2
    upper = best.astype(np.float64) * (1 + 2 * _g(d)) + e_bf
    if weights is not None:
        upper = upper * float(np.max(weights)) * (1 + 4 * _U32)
    return np.where(np.isfinite(best), upper, np.inf)
