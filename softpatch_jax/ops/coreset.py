"""Weighted approximate greedy coreset (METHOD.md step 6), the k-center selection of PatchCore
with SoftPatch's sampling weights; `GreedyCoreset` is the sampling strategy a memory bank is built
with (its random projection and its starts).

Distances are the official ones: sqrt(max(|a|^2 + |b|^2 - 2 a.b, 0)) on 128-d projections. The loop
runs in `lax.fori_loop` blocks; between blocks the host only updates a progress bar.

One deliberate difference from the official code: the initial min-distances (mean distance to the
random starts) are multiplied by the sampling weights too. The official code multiplies only the
later updates, so its very first pick may be an excluded (noisy) patch; METHOD.md states that
excluded patches are never chosen, and with this change they never are.

Two paths give the same picks, index for index and in the same order:

* dense (the reference): every pick reads all N rows (d floats each) to update the min-distances.
  Memory-bandwidth bound on CPU; the path used on accelerators.
* pruned (`pruning=True`, the default; used when JAX runs on CPU and N >= PRUNE_MIN_ROWS): each
  row with a positive weight also has a 32-float sketch (its top principal components and the
  norm of the rest), and the rows are stored in small blocks that are compact in sketch space.
  Every pick tests all rows on their sketches: a rigorous lower bound of the distance to the new
  centre, with float32 error margins (derivation above `_Blocks`), proves that most rows keep
  their min-distance; only the blocks with a row that may change are read and updated, with the
  dense path's arithmetic itself, so every min-distance stays bitwise the dense one and the pick
  (the first index of the largest min-distance, from per-block maxima) is the dense pick. When
  more than half the blocks may change, all are updated at once (data without structure, such as
  Gaussian noise, costs about what the dense loop costs). The loop stays inside jit (a
  data-dependent loop over the compacted list of active blocks); on accelerators such loops are
  slow, so there the dense path runs whatever `pruning` says. Finite inputs and weights >= 0 are
  assumed; anything else, and small problems, take the dense path. `greedy_coreset_pruned` also
  returns how many distance rows it evaluated.

`greedy_coreset_batch` runs the dense loop over a leading axis of independent problems (vmap), each
padded to one N with zero-weight rows; every result equals its own single run.
"""
import dataclasses
import functools
from typing import NamedTuple, Optional, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from softpatch_jax.ops.distances import project, random_projection, sketch_basis, sketch_rows

PRUNE_MIN_ROWS = 8192  # `greedy_coreset` prunes from this many rows (below, the dense loop is fast)


