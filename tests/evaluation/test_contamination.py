"""The contamination estimate (evaluation/contamination.py) on generated piles with a known share
of defective images, 0 to 40%, scored by the real LOF discriminator; the modified z-score against
a plain NumPy formula; the auto ratio's floor, factor and ceiling."""
import jax
import numpy as np
import pytest

from softpatch_jax.evaluation import contamination
from softpatch_jax.methods.softpatch import noise_scores

from conftest import contaminated_pile as pile


@pytest.mark.parametrize("share", [0.0, 0.05, 0.1, 0.2, 0.3, 0.4])
def test_the_estimate_finds_the_share_of_defective_images(share):
    for seed in range(2):
        x, bad, patches = pile(60, share, seed)
        scores = noise_scores(x, jax.random.PRNGKey(seed), "lof", 6, 16, 256)
        est = contamination.estimate(scores)
        assert abs(est.images - bad.mean()) <= 0.03, (share, seed, est.images)
        assert abs(est.patches - patches.mean()) <= 0.015, (share, seed, est.patches)
        assert est.flagged.shape == (60,)
        if share == 0.0:
            assert est.images <= 0.02
        else:  # the images it counts are the defective ones
            assert (est.flagged & bad).sum() >= 0.9 * est.flagged.sum()
        again = contamination.estimate(scores)  # deterministic
        assert again.images == est.images and again.patches == est.patches


def test_modified_z_against_numpy():
    rng = np.random.default_rng(0)
    ref = rng.gamma(2.0, 1.0, 101)
    values = rng.gamma(2.0, 1.0, 7)
    med = np.median(ref)
    mad = np.median(np.abs(ref - med))
    np.testing.assert_allclose(contamination.modified_z(values, ref),
                               0.6745 * (values - med) / mad, rtol=1e-12)
    flat = np.array([1.0, 1.0, 1.0, 1.0, 5.0])  # MAD 0: the mean absolute deviation
    np.testing.assert_allclose(contamination.modified_z(flat, flat),
                               (flat - 1.0) / (1.2533 * 0.8), rtol=1e-12)
    np.testing.assert_array_equal(contamination.modified_z(np.ones(3), np.ones(3)), 0.0)


def test_a_pile_of_identical_images_is_clean():
    est = contamination.estimate(np.ones((10, 4)))
    assert est.images == 0.0 and est.patches == 0.0 and not est.flagged.any()
    with pytest.raises(ValueError, match="finite and \\(B, P\\)"):
        contamination.estimate(np.full((3, 4), np.nan))


def test_auto_ratio_floor_factor_and_ceiling():
    assert contamination.auto_ratio(0.0) == 0.0
    assert contamination.auto_ratio(0.1) == pytest.approx(0.15)
    assert contamination.auto_ratio(0.4) == 0.5
    assert contamination.auto_ratio(0.1, contamination.SEG_FACTOR) == 0.5


def test_the_audit_and_the_estimate_give_one_number():
    """decisions.flags: `auto` flags by the audit's rule and reports that share as the estimate;
    an estimate from left-out scores (an `auto` ratio) sets how many of the highest are flagged;
    a fixed share flags that share and keeps the fit's estimate."""
    from softpatch_jax.methods.base import TrainingNoise
    from softpatch_jax.pipeline import decisions

    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(size=40), [9.0, 12.0]])
    patch = np.exp(rng.normal(size=(42, 8)))
    noise = TrainingNoise(patch)
    fit_estimate = contamination.estimate(patch)
    flagged, est = decisions.flags(scores, "auto", fit_estimate, noise)
    np.testing.assert_array_equal(flagged, np.arange(42) >= 40)  # the two outliers
    assert est.source == "audit" and est.images == 2 / 42
    assert est.patches == contamination.estimate(patch, flagged).patches
    flagged, est = decisions.flags(scores, "auto", None, None)
    assert est.images == 2 / 42 and est.patches is None
    left_out = contamination.Estimate(5 / 42, 0.0, np.arange(42) < 5, "left_out")
    flagged, est = decisions.flags(scores, "auto", left_out, noise)
    assert est is left_out and flagged.sum() == 5
    np.testing.assert_array_equal(flagged, scores >= np.sort(scores)[-5])
    flagged, est = decisions.flags(scores, 0.25, fit_estimate, noise)
    assert est is fit_estimate and flagged.sum() == round(0.25 * 42)
