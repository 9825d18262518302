"""Chunked exact k-nearest-neighbour search by squared L2 distance (METHOD.md step 7).

Queries are processed in chunks sized so that one chunk's (chunk x M) distance block stays under
the memory budget; the N x M matrix is never materialised.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from softpatch_jax.distances import chunk_size


# Rows per chunk: a (rows x M) block that stays in cache beats one huge block (measured on CPU).
MAX_ROWS = 1024


@functools.partial(jax.jit, static_argnames=("k",))
def _nearest_chunk(queries: jnp.ndarray, bank: jnp.ndarray, bank_sq: jnp.ndarray, k: int):
    # |q|^2 is constant per query: rank by |b|^2 - 2 q.b and add it to the winners only.
    partial = bank_sq[None, :] - 2.0 * jnp.matmul(queries, bank.T,
                                                  precision=jax.lax.Precision.HIGHEST)
    if k == 1:
        idx = jnp.argmin(partial, axis=1)[:, None]
        best = jnp.take_along_axis(partial, idx, axis=1)
    else:
        neg, idx = jax.lax.top_k(-partial, k)
        best = -neg
    return jnp.maximum(best + jnp.sum(queries * queries, axis=1, keepdims=True), 0.0), idx


def k_nearest(queries, bank, k: int = 1, budget_mb: float = 1024):
    """(N, D) queries, (M, D) bank -> ((N, k) squared distances ascending, (N, k) indices)."""
    queries = np.asarray(queries, np.float32)
    bank = jnp.asarray(bank, jnp.float32)
    if not 1 <= k <= bank.shape[0]:
        raise ValueError(f"k={k} nearest neighbours asked of a memory bank of {bank.shape[0]}; "
                         "lower model.num_nn")
    n = queries.shape[0]
    step = min(n, MAX_ROWS, chunk_size(3 * 4 * bank.shape[0], budget_mb, minimum=8))
    bank_sq = jnp.sum(bank * bank, axis=1)
    dists = np.empty((n, k), np.float32)
    index = np.empty((n, k), np.int64)
    pending = []
    for s in range(0, n, step):
        q = queries[s:s + step]
        m = q.shape[0]
        if m < step:  # one compiled shape
            q = np.concatenate([q, np.zeros((step - m, q.shape[1]), np.float32)])
        pending.append((s, m, _nearest_chunk(jnp.asarray(q), bank, bank_sq, k)))
        if len(pending) > 4:  # keep a few chunks in flight (async dispatch), bounded memory
            _collect(pending.pop(0), dists, index)
    for item in pending:
        _collect(item, dists, index)
    return dists, index


def _collect(item, dists, index):
    s, m, (d, i) = item
    dists[s:s + m], index[s:s + m] = np.asarray(d)[:m], np.asarray(i)[:m]


def nearest_neighbour(queries, bank, budget_mb: float = 1024):
    """(N, D) queries, (M, D) memory bank -> ((N,) squared distances, (N,) int indices)."""
    d, i = k_nearest(queries, bank, 1, budget_mb)
    return d[:, 0], i[:, 0]
