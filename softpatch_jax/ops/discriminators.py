"""Noise discriminators (METHOD.md step 4): outlier scores of training patches, per group.

A discriminator is a pure function of one group (B, D) -> (B,) scores, registered by name with
the bytes one group needs; `group_scores` vmaps it over groups (today: patch positions) and runs
the groups in chunks so that the per-chunk working set stays under a memory budget (never all
P x B x B distances at once). Adding one: a scorer and one `register` call. A discriminator may
also register a whole-chunk scorer (`make_chunk`), as LOF does, and a cache-sized working set
(`cache_mb`) that its chunks aim at below the budget.

Groupings other than the position groups (ops/grouping.py: `neighbourhood`, `global`, `auto`)
compare each patch with candidates from several positions and dispatch on what a discriminator
declares at `register`, never on its name: a neighbour form (`neighbours(k)`, how many nearest
candidates it reads, and `from_neighbours`, a scorer of those neighbour sets) serves every
grouping; a window form (`window`, a scorer of each position's window of patches, as the
windowed Gaussian) serves `neighbourhood` and `auto`. A discriminator with neither runs under
position grouping only.

LOF (`lof_chunk_scores`): per chunk one batched GEMM for the distances, then an exact, sort-free
selection of the k nearest (tile minima, then k rounds that each read one tile per row) in place
of `lax.top_k` over all B. Its scores equal `lof_scores_reference` (the plain form: all distances,
`lax.top_k`) bit for bit on the XLA CPU tested, chunk for chunk; ties between float32 distances
go to the lower index, as `lax.top_k` orders them (scikit-learn: see `lof_chunk_scores`).
"""
import dataclasses
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from softpatch_jax.ops import gaussian
from softpatch_jax.ops.chunking import chunk_size, map_chunks
from softpatch_jax.ops.distances import self_distances

# Working set per chunk that group_scores aims at (MiB) for discriminators registered with it,
# below the memory budget: small enough to stay in the CPU's caches (on 2-core machines,
# transistor-size LOF and nearest ran 2-3x faster in chunks of 16-32 groups than in the one or
# two chunks that the 1 GiB budget allows), and at least MIN_CHUNK groups (fewer amortise their
# dispatch badly, and XLA then compiles LOF's means over the k neighbours differently: scores
# change in the last bit).
# Device-resident groups run THREADS chunks at a time, each within budget / THREADS.
CACHE_MB = 32.0
MIN_CHUNK = 4
THREADS = 2


def nearest_scores(x: jnp.ndarray) -> jnp.ndarray:
    """(B, D) -> (B,): 1 + distance to the nearest other member of the group."""
    d = self_distances(x)
    d = d + jnp.diag(jnp.full(x.shape[0], jnp.inf, d.dtype))
    return 1.0 + jnp.min(d, axis=1)


def gaussian_scores(x: jnp.ndarray, reg: float = 0.01) -> jnp.ndarray:
    """(B, D) -> (B,): 1 + Mahalanobis distance to the group mean (unbiased cov + reg * I)."""
    mean, chol = gaussian.fit_one(x, reg)
    return 1.0 + gaussian.mahalanobis(x - mean, chol)


def lof_scores_reference(x: jnp.ndarray, k: int) -> jnp.ndarray:
    """(B, D) -> (B,): Local Outlier Factor with k neighbours, as scikit-learn computes it
    (`-negative_outlier_factor_` after `LocalOutlierFactor(n_neighbors=k).fit(x)`).

    The plain form (all B x B distances, `lax.top_k`): the reference that `lof_chunk_scores`
    reproduces bit for bit (tests/ops/test_lof_fast.py)."""
    d = self_distances(x)
    d = d + jnp.diag(jnp.full(x.shape[0], jnp.inf, d.dtype))  # a point is not its own neighbour
    neg, idx = jax.lax.top_k(-d, k)  # (B, k) nearest, ascending distance
    knn = -neg
    k_distance = knn[:, -1]
    reach = jnp.maximum(knn, k_distance[idx])
    lrd = 1.0 / (jnp.mean(reach, axis=1) + 1e-10)
    return jnp.mean(lrd[idx], axis=1) / lrd


