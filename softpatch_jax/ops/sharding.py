"""Multi-device execution: a 1-D device mesh, the memory bank sharded over it for 1-NN search
(each device finds the nearest entry of its shard, then a global minimum picks the winner), and
data-parallel feature extraction (the batch split over devices, parameters replicated).

Results equal the single-device ones: the same distances are computed, only placed differently.
"""
import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from softpatch_jax.ops import knn
from softpatch_jax.ops.chunking import chunk_size, map_chunks
from softpatch_jax.ops.distances import pairwise_sq_dists

AXIS = "devices"


def device_mesh(devices=None) -> Mesh:
    """A 1-D mesh over `devices` (default: all local devices)."""
    devices = np.asarray(devices if devices is not None else jax.devices())
    return Mesh(devices.reshape(-1), (AXIS,))


def maybe_initialize_distributed(enabled: bool, **kwargs) -> None:
    """runtime.distributed=True: join a multi-host run (coordinator etc. from the environment,
    or `kwargs` of `jax.distributed.initialize`). CPU processes talk through gloo."""
    if enabled:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(**kwargs)


def _local_nearest(queries, bank, valid, offset):
    """Per shard: (Q, M/n) distances -> local (Q,) min distance and global index."""
    d = pairwise_sq_dists(queries, bank)
    d = jnp.where(valid[None, :], d, jnp.inf)  # padding rows never win
    i = jnp.argmin(d, axis=1)
    return jnp.take_along_axis(d, i[:, None], axis=1)[:, 0][None], (i + offset[0])[None]


@functools.partial(jax.jit, static_argnames=("mesh",))
def _sharded_chunk(queries, bank, valid, offsets, mesh):
    fn = jax.shard_map(_local_nearest, mesh=mesh,
                       in_specs=(P(), P(AXIS), P(AXIS), P(AXIS)),
                       out_specs=(P(AXIS), P(AXIS)))
    d, i = fn(queries, bank, valid, offsets)  # (n_dev, Q) each
    best = jnp.argmin(d, axis=0)  # global minimum over the shards' winners
    return (jnp.take_along_axis(d, best[None], axis=0)[0],
            jnp.take_along_axis(i, best[None], axis=0)[0])


def _place_bank(bank: np.ndarray, mesh: Mesh, local: bool):
    """The bank as global arrays sharded over the mesh: (padded bank, valid rows, each shard's
    first global row, rows per shard). `local`: `bank` is only this process's contiguous part
    (process order gives the global row order), so no process ever holds the whole bank."""
    n_local = len(mesh.local_devices)
    if local and jax.process_count() > 1:
        from jax.experimental import multihost_utils

        sizes = np.asarray(multihost_utils.process_allgather(np.array([len(bank)]))).reshape(-1)
        start = int(sizes[:jax.process_index()].sum())
        per = -(-int(sizes.max()) // n_local)
        first = start + np.arange(n_local, dtype=np.int32) * per
    else:  # every process holds the whole bank; each device takes its slice
        start, per = 0, -(-len(bank) // mesh.devices.size)
        first = np.arange(mesh.devices.size, dtype=np.int32) * per
    shard = NamedSharding(mesh, P(AXIS))
    if local and jax.process_count() > 1:
        padded = np.zeros((per * n_local, bank.shape[1]), np.float32)
        padded[:len(bank)] = bank
        valid = np.arange(per * n_local) < len(bank)
        put = lambda a: jax.make_array_from_process_local_data(shard, a)  # noqa: E731
    else:
        padded = np.zeros((per * mesh.devices.size, bank.shape[1]), np.float32)
        padded[:len(bank)] = bank
        valid = np.arange(len(padded)) < len(bank)
        put = lambda a: jax.device_put(a, shard)  # noqa: E731
    return put(padded), put(valid), put(first), per


def sharded_nearest_neighbour(queries, bank, mesh: Optional[Mesh] = None,
                              budget_mb: float = 1024, local: bool = False):
    """Like knn.nearest_neighbour, with the (M, D) bank split over the mesh's devices (of one or
    several processes). `local`: each process passes only its contiguous part of the bank.
    -> ((N,) squared distances, (N,) indices into the whole, unsharded bank)."""
    mesh = mesh or device_mesh()
    bank_d, valid_d, off_d, per = _place_bank(np.asarray(bank, np.float32), mesh, local)
    queries = np.asarray(queries, np.float32)
    step = chunk_size(3 * 4 * per, budget_mb, minimum=8)
    dists, index = map_chunks(
        lambda q: _sharded_chunk(jnp.asarray(q), bank_d, valid_d, off_d, mesh), [queries], step)
    return dists, index.astype(np.int64)


@dataclasses.dataclass(frozen=True)
class ShardedSearch:
    """Exact search with the bank split over a mesh's devices (1-NN); k > 1 runs brute force."""
    mesh: Mesh
    budget_mb: float = 1024

    def k_nearest(self, queries, bank, k: int = 1):
        """(N, D), (M, D) -> ((N, k) squared distances ascending, (N, k) indices)."""
        if k != 1:
            return knn.k_nearest(queries, bank, k, self.budget_mb)
        d, i = sharded_nearest_neighbour(queries, bank, self.mesh, self.budget_mb)
        return d[:, None], i[:, None]


def data_parallel(fn, mesh: Optional[Mesh] = None):
    """Wraps fn(variables, images) so that the batch is split over the mesh's devices and the
    variables replicated; the batch size must be a multiple of the device count."""
    mesh = mesh or device_mesh()
    batch = NamedSharding(mesh, P(AXIS))
    replicated = NamedSharding(mesh, P())
    jitted = jax.jit(fn, in_shardings=(replicated, batch))

    def run(variables, images):
        return jitted(variables, jax.device_put(images, batch))
    return run
