"""Upper bounds on leave-own-group-out scores (ops/leave_out.py) against brute force: never
below the exact score, weighted and unweighted, far from the origin, with own-group entries,
ties and a group that owns a whole neighbourhood; tight enough to prune."""
import numpy as np
import pytest

from softpatch_jax.methods.patchcore import MemoryBank, query_scores
from softpatch_jax.ops import knn, leave_out


def _problem(n=600, m=300, d=64, groups=12, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, d)) * 4
    bank = (centres[rng.integers(0, 20, m)] + rng.normal(size=(m, d))).astype(np.float32)
    queries = (centres[rng.integers(0, 20, n)] + rng.normal(size=(n, d))).astype(np.float32)
    queries[:m // 2] = bank[:m // 2]  # queries that are bank entries (their own group's)
    bank_groups = rng.integers(0, groups, m).astype(np.int32)
    query_groups = rng.integers(0, groups, n).astype(np.int32)
    query_groups[:m // 2] = bank_groups[:m // 2]
    weights = rng.uniform(0.8, 1.3, m).astype(np.float32)
    return queries, query_groups, bank, bank_groups, weights


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("offset", [0.0, 300.0])  # features far from the origin: large |q|
def test_upper_bounds_never_below_brute_force(weighted, offset):
    q, g, bank, bg, w = _problem()
    q, bank = q + offset, bank + offset
    exact = query_scores(q, MemoryBank(bank, w, bg), knn.BruteForce(), weighted, 1, g)
    upper = leave_out.SketchBounds(bank, bg, w if weighted else None, sketch_dim=7,
                                   candidates=4)(q, g)
    assert np.all(upper >= exact)
    if offset == 0:  # tight: the sketch's candidates are near neighbours on clustered data
        # (far from the origin brute force's own float32 error, which the bound must cover,
        # is as large as the distances)
        assert np.median(upper / exact) < (1.6 if weighted else 1.4)


def test_ties_and_duplicated_entries():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(40, 16)).astype(np.float32)
    bank = np.concatenate([base, base])  # every entry twice, in two groups
    bg = np.concatenate([np.zeros(40), np.ones(40)]).astype(np.int32)
    q = base[rng.integers(0, 40, 100)]
    g = rng.integers(0, 3, 100).astype(np.int32)  # group 2 owns no entry
    exact = query_scores(q, MemoryBank(bank, np.ones(80, np.float32), bg), knn.BruteForce(),
                         False, 1, g)
    upper = leave_out.SketchBounds(bank, bg, sketch_dim=3, candidates=2)(q, g)
    assert np.all(upper >= exact)


def test_a_query_whose_candidates_are_all_its_own_gets_inf():
    bank = np.array([[0.0, 0.0], [0.1, 0.0], [10.0, 10.0]], np.float32)
    bg = np.array([5, 5, 6], np.int32)
    q = np.array([[0.0, 0.05], [0.0, 0.05]], np.float32)
    upper = leave_out.SketchBounds(bank, bg, sketch_dim=1, candidates=2)(
        q, np.array([5, 6], np.int32))
    assert upper[0] == np.inf and np.isfinite(upper[1])


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("offset", [0.0, 300.0])
def test_window_bounds_never_below_brute_force(weighted, offset):
    """Patches against the entries taken near their grid position, on a 5 x 6 grid with a
    rectangular window at the borders; positions with no entry nearby get inf."""
    rng = np.random.default_rng(2)
    b, h, w, d = 14, 5, 6, 24
    centres = rng.normal(size=(h * w, d)) * 3
    x = (centres[None] + rng.normal(size=(b, h * w, d)) + offset).astype(np.float32)
    pick = rng.choice(b * h * w, 150, replace=False)
    pick = pick[pick % (h * w) != 0]  # no entry at position 0 ...
    pick = pick[~np.isin(pick % (h * w), [1, 6, 7])]  # ... nor next to it: inf there
    weights = rng.uniform(0.8, 1.2, len(pick)).astype(np.float32)
    bank = MemoryBank(x.reshape(-1, d)[pick], weights, (pick // (h * w)).astype(np.int32),
                      (pick % (h * w)).astype(np.int32))
    groups = np.repeat(np.arange(b), h * w).astype(np.int32)
    exact = query_scores(x.reshape(-1, d), bank, knn.BruteForce(), weighted, 1, groups)
    upper = leave_out.window_bounds(x, (h, w), bank.features, bank.sources, bank.positions,
                                    weights if weighted else None, radius=1)
    assert np.all(upper >= exact)
    assert np.all(np.isinf(upper.reshape(b, -1)[:, 0]))
    if offset == 0:
        assert np.median(upper[np.isfinite(upper)] / exact[np.isfinite(upper)]) < 1.6


def test_a_subset_of_queries_scores_bitwise_as_in_the_full_pass():
    """Calibration computes a few queries at a time: each must get exactly the full pass's score
    (pruned search on a bank large enough to prune, queries that are bank entries, so that some
    need the masked brute force)."""
    from softpatch_jax.methods.patchcore import left_out_grids
    from softpatch_jax.methods.base import Features

    rng = np.random.default_rng(4)
    b, p, d = 40, 90, 32
    centres = rng.normal(size=(p, d)) * 3
    x = (centres[None] + rng.normal(size=(b, p, d))).astype(np.float32)
    pick = rng.choice(b * p, 2400, replace=False)
    bank = MemoryBank(x.reshape(-1, d)[pick], rng.uniform(0.9, 1.2, 2400).astype(np.float32),
                      (pick // p).astype(np.int32))
    search = knn.PrunedSearch(variance=0.9)
    full = query_scores(x.reshape(-1, d), bank, search, True, 1, np.repeat(np.arange(b), p))
    g = left_out_grids(Features(x, (9, 10)), bank, search, True, 36, 1.0)
    for idx in (np.array([5]), rng.choice(b * p, 300, replace=False), np.arange(b * p)):
        np.testing.assert_array_equal(g.exact_fn(idx), full[idx])


@pytest.mark.parametrize("excluding", [False, True])
def test_scores_in_blocks_with_a_progress_bar_equal_one_call(excluding):
    from softpatch_jax.methods import patchcore

    rng = np.random.default_rng(7)
    n = 2 * patchcore.BLOCK_ROWS + 700  # an uneven tail joins the last block
    centres = rng.normal(size=(30, 16)) * 3
    queries = (centres[rng.integers(0, 30, n)] + rng.normal(size=(n, 16))).astype(np.float32)
    bank = MemoryBank(queries[::15].copy(), rng.uniform(0.9, 1.1, len(queries[::15]))
                      .astype(np.float32), (np.arange(0, n, 15) // 50).astype(np.int32))
    groups = (np.arange(n) // 50).astype(np.int32) if excluding else None
    search = knn.PrunedSearch(variance=0.9)
    one = query_scores(queries, bank, search, True, 1, groups)
    blocks = query_scores(queries, bank, search, True, 1, groups, desc="scores")
    np.testing.assert_array_equal(blocks, one)
