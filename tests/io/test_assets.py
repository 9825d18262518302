"""io/assets.py: the curves against scikit-learn, the gallery's picks, contours and overlays
against brute force, and the files report_assets writes for the report."""
import json

import matplotlib
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import precision_recall_curve, roc_curve

from softpatch_jax.data import preprocess
from softpatch_jax.io import assets

from run_folders import category  # noqa: F401 (a fixture)


# 1. Curves, picks, contours, overlays.

def _labelled(seed, n=400, ties=False):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.3
    scores = rng.normal(size=n) + 1.2 * labels
    if ties:
        scores = np.round(scores * 3)  # many equal scores
    return labels, scores


@pytest.mark.parametrize("ties", [False, True])
def test_full_curves_equal_sklearn(ties):
    labels, scores = _labelled(0, ties=ties)
    c = assets.curves(labels, scores, max_points=10**6)  # nothing thinned
    fpr, tpr, th = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(c["roc"]["fpr"], fpr, rtol=0, atol=1e-15)
    np.testing.assert_allclose(c["roc"]["tpr"], tpr, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(c["roc"]["threshold"][1:], th[1:])
    assert c["roc"]["threshold"][0] is None
    precision, recall, th_pr = precision_recall_curve(labels, scores)
    # scikit-learn lists the PR curve from the lowest threshold up, ending at (recall 0, 1).
    np.testing.assert_allclose(c["pr"]["precision"], precision[::-1], rtol=0, atol=1e-15)
    np.testing.assert_allclose(c["pr"]["recall"], recall[::-1], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(c["pr"]["threshold"][1:], th_pr[::-1])
    assert (c["n_pos"], c["n_neg"]) == (labels.sum(), (~labels).sum())


def test_thinned_curves_keep_exact_points_and_bound_the_gaps():
    rng = np.random.default_rng(1)
    masks = rng.random((6, 40, 40)) < 0.1
    maps = (rng.normal(size=(6, 40, 40)) + masks).astype(np.float32)  # float32 anomaly maps
    full = assets.curves(masks, maps, max_points=10**7)
    thin = assets.curves(masks, maps, max_points=50)
    for kind, (xk, yk) in (("roc", ("fpr", "tpr")), ("pr", ("recall", "precision"))):
        x, y = np.array(full[kind][xk]), np.array(full[kind][yk])
        kept = [full[kind]["threshold"].index(t) for t in thin[kind]["threshold"]]
        assert kept[0] == 0 and kept[-1] == x.size - 1 and len(kept) <= 51
        np.testing.assert_array_equal(thin[kind][xk], x[kept])
        np.testing.assert_array_equal(thin[kind][yk], y[kept])
        # Brute force: the stretch of curve between two kept points, less its last step,
        # is at most 1/50 of the curve's length (L1).
        step = np.abs(np.diff(x)) + np.abs(np.diff(y))
        for a, b in zip(kept[:-1], kept[1:]):
            assert step[a:b - 1].sum() <= step.sum() / 50 + 1e-12


def test_curves_need_both_classes():
    assert assets.curves(np.zeros(5), np.arange(5.0)) is None
    assert assets.curves(np.ones(5), np.arange(5.0)) is None
    with pytest.raises(ValueError, match="differ in size"):
        assets.curves(np.zeros(5), np.arange(4.0))


def test_gallery_picks_match_sorting_by_hand():
    labels, scores = _labelled(2, n=60, ties=True)
    picks = assets.gallery_picks(labels, scores, count=6)
    by_score = sorted(range(60), key=lambda i: (-scores[i], i))
    assert picks["highest"] == by_score[:6]
    assert picks["false_alarms"] == [i for i in by_score if not labels[i]][:6]
    assert picks["misses"] == [i for i in sorted(range(60), key=lambda i: (scores[i], i))
                               if labels[i]][:6]
    few = assets.gallery_picks([0, 0, 1], [0.1, 0.3, 0.2], count=6)
    assert few == {"highest": [1, 2, 0], "misses": [2], "false_alarms": [1, 0]}


def test_contour_matches_brute_force():
    rng = np.random.default_rng(3)
    mask = np.zeros((24, 24), bool)
    mask[3:11, 5:14] = True
    mask[0:4, 18:24] = True  # touches the frame
    mask |= rng.random((24, 24)) < 0.05
    inside = np.pad(mask, 1)  # the frame is outside
    expected = np.zeros_like(mask)
    for y in range(24):
        for x in range(24):
            neighbours = [inside[y, x + 1], inside[y + 2, x + 1], inside[y + 1, x],
                          inside[y + 1, x + 2]]
            expected[y, x] = (not all(neighbours)) if mask[y, x] else any(neighbours)
    np.testing.assert_array_equal(assets.contour(mask), expected)


def test_overlay_blends_the_heat_map_and_draws_the_contour():
    rng = np.random.default_rng(4)
    image = rng.random((16, 16, 3))
    amap = rng.random((16, 16)) * 4
    mask = np.zeros((16, 16), bool)
    mask[4:9, 4:9] = True
    out = assets.overlay(image, amap, mask, 1.0, 3.0)
    assert out.shape == (16, 32 + assets.GAP, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :16], np.round(image * 255))
    assert (out[:, 16:16 + assets.GAP] == 255).all()
    jet = matplotlib.colormaps["jet"](np.clip((amap - 1.0) / 2.0, 0, 1))[..., :3]
    expected = np.round(((1 - 0.45) * image + 0.45 * jet) * 255)
    edge = assets.contour(mask)
    right = out[:, 16 + assets.GAP:]
    np.testing.assert_array_equal(right[~edge], expected[~edge])
    assert (right[edge] == 255).all()
    flat = assets.overlay(image, np.ones((16, 16)), None, 1.0, 1.0)  # an empty scale
    jet0 = matplotlib.colormaps["jet"](0.0)[:3]
    np.testing.assert_array_equal(flat[:, 16 + assets.GAP:],
                                  np.round(((1 - 0.45) * image + 0.45 * np.array(jet0)) * 255))


# 2. The files, written while the maps are in memory.

def test_report_assets_write_the_curves_and_the_gallery(tmp_path, category):
    samples, scores, maps, masks = category
    assets.report_assets(str(tmp_path), samples, scores, maps, masks, 32, 32, count=4)
    stored = json.loads((tmp_path / "curves.json").read_text())
    labels = np.array([s.label for s in samples])
    assert stored["image"] == assets.curves(labels, scores)
    assert stored["pixel"] == assets.curves(masks, maps)
    gallery = json.loads((tmp_path / "gallery.json").read_text())
    picks = assets.gallery_picks(labels, scores, 4)
    assert gallery["groups"] == {k: [str(i) for i in v] for k, v in picks.items()}
    assert gallery["scale"] == [float(maps.min()), float(maps.max())]
    for i in {i for v in picks.values() for i in v}:
        item = gallery["images"][str(i)]
        assert (item["name"], item["label"], item["score"]) == (samples[i].name,
                                                                samples[i].label, scores[i])
        img = np.asarray(Image.open(tmp_path / item["file"]), np.float64)
        image = np.clip(preprocess.load_image(samples[i].path, 32, 32) * preprocess.IMAGENET_STD
                        + preprocess.IMAGENET_MEAN, 0, 1)
        mask = masks[i] if masks[i].any() else None
        want = assets.overlay(image, maps[i], mask, maps.min(), maps.max())
        assert img.shape == want.shape and np.abs(img - want).mean() < 6  # JPEG
    # Without masks: image curves only, the gallery without contours.
    (tmp_path / "nomask").mkdir()
    assets.report_assets(str(tmp_path / "nomask"), samples, scores, maps, None, 32, 32)
    assert set(json.loads((tmp_path / "nomask" / "curves.json").read_text())) == {"image"}
