"""The pruned greedy coreset and the batched one against the dense loop: the same indices in the
same order, the same min-distances bit for bit, and less work where the data has structure."""
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softpatch_jax.ops import coreset

from conftest import REPO

TRANSISTOR = os.path.join(REPO, "..", "shared", "data", "mvtec_ad", "transistor")
cpu_only = pytest.mark.skipif(jax.default_backend() != "cpu",
                              reason="the pruned path runs on CPU only (elsewhere: dense)")


def mixture(n, d=128, k=40, seed=0):
    """Clustered rows: k Gaussian blobs of different widths."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 3
    label = rng.integers(k, size=n)
    width = 0.2 + rng.random(k)
    return (centres[label] + rng.normal(size=(n, d)) * width[label, None]).astype(np.float32)


def noise(n, d=128, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def with_duplicates(n, d=64, seed=0):
    """Many exact ties: each of n // 4 rows four times, a block of equal rows, shuffled."""
    x = mixture(n // 4, d, 10, seed)
    x = np.concatenate([x, x, x, x])
    x[:200] = x[0]
    return x[np.random.default_rng(seed + 1).permutation(len(x))]


def weights_for(kind, n, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "none":
        return None
    if kind == "binary":  # SoftPatch's sampling weights: excluded patches are 0
        return (rng.random(n) > 0.2).astype(np.float32)
    # soft weights: zeros, fractional values and exact ones
    w = rng.random(n).astype(np.float32)
    w[rng.random(n) < 0.15] = 0
    w[rng.random(n) < 0.15] = 1
    return w


def dense(x, m, key, w):
    return coreset.greedy_coreset(x, m, key, w, pruning=False)


PRUNED = dict(rows_per_block=16, group=8, block=96)  # small blocks; state kept across chunks


@cpu_only
@pytest.mark.parametrize("data,weighting", [("mixture", "none"), ("mixture", "soft"),
                                            ("noise", "binary"), ("duplicates", "soft"),
                                            ("duplicates", "none")])
def test_pruned_picks_equal_dense_picks(data, weighting):
    n = 3000
    x = {"mixture": mixture, "noise": noise, "duplicates": with_duplicates}[data](n)
    w = weights_for(weighting, n)
    key = jax.random.PRNGKey(7)
    ours, stats = coreset.greedy_coreset_pruned(x, 300, key, w, **PRUNED)
    assert stats["pruned"]
    np.testing.assert_array_equal(ours, dense(x, 300, key, w))
    if w is not None:
        assert w[ours].min() > 0  # excluded patches are never chosen


@cpu_only
def test_pruning_skips_most_rows_on_clustered_data():
    x = mixture(12000, k=60, seed=3)
    key = jax.random.PRNGKey(1)
    ours, stats = coreset.greedy_coreset_pruned(x, 600, key, None, rows_per_block=16, group=16)
    np.testing.assert_array_equal(ours, dense(x, 600, key, None))
    assert stats["dense_rows"] == 600 * 12000
    assert stats["rows_computed"] < 0.25 * stats["dense_rows"], stats
    assert stats["rows_failed"] <= stats["rows_computed"]


@cpu_only
def test_min_distances_are_bitwise_the_dense_ones():
    x, n = mixture(3000, seed=5), 3000
    w = weights_for("soft", n, seed=5)
    starts = jnp.asarray(coreset.start_indices(jax.random.PRNGKey(2), n))
    xj, wj = jnp.asarray(x), jnp.asarray(w)
    sq, md = coreset._init(xj, wj, starts)
    mean = np.asarray(coreset._mean_start_dist(xj, starts))
    md_n = np.asarray(md)
    umd = np.where(w * mean >= md_n, mean, np.inf).astype(np.float32)
    assert np.isfinite(umd).all()  # the unweighted initial distances are the dense path's
    keep = np.nonzero(w > 0)[0]
    blocks, state = coreset._build_blocks(x, np.asarray(sq), w, md_n, umd, keep, 16, 31)
    state, ours = coreset._pruned_advance(blocks, state, 250, 4, blocks.x.shape[0] // 2)
    md_dense, ref = coreset._advance(xj, sq, wj, md, 250)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
    index = np.asarray(blocks.index)
    real = index != np.iinfo(np.int32).max
    got = np.zeros(n, np.float32)
    got[index[real]] = np.asarray(state.mu)[:, 0][real]
    np.testing.assert_array_equal(got.view(np.int32), np.asarray(md_dense).view(np.int32))


@cpu_only
def test_all_min_distances_zero():
    """Exact duplicates of 0/1 rows have distance exactly 0: once every row is covered, max(md)
    is 0 and the dense loop picks index 0 (here a zero-weight row) again and again."""
    rng = np.random.default_rng(0)
    patterns = (rng.random((30, 32)) > 0.5).astype(np.float32)
    x = patterns[rng.integers(30, size=1000)]
    w = np.ones(1000, np.float32)
    w[0] = 0
    key = jax.random.PRNGKey(0)
    ours, stats = coreset.greedy_coreset_pruned(x, 60, key, w, rows_per_block=8, group=2)
    assert stats["pruned"]
    ref = dense(x, 60, key, w)
    np.testing.assert_array_equal(ours, ref)
    assert (ref[-10:] == 0).all()


@cpu_only
def test_dense_fallbacks():
    x = mixture(600, d=16)
    key = jax.random.PRNGKey(0)
    w = np.ones(600, np.float32)
    w[3] = -1.0  # negative weights: the monotonicity argument does not hold
    ours, stats = coreset.greedy_coreset_pruned(x, 50, key, w, rows_per_block=16)
    assert not stats["pruned"]
    np.testing.assert_array_equal(ours, dense(x, 50, key, w))
    ours, stats = coreset.greedy_coreset_pruned(x[:20], 5, key, rows_per_block=16)  # too small
    assert not stats["pruned"]
    np.testing.assert_array_equal(ours, dense(x[:20], 5, key, None))


def test_greedy_coreset_and_sampler_use_the_pruned_path():
    x = mixture(coreset.PRUNE_MIN_ROWS + 500, d=64, seed=4)
    key = jax.random.PRNGKey(4)
    ref = dense(x, 200, key, None)
    np.testing.assert_array_equal(coreset.greedy_coreset(x, 200, key), ref)
    np.testing.assert_array_equal(coreset.GreedyCoreset(pruning=True).select(x, 200, key), ref)
    np.testing.assert_array_equal(coreset.GreedyCoreset(pruning=False).select(x, 200, key), ref)
    ours, stats = coreset.greedy_coreset_pruned(x, 200, key)
    np.testing.assert_array_equal(ours, ref)
    assert stats["pruned"] == (jax.default_backend() == "cpu")  # elsewhere the dense loop runs


def test_batched_equals_single_runs():
    sizes, n = [3000, 2400, 1777], 3000
    xs = np.stack([mixture(n, seed=s) for s in range(3)])
    xs[1, 2400:] = np.nan  # padding rows may hold anything
    ws = np.stack([weights_for("soft", n, seed=s) for s in range(3)])
    ws[0] = 1.0
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    out = coreset.greedy_coreset_batch(xs, 250, keys, ws, sizes=sizes, block=100)
    assert out.shape == (3, 250)
    for i, s in enumerate(sizes):
        np.testing.assert_array_equal(out[i], dense(xs[i, :s], 250, keys[i], ws[i, :s]))
    same = coreset.greedy_coreset_batch(xs[:1], 50, keys[:1], None)
    np.testing.assert_array_equal(same[0], dense(xs[0], 50, keys[0], None))
    with pytest.raises(ValueError, match="coreset size"):
        coreset.greedy_coreset_batch(xs, 1800, keys, ws, sizes=sizes)


@cpu_only
@pytest.mark.skipif(not os.path.isdir(TRANSISTOR),
                    reason=f"MVTec AD transistor not found at {os.path.normpath(TRANSISTOR)}")
def test_real_patch_features(cache_dir):
    from softpatch_jax.features.extractor import Embedder

    train = sorted(glob.glob(os.path.join(TRANSISTOR, "train", "good", "*.png")))[:10]
    embedder = Embedder("efficientnet_lite0", ("stage3", "stage5"), cache_dir=cache_dir)
    features = embedder.embed(train, 256, 224, 5)  # 10 x 784 patches
    reduced = coreset.GreedyCoreset().project(features, jax.random.PRNGKey(0))
    n = reduced.shape[0]
    key = jax.random.PRNGKey(1)
    w = weights_for("binary", n)
    ours, stats = coreset.greedy_coreset_pruned(reduced, n // 10, key, w, rows_per_block=16,
                                                group=32)
    np.testing.assert_array_equal(ours, dense(reduced, n // 10, key, w))
    assert stats["pruned"] and stats["rows_computed"] < stats["dense_rows"], stats
