"""PrunedSearch (principal-axes lower bound + certification) returns brute force's k nearest
neighbours bit for bit: indices and squared distances, ties included."""
import glob
import os

import jax
import numpy as np
import pytest

from softpatch_jax.ops import knn
from softpatch_jax.ops.search import make_search

from conftest import REPO

TRANSISTOR = os.path.join(REPO, "..", "shared", "data", "mvtec_ad", "transistor")


def low_rank(n, d=64, rank=6, noise=0.05, seed=0, basis_seed=100):
    """Rows near a rank-`rank` subspace (shared by every call with the same basis_seed)."""
    basis = np.random.default_rng(basis_seed).normal(size=(rank, d))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, rank)) * 3.0 @ basis + noise * rng.normal(size=(n, d)) + 2.0
    return x.astype(np.float32)


def pruned(**options):
    """A PrunedSearch that prunes on any backend (the default prunes on the CPU only)."""
    return knn.PrunedSearch(cpu_only=False, **options)


def assert_same(search, queries, bank, k):
    dist, idx = search.k_nearest(queries, bank, k)
    ref_d, ref_i = knn.BruteForce(search.budget_mb).k_nearest(queries, bank, k)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_array_equal(dist, ref_d)
    assert dist.dtype == ref_d.dtype and idx.dtype == ref_i.dtype
    return dist, idx


@pytest.fixture(scope="module")
def low_rank_case():
    return pruned(), low_rank(2500, seed=1), low_rank(700, seed=2)


@pytest.mark.parametrize("k", [1, 3])
def test_low_rank_data_is_certified_and_exact(low_rank_case, k):
    search, bank, queries = low_rank_case
    assert_same(search, queries, bank, k)
    stats = search.last_stats
    assert stats["mode"] == "pruned" and stats["bitwise"], stats
    assert stats["rank"] < 64 and stats["certified"] >= 0.9 * len(queries), stats
    assert stats["certified"] + stats["fallback"] == len(queries)


def test_isotropic_gaussian_falls_back_and_stays_exact():
    rng = np.random.default_rng(3)
    bank = rng.normal(size=(2100, 48)).astype(np.float32)
    queries = rng.normal(size=(300, 48)).astype(np.float32)
    auto = pruned()
    assert_same(auto, queries, bank, 1)  # no low-rank structure: brute force, said why
    assert auto.last_stats["mode"] == "brute" and "variance" in auto.last_stats["reason"]
    forced = pruned(rank=15, min_certified=0.0)  # a loose bound: most queries fall back
    for k in (1, 3):
        assert_same(forced, queries, bank, k)
        stats = forced.last_stats
        assert stats["mode"] == "pruned" and stats["fallback"] > len(queries) // 2, stats
    few = pruned(rank=15)  # < min_certified of the first queries: the rest brute force
    assert_same(few, queries, bank, 1)
    assert "certified" in few.last_stats["reason"]


@pytest.mark.parametrize("k", [1, 3])
def test_ties_and_queries_on_bank_rows(k):
    bank = low_rank(2300, seed=4)
    bank[1500:1600] = bank[100:200]       # exact duplicates at higher indices
    bank[2299] = bank[7]                  # the very last row too (the GEMM's tail columns)
    e = np.zeros(64, np.float32)
    e[5] = 0.25                           # a +- e pairs: exactly equidistant from a
    bank[2000:2050] = bank[300:350] + e
    bank[2050:2100] = bank[300:350] - e
    queries = np.concatenate([
        bank[:200],                        # on bank rows (distance 0 up to brute force rounding)
        bank[300:350],                     # equidistant to two rows
        bank[[7, 2299, 1550, 150]],
        (bank[10:60] + bank[1510:1560]) / 2,
        low_rank(150, seed=5)])
    search = pruned(min_certified=0.0)
    dist, idx = assert_same(search, queries, bank, k)
    assert search.last_stats["mode"] == "pruned"
    assert np.all(idx[100:200, 0] == np.arange(100, 200))  # exact tie: the lower index first
    if k > 1:
        assert np.all(idx[100:200, 1] == np.arange(1500, 1600))
        assert np.all(dist[100:200, 0] == dist[100:200, 1])
    assert np.all(dist[:200, 0] <= 1e-5 * (queries[:200] ** 2).sum(1))  # brute force's rounding


