"""InReaCh's inter-realization channels (McIntosh and Albu, ICCV 2023): patches of different
training images that are mutual nearest neighbours form a channel around a seed patch; channels
that span too few images, and members far from their channel's mean, are dropped as noise; what
is left is the nominal memory bank (methods/inreach.py).

- `with_positions`: the positional embedding, two channels (row, column) * weight / grid size.
- `associate`: each patch j of image c > 0 against the seed images s < min(c, seeds): its nearest
  seed patch i (Euclidean), the seed whose nearest patch is nearest (the first on ties), and
  whether (i, j) are mutual nearest neighbours between that seed and c.
- `channel_members`: channels keyed by (seed image, seed patch), the span and spread filters ->
  which training patches are nominal.

Pure functions on arrays; `associate` runs jitted, one seed at a time over chunks of images
under `budget_mb`.
"""
from typing import NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from softpatch_jax.ops.chunking import pad_rows, bucket_rows, chunk_size


def with_positions(patches, grid: Tuple[int, int], weight: float):
    """(N, P, D) -> (N, P, D + 2): each patch's row and column on the (h, w) grid, times
    weight / h and weight / w (the official code's `positions * (w / 56)` on its 56 x 56
    grid), appended; `weight` 0 returns `patches` unchanged (no channels appended)."""
    if weight == 0:
        return patches
    h, w = grid
    row, col = np.divmod(np.arange(h * w), w)
    pos = np.stack([row * (weight / h), col * (weight / w)], axis=1).astype(patches.dtype)
    xp = jnp if isinstance(patches, jax.Array) else np
    n = patches.shape[0]
    return xp.concatenate([patches, xp.broadcast_to(xp.asarray(pos), (n,) + pos.shape)], axis=2)


class Associations(NamedTuple):
    """Per training patch (B, P): `seed` the seed image of its best match (-1: none, image 0
    and patches of images with no earlier seed), `seed_patch` that seed's patch nearest to it,
    `distance` the Euclidean distance to it, `mutual` whether the two are mutual nearest
    neighbours (a patch joins a channel only then)."""
    seed: np.ndarray
    seed_patch: np.ndarray
    distance: np.ndarray
    mutual: np.ndarray


@jax.jit
def _match_chunk(seed: jnp.ndarray, others: jnp.ndarray):
    """(P, D) seed patches, (n, P, D) patches of n images -> per patch j of each image: (n, P)
    squared distance to its nearest seed patch, that patch's index, and mutual (the seed
    patch's nearest patch in that image is j)."""
    s_sq = jnp.sum(seed * seed, axis=1)
    o_sq = jnp.sum(others * others, axis=2)
    cross = jnp.einsum("npd,qd->npq", others, seed, precision=jax.lax.Precision.HIGHEST)
    d2 = jnp.maximum(o_sq[:, :, None] + s_sq[None, None, :] - 2.0 * cross, 0.0)  # (n, Pc, Ps)
    nearest_seed = jnp.argmin(d2, axis=2)                      # (n, Pc)
    best = jnp.min(d2, axis=2)
    nearest_other = jnp.argmin(d2, axis=1)                     # (n, Ps)
    mutual = jnp.take_along_axis(nearest_other, nearest_seed, axis=1) == jnp.arange(
        others.shape[1])[None, :]
    return best, nearest_seed.astype(jnp.int32), mutual


def associate(patches: np.ndarray, seeds: int, budget_mb: float = 1024,
              progress: bool = True) -> Associations:
    """(B, P, D) training patches -> Associations: images 0 .. seeds-1 are the seeds; image c
    is matched against the seeds s < c, each patch keeping its nearest seed's match."""
    b, p, d = patches.shape
    best = np.full((b, p), np.inf, np.float32)
    seed_of = np.full((b, p), -1, np.int32)
    seed_patch = np.full((b, p), -1, np.int32)
    mutual = np.zeros((b, p), bool)
    step = chunk_size(4 * (p * p * 3 + p * d), budget_mb)
    n_seeds = min(seeds, b - 1)
    with tqdm(total=sum(b - 1 - s for s in range(n_seeds)), desc="inreach: associations",
              disable=not progress, leave=False, unit="pair") as bar:
        for s in range(n_seeds):
            seed = jnp.asarray(patches[s])
            for start in range(s + 1, b, step):
                stop = min(b, start + step)
                # Padded to a few bucketed sizes (one compile each); each image's row is its own.
                chunk = pad_rows(patches[start:stop], bucket_rows(stop - start, step))
                d2, idx, mut = (np.asarray(a)[:stop - start]
                                for a in _match_chunk(seed, jnp.asarray(chunk)))
                better = d2 < best[start:stop]  # strict: the earlier seed wins a tie
                best[start:stop] = np.where(better, d2, best[start:stop])
                seed_of[start:stop] = np.where(better, s, seed_of[start:stop])
                seed_patch[start:stop] = np.where(better, idx, seed_patch[start:stop])
                mutual[start:stop] = np.where(better, mut, mutual[start:stop])
                bar.update(stop - start)
    return Associations(seed_of, seed_patch, np.sqrt(best), mutual)


