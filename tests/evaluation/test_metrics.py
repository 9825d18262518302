"""AUPRO, F1-max and per-defect AUROC against brute-force references."""
import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import f1_score, roc_auc_score

from softpatch_jax.evaluation import metrics


def _aupro_brute(masks, maps, max_fpr, thresholds=None):
    """Loops over thresholds (default: every distinct score), recomputing PRO from the
    8-connected components of each mask and FPR over all normal pixels."""
    masks, maps = np.asarray(masks, bool), np.asarray(maps, np.float64)
    regions = []
    for t in range(len(masks)):
        labeled, n = ndimage.label(masks[t], np.ones((3, 3), int))
        regions += [(t, labeled == k) for k in range(1, n + 1)]
    normal = ~masks
    if thresholds is None:
        thresholds = np.unique(maps)
    fprs, pros = [0.0], [0.0]  # threshold above every score
    for th in sorted(thresholds, reverse=True):
        pred = maps >= th
        pros.append(np.mean([pred[t][r].sum() / r.sum() for t, r in regions]))
        fprs.append((pred & normal).sum() / normal.sum())
    fprs, pros = np.array(fprs), np.array(pros)
    y_end = np.interp(max_fpr, fprs, pros)
    keep = fprs <= max_fpr
    x = np.append(fprs[keep], max_fpr)
    y = np.append(pros[keep], y_end)
    return np.trapezoid(y, x) / max_fpr


def _masks():
    masks = np.zeros((4, 12, 12), bool)
    masks[0, 1:4, 1:5] = True        # two separate regions in one image
    masks[0, 8:11, 7:9] = True
    masks[1, 5:7, 5:7] = True        # two diagonal touches: one region under 8-connectivity
    masks[1, 7, 7] = True
    masks[1, 8, 8] = True
    masks[2, 0:12, 0:3] = True       # a large region
    # masks[3] has no region
    return masks


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("max_fpr", [0.05, 0.3, 1.0])
def test_aupro_matches_brute_force(seed, max_fpr):
    rng = np.random.default_rng(seed)
    masks = _masks()
    maps = rng.normal(size=masks.shape) + 1.5 * masks
    maps = np.round(maps, 1)  # many ties, across normal and anomalous pixels
    assert len(np.unique(maps)) < maps.size
    got = metrics.aupro(masks, maps, max_fpr=max_fpr)
    want = _aupro_brute(masks, maps, max_fpr)
    assert 0.0 < want < 1.0
    assert got == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("num_thresholds", [2, 7, 50])
def test_aupro_num_thresholds_matches_brute_force(num_thresholds):
    rng = np.random.default_rng(3)
    masks = _masks()
    maps = rng.random(masks.shape) + 0.5 * masks
    grid = np.linspace(maps.min(), maps.max(), num_thresholds)
    got = metrics.aupro(masks, maps, max_fpr=0.3, num_thresholds=num_thresholds)
    assert got == pytest.approx(_aupro_brute(masks, maps, 0.3, grid), abs=1e-6)


def test_aupro_by_hand():
    # One region {p0, p1} (size 2), normals p2, p3, p4.
    masks = np.array([[[1, 1, 0, 0, 0]]], bool)
    maps = np.array([[[0.9, 0.2, 0.8, 0.1, 0.0]]])
    # Curve (FPR, PRO): (0,0) (0,.5) [0.9], (1/3,.5) [0.8], (1/3,1) [0.2], (2/3,1), (1,1).
    # max_fpr=0.3: area .5*.3 -> 0.5; max_fpr=0.5: .5/3 + (.5-1/3) = 1/3 -> 2/3; 1.0: 1/6+2/3 = 5/6.
    assert metrics.aupro(masks, maps, 0.3) == pytest.approx(0.5, abs=1e-12)
    assert metrics.aupro(masks, maps, 0.5) == pytest.approx(2 / 3, abs=1e-12)
    assert metrics.aupro(masks, maps, 1.0) == pytest.approx(5 / 6, abs=1e-12)
    # Tie between p1 (anomalous) and p2 (normal) at 0.5: one sloped step (0,.5) -> (1/3,1).
    # PRO(0.3) = .5 + .5 * .3 / (1/3) = .95; area .3 * (.5 + .95) / 2 = .2175 -> 0.725.
    # (Breaking the tie either way would give 1.0 or 0.5.)
    maps_tie = np.array([[[0.9, 0.5, 0.5, 0.1, 0.0]]])
    assert metrics.aupro(masks, maps_tie, 0.3) == pytest.approx(0.725, abs=1e-12)