def _dist_to(x: jnp.ndarray, sq_norms: jnp.ndarray, c: jnp.ndarray) -> jnp.ndarray:
    """(N, d), (N,), (S, d) -> (N, S) Euclidean distances in the official GEMM form."""
    cc = jnp.sum(c * c, axis=-1)
    ab = jnp.matmul(x, c.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.sqrt(jnp.maximum(-2.0 * ab + sq_norms[:, None] + cc[None, :], 0.0))


def _init_fn(x, weights, starts):
    sq_norms = jnp.sum(x * x, axis=-1)
    min_dist = jnp.mean(_dist_to(x, sq_norms, x[starts]), axis=1) * weights
    return sq_norms, min_dist


_init = jax.jit(_init_fn)


@jax.jit
def _mean_start_dist(x: jnp.ndarray, starts: jnp.ndarray) -> jnp.ndarray:
    """The unweighted initial min-distance: mean distance to the starts (as in `_init`)."""
    return jnp.mean(_dist_to(x, jnp.sum(x * x, axis=-1), x[starts]), axis=1)


def _advance_fn(x, sq_norms, weights, min_dist, count: int):
    def body(i, carry):
        md, chosen = carry
        sel = jnp.argmax(md)
        d = _dist_to(x, sq_norms, jax.lax.dynamic_slice_in_dim(x, sel, 1))[:, 0] * weights
        return jnp.minimum(md, d), chosen.at[i].set(sel.astype(jnp.int32))

    return jax.lax.fori_loop(0, count, body, (min_dist, jnp.zeros((count,), jnp.int32)))


@functools.partial(jax.jit, static_argnames=("count",), donate_argnames=("min_dist",))
def _advance(x, sq_norms, weights, min_dist, count: int):
    """Runs `count` greedy steps; returns (new min_dist, (count,) chosen indices)."""
    return _advance_fn(x, sq_norms, weights, min_dist, count)


def greedy_coreset(x: jnp.ndarray, num_centers: int, key: jax.Array,
                   weights: jnp.ndarray = None, num_starts: int = 10, block: int = 1000,
                   progress: bool = False, pruning: bool = True) -> np.ndarray:
    """Selects `num_centers` indices of the rows of x (N, d) by weighted greedy k-center.

    weights: (N,) sampling weights (0 = never pick); None = all ones (PatchCore).
    The random starts are drawn without replacement from `key`; see `start_indices`.
    pruning: the pruned exact path on CPU (same picks as the dense path); ignored elsewhere.
    """
    if pruning and jax.default_backend() == "cpu" and x.shape[0] >= PRUNE_MIN_ROWS:
        return greedy_coreset_pruned(x, num_centers, key, weights, num_starts, block, progress)[0]
    x, weights = _checked(x, num_centers, weights)
    sq_norms, min_dist = _init(x, weights, jnp.asarray(start_indices(key, x.shape[0],
                                                                     num_starts)))
    return _dense_loop(x, sq_norms, weights, min_dist, num_centers, block, progress)


def _checked(x, num_centers: int, weights):
    n = x.shape[0]
    if not 0 < num_centers <= n:
        raise ValueError(f"coreset size {num_centers} must be in 1..{n}")
    x = jnp.asarray(x, jnp.float32)
    weights = jnp.ones((n,), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    return x, weights


def _in_blocks(advance, state, num_centers: int, block: int, progress: bool = False,
               axis: int = 0):
    """Runs `advance(state, count) -> (state, (..., count) picks)` in blocks of `block` picks
    (the host only updates a progress bar between them) -> (final state, all picks)."""
    chosen, done = [], 0
    with tqdm(total=num_centers, desc="greedy coreset", disable=not progress, leave=False) as bar:
        while done < num_centers:
            count = min(block, num_centers - done)
            state, idx = advance(state, count)
            chosen.append(np.asarray(idx))
            done += count
            bar.update(count)
    return state, np.concatenate(chosen, axis=axis)


def _dense_loop(x, sq_norms, weights, min_dist, num_centers, block, progress):
    return _in_blocks(lambda md, count: _advance(x, sq_norms, weights, md, count), min_dist,
                      num_centers, block, progress)[1]


def start_indices(key: jax.Array, n: int, num_starts: int = 10) -> np.ndarray:
    """The random starting points: min(num_starts, n) distinct indices in [0, n)."""
    return np.asarray(jax.random.choice(key, n, (min(num_starts, n),), replace=False))


# --------------------------------------------------------------------------------------------
# Pruned exact path.
#
# The rows with a positive weight are stored in blocks of S rows (compact in sketch space: a
# balanced k-d tree, ascending original index within a block). Next to each row x it keeps
# its sketch z(x) = (P^T (x - mu), |Q (x - mu)|) in R^(k+1): mu the rows' mean, P (d, k) the top
# k principal directions (orthonormal), Q = I - P P^T. Every pick first tests all rows on their
# sketches (k+1 floats a row instead of d); only the blocks with a row that fails the test are
# updated, with the dense arithmetic itself.
#
# Why a skipped row keeps its min-distance (u = 2^-24, the float32 unit roundoff; d the row
# dimension; the new centre c is one of the rows; R >= max |x|; rel = 4 (d + 8) u):
#
# 1. Lower bound. For v = x - c: |v|^2 = |P^T v|^2 + |Q v|^2 (P orthonormal) and
#    |Q v| = |Q(x - mu) - Q(c - mu)| >= | |Q(x - mu)| - |Q(c - mu)| | (reverse triangle
#    inequality), so |x - c| >= |z(x) - z(c)|. The sketches are computed in float64 and stored as
#    float32 z^, with e >= max |z^(x) - z(x)| measured (in float64) when they are made, so
#    |x - c| >= |z^(x) - z^(c)| - 2e. The squared sketch distance is computed in the GEMM form
#    of 2. below with K = k + 1 coordinates and n = |z^|^2 rounded to float32 (error u n), and
#    E_z subtracted from n(x) first: t^ = fl(fl(-2 fl(z^(x).z^(c)) + fl(n(x) - E_z)) + n(c)).
#    As in 2., |t^ + E_z - |z^(x) - z^(c)|^2| <= (K + 5) u (2 R_z)^2 <= E_z := 2 (K + 6) u
#    (2 R_z)^2 with R_z >= max |z^|, so |z^(x) - z^(c)| >= sqrt(max(t^, 0)) and
#    |x - c| >= L := fl(sqrt(max(t^, 0))) (1 - 2 rel) - slack, slack = 2e + 1e-9 (2 R_z) (the
#    float64 errors of the sketches and of P's orthonormality are ~1e-13 |x - c|; the few float32
#    roundings in evaluating L, each of relative size u, are covered by rel).
# 2. The dense path's distance. It computes s^ = fl(fl(-2 fl(x.c) + fl(|x|^2)) + fl(|c|^2)) and
#    d^ = fl(sqrt(max(s^, 0))). With s = |x - c|^2, any summation order (and FMA) gives
#    |fl(x.c) - x.c| <= g |x||c|, |fl(|x|^2) - |x|^2| <= g |x|^2, the same for |c|^2
#    (g = d u / (1 - d u), Cauchy-Schwarz), and each of the two additions adds u times its result,
#    at most (|x| + |c|)^2 (1 + g). So |s^ - s| <= (g + 2u(1+g)) (|x| + |c|)^2
#    <= E := 2 (d + 4) u (2R)^2 (a factor 2 of safety). The clamp at 0 moves s^ towards s >= 0,
#    and sqrt is correctly rounded: d^ >= (1 - u) sqrt(max(s - E, 0)) (a sqrt a few ulp off would
#    still be covered by rel in 3.).
# 3. The test. If L > 0 and L^2 (1 - rel) >= umd^2 (1 + rel) + E in float32 (fewer than ten
#    roundings of relative size u, all covered by rel >= 500 u), then d^ >= (1-u) sqrt(L^2 - E)
#    >= umd.
# 4. umd_i is the unweighted distance behind the min-distance md_i, with fl(w_i umd_i) >= md_i as
#    an invariant (initially the mean distance to the starts, checked row by row; on an update
#    umd_i = d^ where md_i = fl(w_i d^)). fl(w a) is monotone in a for w >= 0, so d^_i >= umd_i
#    gives fl(w_i d^_i) >= md_i: the dense update min(md_i, fl(w_i d^_i)) leaves md_i unchanged.
#    Rows with umd_i = 0 have md_i = 0, which no update changes either.
# A block where every row passes is skipped; the others are updated by the dense formula on all
# their rows, so every min-distance stays bitwise equal to the dense path's. This needs each row's
# product x.c to round the same whatever other rows share its matrix-vector product: true of
# XLA:CPU (the tests check the min-distances bit for bit), not of GPU kernels (an H100 run gave the
# same picks but min-distances a few ulp apart), so the pruned path runs on CPU only.
#
# Picks: the dense pick is the first index of max(md). Each block keeps its max, the first
# position of it and that row's index; the pick is the smallest index among the blocks at the
# global max. Zero-weight rows (md = 0, never changed) are left out; when the max is 0 every md is
# 0 and the dense pick is index 0, which changes nothing.
# --------------------------------------------------------------------------------------------

_U32 = 2.0 ** -24
_NO_INDEX = np.iinfo(np.int32).max


class _Blocks(NamedTuple):
    x: jnp.ndarray         # (nb, S, d) rows, block by block; padding rows repeat a real row
    sq_norms: jnp.ndarray  # (nb, S) the dense path's |x|^2 of each row
    weights: jnp.ndarray   # (nb, S) sampling weights; 0 on padding
    index: jnp.ndarray     # (nb, S) int32 original row index, ascending in a block; padding: max
    sketch: jnp.ndarray    # (nb, S, k+1) z^(x), float32
    sketch_sq: jnp.ndarray  # (nb, S) |z^(x)|^2
    slack: jnp.ndarray     # () 2e: the absolute margin of the sketch distance
    sketch_error: jnp.ndarray  # () E_z: the bound on the sketch's squared-distance error
    error: jnp.ndarray     # () E: the bound on the dense path's squared-distance error


class _State(NamedTuple):
    mu: jnp.ndarray         # (nb, 2, S) [0]: the weighted min-distances, bitwise the dense
    #                         path's; [1]: the unweighted distances behind them, fl(w umd) >= md
    top: jnp.ndarray        # (nb,) max md of the block
    top_index: jnp.ndarray  # (nb,) the smallest original index at that max
    top_pos: jnp.ndarray    # (nb,) its position in the block
    computed: jnp.ndarray   # () blocks updated so far
    failed: jnp.ndarray     # () rows not proven unchanged so far (float32 count; every row
    #                         in a step that skipped the test)
    dense: jnp.ndarray      # () bool: the last tested step updated every block


def _block_distances(x, sq_norms, c1, cc):
    """(..., S, d) rows -> (..., S) the dense path's distances to c1 (1, d), |c|^2 = cc (1,):
    the same formula, the rows flattened into one (rows, d) x (d, 1) product."""
    shape = x.shape[:-1]
    ab = jnp.matmul(x.reshape(-1, x.shape[-1]), c1.T, precision=jax.lax.Precision.HIGHEST)
    d = jnp.sqrt(jnp.maximum(-2.0 * ab + sq_norms.reshape(-1)[:, None] + cc[None, :], 0.0))
    return d[:, 0].reshape(shape)


def _update_some(blocks: _Blocks, c1, cc, ks, st: _State) -> _State:
    """The dense step on the blocks ks (G,), ascending (repeats allowed: they write equal
    values)."""
    hint = dict(indices_are_sorted=True, mode="promise_in_bounds")

    def get(a):
        return a.at[ks].get(**hint)

    old = get(st.mu)
    d = _block_distances(get(blocks.x), get(blocks.sq_norms), c1, cc)
    wd = d * get(blocks.weights)
    new = jnp.minimum(old[:, 0], wd)
    pos = jnp.argmax(new, axis=1).astype(jnp.int32)
    return st._replace(
        mu=st.mu.at[ks].set(jnp.stack([new, jnp.where(wd < old[:, 0], d, old[:, 1])], axis=1),
                            **hint),
        top=st.top.at[ks].set(jnp.max(new, axis=1), **hint),
        top_index=st.top_index.at[ks].set(
            jnp.take_along_axis(get(blocks.index), pos[:, None], 1)[:, 0], **hint),
        top_pos=st.top_pos.at[ks].set(pos, **hint))


def _update_all(blocks: _Blocks, c1, cc, st: _State) -> _State:
    """The dense step on every block."""
    d = _block_distances(blocks.x, blocks.sq_norms, c1, cc)
    wd = d * blocks.weights
    new = jnp.minimum(st.mu[:, 0], wd)
    pos = jnp.argmax(new, axis=1).astype(jnp.int32)
    return st._replace(mu=jnp.stack([new, jnp.where(wd < st.mu[:, 0], d, st.mu[:, 1])], axis=1),
                       top=jnp.max(new, axis=1), top_pos=pos,
                       top_index=jnp.take_along_axis(blocks.index, pos[:, None], 1)[:, 0])


@functools.partial(jax.jit, static_argnames=("count", "group", "full_above", "retest"),
                   donate_argnames=("state",))
def _pruned_advance(blocks: _Blocks, state: _State, count: int, group: int, full_above: int,
                    retest: int = 16):
    """Runs `count` greedy steps on the blocks; returns (new state, (count,) chosen indices).

    The blocks that may change are updated `group` at a time, or all blocks at once when more
    than `full_above` may change. After such a step the next ones update all blocks without
    testing (the dense step: the test would not pay), testing again every `retest` steps."""
    nb, size, d = blocks.x.shape
    tail = min(group, 8)
    padded = -(-nb // group) * group + tail  # no slice of `order` runs past its end
    rel = 4.0 * (d + 8) * _U32

    def body(i, carry):
        st, chosen = carry
        gm = jnp.max(st.top)
        b = jnp.argmin(jnp.where(st.top == gm, st.top_index, _NO_INDEX))
        sel = jnp.where(gm > 0, st.top_index[b], 0)
        pos = st.top_pos[b]
        c1 = jax.lax.dynamic_slice_in_dim(blocks.x[b], pos, 1)  # (1, d)
        cc = jnp.sum(c1 * c1, axis=-1)

        def untested(st):  # when gm = 0 this changes nothing: every md is 0
            return _update_all(blocks, c1, cc, st)._replace(
                computed=st.computed + nb, failed=st.failed + nb * size)

        def tested(st):
            low = _block_distances(blocks.sketch, blocks.sketch_sq - blocks.sketch_error,
                                   blocks.sketch[b, pos][None], blocks.sketch_sq[b, pos][None])
            low = low * (1.0 - 2.0 * rel) - blocks.slack
            umd = st.mu[:, 1]
            keep = (umd == 0) | ((low > 0) & (low * low * (1.0 - rel)
                                              >= umd * umd * (1.0 + rel) + blocks.error))
            active = jnp.logical_not(jnp.all(keep, axis=1)) & (gm > 0)
            n_active = jnp.sum(active, dtype=jnp.int32)

            def some(st):
                order = jnp.nonzero(active, size=padded, fill_value=nb)[0]
                # Pad with repeats of the last active block (they write the same values again).
                order = jnp.where(order == nb, order[jnp.maximum(n_active - 1, 0)], order)
                full_groups = n_active // group
                st = jax.lax.fori_loop(
                    0, full_groups,
                    lambda g, s: _update_some(
                        blocks, c1, cc, jax.lax.dynamic_slice_in_dim(order, g * group, group),
                        s), st)
                # The rest in groups of `tail`, so that little is computed twice.
                start = full_groups * group
                return jax.lax.fori_loop(
                    0, (n_active - start + tail - 1) // tail,
                    lambda g, s: _update_some(
                        blocks, c1, cc,
                        jax.lax.dynamic_slice_in_dim(order, start + g * tail, tail), s), st)

            full = n_active > full_above
            if full_above >= nb:  # never all at once: no conditional (whose operands XLA copies)
                st = some(st)
            else:
                st = jax.lax.cond(full, lambda s: _update_all(blocks, c1, cc, s), some, st)
            return st._replace(
                computed=st.computed + jnp.where(full, nb, n_active), dense=full,
                failed=st.failed + jnp.sum(jnp.logical_not(keep) & (gm > 0), dtype=jnp.float32))

        if full_above >= nb:
            st = tested(st)
        else:
            st = jax.lax.cond(st.dense & (i % retest != 0), untested, tested, st)
        return st, chosen.at[i].set(sel.astype(jnp.int32))

    return jax.lax.fori_loop(0, count, body, (state, jnp.zeros((count,), jnp.int32)))


def _partition(z: np.ndarray, rows: int) -> list:
    """Splits the rows of z (n, k) into ceil(n / rows) groups of at most `rows` row numbers each,
    compact in z: a balanced k-d tree, each node split at a quantile of its widest coordinate
    (largest variance). Deterministic; leaves in tree order, row numbers ascending in each."""
    n = z.shape[0]
    leaves, stack = [], [(np.arange(n), -(-n // rows))]
    while stack:
        idx, k = stack.pop()
        if k == 1:
            leaves.append(np.sort(idx))
            continue
        sub = z[idx]
        values = sub[:, np.argmax(sub.var(axis=0))]
        k1 = k // 2
        n1 = -(-len(idx) * k1 // k)
        part = np.argpartition(values, n1 - 1)
        stack.append((idx[part[n1:]], k - k1))
        stack.append((idx[part[:n1]], k1))
    return leaves


def _sketches(x: np.ndarray, k: int):
    """Rows (n, d) float32 -> the float32 sketches z^ (n, k+1) of z = (P^T (x - mu),
    |(I - P P^T)(x - mu)|), P the top k principal directions of at most 16384 evenly spaced rows,
    e, the largest |z^ - z|, and the largest |x| (float64)."""
    return sketch_rows(x, *sketch_basis(x, k))


def _round_up(v) -> np.float32:
    """A float64 bound -> a float32 value that is no smaller."""
    return np.nextafter(np.float32(float(v) * (1 + 1e-6)), np.float32(np.inf))


def _build_blocks(x, sq_norms, weights, md, umd, keep, rows, sketch_dim):
    """The blocks and the initial state for the kept rows (original indices `keep`)."""
    xk = x[keep]
    z, err, norm = _sketches(xk, sketch_dim)
    leaves = _partition(z[:, :-1], rows)
    nb, d = len(leaves), x.shape[1]
    sizes = np.array([len(leaf) for leaf in leaves])
    real = np.arange(rows)[None, :] < sizes[:, None]
    pos = np.empty((nb, rows), np.int64)  # positions in keep; padding repeats the block's first
    pos[real] = np.concatenate(leaves)
    pos[~real] = np.repeat([leaf[0] for leaf in leaves], rows - sizes)
    safe = keep[pos]
    index = np.where(real, safe, _NO_INDEX)
    z_sq = (z.astype(np.float64) ** 2).sum(axis=1)
    k = z.shape[1]
    mdb = np.where(real, md[safe], 0).astype(np.float32)
    umdb = np.where(real, umd[safe], 0).astype(np.float32)
    top_pos = mdb.argmax(axis=1)
    rows_b = np.arange(nb)
    blocks = _Blocks(
        jnp.asarray(x[safe]), jnp.asarray(np.where(real, sq_norms[safe], 0), jnp.float32),
        jnp.asarray(np.where(real, weights[safe], 0), jnp.float32),
        jnp.asarray(index, jnp.int32), jnp.asarray(z[pos]),
        # 2e, plus 1e-9 |x - c| for the float64 errors of the sketches (~1e-13 |x - c|).
        jnp.asarray(z_sq[pos], jnp.float32),
        jnp.asarray(_round_up(2 * err + 2e-9 * np.sqrt(z_sq.max()))),
        jnp.asarray(_round_up(2 * (k + 6) * _U32 * 4 * z_sq.max())),
        jnp.asarray(_round_up(2 * (d + 4) * _U32 * (2 * norm) ** 2)))
    state = _State(jnp.asarray(np.stack([mdb, umdb], axis=1)), jnp.asarray(mdb[rows_b, top_pos]),
                   jnp.asarray(index[rows_b, top_pos], jnp.int32),
                   jnp.asarray(top_pos, jnp.int32), jnp.zeros((), jnp.int32),
                   jnp.zeros((), jnp.float32), jnp.zeros((), bool))
    return blocks, state


def greedy_coreset_pruned(x: jnp.ndarray, num_centers: int, key: jax.Array,
                          weights: jnp.ndarray = None, num_starts: int = 10, block: int = 1000,
                          progress: bool = False, rows_per_block: int = 16,
                          sketch_dim: int = 31, group: int = 128, full_fraction: float = 0.5):
    """The pruned path: `greedy_coreset`'s picks, and a dict of statistics (blocks,
    rows_per_block, rows_computed: distance rows evaluated by the loop, rows_failed: rows not
    proven unchanged (failing the sketch test, or in a step that skipped it), dense_rows: what the dense loop evaluates; pruned: False where the
    dense path ran instead: backends other than CPU, small or invalid inputs).

    rows_per_block: rows updated together; sketch_dim: principal directions of the sketch;
    group: blocks gathered per update."""
    x, weights = _checked(x, num_centers, weights)
    n = x.shape[0]
    starts = jnp.asarray(start_indices(key, n, num_starts))
    sq_norms, min_dist = _init(x, weights, starts)
    stats = dict(blocks=0, rows_per_block=rows_per_block, rows_computed=num_centers * n,
                 rows_failed=num_centers * n, dense_rows=num_centers * n, pruned=False)
    xn, wn = np.asarray(x), np.asarray(weights)
    keep = np.nonzero(wn > 0)[0]
    sq_n, md_n = np.asarray(sq_norms), np.asarray(min_dist)
    if (jax.default_backend() != "cpu"  # exactness rests on XLA:CPU's row products (below)
            or len(keep) < 2 * rows_per_block or not np.all(wn >= 0) or not np.all(np.isfinite(wn))
            or not np.all(np.isfinite(sq_n)) or not np.all(np.isfinite(md_n))
            or sq_n.max() > 1e30):  # squared bounds of such norms could overflow float32
        return _dense_loop(x, sq_norms, weights, min_dist, num_centers, block, progress), stats
    mean = np.asarray(_mean_start_dist(x, starts))
    # The invariant fl(w umd) >= md; a row where it fails (never seen) is never skipped.
    umd = np.where(wn * mean >= md_n, mean, np.float32(np.inf)).astype(np.float32)
    blocks, state = _build_blocks(xn, sq_n, wn, md_n, umd, keep, rows_per_block, sketch_dim)
    del xn, sq_n, md_n, mean, umd  # the blocks hold their own copies
    nb = blocks.x.shape[0]
    group, full_above = max(1, min(group, nb)), int(full_fraction * nb)
    state, picks = _in_blocks(
        lambda st, count: _pruned_advance(blocks, st, count, group, full_above), state,
        num_centers, block, progress)
    stats.update(blocks=int(blocks.x.shape[0]), pruned=True,
                 rows_computed=int(state.computed) * rows_per_block,
                 rows_failed=int(state.failed))
    return picks, stats


# --------------------------------------------------------------------------------------------

def greedy_coreset_batch(xs: jnp.ndarray, num_centers: int, keys: jax.Array,
                         weights: jnp.ndarray = None, num_starts: int = 10,
                         sizes: Optional[Sequence[int]] = None, block: int = 1000) -> np.ndarray:
    """Independent greedy coresets of xs (B, N, d), each padded to N with zero-weight rows at
    its end: (B, num_centers) picks, each equal to `greedy_coreset(xs[i, :sizes[i]],
    num_centers, keys[i], weights[i, :sizes[i]], num_starts, pruning=False)`.

    keys: (B,) PRNG keys; weights: (B, N) (None = all ones); sizes: the real row counts (None =
    all N): the rows past them are padding, set to 0 with weight 0, so they never change the
    picks. The dense loop, vmapped over the problems."""
    xs = jnp.asarray(xs, jnp.float32)
    b, n = xs.shape[:2]
    sizes = [n] * b if sizes is None else [int(s) for s in sizes]
    if len(sizes) != b or min(sizes) < 1 or max(sizes) > n:
        raise ValueError(f"sizes must give {b} row counts in 1..{n}")
    if not 0 < num_centers <= min(sizes):
        raise ValueError(f"coreset size {num_centers} must be in 1..{min(sizes)}")
    if len({min(num_starts, s) for s in sizes}) != 1:
        raise ValueError(f"every problem needs at least num_starts={num_starts} rows, or all the "
                         "same number")
    real = jnp.asarray(np.arange(n)[None, :] < np.asarray(sizes)[:, None])
    w = jnp.ones((b, n), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    w = jnp.where(real, w, 0.0)
    xs = jnp.where(real[..., None], xs, 0.0)  # whatever the padding held: it stays at md = 0
    starts = jnp.asarray(np.stack([start_indices(keys[i], sizes[i], num_starts)
                                   for i in range(b)]))
    sq_norms, min_dist = _init_batch(xs, w, starts)
    return _in_blocks(lambda md, count: _advance_batch(xs, sq_norms, w, md, count), min_dist,
                      num_centers, block, axis=1)[1]


_init_batch = jax.jit(jax.vmap(_init_fn))


@functools.partial(jax.jit, static_argnames=("count",), donate_argnames=("min_dist",))
def _advance_batch(xs, sq_norms, weights, min_dist, count: int):
    return jax.vmap(functools.partial(_advance_fn, count=count))(xs, sq_norms, weights, min_dist)


class Sampler(Protocol):
    """How a memory bank's rows are chosen: a projection for the distances, then a weighted
    selection. `progress` is a dataclass field (callers replace it per call)."""
    progress: bool

    def project(self, features, key: jax.Array) -> jnp.ndarray:
        """(N, D) -> (N, d) features the selection measures distances on."""

    def select(self, reduced, count: int, key: jax.Array, weights=None) -> np.ndarray:
        """(N, d) projected features -> (count,) chosen row indices (weight 0: never)."""


@dataclasses.dataclass(frozen=True)
class GreedyCoreset:
    """Weighted greedy k-center on a random `projection_dim` projection, from `num_starts` random
    starts. `project` draws the projection; `select` picks the centres (`pruning`: the pruned exact
    path on CPU, same picks)."""
    projection_dim: int = 128
    num_starts: int = 10
    budget_mb: float = 1024
    progress: bool = False
    pruning: bool = True

    def project(self, features: np.ndarray, key: jax.Array) -> jnp.ndarray:
        """(..., D) -> (N, projection_dim): the coreset's own random projection, rows flattened."""
        matrix = random_projection(key, features.shape[-1], self.projection_dim)
        return project(features, matrix, self.budget_mb).reshape(-1, self.projection_dim)

    def select(self, reduced: jnp.ndarray, count: int, key: jax.Array,
               weights: jnp.ndarray = None) -> np.ndarray:
        """(N, d) projected rows -> (count,) chosen indices, in pick order."""
        return greedy_coreset(reduced, count, key, weights, self.num_starts,
                              progress=self.progress, pruning=self.pruning)


@dataclasses.dataclass(frozen=True)
class RandomSubsample:
    """A uniform random subsample of the eligible rows (weight > 0), as many as the coreset
    would pick: the SoftPatch paper's PatchCore-random. `project` is the identity (nothing is
    measured), so a bank of it costs no projection."""
    progress: bool = False

    def project(self, features: np.ndarray, key: jax.Array) -> np.ndarray:
        """(..., D) -> (N, D), rows flattened (a view, no copy)."""
        return np.asarray(features).reshape(-1, features.shape[-1])

    def select(self, reduced, count: int, key: jax.Array, weights=None) -> np.ndarray:
        """(N, d) rows -> (count,) distinct eligible indices, uniformly drawn by `key`."""
        n = reduced.shape[0]
        eligible = (np.arange(n) if weights is None
                    else np.flatnonzero(np.asarray(weights) > 0))
        if not 0 < count <= len(eligible):
            raise ValueError(f"random subsample of {count} rows asked of {len(eligible)} "
                             "eligible")
        order = np.asarray(jax.random.permutation(key, len(eligible)))
        return eligible[order[:count]].astype(np.int32)


SAMPLERS = ("greedy", "random")

