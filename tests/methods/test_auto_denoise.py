"""denoise.ratio=auto, softpatch_plus.cls_ratio / seg_ratio=auto and denoise.soft_weight=auto
(methods/softpatch.py with evaluation/contamination.py) on generated piles whose defective
patches are known: the ratio follows the estimate, every defective patch is removed, a clean
pile gives PatchCore's bank and scores exactly, and fixed settings are untouched."""
import jax
import numpy as np
import pytest

from softpatch_jax import defaults, methods
from softpatch_jax.evaluation import contamination
from softpatch_jax.methods import patchcore, softpatch
from softpatch_jax.methods.base import Features
from softpatch_jax.ops import knn
from softpatch_jax.ops.coreset import GreedyCoreset

from conftest import contaminated_pile

GRID = (6, 6)


def _method(cls=softpatch.SoftPatch, **kw):
    return cls(projection_dim=16, layers=("stage3",), lof_k=6, coreset_ratio=0.3,
               sampler=GreedyCoreset(projection_dim=16), **kw)


def _left_out_numpy(x: np.ndarray, bank) -> np.ndarray:
    """(B,) each image's largest patch score against the bank entries not taken from it: the
    soft-weighted squared distance to the nearest one (the 1-NN score), in float64."""
    b, p, d = x.shape
    dist = ((x.reshape(b, p, 1, d).astype(np.float64) - bank.features[None, None]) ** 2).sum(-1)
    own = np.broadcast_to(bank.sources[None, None, :] == np.arange(b)[:, None, None], dist.shape)
    dist[own] = np.inf
    nearest = dist.argmin(-1)
    return (dist.min(-1) * bank.weights[nearest]).max(-1)


def _modified_z_flags(values: np.ndarray) -> np.ndarray:
    mad = np.median(np.abs(values - np.median(values)))
    return 0.6745 * (values - np.median(values)) / mad > 3.5


@pytest.mark.parametrize("share", [0.1, 0.3])
def test_auto_ratio_follows_the_estimate_and_removes_every_defective_patch(share):
    x, bad, patches = contaminated_pile(60, share, seed=3)
    key = jax.random.PRNGKey(0)
    fit = _method(discriminator="lof", denoise_ratio="auto").fit_details(
        Features(x, GRID), key, False)
    # The estimate: the audit's rule on left-out scores against the fit at the fixed 0.15,
    # computed here by brute force.
    provisional = _method(discriminator="lof", denoise_ratio=0.15).fit_details(
        Features(x, GRID), key, False)
    flagged = _modified_z_flags(_left_out_numpy(x, provisional.bank))
    np.testing.assert_array_equal(fit.estimate.flagged, flagged)
    assert fit.estimate.source == "left_out" and fit.estimate.images == flagged.mean()
    assert abs(fit.estimate.images - bad.mean()) <= 0.03
    assert fit.estimate.patches == contamination.estimate(fit.patch_scores, flagged).patches
    assert fit.ratio == pytest.approx(min(0.5, 1.5 * fit.estimate.images))
    removed = fit.sampling_weights == 0
    assert removed[patches].all()  # the right ratio: every defective patch is out of the bank
    assert abs(removed.mean() - fit.ratio) <= 1.0 / removed.size
    # the same fit with that ratio fixed: identical, to the last digit
    fixed = _method(discriminator="lof", denoise_ratio=fit.ratio).fit_details(
        Features(x, GRID), key, False)
    np.testing.assert_array_equal(fixed.bank.features, fit.bank.features)
    np.testing.assert_array_equal(fixed.bank.weights, fit.bank.weights)


def test_a_clean_pile_under_auto_is_patchcore_exactly():
    x, _, _ = contaminated_pile(30, 0.0, seed=4)
    key = jax.random.PRNGKey(1)
    auto = _method(discriminator="lof", denoise_ratio="auto", soft_weight="auto")
    fit = auto.fit_details(Features(x, GRID), key, False)
    assert fit.estimate.images == 0.0 and fit.ratio == 0.0
    assert (fit.sampling_weights == 1).all() and (fit.bank.weights == 1).all()
    plain = _method(discriminator="none").fit_details(Features(x, GRID), key, False)
    np.testing.assert_array_equal(fit.bank.features, plain.bank.features)
    test, _, _ = contaminated_pile(4, 0.5, seed=5)
    np.testing.assert_array_equal(
        patchcore.patch_scores(test, fit.bank, knn.BruteForce(), auto.soft_weight),
        patchcore.patch_scores(test, plain.bank, knn.BruteForce(), False))


def test_soft_weight_variants_against_numpy():
    x, _, _ = contaminated_pile(40, 0.2, seed=6)
    key = jax.random.PRNGKey(2)
    fits = {mode: _method(discriminator="lof", soft_weight=mode).fit_details(
        Features(x, GRID), key, False) for mode in (True, False, "auto")}
    raw = np.maximum(fits[True].patch_scores, 0.0).reshape(-1)
    for mode, fit in fits.items():  # the bank's weights: the picks' clamped scores
        np.testing.assert_array_equal(fit.bank.weights, raw[fit.coreset_indices].astype(np.float32))
    test, _, _ = contaminated_pile(3, 0.5, seed=7)
    bank = fits[True].bank
    d = ((test.reshape(-1, 1, x.shape[-1]).astype(np.float64) - bank.features[None]) ** 2).sum(-1)
    nearest = d.argmin(1)
    for mode in (True, "auto"):  # contaminated: auto weighs as True does
        scores = patchcore.patch_scores(test, fits[mode].bank, knn.BruteForce(),
                                        _method(discriminator="lof", soft_weight=mode).soft_weight)
        np.testing.assert_allclose(scores.reshape(-1), d.min(1) * bank.weights[nearest],
                                   rtol=1e-4)
    ones = softpatch.applied_soft(np.full((2, 2), 3.0, np.float32), "auto",
                                  contamination.Estimate(0.0, 0.0, np.zeros(2, bool)))
    np.testing.assert_array_equal(ones, np.ones((2, 2)))


