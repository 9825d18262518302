"""Image maxima and the pixel threshold from bounded patch scores (evaluation/pruned.py) equal the
full computation bit for bit, on generated grids with bounds of every tightness, ties, kept
subsets, rectangular grids and no blur; and only part of the patches are computed."""
import numpy as np
import pytest

from softpatch_jax.evaluation import anomaly_map, pruned, thresholds


def _grids(b=12, h=6, w=8, seed=0, looseness=0.3):
    rng = np.random.default_rng(seed)
    exact = (rng.gamma(2.0, 1.0, (b, h, w)) * 10).astype(np.float32)
    exact[0, 2, 3] = exact[0].max()  # a tie at the maximum
    exact[0, 4, 4] = exact[0].max()
    exact[1] = 0.0  # an image of zeros
    upper = exact.astype(np.float64) * (1 + rng.random((b, h, w)) * looseness)
    return exact, upper


def _bounded(exact, upper, size=32, sigma=2.0, levels=0):
    """BoundedGrids over `upper`; with `levels`, that many tighter bounds, each halving the
    gap to the exact score (the first bound is then `levels` times looser)."""
    asked = []

    def exact_fn(idx):
        asked.append(len(idx))
        return exact.reshape(-1)[idx]

    def tighter(step):
        return lambda idx: (exact.reshape(-1)[idx].astype(np.float64)
                            + (upper.reshape(-1)[idx] - exact.reshape(-1)[idx]) / 2 ** (step + 1))

    with np.errstate(invalid="ignore"):  # inf bounds stay inf
        start = np.where(np.isfinite(upper), exact + (upper - exact) * (2 ** levels), np.inf)
    return pruned.BoundedGrids(start.copy(), exact_fn, size, sigma,
                               tuple(tighter(s) for s in range(levels))), asked


@pytest.mark.parametrize("looseness", [0.0, 0.3, 3.0])
@pytest.mark.parametrize("levels", [0, 2])
def test_image_maxima_equal_the_full_maxima(looseness, levels):
    exact, upper = _grids(looseness=looseness)
    g, asked = _bounded(exact, upper, levels=levels)
    got = pruned.image_maxima(g)
    np.testing.assert_array_equal(got, exact.reshape(len(exact), -1).max(axis=1))
    assert got.dtype == np.float32
    if looseness == 0.3:
        assert g.computed_share < 0.5  # most patches never computed


@pytest.mark.parametrize("looseness", [0.0, 0.2, 3.0])
@pytest.mark.parametrize("sigma", [2.0, 0.0])
@pytest.mark.parametrize("rate", [0.01, 0.2])
@pytest.mark.parametrize("levels", [0, 1])
def test_pixel_threshold_equals_the_full_threshold(looseness, sigma, rate, levels):
    exact, upper = _grids(looseness=looseness, seed=3)
    keep = np.ones(len(exact), bool)
    keep[[2, 5]] = False
    g, _ = _bounded(exact, upper, sigma=sigma, levels=levels)
    got = pruned.pixel_threshold(g, keep, rate)
    ref = thresholds.pixel_threshold(anomaly_map.anomaly_maps(exact, 32, sigma), keep, rate)
    assert got == ref  # bitwise, not approximately
    if looseness == 0.2 and rate == 0.01:
        assert g.computed_share < 0.8


def test_both_share_computed_patches_and_open_bounds_are_computed():
    exact, upper = _grids(seed=5)
    upper[3, 1, 1] = np.inf  # no bound: computed first
    g, asked = _bounded(exact, upper)
    maxima = pruned.image_maxima(g)
    before = g.computed_share
    thr = pruned.pixel_threshold(g, np.ones(len(exact), bool), 0.05)
    assert g.known[3, 1, 1] and g.computed_share >= before
    np.testing.assert_array_equal(maxima, exact.reshape(len(exact), -1).max(axis=1))
    assert thr == thresholds.pixel_threshold(anomaly_map.anomaly_maps(exact, 32, 2.0),
                                             np.ones(len(exact), bool), 0.05)
    assert sum(asked) == int(g.known.sum())  # no patch computed twice


def test_non_finite_exact_scores_take_the_full_path():
    exact, upper = _grids(seed=6)
    exact[4, 0, 0] = np.inf
    upper[4, 0, 0] = np.inf
    g, _ = _bounded(exact, upper)
    np.testing.assert_array_equal(pruned.image_maxima(g), exact.reshape(len(exact), -1).max(1))
    assert g.computed_share == 1.0


def test_tighten_moves_one_step_at_a_time():
    exact, upper = _grids(seed=8, looseness=1.0)
    g, asked = _bounded(exact, upper, levels=2)
    mask = np.zeros(exact.shape, bool)
    mask[0, 0, :3] = True
    before = g.upper[mask].copy()
    assert g.tighten(mask) and not g.known[mask].any() and np.all(g.upper[mask] <= before)
    assert g.tighten(mask) and not g.known[mask].any() and np.all(g.level[mask] == 2)
    assert g.tighten(mask) and g.known[mask].all() and sum(asked) == 3
    assert not g.tighten(mask)
    np.testing.assert_array_equal(g.values[mask], exact[mask])


def test_order_statistic_of_mostly_zero_values_equals_partition():
    rng = np.random.default_rng(9)
    values = np.where(rng.random(5000) < 0.8, 0.0, rng.random(5000)).astype(np.float32)
    for rank in (0, 10, 3999, 4100, 4999):
        assert pruned._order_statistic(values, rank) == np.partition(values, rank)[rank]


def test_a_large_open_set_is_computed_exactly_at_once():
    """Where more than direct_share of the patches would move up, bounds cannot pay for
    themselves: one exact call, and the answers are still the full computation's."""
    exact, upper = _grids(seed=10, looseness=0.3)
    g, asked = _bounded(exact, upper, levels=1)
    g.direct_share = 0.1
    assert g.tighten(np.ones(exact.shape, bool)) and g.known.all() and asked == [exact.size]
    g, asked = _bounded(exact, upper, levels=1)
    g.direct_share = 0.1
    np.testing.assert_array_equal(pruned.image_maxima(g), exact.reshape(len(exact), -1).max(1))


@pytest.mark.parametrize("size", [(40, 24), (24, 40)])
def test_pixel_threshold_on_a_rectangular_canvas_equals_the_full_threshold(size):
    exact, upper = _grids(h=10, w=6, seed=4) if size[0] > size[1] else _grids(h=6, w=10, seed=4)
    keep = np.ones(len(exact), bool)
    keep[3] = False
    g, _ = _bounded(exact, upper, size=size)
    got = pruned.pixel_threshold(g, keep, 0.05)
    ref = thresholds.pixel_threshold(anomaly_map.anomaly_maps(exact, size, 2.0), keep, 0.05)
    assert got == ref