@pytest.mark.parametrize("m", [2049, 2070, 2090, 2112])  # the four classes of M mod 64
def test_bank_sizes_and_odd_dimension(m):
    bank = low_rank(m, d=40, seed=6)
    queries = low_rank(333, d=40, seed=7)             # not a multiple of any chunk size
    search = pruned(budget_mb=16)
    assert_same(search, queries, bank, 1)
    assert search.last_stats["mode"] == "pruned" and search.last_stats["bitwise"]


def test_non_finite_queries_fall_back_to_brute_force(low_rank_case):
    search, bank, queries = low_rank_case
    odd = queries[:100].copy()
    odd[3, 7] = np.nan
    odd[50, 0] = np.inf
    assert_same(search, odd, bank, 1)
    assert search.last_stats["fallback"] >= 2


def test_prepare_is_cached_by_content_and_reusable(low_rank_case):
    search, bank, queries = low_rank_case
    prepared = search.prepare(bank)
    assert search.prepare(bank.copy()) is prepared
    moved = bank.copy()
    moved[0, 0] += 1.0
    assert search.prepare(moved) is not prepared
    d1, i1 = search.k_nearest(queries, prepared, 1)
    d0, i0 = knn.k_nearest(queries, bank, 1)
    np.testing.assert_array_equal(i1, i0)
    np.testing.assert_array_equal(d1, d0)


def test_small_calls_and_banks_are_brute_force():
    bank, queries = low_rank(300, seed=8), low_rank(50, seed=9)
    search = pruned()
    assert_same(search, queries, bank, 2)
    assert search.last_stats["reason"] == "small bank"
    big = low_rank(2100, seed=10)
    for n in (1, 5, 63):  # fewer than min_queries: brute force, same chunk shapes as brute force
        assert_same(search, queries[:n], big, 1)
        assert search.last_stats["reason"] == "few queries"
    assert_same(search, queries, big, 17)  # k > C
    with pytest.raises(ValueError, match="k=0"):
        search.k_nearest(queries, big, 0)


def test_unverified_finishing_falls_back_or_stays_close(monkeypatch):
    bank, queries = low_rank(2100, seed=11), low_rank(200, seed=12)
    monkeypatch.setattr(knn.PrunedSearch, "_finish_matches", lambda self, p, host: False)
    strict = pruned()
    assert_same(strict, queries, bank, 1)
    assert strict.last_stats["mode"] == "brute" and "round" in strict.last_stats["reason"]
    loose = pruned(strict=False)
    dist, idx = loose.k_nearest(queries, bank, 1)
    ref_d, ref_i = knn.k_nearest(queries, bank, 1)
    assert loose.last_stats["mode"] == "pruned" and not loose.last_stats["bitwise"]
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(dist, ref_d, rtol=1e-5, atol=1e-4)


def test_make_search_picks_pruned_on_one_device():
    if jax.device_count() > 1:
        pytest.skip("more than one device: make_search shards the bank")
    assert isinstance(make_search(64), knn.PrunedSearch)
    assert make_search(64).budget_mb == 64
    assert isinstance(make_search(64, pruning=False), knn.BruteForce)
    assert isinstance(make_search(64, multi_device=False), knn.PrunedSearch)
    search = make_search(64)  # prunes on the CPU, brute force on accelerators
    assert_same(search, low_rank(100, seed=14), low_rank(2100, seed=13), 1)
    assert search.last_stats["mode"] == ("pruned" if jax.default_backend() == "cpu" else "brute")


@pytest.mark.skipif(not os.path.isdir(TRANSISTOR),
                    reason=f"MVTec AD transistor not found at {os.path.normpath(TRANSISTOR)}")
def test_real_patch_features_match_brute_force(cache_dir):
    from softpatch_jax.features.extractor import Embedder

    train = sorted(glob.glob(os.path.join(TRANSISTOR, "train", "good", "*.png")))[:8]
    test = sorted(glob.glob(os.path.join(TRANSISTOR, "test", "*", "*.png")))[::30]
    embedder = Embedder("efficientnet_lite0", ("stage3", "stage5"), cache_dir=cache_dir)
    bank = embedder.embed(train, 128, 112, 4).reshape(-1, 1024)      # 8 x 196 patches
    queries = embedder.embed(test, 128, 112, 4).reshape(-1, 1024)
    search = pruned(min_bank=1024, min_certified=0.0)
    for k in (1, 3):
        assert_same(search, queries, bank, k)
        stats = search.last_stats
        assert stats["mode"] == "pruned" and stats["bitwise"], stats
        assert stats["certified"] > 0, stats