def test_softpatch_plus_auto_ratios():
    """SoftPatch+'s estimate is the audit's rule on left-out scores against its classification
    bank at the fixed 0.15 (brute force here); the ratios follow it."""
    x, bad, _ = contaminated_pile(40, 0.1, seed=8)
    key = jax.random.PRNGKey(3)
    kw = dict(fusion=("lof", "gaussian"), grouping="position")
    plus = _method(softpatch.SoftPatchPlus, cls_ratio="auto", seg_ratio="auto", **kw)
    cls, seg = plus.fit_details(Features(x, GRID), key, False)
    provisional, _ = _method(softpatch.SoftPatchPlus, cls_ratio=0.15, **kw).fit_details(
        Features(x, GRID), key, False)
    flagged = _modified_z_flags(_left_out_numpy(x, provisional.bank))
    np.testing.assert_array_equal(cls.estimate.flagged, flagged)
    e = cls.estimate.images
    assert e == flagged.mean() and abs(e - bad.mean()) <= 0.03
    assert cls.ratio == pytest.approx(1.5 * e)
    assert seg.ratio == pytest.approx(max(cls.ratio, min(0.5, 5.0 * e)))


@pytest.mark.parametrize("field,value,message", [
    ("denoise.ratio", "most", r"denoise.ratio='most' must lie in \[0, 1\) or be auto"),
    ("denoise.soft_weight", "yes", r"denoise.soft_weight='yes' must be True, False or auto"),
    ("softpatch_plus.cls_ratio", 1.5, r"softpatch_plus.cls_ratio=1.5 must lie in \[0, 1\)")])
def test_bad_auto_fields_are_one_line(field, value, message):
    c = defaults.get_config()
    c.model.method = "softpatch_plus" if field.startswith("softpatch_plus") else "softpatch"
    section, key = field.split(".")
    c[section][key] = value
    with pytest.raises(ValueError, match=message):
        methods.from_config(c)


def test_a_sweep_variant_may_say_auto():
    c = defaults.get_config()
    assert methods.sweep_overrides("lof@ratio=auto@soft_weight=auto", c) == {
        "model.method": "softpatch", "denoise.discriminator": "lof", "denoise.ratio": "auto",
        "denoise.soft_weight": "auto"}
    assert methods.sweep_overrides("lof@ratio=0.2", c)["denoise.ratio"] == 0.2


def test_a_sweep_point_takes_auto_and_keeps_every_other_field():
    from softpatch_jax.pipeline import sweep

    c = defaults.get_config()
    c.sweep = defaults.sweep_section()
    point = sweep.point_config(c, "overlap", 0.1, "lof@ratio=auto@soft_weight=auto")
    assert point.denoise.ratio == "auto" and point.denoise.soft_weight == "auto"
    plain = sweep.point_config(c, "overlap", 0.1, "lof").to_dict()
    expected = c.copy_and_resolve_references().to_dict()
    del expected["sweep"]
    expected["noise"].update(mode="overlap", ratio=0.1)
    expected["denoise"]["discriminator"] = "lof"
    assert plain == expected


def test_non_finite_discriminator_scores_keep_their_message():
    with pytest.raises(ValueError, match="the discriminator produced non-finite scores"):
        softpatch.require_finite(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="the discriminator produced non-finite scores"):
        softpatch.denoise(np.array([[1.0, np.inf]]), 0.15)


def test_a_result_that_reads_the_estimate_carries_its_version():
    """Configs that set a field to `auto` record the estimate's version with the results
    version, so a stored point from another estimate is recomputed; fixed configs record
    RESULTS_VERSION alone (their results are unchanged), and the points of one sweep, which
    differ in whether they read the estimate, still compare equal."""
    from softpatch_jax import RESULTS_VERSION
    from softpatch_jax.pipeline import provenance, sweep

    c = defaults.get_config()
    c.sweep = defaults.sweep_section()
    fixed = provenance.record(sweep.point_config(c, "overlap", 0.1, "lof"), [])
    auto = provenance.record(sweep.point_config(c, "overlap", 0.1, "lof@ratio=auto"), [])
    assert fixed["version"] == RESULTS_VERSION
    assert auto["version"] == f"{RESULTS_VERSION}+{provenance.ESTIMATE_VERSION}"
    older = dict(auto, version=RESULTS_VERSION)  # an `auto` point of the first estimate
    assert provenance.differences(older, auto)[0].startswith("results version")
    assert provenance.comparable_version(auto) == provenance.comparable_version(fixed)
    assert provenance.comparable_version(older) != provenance.comparable_version(fixed)