def channel_members(patches: np.ndarray, assoc: Associations, min_length: int = 3,
                    max_std: float = 5.0, spread: str = "spherical",
                    budget_mb: float = 1024) -> np.ndarray:
    """(B, P, D) training patches, their Associations -> (B, P) bool, the nominal patches.

    A channel is keyed by (seed image s, seed patch i): the seed patch and every patch whose
    best match is (s, i) and mutual (at most one per image). Kept when it has more than
    `min_length` members (the span filter); then, with mean m over its members and a spread
    sigma of the members' distances |x - m|, the members with |x - m| < max_std * sigma stay
    (the spread filter, m not recomputed) and the channel is kept if more than `min_length`
    stay. `spread`: `code`, sigma the standard deviation (ddof 0) of the distances, as the
    official code computes it; `spherical`, the spherical standard deviation its comment
    names, sqrt(mean |x - m|^2) (in high dimensions the distances cluster far from 0, so
    the code's sigma is a few times smaller than their mean and its filter drops most
    members of large channels). A patch is nominal when it stays in any channel (a
    seed image's patch can be a seed of one channel and a member of another)."""
    b, p, d = patches.shape
    flat = patches.reshape(b * p, d)
    joined = assoc.mutual.reshape(-1) & (assoc.seed.reshape(-1) >= 0)
    rows = np.nonzero(joined)[0]
    keys = (assoc.seed.reshape(-1)[rows].astype(np.int64) * p
            + assoc.seed_patch.reshape(-1)[rows])
    # Each channel's members as (channel key, row): its joined patches, then its seed patch.
    channel = np.concatenate([keys, np.unique(keys)])
    member = np.concatenate([rows, np.unique(keys)])  # key s * p + i is the seed's own row
    order = np.argsort(channel, kind="stable")
    channel, member = channel[order], member[order]
    ids, start, count = np.unique(channel, return_index=True, return_counts=True)
    spanning = count > min_length
    nominal = np.zeros(b * p, bool)
    if not spanning.any():
        return nominal.reshape(b, p)
    segment = np.repeat(np.arange(len(ids)), count)
    keep_rows = spanning[segment]
    seg = np.searchsorted(np.nonzero(spanning)[0], segment[keep_rows])
    kept_members = member[keep_rows]
    n_seg = int(spanning.sum())
    dist = _distances_to_means(flat, kept_members, seg, n_seg, budget_mb).astype(np.float64)
    counts = np.bincount(seg, minlength=n_seg).astype(np.float64)
    mean_d = np.bincount(seg, dist, n_seg) / counts
    if spread == "code":
        sigma = np.sqrt(np.bincount(seg, (dist - mean_d[seg]) ** 2, n_seg) / counts)
    elif spread == "spherical":
        sigma = np.sqrt(np.bincount(seg, dist ** 2, n_seg) / counts)
    else:
        raise ValueError(f"inreach.spread={spread!r} must be code or spherical")
    close = dist < max_std * sigma[seg]
    survivors = np.bincount(seg, close, n_seg)
    ok = close & (survivors[seg] > min_length)
    nominal[kept_members[ok]] = True
    return nominal.reshape(b, p)


def _distances_to_means(flat: np.ndarray, members: np.ndarray, seg: np.ndarray, n: int,
                        budget_mb: float) -> np.ndarray:
    """(N, D) patches, (M,) member rows, (M,) their channel in [0, n) -> (M,) Euclidean
    distance of each member to its channel's mean, over chunks of members under `budget_mb`."""
    d = flat.shape[1]
    step = chunk_size(4 * d * 3, budget_mb, minimum=8)
    segments = max(8, 1 << max(0, (n - 1).bit_length()))  # a few compiled sizes
    sums = jnp.zeros((segments, d), jnp.float32)
    for a in range(0, len(members), step):
        sums = _segment_sums(sums, jnp.asarray(flat[members[a:a + step]]),
                             jnp.asarray(seg[a:a + step]))
    counts = np.bincount(seg, minlength=segments).astype(np.float32)
    means = sums / jnp.maximum(jnp.asarray(counts), 1.0)[:, None]
    return np.concatenate([np.asarray(_member_distances(jnp.asarray(flat[members[a:a + step]]),
                                                        means, jnp.asarray(seg[a:a + step])))
                           for a in range(0, len(members), step)])


@jax.jit
def _segment_sums(sums: jnp.ndarray, x: jnp.ndarray, seg: jnp.ndarray) -> jnp.ndarray:
    return sums + jax.ops.segment_sum(x, seg, num_segments=sums.shape[0])


@jax.jit
def _member_distances(x: jnp.ndarray, means: jnp.ndarray, seg: jnp.ndarray) -> jnp.ndarray:
    diff = x - means[seg]
    return jnp.sqrt(jnp.sum(diff * diff, axis=1))
