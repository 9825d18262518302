"""Decisions from unlabeled data: the new metrics against scikit-learn, the audit's pieces against
NumPy, the leave-own-image-out search and scores against brute force, and thresholds that read
no test label and land near the requested false-reject rate."""
import jax
import numpy as np
import pytest
from sklearn.metrics import (average_precision_score, f1_score, jaccard_score,
                             precision_recall_curve, precision_score, recall_score)

from softpatch_jax import methods
from softpatch_jax.evaluation import audit, metrics, thresholds
from softpatch_jax.methods.base import Features
from softpatch_jax.ops import knn
from softpatch_jax.pipeline import decisions

from conftest import load_config


# The metrics.

def test_average_precision_and_pixel_metrics_equal_sklearn():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 8, 8)) < 0.2
    maps = masks * 0.6 + rng.random((3, 8, 8))
    maps[0, 0, :3] = maps[0, 0, 3]  # ties
    assert metrics.pixel_ap(masks, maps) == pytest.approx(
        average_precision_score(masks.ravel(), maps.ravel()), rel=1e-12)
    p, r, _ = precision_recall_curve(masks.ravel(), maps.ravel())
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0)
    assert metrics.pixel_f1_max(masks, maps) == pytest.approx(f1.max(), rel=1e-12)
    # F1-max by brute force over every threshold (score >= t positive)
    best = max(f1_score(masks.ravel(), maps.ravel() >= t) for t in np.unique(maps))
    assert metrics.pixel_f1_max(masks, maps) == pytest.approx(best, rel=1e-12)
    labels = np.array([0, 1, 1, 0, 1])
    assert metrics.average_precision(labels, [0.1, 0.8, 0.3, 0.35, 0.9]) == pytest.approx(
        average_precision_score(labels, [0.1, 0.8, 0.3, 0.35, 0.9]))
    assert np.isnan(metrics.average_precision([0, 0], [0.1, 0.2]))


def test_decision_figures_equal_sklearn():
    rng = np.random.default_rng(1)
    labels = rng.random(200) < 0.3
    predicted = rng.random(200) < 0.4
    d = metrics.decisions(labels, predicted)
    assert d["precision"] == pytest.approx(precision_score(labels, predicted))
    assert d["recall"] == pytest.approx(recall_score(labels, predicted))
    assert d["f1"] == pytest.approx(f1_score(labels, predicted))
    assert d["iou"] == pytest.approx(jaccard_score(labels, predicted))
    assert d["false_reject"] == pytest.approx(predicted[~labels].mean())
    assert d["false_accept"] == pytest.approx((~predicted[labels]).mean())
    assert np.isnan(metrics.decisions([1, 0], [0, 0])["precision"])


# The audit.

def test_image_noise_scores_rules_equal_numpy():
    rng = np.random.default_rng(2)
    s = rng.random((5, 30))
    removed = s > 0.8
    np.testing.assert_allclose(audit.image_noise_scores(s, rule="quantile", quantile=0.7),
                               [np.quantile(row, 0.7) for row in s])
    np.testing.assert_allclose(audit.image_noise_scores(s, rule="max"), s.max(1))
    np.testing.assert_allclose(audit.image_noise_scores(s, rule="mean"), s.mean(1))
    np.testing.assert_allclose(audit.image_noise_scores(s, removed, "removed_share"),
                               removed.sum(1) / 30)
    with pytest.raises(ValueError, match="audit.score=removed_share"):
        audit.image_noise_scores(s, None, "removed_share")
    with pytest.raises(ValueError, match="audit.score='x'"):
        audit.image_noise_scores(s, None, "x")


def test_flags_ranks_and_audit_metrics():
    scores = np.array([1.0, 1.1, 0.9, 1.05, 0.95, 5.0, 1.02, 4.0])
    # median 1.035, MAD 0.06 (|x - median| sorted: .015 .015 .065 .085 .085 ...): z of 4.0 is
    # 0.6745 * 2.965 / 0.06 = 33 > 3.5; of 1.1 only 0.7
    flagged = audit.flag(scores, "auto")
    np.testing.assert_array_equal(np.nonzero(flagged)[0], [5, 7])
    np.testing.assert_array_equal(np.nonzero(audit.flag(scores, 0.25))[0], [5, 7])
    assert audit.flag(scores, 0.0).sum() == 0
    np.testing.assert_array_equal(audit.ranks(scores), [6, 3, 8, 4, 7, 1, 5, 2])
    injected = np.zeros(8, bool)
    injected[[5, 1]] = True
    m = audit.audit_metrics(injected, scores)
    assert m["audit_precision_at_n"] == 0.5  # top 2: indices 5 and 7
    assert m["audit_auroc"] == pytest.approx(metrics.auroc(injected, scores))
    assert m["audit_ap"] == pytest.approx(average_precision_score(injected, scores))
    with pytest.raises(ValueError, match="audit.contamination"):
        audit.flag(scores, 1.5)


