"""Chunked exact 1-nearest-neighbour search by squared L2 distance (METHOD.md step 7).

Queries are processed in chunks sized so that one chunk's (chunk x M) distance block stays under
the memory budget; the N x M matrix is never materialised.
"""
import jax
import jax.numpy as jnp
import numpy as np

from softpatch_jax.distances import chunk_size, pairwise_sq_dists


@jax.jit
def _nearest_chunk(queries: jnp.ndarray, bank: jnp.ndarray):
    d = pairwise_sq_dists(queries, bank)
    idx = jnp.argmin(d, axis=1)
    return jnp.take_along_axis(d, idx[:, None], axis=1)[:, 0], idx


def nearest_neighbour(queries, bank, budget_mb: float = 1024):
    """(N, D) queries, (M, D) memory bank -> ((N,) squared distances, (N,) int indices)."""
    queries = np.asarray(queries, np.float32)
    bank = jnp.asarray(bank, jnp.float32)
    n = queries.shape[0]
    step = min(n, chunk_size(3 * 4 * bank.shape[0], budget_mb, minimum=8))
    dists = np.empty((n,), np.float32)
    index = np.empty((n,), np.int64)
    for s in range(0, n, step):
        q = queries[s:s + step]
        m = q.shape[0]
        if m < step:  # one compiled shape
            q = np.concatenate([q, np.zeros((step - m, q.shape[1]), np.float32)])
        d, i = _nearest_chunk(jnp.asarray(q), bank)
        dists[s:s + m], index[s:s + m] = np.asarray(d)[:m], np.asarray(i)[:m]
    return dists, index
