"""Which training patches a noise discriminator compares each patch with (`denoise.grouping`).

x: (B, P, d) projected training features on an (h, w) patch grid, P = h * w; patch (b, p) has
the flat index b * P + p. Every grouping returns (B, P) scores.

- `position` (SoftPatch's): a group is one position's B patches; the discriminator runs inside
  each group (`discriminators.group_scores`), unchanged, bit for bit.
- `neighbourhood`: the candidates of patch (b, p) are the patches (b', q) of every *other* image
  b' != b at the positions q of p's window, max(|q_row - p_row|, |q_col - p_col|) <= r
  (`denoise.group_radius`, Chebyshev radius in patches, clipped at the grid's border): a part that
  moved by up to r patches still meets its own counterparts, and an image never vouches for
  itself. The relation is symmetric (q in the window of p iff p in the window of q).
- `global`: the candidates of (b, p) are all patches of all other images, at any position.
- `auto`: `position` where the parts line up, `neighbourhood` where they move, decided from the
  unlabeled training features (`aligned_share`): the share of patches whose nearest patch among
  the other images' patches of its radius-r window lies at its own position. On aligned parts
  most patches meet their counterpart where they are (MVTec transistor 0.72, ELPV mono 0.58);
  where parts turn or shift, or on textures, a neighbour position serves as often (the rotated
  transistor 0.33, VisA fryum 0.37, ELPV poly 0.42; 1 / window size when nothing lines up).
  `auto` takes `position` from ALIGNED_SHARE = 0.5 up: position groups carry the information
  where a part should be (a missing part looks like the background at the next position), which
  windows give away (alignment study, docs/studies.md).

Each discriminator runs here through the forms it declares at registration
(ops/discriminators.py), never by its name: a neighbour form (how many nearest candidates it
reads, and a scorer of those neighbour sets) for `neighbourhood`, `global` and `auto`; a window
form (a scorer of each position's window) for `neighbourhood` and `auto`, preferred over the
neighbour form there. One without either runs under `position` only (`supporting`). The built-in
ones, with C(b, p) the candidates above:
- `nearest`: 1 + the distance to the nearest candidate.
- `lof`: Local Outlier Factor on the candidate graph, scikit-learn's formula with neighbour sets
  from C: N_k(x) = the k nearest candidates of x (ties: lower index in the kNN's column order),
  kdist(x) = the distance to the k-th of them, reach(x, o) = max(d(x, o), kdist(o)),
  lrd(x) = 1 / (mean_{o in N_k(x)} reach(x, o) + 1e-10), LOF(x) = mean_{o in N_k(x)} lrd(o) /
  lrd(x). Every patch's kdist and lrd come from its own candidates, so a neighbour o's are
  those of o's window (of the other images than o's), the same values wherever o appears. This
  is exactly `LocalOutlierFactor(n_neighbors=k, metric='precomputed')` on the B*P x B*P distance
  matrix with the non-candidate pairs set far away (tests/ops/test_grouping.py), and with r = 0
  it is the position LOF.
- `gaussian` (a window form, no neighbour form): 1 + the Mahalanobis distance of (b, p) to a
  Gaussian fitted on all images' patches of p's window (unbiased covariance + 0.01 I, as the
  position Gaussian). All images, the own included: one fit per position (leaving each image
  out would take B fits per position), and as in the position Gaussian the own patch is one
  sample of many. `global` has no per-position Gaussian: an error.

Chunked and jitted: the window kNN runs over chunks of positions, the global kNN over chunks of
query rows, each chunk's working set under `budget_mb` (and near the cache size, as
`discriminators.group_scores`); the B*P x B*P distances are never materialised. The k nearest
are taken with the discriminators' exact sort-free selection (`discriminators._k_nearest`).
"""
import functools
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from softpatch_jax.ops import discriminators
from softpatch_jax.ops.chunking import map_chunks

GROUPINGS = ("position", "neighbourhood", "global", "auto")
ALIGNED_SHARE = 0.5  # `auto`: position grouping from this share of patches met at their position