# The leave-own-image-out search and scores.

@pytest.mark.parametrize("with_search", [False, True])
def test_k_nearest_excluding_equals_brute_force(with_search):
    rng = np.random.default_rng(3)
    bank = rng.normal(size=(60, 8)).astype(np.float32)
    bank_groups = rng.integers(0, 6, 60)
    queries = np.concatenate([bank[:20], rng.normal(size=(30, 8)).astype(np.float32)])
    groups = rng.integers(0, 6, 50)
    groups[:20] = bank_groups[:20]  # a query that is its own bank entry must not find it
    search = knn.BruteForce() if with_search else None
    d, i = knn.k_nearest_excluding(queries, groups, bank, bank_groups, 3, search=search,
                                   candidates=5)
    full = ((queries[:, None, :].astype(np.float64) - bank[None]) ** 2).sum(-1)
    full[groups[:, None] == bank_groups[None, :]] = np.inf
    ref_i = np.argsort(full, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(i, ref_i)
    np.testing.assert_allclose(d, np.take_along_axis(full, ref_i, 1), rtol=1e-4, atol=1e-4)
    assert not np.any(bank_groups[i] == groups[:, None])


def _generated(b=20, p=9, d=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(b, p, d)).astype(np.float32)


@pytest.mark.parametrize("variant", [{"model.method": "patchcore"},
                                     {"denoise.discriminator": "lof"},
                                     {"model.method": "softpatch_plus"}])
def test_training_scores_leave_each_image_out(variant):
    c = load_config("default.py")
    c.update_from_flattened_dict({"denoise.lof_k": 4, "bank.coreset_ratio": 0.4,
                                  "bank.projection_dim": 8, "model.blur_sigma": 1.0, **variant})
    c.data.image_size = 12
    method = methods.from_config(c)
    feats = Features(_generated(), (3, 3))
    fitted = method.fit(feats, jax.random.PRNGKey(0), progress=False)
    loo = method.training_scores(fitted, feats)
    banks = ([fitted] if variant.get("model.method") != "softpatch_plus"
             else [fitted.classification, fitted.segmentation])
    soft = variant.get("model.method") != "patchcore"
    grids = []
    for bank in banks:
        x = feats.patches.astype(np.float64)
        full = ((x[:, :, None, :] - bank.features[None, None].astype(np.float64)) ** 2).sum(-1)
        own = bank.sources[None, None, :] == np.arange(20)[:, None, None]
        full = np.where(own, np.inf, full)
        near = full.argmin(-1)
        grid = np.take_along_axis(full, near[..., None], -1)[..., 0]
        grids.append(grid * (bank.weights[near] if soft else 1.0))
    np.testing.assert_allclose(loo.image, grids[0].max(1), rtol=1e-4)
    np.testing.assert_allclose(loo.grids.reshape(20, -1), grids[-1], rtol=1e-4)


def _clustered(b=24, h=6, w=7, d=24, seed=0):
    """Patch features with structure (position centres, a few defects), as real ones have."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(h * w, d)) * 3
    x = centres[None] + rng.normal(size=(b, h * w, d))
    x[:3, 10:14] += rng.normal(size=(3, 4, d)) * 4
    return Features(x.astype(np.float32), (h, w))


@pytest.mark.parametrize("variant", [{"model.method": "patchcore"},
                                     {"denoise.discriminator": "lof"},
                                     {"denoise.discriminator": "lof",
                                      "denoise.soft_weight": False},
                                     {"model.method": "softpatch_plus"}])
def test_calibration_by_bounds_equals_the_full_pass(variant):
    """runtime.exact_pruning: the audit's scores, its flags and both thresholds are bit for bit
    those of the full leave-own-image-out pass, while part of the patches are computed."""
    c = load_config("default.py")
    c.update_from_flattened_dict({"denoise.lof_k": 4, "bank.coreset_ratio": 0.3,
                                  "bank.projection_dim": 8, "model.blur_sigma": 2.0, **variant})
    c.data.image_size = 28
    method = methods.from_config(c)
    feats = _clustered()
    out = {}
    for pruning in (False, True):
        c.runtime.exact_pruning = pruning
        settings = decisions.Settings.from_config(c)
        out[pruning] = decisions.fit_and_calibrate(method, feats, jax.random.PRNGKey(1), None,
                                                   settings)[1]
    full, fast = out[False], out[True]
    np.testing.assert_array_equal(fast.noise_scores, full.noise_scores)
    np.testing.assert_array_equal(fast.flagged, full.flagged)
    assert fast.image_threshold == full.image_threshold
    assert fast.pixel_threshold == full.pixel_threshold
    assert fast.train_false_reject == full.train_false_reject
    assert full.exact_share == 1.0 and fast.exact_share < 0.9


def test_kfold_scores_use_fits_without_the_fold():
    c = load_config("default.py")
    c.update_from_flattened_dict({"model.method": "padim", "padim.dim": 0,
                                  "model.blur_sigma": 1.0})
    c.data.image_size = 12
    method = methods.from_config(c)
    feats = Features(_generated(b=12, d=5), (3, 3))
    with pytest.raises(NotImplementedError):
        method.training_scores(None, feats)
    scores = decisions.kfold_scores(method, feats, jax.random.PRNGKey(0), None, 3, seed=4)
    order = np.random.default_rng(4).permutation(12)
    for rows in np.array_split(order, 3):
        rest = np.setdiff1d(order, rows)
        fitted = method.fit(Features(feats.patches[rest], (3, 3)), None, progress=False)
        ref = method.score(fitted, Features(feats.patches[rows], (3, 3)))
        np.testing.assert_allclose(scores.image[rows], ref.image, rtol=1e-6)


# Thresholds.

def test_thresholds_are_quantiles_of_the_unflagged_images():
    rng = np.random.default_rng(5)
    scores = rng.random(50)
    keep = rng.random(50) > 0.2
    assert thresholds.image_threshold(scores, keep, 0.05) == pytest.approx(
        np.quantile(scores[keep], 0.95))
    maps = rng.random((50, 4, 4))
    assert thresholds.pixel_threshold(maps, keep, 0.1) == pytest.approx(
        np.quantile(maps[keep].ravel(), 0.9))
    with pytest.raises(ValueError, match="threshold.false_reject"):
        thresholds.image_threshold(scores, keep, 0.0)
    with pytest.raises(ValueError, match="flagged every"):
        thresholds.image_threshold(scores, np.zeros(50, bool), 0.1)


def test_false_reject_on_held_out_normals_is_near_the_requested_rate():
    """PatchCore on generated normal 'images' (Gaussian patch features): the leave-own-image-out
    threshold at 5% rejects about 5% of 3000 new normal images."""
    c = load_config("default.py")
    c.update_from_flattened_dict({"model.method": "patchcore", "bank.coreset_ratio": 0.25,
                                  "bank.projection_dim": 8})
    c.data.image_size = 8
    method = methods.from_config(c)
    settings = decisions.Settings(audit=False, source="auto", false_reject=0.05,
                                  pixel_false_reject=0.05)
    train = Features(_generated(b=400, p=4, d=6, seed=6), (2, 2))
    fitted, cal = decisions.fit_and_calibrate(method, train, jax.random.PRNGKey(1), None,
                                              settings)
    assert cal.source == "leave_one_out"
    held_out = method.score(fitted, Features(_generated(b=3000, p=4, d=6, seed=7), (2, 2)))
    rate = float(np.mean(held_out.image >= cal.image_threshold))
    assert 0.03 <= rate <= 0.075, rate
    # without leaving each image out, the in-sample scores put the threshold far too low
    in_sample = method.score(fitted, train)
    naive = np.quantile(in_sample.image, 0.95)
    assert np.mean(held_out.image >= naive) > 0.1


def test_audit_finds_the_noisy_training_images_and_thresholds_ignore_them():
    """Generated training set: 40 normal images and 4 with a far-out patch. The audit ranks the
    4 first, flags them, and the threshold (from the rest) sits below their scores."""
    feats = _generated(b=44, p=9, d=6, seed=8)
    directions = np.random.default_rng(9).normal(size=(4, 6))
    feats[40:, 4] += 12.0 * directions / np.linalg.norm(directions, axis=1, keepdims=True)
    c = load_config("default.py")
    c.update_from_flattened_dict({"model.method": "softpatch", "denoise.discriminator": "lof",
                                  "denoise.lof_k": 4, "bank.coreset_ratio": 0.3,
                                  "bank.projection_dim": 6, "denoise.ratio": 0.05})
    c.data.image_size = 12
    method = methods.from_config(c)
    settings = decisions.Settings.from_config(c)
    fitted, cal = decisions.fit_and_calibrate(method, Features(feats, (3, 3)),
                                              jax.random.PRNGKey(2), None, settings)
    injected = np.arange(44) >= 40
    m = decisions.audit_figures(cal, injected)
    assert m["audit_precision_at_n"] == 1.0 and m["audit_auroc"] == 1.0
    assert cal.flagged[40:].all() and cal.flagged.sum() <= 6
    assert cal.image_threshold is not None and cal.pixel_threshold is not None


def test_settings_errors_name_the_field():
    c = load_config("default.py")
    for field, value, match in [("audit.score", "x", "audit.score='x'"),
                                ("audit.contamination", "lots", "audit.contamination='lots'"),
                                ("threshold.source", "oracle", "threshold.source='oracle'"),
                                ("threshold.folds", 1, "threshold.folds=1"),
                                ("threshold.false_reject", 0.0, "threshold.false_reject=0.0")]:
        bad = c.copy_and_resolve_references()
        section, name = field.split(".")
        bad[section][name] = value
        with pytest.raises(ValueError, match=match.replace("(", r"\(")):
            decisions.Settings.from_config(bad)
