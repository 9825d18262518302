"""Certified upper bounds on leave-own-group-out nearest-neighbour scores, from cheap searches.

A training patch's left-out score is brute force's float32 squared distance to its nearest bank
entry of another group (image), times that entry's soft weight where the method has them
(`patchcore.patch_scores` with `exclude`). Most patches never decide anything that calibration
reports (an image's score is its largest patch score; the pixel threshold is a high quantile),
so calibration bounds every score from above cheaply and computes exactly only the patches
whose bound leaves the answer open (evaluation/pruned.py). Scores are >= 0, so 0 is the lower
bound. Two bounds, the first far cheaper, the second far tighter:

* `window_bounds`: each patch against the bank entries taken at grid positions near its own
  (Chebyshev radius `radius`), one small GEMM per position: about 1% of a full pass. Tight where
  the parts line up, loose where they move; valid always.
* `SketchBounds`: a search in a 32-dimensional sketch of the bank (its top principal directions
  and the norm of the rest) over all entries, whose best `candidates` are measured exactly: about
  a quarter of a full pass, within ~15% of the score on real features.

Why they bound (u = 2^-24, g(n) = 2 (n + 6) u, D the feature dimension; any entry j of another
group gives a bound, the searches only make it tight):
1. The measured distance. Computed in float32 as fl(sum (q - b)^2) (nonnegative terms: the exact
   |q - b|^2 <= fl(...) (1 + 2 g(D)) whatever the summation order) or in the GEMM form
   fl(|q|^2 + |b|^2 - 2 q.b) (the exact one within g(D) (|q| + |b|)^2 of it).
2. Brute force's value. Its float32 distance d^_j = max(fl(fl(|b_j|^2 - 2 fl(q.b_j)) +
   fl(|q|^2)), 0) errs from |q - b_j|^2 by at most E_bf := g(D) (|q| + B)^2, B = max |b| (as in
   ops/coreset.py, derivation 2.). It picks the entry n with the smallest partial, so
   d^_n <= d^_j <= |q - b_j|^2 + E_bf, which 1. bounds from above.
3. Soft weights. The score fl(d^_n w_n) <= d^_n max(w) (1 + 4u).
A query without another-group candidate gets inf (a later bound or the exact path decides).
"""
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from softpatch_jax.ops.chunking import chunk_size, host_blas, map_chunks
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


def _certified(dist: np.ndarray, gemm_form: bool, q_norm: np.ndarray, b_norm: float, d: int,
               w_max: Optional[float]) -> np.ndarray:
    """Measured float32 distances (1.) -> certified upper bounds of the scores (2., 3.)."""
    e_bf = _g(d) * ((q_norm + b_norm) * (1 + 1e-9)) ** 2
    dist = dist.astype(np.float64)
    upper = dist + 2 * e_bf if gemm_form else dist * (1 + 2 * _g(d)) + e_bf
    if w_max is not None:
        upper = upper * w_max * (1 + 4 * _U32)
    return np.where(np.isfinite(dist), upper, np.inf)


def _norms(x: np.ndarray) -> np.ndarray:
    """|x| per row from a float32 sum of squares, inflated by its relative error bound."""
    return np.sqrt(np.einsum("ij,ij->i", x, x).astype(np.float64) * (1 + _g(x.shape[1])))


class SketchBounds:
    """`SketchBounds(bank, bank_groups, weights)(queries, groups)` -> certified upper bounds
    (N,) float64 of each query's left-out score (module docstring); the sketch of the bank is
    made once. weights: (M,) soft weights or None (score = distance)."""

    def __init__(self, bank: np.ndarray, bank_groups: np.ndarray,
                 weights: Optional[np.ndarray] = None, budget_mb: float = 1024,
                 sketch_dim: int = SKETCH_DIM, candidates: int = CANDIDATES):
        host = np.asarray(bank, np.float32)
        m, self.dim = host.shape
        mu, axes = sketch_basis(host, sketch_dim)
        self.mu, self.axes = jnp.asarray(mu, jnp.float32), jnp.asarray(axes, jnp.float32)
        self.bank = jnp.asarray(host)
        self.z_bank = _sketch(self.bank, self.mu, self.axes)
        self.n_bank = jnp.sum(self.z_bank * self.z_bank, axis=1)
        self.bank_groups = jnp.asarray(np.asarray(bank_groups, np.int32))
        self.b_norm = float(_norms(host).max())
        self.w_max = None if weights is None else float(np.max(weights))
        self.candidates = min(candidates, m)
        self.step = min(1024, chunk_size(3 * 4 * m + 4 * self.candidates * self.dim, budget_mb,
                                         minimum=8))

    def __call__(self, queries: np.ndarray, groups: np.ndarray, desc: str = "") -> np.ndarray:
        queries = np.asarray(queries, np.float32)
        (best,) = map_chunks(
            lambda q, g: _best_candidate(jnp.asarray(q), jnp.asarray(g), self.mu, self.axes,
                                         self.bank, self.z_bank, self.n_bank, self.bank_groups,
                                         self.candidates),
            [queries, np.asarray(groups, np.int32)], self.step, progress=bool(desc), desc=desc,
            bucket=True)
        return _certified(best, False, _norms(queries), self.b_norm, self.dim, self.w_max)


def window_bounds(patches: np.ndarray, grid, bank: np.ndarray, bank_sources: np.ndarray,
                  bank_positions: np.ndarray, weights: Optional[np.ndarray] = None,
                  radius: int = 1) -> np.ndarray:
    """Certified upper bounds (B * P,) float64 of the left-out scores of the B images' patches
    (B, P, D) on the (h, w) `grid`, each against the entries of other images taken at grid
    positions within Chebyshev `radius` of its own (inf where there are none)."""
    b, p, d = patches.shape
    h, w = grid
    host = np.asarray(bank, np.float32)
    bank_sq = np.einsum("ij,ij->i", host, host)
    by_position = np.split(np.argsort(bank_positions, kind="stable"),
                           np.cumsum(np.bincount(bank_positions, minlength=p))[:-1])
    best = np.full((b, p), np.inf, np.float32)
    with host_blas():
        _window_minima(patches, h, w, radius, host, bank_sq, bank_sources, by_position, best)
    return _certified(best.reshape(-1), True, _norms(patches.reshape(b * p, d)),
                      float(_norms(host).max()), d,
                      None if weights is None else float(np.max(weights)))


def _window_minima(patches, h, w, radius, host, bank_sq, bank_sources, by_position, best):
    """best[b, p] = the float32 GEMM-form distance from patch (b, p) to its nearest window
    entry of another image."""
    b, p, _ = patches.shape
    images = np.arange(b)
    for pos in range(p):
        y, x = divmod(pos, w)
        rows, cols = range(max(0, y - radius), min(h, y + radius + 1)), \
            range(max(0, x - radius), min(w, x + radius + 1))
        sel = np.concatenate([by_position[yy * w + xx] for yy in rows for xx in cols])
        if sel.size == 0:
            continue
        q = patches[:, pos]
        dist = (np.einsum("ij,ij->i", q, q)[:, None] + bank_sq[sel][None]
                - 2.0 * (q @ host[sel].T))
        dist[bank_sources[sel][None, :] == images[:, None]] = np.inf
        best[:, pos] = dist.min(axis=1)
