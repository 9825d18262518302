"""Image and pixel AUROC, average precision and the maximum F1 (scikit-learn's roc_auc_score,
average_precision_score and precision_recall_curve), the MVTec AUPRO (ours: no library has it),
AUROC per defect type, and the figures of binary decisions at a threshold."""
from typing import Dict

import numpy as np
from scipy.ndimage import label
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score


def auroc(labels, scores) -> float:
    """labels: (N,) {0,1} (any shape, flattened); scores: same shape. NaN if one class is absent."""
    labels = np.asarray(labels).ravel().astype(bool)
    scores = np.asarray(scores, np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in size")
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        return float("nan")
    return float(roc_auc_score(labels, scores))


def _flat_pair(labels, scores):
    labels = np.asarray(labels).ravel().astype(bool)
    scores = np.asarray(scores, np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in size")
    return labels, scores


def average_precision(labels, scores) -> float:
    """labels: (N,) {0,1} (any shape, flattened); scores: same shape. Area under the
    precision-recall curve as scikit-learn's average_precision_score (step-wise, no
    interpolation). NaN if there is no positive."""
    labels, scores = _flat_pair(labels, scores)
    if not labels.any():
        return float("nan")
    return float(average_precision_score(labels, scores))


def _check_maps(masks, maps):
    masks, maps = np.asarray(masks), np.asarray(maps)
    if masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} do not match anomaly maps {maps.shape}")
    return masks, maps


def pixel_ap(masks, maps) -> float:
    """masks: (T, H, W) {0,1}; maps: (T, H, W) -> average precision over all test pixels."""
    return average_precision(*_check_maps(masks, maps))


def pixel_f1_max(masks, maps) -> float:
    """masks: (T, H, W) {0,1}; maps: (T, H, W) -> maximum F1 over all pixel thresholds."""
    return f1_max(*_check_maps(masks, maps))


def decisions(labels, predicted) -> Dict[str, float]:
    """labels, predicted: (N,) {0,1} (any shape, flattened; pixels or images) -> precision,
    recall, f1, false_reject (normals predicted anomalous / normals), false_accept (anomalies
    predicted normal / anomalies) and iou (|both| / |either|). A ratio whose denominator is 0
    is NaN (precision when nothing is predicted anomalous)."""
    labels = np.asarray(labels).ravel().astype(bool)
    predicted = np.asarray(predicted).ravel().astype(bool)
    if labels.shape != predicted.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predicted.shape} differ in size")
    tp = int(np.sum(labels & predicted))
    fp = int(np.sum(~labels & predicted))
    fn = int(np.sum(labels & ~predicted))
    tn = int(np.sum(~labels & ~predicted))
    ratio = lambda a, b: a / b if b else float("nan")
    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {"precision": precision, "recall": recall,
            "f1": ratio(2 * tp, 2 * tp + fp + fn),
            "false_reject": ratio(fp, fp + tn), "false_accept": ratio(fn, tp + fn),
            "iou": ratio(tp, tp + fp + fn)}


def pixel_auroc(masks, maps) -> float:
    """masks: (T, H, W) {0,1}; maps: (T, H, W) anomaly maps; over all test pixels."""
    masks, maps = np.asarray(masks), np.asarray(maps)
    if masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} do not match anomaly maps {maps.shape}")
    return auroc(masks, maps)


def _last_of_runs(sorted_desc: np.ndarray) -> np.ndarray:
    """Bool mask over a descending-sorted array: True at the last index of each run of equal values."""
    return np.append(sorted_desc[1:] != sorted_desc[:-1], True)


def _pro_fpr_changes(masks: np.ndarray):
    """masks: (T, H, W) bool -> per-pixel PRO and FPR increments (each (T*H*W,)), or None if
    there are no ground-truth regions or no normal pixels. Regions are 8-connected per image."""
    structure = np.ones((3, 3), dtype=int)
    pro_change = np.zeros(masks.shape, np.float64)
    n_regions = 0
    for t, mask in enumerate(masks):
        labeled, n = label(mask, structure)
        if n:
            sizes = np.bincount(labeled.ravel())  # sizes[0] counts the normal pixels
            inside = labeled > 0
            pro_change[t][inside] = 1.0 / sizes[labeled[inside]]
            n_regions += n
    n_normal = int((~masks).sum())
    if n_regions == 0 or n_normal == 0:
        return None
    return (pro_change / n_regions).ravel(), (~masks).ravel() / n_normal