def _runs_under(disc: discriminators.Discriminator, grouping: str) -> bool:
    """Whether a discriminator declares what `grouping` needs: `global`, a neighbour form;
    `neighbourhood` and `auto` (which runs as position or neighbourhood), a neighbour or a
    window form; `position`, only its group scorer."""
    if grouping == "position":
        return True
    if grouping == "global":
        return disc.from_neighbours is not None
    return disc.from_neighbours is not None or disc.window is not None


def supporting(grouping: str) -> Tuple[str, ...]:
    """The registered discriminators that run under `grouping`, in registration order."""
    return tuple(n for n in discriminators.names() if _runs_under(discriminators.get(n), grouping))


def check(grouping: str, radius: int, names: Sequence[str], field: str) -> None:
    """One-line errors for a grouping, its radius and the discriminators run under it (`field`:
    the config field naming them, denoise.discriminator or softpatch_plus.fusion)."""
    if grouping not in GROUPINGS:
        raise ValueError(f"denoise.grouping={grouping!r} is unknown; choose one of "
                         f"{', '.join(GROUPINGS)}, or '' for the method's own")
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise ValueError(f"denoise.group_radius={radius!r} must be an integer >= 0 (patches)")
    if grouping == "position":
        return
    able = supporting(grouping)
    for name in names:
        if name not in able:
            use = f"use {' or '.join(able)} there, or" if able else "no registered one does; use"
            raise ValueError(f"denoise.grouping={grouping} does not support {field}={name}; "
                             f"{use} another denoise.grouping")


def window_table(grid: Tuple[int, int], radius: int) -> Tuple[np.ndarray, np.ndarray]:
    """(h, w) grid -> (P, W) int32 positions of each position's window, W = (2r + 1)^2 offsets
    in row-major order, and (P, W) bool: inside the grid (the others point at position 0)."""
    h, w = grid
    rows, cols = np.divmod(np.arange(h * w), w)
    off = np.arange(-radius, radius + 1)
    dr, dc = [a.reshape(-1) for a in np.meshgrid(off, off, indexing="ij")]
    r, c = rows[:, None] + dr[None], cols[:, None] + dc[None]
    valid = (r >= 0) & (r < h) & (c >= 0) & (c < w)
    return np.where(valid, r * w + c, 0).astype(np.int32), valid


def fewest_candidates(b: int, grid: Tuple[int, int], grouping: str, radius: int) -> int:
    """The fewest candidates any patch has under the grouping (B images on the grid)."""
    p = grid[0] * grid[1]
    if grouping == "global":
        return (b - 1) * p
    if grouping == "neighbourhood":
        return (b - 1) * int(window_table(grid, radius)[1].sum(axis=1).min())
    return b - 1


def _selection_shape(m: int) -> Tuple[int, int]:
    """Tiles of the k-smallest selection over m candidate columns (T, S), T * S >= m."""
    return discriminators._lof_tiles(m)


def _pad_columns(d: jnp.ndarray, width: int) -> jnp.ndarray:
    if width > d.shape[-1]:
        pad = [(0, 0)] * (d.ndim - 1) + [(0, width - d.shape[-1])]
        d = jnp.pad(d, pad, constant_values=jnp.inf)
    return d


