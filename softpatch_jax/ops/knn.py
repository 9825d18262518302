"""Chunked exact k-nearest-neighbour search by squared L2 distance (METHOD.md step 7).

Queries are processed in chunks sized so that one chunk's (chunk x M) distance block stays under
the memory budget; the N x M matrix is never materialised. The search is a strategy fixed at
construction (`BruteForce` here, `sharding.ShardedSearch` over a device mesh); `make_search`
picks one.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from softpatch_jax.ops.chunking import chunk_size, map_chunks

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
        raise ValueError(f"k={k} nearest neighbours asked of a bank of {bank.shape[0]} entries")
    step = min(MAX_ROWS, chunk_size(3 * 4 * bank.shape[0], budget_mb, minimum=8))
    bank_sq = jnp.sum(bank * bank, axis=1)
    dists, index = map_chunks(lambda q: _nearest_chunk(jnp.asarray(q), bank, bank_sq, k),
                              [queries], step)
    return dists, index.astype(np.int64)


def nearest_neighbour(queries, bank, budget_mb: float = 1024):
    """(N, D) queries, (M, D) memory bank -> ((N,) squared distances, (N,) int indices)."""
    d, i = k_nearest(queries, bank, 1, budget_mb)
    return d[:, 0], i[:, 0]


@dataclasses.dataclass(frozen=True)
class BruteForce:
    """Exact search on one device."""
    budget_mb: float = 1024

    def k_nearest(self, queries, bank, k: int = 1):
        """(N, D), (M, D) -> ((N, k) squared distances ascending, (N, k) indices)."""
        return k_nearest(queries, bank, k, self.budget_mb)


def make_search(budget_mb: float = 1024, multi_device: bool = True):
    """The search for this process: the bank sharded over a device mesh when `multi_device` and
    there is more than one device, else brute force on one device."""
    if multi_device and jax.device_count() > 1:
        from softpatch_jax.ops import sharding

        return sharding.ShardedSearch(sharding.device_mesh(), budget_mb)
    return BruteForce(budget_mb)