def _pro_area(fprs: np.ndarray, pros: np.ndarray, max_fpr: float) -> float:
    """Trapezoid area under (fprs, pros) (fprs non-decreasing, starting at 0, ending at 1) for
    fpr in [0, max_fpr], with pros linearly interpolated at exactly max_fpr."""
    i = int(np.searchsorted(fprs, max_fpr, side="right"))  # fprs[:i] <= max_fpr < fprs[i:]
    x, y = fprs[:i], pros[:i]
    if i < fprs.size:
        w = (max_fpr - fprs[i - 1]) / (fprs[i] - fprs[i - 1])
        x = np.append(x, max_fpr)
        y = np.append(y, pros[i - 1] + w * (pros[i] - pros[i - 1]))
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)))


def aupro(masks, maps, max_fpr: float = 0.3, num_thresholds=None) -> float:
    """MVTec AUPRO. masks: (T, H, W) {0,1}; maps: (T, H, W) anomaly maps (score >= threshold is
    anomalous). PRO = mean over all 8-connected ground-truth regions of the fraction of the region
    predicted anomalous; FPR = false positives / all normal pixels of the test set. Returns the
    area under PRO(FPR) for FPR in [0, max_fpr] divided by max_fpr. num_thresholds=None: exact,
    every distinct score is a threshold; an int n: n thresholds evenly spaced from max to min score.
    NaN if there is no anomalous region or no normal pixel."""
    masks, maps = np.asarray(masks), np.asarray(maps, np.float64)
    if masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} do not match anomaly maps {maps.shape}")
    if masks.ndim != 3:
        raise ValueError(f"masks and maps must be (T, H, W), got {masks.shape}")
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    if num_thresholds is not None and int(num_thresholds) < 2:
        raise ValueError(f"num_thresholds must be None or >= 2, got {num_thresholds}")
    changes = _pro_fpr_changes(masks.astype(bool))
    if changes is None:
        return float("nan")
    pro_change, fpr_change = changes
    scores = maps.ravel()
    if num_thresholds is None:
        order = np.argsort(-scores, kind="stable")
        keep = _last_of_runs(scores[order])
        pros = np.cumsum(pro_change[order])[keep]
        fprs = np.cumsum(fpr_change[order])[keep]
    else:
        thresholds = np.linspace(scores.min(), scores.max(), int(num_thresholds))  # ascending
        # bin k (from the top) holds the pixels first predicted anomalous at the k-th highest threshold
        bins = thresholds.size - np.searchsorted(thresholds, scores, side="right")
        pros = np.cumsum(np.bincount(bins, pro_change, minlength=thresholds.size))
        fprs = np.cumsum(np.bincount(bins, fpr_change, minlength=thresholds.size))
    # (0, 0) for a threshold above every score; clip rounding so that the curve ends at (1, 1)
    fprs = np.concatenate([[0.0], np.minimum(fprs, 1.0)])
    pros = np.concatenate([[0.0], np.minimum(pros, 1.0)])
    fprs[-1] = pros[-1] = 1.0
    return _pro_area(fprs, pros, float(max_fpr)) / float(max_fpr)


def f1_max(labels, scores) -> float:
    """labels: (N,) {0,1}; scores: (N,). Maximum F1 over all thresholds (score >= threshold is
    positive). NaN if there is no positive."""
    labels = np.asarray(labels).ravel().astype(bool)
    scores = np.asarray(scores, np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in size")
    if not labels.any():
        return float("nan")
    precision, recall, _ = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, np.finfo(np.float64).tiny)
    return float(np.max(f1))


def per_defect_auroc(labels, scores, defects) -> dict:
    """labels: (N,) {0,1}; scores: (N,) image scores; defects: (N,) defect type strings ('good' for
    normal images). Returns {defect type: AUROC of that type's anomalous images vs all normal
    (label 0) images}, one entry per type among the anomalous images, sorted by name."""
    labels = np.asarray(labels).ravel().astype(bool)
    scores = np.asarray(scores, np.float64).ravel()
    defects = np.asarray(defects, dtype=object).ravel()
    if not labels.shape == scores.shape == defects.shape:
        raise ValueError(f"labels {labels.shape}, scores {scores.shape} and defects "
                         f"{defects.shape} differ in size")
    normal = ~labels
    return {str(d): auroc(labels[normal | (defects == d)], scores[normal | (defects == d)])
            for d in sorted(set(defects[labels].tolist()))}