def _lof_tiles(b: int) -> Tuple[int, int]:
    """Neighbour columns are split into T tiles of S, S near sqrt(B / 4): a divisor of B where
    one is close (no padding), else T * S > B with the rest padded with inf."""
    target = max(1.0, np.sqrt(b / 4.0))
    divisors = [s for s in range(1, b + 1) if b % s == 0 and target / 2 <= s <= target * 2]
    s = min(divisors, key=lambda s: abs(np.log(s / target))) if divisors else int(round(target))
    return -(-b // s), s


def _group_distances(groups: jnp.ndarray, t: int, s: int) -> jnp.ndarray:
    """(C, B, D) -> (C, B, T * S) distances within each group, inf on the diagonal and in the
    padding columns. The same operations as `self_distances` under vmap (centred, GEMM form),
    so the distances are bit for bit those of `lof_scores_reference`."""
    c, b, _ = groups.shape
    x = groups - jnp.mean(groups, axis=1, keepdims=True)
    aa = jnp.sum(x * x, axis=-1)
    ab = jnp.einsum("cid,cjd->cij", x, x, precision=jax.lax.Precision.HIGHEST)
    sq = jnp.maximum(aa[:, :, None] + aa[:, None, :] - 2.0 * ab, 0.0)
    eye = jax.lax.broadcasted_iota(jnp.int32, sq.shape, 1) == \
        jax.lax.broadcasted_iota(jnp.int32, sq.shape, 2)
    # inf on the diagonal before the square root: sqrt(inf) = inf, and XLA then writes the
    # distances once (masking after the root, it writes them twice, with and without the mask).
    d = jnp.sqrt(jnp.where(eye, jnp.inf, sq))
    if t * s > b:
        d = jnp.pad(d, ((0, 0), (0, 0), (0, t * s - b)), constant_values=jnp.inf)
    return d


def _k_nearest(d: jnp.ndarray, k: int, t: int, s: int) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """(C, B, T * S) distances -> the k nearest per row: distances (C, B, k) ascending and
    column indices (C, B, k) int32, in the order of `lax.top_k(-d, k)`: by distance, equal
    distances by lower column index.

    Exact and sort-free: the minimum of each tile of S columns is taken once (one pass over the
    distances); then k rounds each take the smallest tile minimum (ties: the lower tile), find its
    column inside that one tile (ties: the lower column) and replace that tile's minimum by the
    smallest entry left in it, "left" meaning after the taken (distance, column) pair in the
    (distance, column) order. So a round reads T tile minima and S distances per row instead of
    all B. The per-row state is laid out rows-last, (T, N) and (S, N), so the reductions run over
    the leading axis, vectorised over rows.
    """
    c, b, _ = d.shape
    n = c * b
    tiles = d.reshape(n, t, s)
    # (T, N) tile minima; the barrier keeps XLA from taking the first round's minimum by a second
    # pass over all distances (min of the tile minima is the row minimum).
    mins = jax.lax.optimization_barrier(jnp.min(tiles, axis=2).T)
    tile_ids = jnp.arange(t, dtype=jnp.int32)[:, None]
    col_ids = jnp.arange(s, dtype=jnp.int32)[:, None]
    prev_d = jnp.full((n,), -jnp.inf, d.dtype)             # the last (distance, column) taken
    prev_j = jnp.full((n,), -1, jnp.int32)
    dists, cols = [], []
    for _ in range(k):
        m = jnp.min(mins, axis=0)                           # the next distance
        tile = jnp.min(jnp.where(mins == m, tile_ids, t), axis=0)   # its (lowest) tile
        vals = jnp.take_along_axis(tiles, tile[:, None, None], axis=1,
                                   mode="clip")[:, 0].T     # (S, N) that tile's distances
        col = tile * s + col_ids                            # (S, N) columns of that tile
        after_prev = (m > prev_d) | (col > prev_j)          # not taken in an earlier round
        j = tile * s + jnp.min(jnp.where((vals == m) & after_prev, col_ids, s), axis=0)
        left = (vals > m) | ((vals == m) & (col > j))
        mins = jnp.where(tile_ids == tile, jnp.min(jnp.where(left, vals, jnp.inf), axis=0), mins)
        dists.append(m)
        cols.append(j)
        prev_d, prev_j = m, j
    return jnp.stack(dists, -1).reshape(c, b, k), jnp.stack(cols, -1).reshape(c, b, k)


def lof_chunk_scores(groups: jnp.ndarray, k: int) -> jnp.ndarray:
    """(C, B, D) groups -> (C, B) LOF scores, equal to `vmap(lof_scores_reference)` (bit for bit
    on the XLA CPU tested; in both, chunks of under 4 groups can differ from larger ones in the
    last bit, as XLA compiles the means over k differently) but without `lax.top_k` over all B:
    see `_k_nearest`.

    Ties: distances are compared in float32 exactly as the reference computes them, and equal
    distances go to the lower index, as `lax.top_k` orders them. scikit-learn computes in float64
    and breaks ties its own way, so where the k-th and (k+1)-th neighbour are equal or nearly equal
    in float32 the neighbour sets (and scores) may differ from its; elsewhere they agree to ~1e-6.
    """
    c, b, _ = groups.shape
    t, s = _lof_tiles(b)
    knn, idx = _k_nearest(_group_distances(groups, t, s), k, t, s)

    def rows(values, i):  # values (C, B) at the neighbour indices (C, B, k)
        return jnp.take_along_axis(values[:, None, :], i.reshape(c, 1, -1), axis=2).reshape(i.shape)

    k_distance = knn[..., -1]
    reach = jnp.maximum(knn, rows(k_distance, idx))
    lrd = 1.0 / (jnp.mean(reach, axis=-1) + 1e-10)
    return jnp.mean(rows(lrd, idx), axis=-1) / lrd


def lof_scores(x: jnp.ndarray, k: int) -> jnp.ndarray:
    """(B, D) -> (B,): Local Outlier Factor with k neighbours, as scikit-learn computes it
    (`-negative_outlier_factor_` after `LocalOutlierFactor(n_neighbors=k).fit(x)`)."""
    return lof_chunk_scores(x[None], k)[0]


def nearest_from_neighbours(dist: jnp.ndarray, idx: jnp.ndarray) -> jnp.ndarray:
    """(N, 1) distance of each of N patches to its nearest candidate (and (N, 1) its index,
    unused) -> (N,): 1 + that distance, as `nearest_scores` within a group."""
    return 1.0 + dist[:, 0]


def lof_from_neighbours(dist: jnp.ndarray, idx: jnp.ndarray) -> jnp.ndarray:
    """(N, k) distances of each of N patches to its k nearest candidates, ascending, and (N, k)
    their indices into the N patches -> (N,) LOF scores: scikit-learn's formula on these
    neighbour sets (ops/grouping.py's docstring; the operations of `lof_chunk_scores`), every
    patch's k-distance and lrd taken from its own set."""
    k_distance = dist[:, -1]
    reach = jnp.maximum(dist, k_distance[idx])
    lrd = 1.0 / (jnp.mean(reach, axis=-1) + 1e-10)
    return jnp.mean(lrd[idx], axis=-1) / lrd


@functools.partial(jax.jit, static_argnames=("scorer",))
def _from_neighbours(dist: jnp.ndarray, idx: jnp.ndarray, scorer: Callable) -> jnp.ndarray:
    return scorer(dist, idx)


def neighbour_scores(dist: np.ndarray, idx: np.ndarray, name: str) -> np.ndarray:
    """(B, P, n) distances of each patch to its n = neighbours(k) nearest candidates, ascending,
    and (B, P, n) their flat indices b' * P + q -> (B, P) scores of discriminator `name`'s
    neighbour form (jitted per scorer)."""
    b, p, n = dist.shape
    out = _from_neighbours(jnp.asarray(dist).reshape(b * p, n),
                           jnp.asarray(idx, jnp.int32).reshape(b * p, n),
                           get(name).from_neighbours)
    return np.asarray(out).reshape(b, p)


@functools.partial(jax.jit, static_argnames=("reg",))
def _window_gaussian_chunk(x, table, valid, positions, reg: float):
    """x (B, P, d), table/valid (P, W), positions (C,) -> (C, B) 1 + Mahalanobis distances of
    the C positions' patches to the Gaussian of their window's patches of all images."""
    b, p, dim = x.shape
    w = table.shape[1]
    samples = jnp.transpose(x[:, table[positions]], (1, 2, 0, 3)).reshape(len(positions), w * b,
                                                                        dim)
    inside = jnp.repeat(valid[positions], b, axis=1).astype(x.dtype)[..., None]  # (C, W * B, 1)
    count = jnp.sum(inside, axis=1)                                               # (C, 1)
    mean = jnp.sum(samples * inside, axis=1) / count                              # (C, d)
    delta = (samples - mean[:, None]) * inside
    cov = jnp.einsum("cnd,cne->cde", delta, delta, precision=jax.lax.Precision.HIGHEST)
    cov = cov / (count[:, :, None] - 1.0) + reg * jnp.eye(dim, dtype=x.dtype)
    chol = jnp.linalg.cholesky(cov)
    queries = jnp.transpose(x[:, positions], (1, 0, 2))                           # (C, B, d)
    return 1.0 + jax.vmap(gaussian.mahalanobis)(queries - mean[:, None], chol)


def window_gaussian_scores(x, table: np.ndarray, valid: np.ndarray, budget_mb: float = 1024,
                           progress: bool = False, reg: float = 0.01) -> np.ndarray:
    """(B, P, d) features, (P, W) each position's window positions and (P, W) which of them lie
    inside the grid (`grouping.window_table`) -> (B, P): 1 + Mahalanobis distance of each patch
    to the Gaussian fitted on all images' patches of its window (unbiased covariance + reg * I),
    positions chunked to the budget."""
    b, p, d = x.shape
    w = table.shape[1]
    per_position = 4 * (3 * w * b * d + 4 * d * d + 3 * b * d)
    step = _steps(p, per_position, budget_mb / THREADS, None)
    xd, tab, val = jnp.asarray(x, jnp.float32), jnp.asarray(table), jnp.asarray(valid)
    (out,) = map_chunks(lambda pos: _window_gaussian_chunk(xd, tab, val, jnp.asarray(pos), reg),
                        [np.arange(p, dtype=np.int32)], step, progress=progress,
                        desc="neighbourhood gaussian")
    return out.T


# A neighbour form's scorer: (N, n) distances ascending, (N, n) indices into the N patches -> (N,).
NeighbourScorer = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
# A window form: (B, P, d) features, (P, W) window positions, (P, W) inside the grid, budget_mb,
# progress -> (B, P) scores.
WindowScorer = Callable[[np.ndarray, np.ndarray, np.ndarray, float, bool], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Discriminator:
    """make(k) -> the group scorer (B, D) -> (B,); k: neighbours, for those that use them.
    make_chunk(k), where given, scores a whole chunk (G, B, D) -> (G, B) at once in place of
    vmap(make(k)) (same scores). neighbours / from_neighbours and window: the forms through
    which ops/grouping.py runs it on candidates from several positions (module docstring)."""
    name: str
    make: Callable[[int], Callable[[jnp.ndarray], jnp.ndarray]]
    bytes_per_group: Callable[[int, int], int]   # (B, D) -> working-set bytes of one group
    min_group: Callable[[int], int] = lambda k: 2  # (k) -> the smallest group it can score
    make_chunk: Optional[Callable[[int], Callable[[jnp.ndarray], jnp.ndarray]]] = None
    cache_mb: Optional[float] = None  # working set per chunk to aim at (else: the budget's)
    # (k) -> how many nearest candidates from_neighbours reads: grouping runs one kNN of that
    # size and checks every patch has as many candidates. None: no neighbour form.
    neighbours: Optional[Callable[[int], int]] = None
    # Scores patches from their neighbour sets alone, so one kNN serves the `neighbourhood`,
    # `global` and `auto` groupings (no B*P x B*P distances). None: no neighbour form.
    from_neighbours: Optional[NeighbourScorer] = None
    # Scores each position's window of patches directly, for a discriminator that fits a model
    # per window rather than reading neighbours (the Gaussian): `neighbourhood` and `auto` only,
    # as a window form has no `global` counterpart. Preferred over from_neighbours there.
    window: Optional[WindowScorer] = None


_REGISTRY: Dict[str, Discriminator] = {}


def register(name: str, make, bytes_per_group=None, min_group=None, make_chunk=None,
             cache_mb=None, *, neighbours: Optional[Callable[[int], int]] = None,
             from_neighbours: Optional[NeighbourScorer] = None,
             window: Optional[WindowScorer] = None) -> Discriminator:
    """Registers a discriminator under `name` (replacing one of that name). `neighbours` and
    `from_neighbours` declare its neighbour form, together or not at all; `window` its window
    form (Discriminator)."""
    if (neighbours is None) != (from_neighbours is None):
        raise ValueError(f"discriminator {name!r}: a neighbour form needs both neighbours and "
                         "from_neighbours")
    disc = Discriminator(name, make, bytes_per_group or (lambda b, d: 4 * (6 * b * b + 2 * b * d)),
                         min_group or (lambda k: 2), make_chunk, cache_mb, neighbours,
                         from_neighbours, window)
    _REGISTRY[name] = disc
    return disc


def names() -> Tuple[str, ...]:
    return tuple(_REGISTRY)


def get(name: str) -> Discriminator:
    if name not in _REGISTRY:
        raise ValueError(f"unknown discriminator {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


register("nearest", lambda k: nearest_scores, cache_mb=CACHE_MB,
         neighbours=lambda k: 1, from_neighbours=nearest_from_neighbours)
register("gaussian", lambda k: gaussian_scores,
         bytes_per_group=lambda b, d: 4 * (4 * d * d + 3 * b * d), window=window_gaussian_scores)
# Working set of one group in lof_chunk_scores: the input and its centred copy (2 B D), the
# GEMM output and the padded distances (~2 B^2), the per-row selection state (small, ~B (T + S)).
register("lof", lambda k: functools.partial(lof_scores, k=k),
         bytes_per_group=lambda b, d: 4 * (3 * b * b + 3 * b * d),
         min_group=lambda k: k + 1,
         make_chunk=lambda k: functools.partial(lof_chunk_scores, k=k), cache_mb=CACHE_MB,
         neighbours=lambda k: k, from_neighbours=lof_from_neighbours)


def _score(groups: jnp.ndarray, name: str, k: int) -> jnp.ndarray:
    disc = get(name)
    if disc.make_chunk is not None:
        return disc.make_chunk(k)(groups)
    return jax.vmap(disc.make(k))(groups)


_score_chunk = jax.jit(_score, static_argnames=("name", "k"))


@functools.partial(jax.jit, static_argnames=("name", "k", "step"))
def _score_slice(groups: jnp.ndarray, start: jnp.ndarray, name: str, k: int,
                 step: int) -> jnp.ndarray:
    """Scores groups[start:start + step] (start clamped so the slice fits), sliced in the
    executable: no copy of the chunk is dispatched and made first."""
    return _score(jax.lax.dynamic_slice_in_dim(groups, start, step, 0), name, k)


def _steps(g: int, per_group: int, budget_mb: float, cache_mb: Optional[float]) -> int:
    """Groups per chunk: as many as the budget allows, at most about as many as fit cache_mb (at
    least MIN_CHUNK, budget permitting), then evened out over the chunks so that the padded last
    chunk wastes little."""
    step = chunk_size(per_group, budget_mb)
    if cache_mb is not None:
        step = min(step, chunk_size(per_group, cache_mb, minimum=MIN_CHUNK))
    chunks = -(-g // max(1, step))
    return max(1, -(-g // chunks))


def _scores_by_slices(groups: jax.Array, name: str, k: int, step: int,
                      progress: bool = False) -> np.ndarray:
    """group_scores for groups already on the device: each chunk is scored by one executable
    that slices it out of `groups` itself (the last chunk is the last `step` groups, overlapping
    the one before: no padding), THREADS chunks at a time: XLA spreads a chunk's GEMM over the
    cores well but its many small selection steps poorly, and two chunks side by side fill them."""
    g = groups.shape[0]
    starts = list(range(0, g, step))

    def one(s):
        start = min(s, g - step)
        return np.asarray(_score_slice(groups, start, name, k, step))[s - start:]

    out = []
    with ThreadPoolExecutor(THREADS) as pool, \
            tqdm(total=g, desc=f"{name} discriminator", disable=not progress, leave=False) as bar:
        for res in pool.map(one, starts):
            out.append(res)
            bar.update(len(res))
    return np.concatenate(out)


def group_scores(groups: jnp.ndarray, name: str, k: int = 6, budget_mb: float = 1024,
                 progress: bool = False) -> np.ndarray:
    """(G, B, D) groups -> (G, B) scores of discriminator `name` (k: its neighbours), groups
    chunked to the budget."""
    g, b, d = groups.shape
    disc = get(name)
    if b < disc.min_group(k):
        raise ValueError(f"the {name} discriminator (k={k}) needs groups of at least "
                         f"{disc.min_group(k)}, got {b}")
    step = _steps(g, disc.bytes_per_group(b, d), budget_mb / THREADS, disc.cache_mb)
    if isinstance(groups, jax.Array) and step < g:
        return _scores_by_slices(groups, name, k, step, progress)
    (out,) = map_chunks(lambda c: _score_chunk(c, name, k), [groups], step, progress=progress,
                        desc=f"{name} discriminator")
    return out
