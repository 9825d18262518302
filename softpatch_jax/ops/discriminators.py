"""Noise discriminators (METHOD.md step 4): outlier scores of training patches, per group.

A discriminator is a pure function of one group (B, D) -> (B,) scores, registered by name with
the bytes one group needs; `group_scores` vmaps it over groups (today: patch positions) and runs
the groups in chunks so that the per-chunk working set stays under a memory budget (never all
P x B x B distances at once). Adding one: a scorer and one `register` call.
"""
import dataclasses
import functools
from typing import Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from softpatch_jax.ops import gaussian
from softpatch_jax.ops.chunking import chunk_size, map_chunks
from softpatch_jax.ops.distances import self_distances


def nearest_scores(x: jnp.ndarray) -> jnp.ndarray:
    """(B, D) -> (B,): 1 + distance to the nearest other member of the group."""
    d = self_distances(x)
    d = d + jnp.diag(jnp.full(x.shape[0], jnp.inf, d.dtype))
    return 1.0 + jnp.min(d, axis=1)


def gaussian_scores(x: jnp.ndarray, reg: float = 0.01) -> jnp.ndarray:
    """(B, D) -> (B,): 1 + Mahalanobis distance to the group mean (unbiased cov + reg * I)."""
    mean, chol = gaussian.fit_one(x, reg)
    return 1.0 + gaussian.mahalanobis(x - mean, chol)


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


@dataclasses.dataclass(frozen=True)
class Discriminator:
    """make(k) -> the group scorer (B, D) -> (B,); k: neighbours, for those that use them."""
    name: str
    make: Callable[[int], Callable[[jnp.ndarray], jnp.ndarray]]
    bytes_per_group: Callable[[int, int], int]   # (B, D) -> working-set bytes of one group
    min_group: Callable[[int], int] = lambda k: 2  # (k) -> the smallest group it can score


_REGISTRY: Dict[str, Discriminator] = {}


def register(name: str, make, bytes_per_group=None, min_group=None) -> Discriminator:
    """Registers a discriminator under `name` (replacing one of that name)."""
    disc = Discriminator(name, make, bytes_per_group or (lambda b, d: 4 * (6 * b * b + 2 * b * d)),
                         min_group or (lambda k: 2))
    _REGISTRY[name] = disc
    return disc


def names() -> Tuple[str, ...]:
    return tuple(_REGISTRY)


def get(name: str) -> Discriminator:
    if name not in _REGISTRY:
        raise ValueError(f"unknown discriminator {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


register("nearest", lambda k: nearest_scores)
register("gaussian", lambda k: gaussian_scores,
         bytes_per_group=lambda b, d: 4 * (4 * d * d + 3 * b * d))
register("lof", lambda k: functools.partial(lof_scores, k=k), min_group=lambda k: k + 1)


@functools.partial(jax.jit, static_argnames=("name", "k"))
def _score_chunk(groups: jnp.ndarray, name: str, k: int) -> jnp.ndarray:
    return jax.vmap(get(name).make(k))(groups)


def group_scores(groups: jnp.ndarray, name: str, k: int = 6, budget_mb: float = 1024,
                 progress: bool = False) -> np.ndarray:
    """(G, B, D) groups -> (G, B) scores of discriminator `name` (k: its neighbours), groups
    chunked to the budget."""
    g, b, d = groups.shape
    disc = get(name)
    if b < disc.min_group(k):
        raise ValueError(f"the {name} discriminator (k={k}) needs groups of at least "
                         f"{disc.min_group(k)}, got {b}")
    step = chunk_size(disc.bytes_per_group(b, d), budget_mb)
    (out,) = map_chunks(lambda c: _score_chunk(c, name, k), [groups], step, progress=progress,
                        desc=f"{name} discriminator")
    return out
