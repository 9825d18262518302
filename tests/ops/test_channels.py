"""InReaCh's channels (ops/channels.py) against plain NumPy references written from the official
code's loops: the association of every image with its earlier seeds, each patch's best seed,
the channels keyed by (seed image, seed patch), and the span and spread filters."""
import numpy as np
import pytest

from softpatch_jax.ops import channels

from inreach_reference import associate_numpy as _associate_numpy
from inreach_reference import members_numpy as _members_numpy


def _features(b=9, p=12, d=5, seed=0):
    """Aligned generated patches: a pattern per position plus noise (mutual matches are
    common, not universal)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(1, p, d)) * 2.0 + rng.normal(size=(b, p, d)) * 0.7
    return x.astype(np.float32)


def test_positions_are_row_and_column_times_weight_over_grid():
    x = np.zeros((2, 6, 3), np.float32)
    out = channels.with_positions(x, (2, 3), 5.0)
    assert out.shape == (2, 6, 5)
    np.testing.assert_allclose(out[1, :, 3], [0, 0, 0, 2.5, 2.5, 2.5])
    np.testing.assert_allclose(out[0, :, 4], [0, 5 / 3, 10 / 3] * 2, rtol=1e-6)
    assert channels.with_positions(x, (2, 3), 0.0) is x


@pytest.mark.parametrize("seeds", [1, 3, 20])
def test_associations_match_numpy(seeds):
    x = _features()
    ours = channels.associate(x, seeds, budget_mb=0.01, progress=False)  # many chunks
    seed, seed_patch, dist, mutual = _associate_numpy(x, seeds)
    np.testing.assert_array_equal(ours.seed, seed)
    np.testing.assert_array_equal(ours.seed_patch, seed_patch)
    np.testing.assert_array_equal(ours.mutual & (ours.seed >= 0), mutual)
    finite = seed >= 0
    np.testing.assert_allclose(ours.distance[finite], dist[finite], rtol=1e-4)
    assert (ours.seed[0] == -1).all()  # image 0 is only ever a seed
    assert mutual.any() and not mutual[finite].all()  # the test exercises both branches


@pytest.mark.parametrize("spread,max_std", [("spherical", 5.0), ("spherical", 1.0),
                                            ("code", 5.0), ("code", 2.5)])
@pytest.mark.parametrize("min_length", [1, 3])
def test_channel_members_match_numpy(spread, max_std, min_length):
    x = _features(b=11)
    assoc = channels.associate(x, 4, progress=False)
    ours = channels.channel_members(x, assoc, min_length, max_std, spread, budget_mb=0.001)
    ref = _members_numpy(x, assoc.seed, assoc.seed_patch, assoc.mutual & (assoc.seed >= 0),
                         min_length, max_std, spread)
    np.testing.assert_array_equal(ours, ref)
    assert 0 < ref.sum() < ref.size  # some patches stay, some do not


def test_a_defect_in_one_image_spans_no_channel():
    """The noise robustness: a patch unlike its position's in every other image joins no
    channel that spans, so it never reaches the bank; normal patches do."""
    x = _features(b=10, seed=3)
    x[7, 5] += 40.0  # a defect on one image
    nominal = channels.channel_members(x, channels.associate(x, 3, progress=False), 3, 5.0)
    assert not nominal[7, 5]
    assert nominal.mean() > 0.5


def test_unknown_spread_is_refused():
    x = _features()
    with pytest.raises(ValueError, match="inreach.spread='median'"):
        channels.channel_members(x, channels.associate(x, 2, progress=False), 1, 5.0, "median")