@functools.partial(jax.jit, static_argnames=("k", "t", "s"))
def _window_chunk(x, table, valid, positions, k: int, t: int, s: int):
    """x (B, P, d), table/valid (P, W), positions (C,) -> the k nearest candidates of the C
    positions' patches: distances (C, B, k) ascending and flat indices b' * P + q (C, B, k)."""
    b, p, _ = x.shape
    w = table.shape[1]
    tab = table[positions]                                        # (C, W)
    queries = jnp.transpose(x[:, positions], (1, 0, 2))           # (C, B, d)
    cands = jnp.transpose(x[:, tab], (1, 2, 0, 3)).reshape(len(positions), w * b, -1)
    # Centred on the position's mean: distances unchanged, less cancellation in the GEMM form.
    mean = jnp.mean(queries, axis=1, keepdims=True)
    queries, cands = queries - mean, cands - mean
    aa = jnp.sum(queries * queries, axis=-1)
    bb = jnp.sum(cands * cands, axis=-1)
    ab = jnp.einsum("cid,cjd->cij", queries, cands, precision=jax.lax.Precision.HIGHEST)
    sq = jnp.maximum(aa[:, :, None] + bb[:, None, :] - 2.0 * ab, 0.0)
    col_image = jnp.tile(jnp.arange(b), w)                        # column o * B + b'
    own = col_image[None, :] == jnp.arange(b)[:, None]            # (B, W * B)
    outside = ~jnp.repeat(valid[positions], b, axis=1)            # (C, W * B)
    d = jnp.sqrt(jnp.where(own[None] | outside[:, None, :], jnp.inf, sq))
    knn, col = discriminators._k_nearest(_pad_columns(d, t * s), k, t, s)
    col = jnp.minimum(col, w * b - 1)
    pos = jnp.take_along_axis(tab[:, None, :], (col // b), axis=2)
    return knn, (col % b) * p + pos


@functools.partial(jax.jit, static_argnames=("k", "t", "s"))
def _global_chunk(queries, query_image, bank, bank_sq, bank_image, k: int, t: int, s: int):
    """Centred queries (R, d) of images query_image (R,), centred bank (N, d) -> the k nearest
    bank rows of other images: distances (R, k) ascending and row indices (R, k)."""
    aa = jnp.sum(queries * queries, axis=-1)
    ab = jnp.matmul(queries, bank.T, precision=jax.lax.Precision.HIGHEST)
    sq = jnp.maximum(aa[:, None] + bank_sq[None, :] - 2.0 * ab, 0.0)
    own = query_image[:, None] == bank_image[None, :]
    d = jnp.sqrt(jnp.where(own, jnp.inf, sq))
    knn, col = discriminators._k_nearest(_pad_columns(d, t * s)[None], k, t, s)
    return knn[0], jnp.minimum(col[0], bank.shape[0] - 1)


def _window_bytes(b: int, w: int, d: int, t: int, s: int) -> int:
    """Working set of one position in `_window_chunk`: queries and candidates (and their centred
    copies), the GEMM output, the distances and their padded copy, the selection state."""
    return 4 * (2 * (b + w * b) * d + 3 * b * t * s + b * (t + s))


def _global_bytes(d: int, t: int, s: int) -> int:
    """Working set of one query row in `_global_chunk` (the bank itself is the input)."""
    return 4 * (2 * d + 3 * t * s + t + s)


def window_steps(b: int, p: int, w: int, d: int, budget_mb: float) -> int:
    """Positions per chunk of the window kNN under the budget."""
    t, s = _selection_shape(w * b)
    return discriminators._steps(p, _window_bytes(b, w, d, t, s),
                                 budget_mb / discriminators.THREADS, discriminators.CACHE_MB)


def global_steps(n: int, d: int, budget_mb: float) -> int:
    """Query rows per chunk of the global kNN under the budget."""
    t, s = _selection_shape(n)
    return discriminators._steps(n, _global_bytes(d, t, s),
                                 budget_mb / discriminators.THREADS, discriminators.CACHE_MB)


def window_neighbours(x, grid: Tuple[int, int], radius: int, k: int, budget_mb: float = 1024,
                      progress: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """(B, P, d) -> the k nearest candidates of every patch under `neighbourhood` grouping:
    distances (B, P, k) ascending (Euclidean, float32) and flat indices b' * P + q (B, P, k)."""
    b, p, d = x.shape
    table, valid = window_table(grid, radius)
    w = table.shape[1]
    t, s = _selection_shape(w * b)
    step = window_steps(b, p, w, d, budget_mb)
    xd, tab, val = jnp.asarray(x, jnp.float32), jnp.asarray(table), jnp.asarray(valid)
    dist, idx = map_chunks(lambda pos: _window_chunk(xd, tab, val, jnp.asarray(pos), k, t, s),
                           [np.arange(p, dtype=np.int32)], step, progress=progress,
                           desc="neighbourhood kNN")
    return np.transpose(dist, (1, 0, 2)), np.transpose(idx, (1, 0, 2)).astype(np.int64)


def global_neighbours(x, k: int, budget_mb: float = 1024,
                      progress: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """(B, P, d) -> the k nearest patches of other images, any position: distances (B, P, k)
    ascending (Euclidean, float32) and flat indices b' * P + q (B, P, k)."""
    b, p, d = x.shape
    n = b * p
    flat = jnp.asarray(x, jnp.float32).reshape(n, d)
    flat = flat - jnp.mean(flat, axis=0)  # centred: less cancellation in the GEMM form
    bank_sq = jnp.sum(flat * flat, axis=-1)
    image = jnp.repeat(jnp.arange(b, dtype=jnp.int32), p)
    t, s = _selection_shape(n)
    step = global_steps(n, d, budget_mb)
    rows = np.arange(n, dtype=np.int32)
    dist, idx = map_chunks(
        lambda r: _global_chunk(flat[r], image[r], flat, bank_sq, image, k, t, s),
        [rows], step, progress=progress, desc="global kNN")
    return dist.reshape(b, p, k), idx.reshape(b, p, k).astype(np.int64)


def aligned_share(x, grid: Tuple[int, int], radius: int, budget_mb: float = 1024) -> float:
    """(B, P, d) -> the share of the B * P patches whose nearest patch among the other images'
    patches of its radius-`radius` window (`window_neighbours`, ties to the lower column) lies
    at its own position."""
    b, p, _ = x.shape
    if grid is None or grid[0] * grid[1] != p:
        raise ValueError(f"denoise.grouping=auto needs the patch grid of the {p} positions, "
                         f"got {grid}")
    _, idx = window_neighbours(x, grid, radius, 1, budget_mb)
    return float(np.mean(idx[..., 0] % p == np.arange(p)[None]))


def resolve(grouping: str, x, grid: Optional[Tuple[int, int]], radius: int,
            budget_mb: float = 1024) -> Tuple[str, Optional[float]]:
    """`auto` -> (`position` or `neighbourhood` by `aligned_share` of the (B, P, d) features,
    the share); any other grouping -> (itself, None)."""
    if grouping != "auto":
        return grouping, None
    share = aligned_share(x, grid, radius, budget_mb)
    return ("position" if share >= ALIGNED_SHARE else "neighbourhood"), share


def grouped_scores(x, name: str, grouping: str = "position", k: int = 6, radius: int = 2,
                   grid: Optional[Tuple[int, int]] = None, budget_mb: float = 1024,
                   progress: bool = False) -> np.ndarray:
    """(B, P, d) projected training features -> (B, P) scores of discriminator `name` under
    `grouping` (module docstring); `grid` (h, w), h * w = P, for `neighbourhood`."""
    b, p, _ = x.shape
    if grouping == "auto":
        raise ValueError("denoise.grouping=auto is decided per fit (grouping.resolve) before the "
                         "discriminators run")
    if grouping == "position":
        groups = jnp.transpose(jnp.asarray(x), (1, 0, 2))  # (P, B, d): one group per position
        return discriminators.group_scores(groups, name, k, budget_mb, progress).T
    check(grouping, radius, [name], "denoise.discriminator")
    if grouping == "neighbourhood" and (grid is None or grid[0] * grid[1] != p):
        raise ValueError(f"denoise.grouping=neighbourhood needs the patch grid of the {p} "
                         f"positions, got {grid}")
    disc = discriminators.get(name)
    by_window = grouping == "neighbourhood" and disc.window is not None
    # A window form needs one patch of another image in every window; a neighbour form its own.
    need = 1 if by_window else disc.neighbours(k)
    have = fewest_candidates(b, grid or (1, p), grouping, radius)
    if have < need:
        raise ValueError(f"the {name} discriminator (k={need}) under denoise.grouping={grouping} "
                         f"needs {need} candidate patches of other images, but some patches "
                         f"have {have} ({b} training images); add training images, raise "
                         "denoise.group_radius or lower denoise.lof_k")
    if by_window:
        return disc.window(x, *window_table(grid, radius), budget_mb, progress)
    if grouping == "neighbourhood":
        dist, idx = window_neighbours(x, grid, radius, need, budget_mb, progress)
    else:
        dist, idx = global_neighbours(x, need, budget_mb, progress)
    return discriminators.neighbour_scores(dist, idx, name)
