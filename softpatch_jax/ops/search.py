"""What a nearest-neighbour search is, and the one a run uses.

A search is a strategy fixed at construction and passed to whatever searches a memory bank
(PatchCore's scorer, the soft weights, leave-one-out calibration): `BruteForce` and
`PrunedSearch` (ops/knn.py, exact and equal bit for bit) and `ShardedSearch` (ops/sharding.py,
the bank split over a device mesh). This module sits above both, so neither imports the other.
"""
from typing import Protocol, Tuple

import jax
import numpy as np

from softpatch_jax.ops import knn, sharding


class Search(Protocol):
    """Exact k-NN by squared L2 distance under a memory budget."""
    budget_mb: float

    def k_nearest(self, queries, bank, k: int = 1) -> Tuple[np.ndarray, np.ndarray]:
        """(N, D) queries, (M, D) bank -> ((N, k) squared distances ascending, (N, k) indices)."""


def make_search(budget_mb: float = 1024, multi_device: bool = True,
                pruning: bool = True) -> Search:
    """The search for this process: the bank sharded over a device mesh when `multi_device` and
    there is more than one device, else on one device the pruned exact search (`pruning`, same
    results as brute force) or brute force."""
    if multi_device and jax.device_count() > 1:
        return sharding.ShardedSearch(sharding.device_mesh(), budget_mb)
    return knn.PrunedSearch(budget_mb) if pruning else knn.BruteForce(budget_mb)
