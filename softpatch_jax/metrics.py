"""Image and pixel AUROC, as the Mann-Whitney statistic with tied ranks averaged (this equals the
area under the trapezoidal ROC curve that scikit-learn's roc_auc_score computes)."""
import numpy as np
from scipy.stats import rankdata


def auroc(labels, scores) -> float:
    """labels: (N,) {0,1} (any shape, flattened); scores: same shape. NaN if one class is absent."""
    labels = np.asarray(labels).ravel().astype(bool)
    scores = np.asarray(scores, np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in size")
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def image_auroc(labels, image_scores) -> float:
    return auroc(labels, image_scores)


def pixel_auroc(masks, maps) -> float:
    """masks: (T, H, W) {0,1}; maps: (T, H, W) anomaly maps; over all test pixels."""
    masks, maps = np.asarray(masks), np.asarray(maps)
    if masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} do not match anomaly maps {maps.shape}")
    return auroc(masks, maps)
