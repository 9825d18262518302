"""Chunked exact k-nearest-neighbour search by squared L2 distance (METHOD.md step 7).

Queries are processed in chunks sized so that one chunk's (chunk x M) distance block stays under
the memory budget; the N x M matrix is never materialised.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from softpatch_jax.distances import chunk_size, pairwise_sq_dists


@functools.partial(jax.jit, static_argnames=("k",))
def _nearest_chunk(queries: jnp.ndarray, bank: jnp.ndarray, k: int):
    d = pairwise_sq_dists(queries, bank)
    if k == 1:
        idx = jnp.argmin(d, axis=1)[:, None]
        return jnp.take_along_axis(d, idx, axis=1), idx
    neg, idx = jax.lax.top_k(-d, k)
    return -neg, idx


def k_nearest(queries, bank, k: int = 1, budget_mb: float = 1024):
    """(N, D) queries, (M, D) bank -> ((N, k) squared distances ascending, (N, k) indices)."""
    queries = np.asarray(queries, np.float32)
    bank = jnp.asarray(bank, jnp.float32)
    if not 1 <= k <= bank.shape[0]:
        raise ValueError(f"k={k} nearest neighbours asked of a memory bank of {bank.shape[0]}; "
                         "lower model.num_nn")
    n = queries.shape[0]
    step = min(n, chunk_size(3 * 4 * bank.shape[0], budget_mb, minimum=8))
    dists = np.empty((n, k), np.float32)
    index = np.empty((n, k), np.int64)
    for s in range(0, n, step):
        q = queries[s:s + step]
        m = q.shape[0]
        if m < step:  # one compiled shape
            q = np.concatenate([q, np.zeros((step - m, q.shape[1]), np.float32)])
        d, i = _nearest_chunk(jnp.asarray(q), bank, k)
        dists[s:s + m], index[s:s + m] = np.asarray(d)[:m], np.asarray(i)[:m]
    return dists, index


def nearest_neighbour(queries, bank, budget_mb: float = 1024):
    """(N, D) queries, (M, D) memory bank -> ((N,) squared distances, (N,) int indices)."""
    d, i = k_nearest(queries, bank, 1, budget_mb)
    return d[:, 0], i[:, 0]