def test_aupro_uses_8_connectivity():
    # (0,1) and (1,2) touch diagonally: one region of 3 pixels (4-connectivity would give two).
    masks = np.array([[[1, 1, 0], [0, 0, 1]]], bool)
    maps = np.array([[[0.0, 0.0, 0.5], [0.4, 0.3, 0.9]]])
    # PRO is 1/3 from the top score until the last threshold, where FPR reaches 1 -> AUPRO 1/3
    # (4-connectivity: PRO 1/2 -> 1/2).
    assert metrics.aupro(masks, maps, 1.0) == pytest.approx(1 / 3, abs=1e-12)


def test_aupro_nan_and_errors():
    assert np.isnan(metrics.aupro(np.zeros((2, 4, 4), bool), np.random.rand(2, 4, 4)))
    assert np.isnan(metrics.aupro(np.ones((1, 4, 4), bool), np.random.rand(1, 4, 4)))
    with pytest.raises(ValueError, match="do not match"):
        metrics.aupro(np.zeros((2, 4, 4)), np.zeros((2, 5, 5)))
    with pytest.raises(ValueError, match="max_fpr"):
        metrics.aupro(_masks(), np.zeros(_masks().shape), max_fpr=0.0)


def _f1_brute(labels, scores):
    return max(f1_score(labels, (scores >= th).astype(int), zero_division=0)
               for th in np.unique(scores))


@pytest.mark.parametrize("seed", range(5))
def test_f1_max_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(60) < 0.3
    labels[0] = True
    scores = np.round(rng.normal(size=60) + labels, 1)  # ties
    assert len(np.unique(scores)) < scores.size
    assert metrics.f1_max(labels, scores) == pytest.approx(_f1_brute(labels, scores), abs=1e-12)


def test_f1_max_ties_and_nan():
    # Threshold 0.5 takes both tied samples (one positive, one negative): F1 = 2*2/(3+2) = 0.8;
    # threshold 0.9 alone: 2*1/(1+2) = 2/3; splitting the tie (F1 = 1) must not happen.
    labels, scores = [1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]
    assert metrics.f1_max(labels, scores) == pytest.approx(0.8, abs=1e-12)
    assert metrics.f1_max(labels, scores) == pytest.approx(_f1_brute(np.array(labels),
                                                                     np.array(scores)))
    assert np.isnan(metrics.f1_max([0, 0, 0], [0.1, 0.2, 0.3]))
    with pytest.raises(ValueError):
        metrics.f1_max([0, 1], [0.1, 0.2, 0.3])


def test_per_defect_auroc_matches_sklearn():
    rng = np.random.default_rng(0)
    defects = np.array(["good"] * 20 + ["blob"] * 8 + ["scratch"] * 6 + ["crack"] * 5)
    rng.shuffle(defects)
    labels = (defects != "good").astype(int)
    shift = {"good": 0.0, "blob": 2.0, "scratch": 0.3, "crack": -0.5}
    scores = np.round(rng.normal(size=defects.size) + [shift[d] for d in defects], 1)
    got = metrics.per_defect_auroc(labels, scores, defects)
    assert list(got) == ["blob", "crack", "scratch"]
    for d in ["blob", "crack", "scratch"]:
        sel = (defects == "good") | (defects == d)
        assert got[d] == pytest.approx(roc_auc_score(labels[sel], scores[sel]), abs=1e-12)
    assert got["blob"] > got["scratch"] > got["crack"]  # the per-type shifts are told apart
    with pytest.raises(ValueError):
        metrics.per_defect_auroc(labels, scores, defects[:-1])
    # no normal image: each type's AUROC is undefined
    assert np.isnan(metrics.per_defect_auroc([1, 1], [0.1, 0.2], ["blob", "blob"])["blob"])
