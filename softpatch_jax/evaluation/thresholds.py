"""Decision thresholds from unlabeled data: a quantile of the training images' own scores.

Each training image is scored as if it had been left out of the fit (`Method.training_scores`,
or a refit on folds); the images the audit flags are dropped; the image threshold is the
(1 - false_reject) quantile of the remaining image scores, the pixel threshold the
(1 - pixel_false_reject) quantile of their map pixels (linear interpolation, as np.quantile).
A score >= the threshold is anomalous. No test label is read.
"""
import numpy as np


def _check_rate(rate: float, field: str) -> None:
    if not 0.0 < rate < 1.0:
        raise ValueError(f"{field}={rate} must lie in (0, 1), e.g. 0.01")


def image_threshold(scores: np.ndarray, keep: np.ndarray, false_reject: float) -> float:
    """scores: (B,) left-out training image scores; keep: (B,) bool, the images taken as
    normal -> the (1 - false_reject) quantile of the kept scores."""
    _check_rate(false_reject, "threshold.false_reject")
    kept = np.asarray(scores, np.float64)[np.asarray(keep, bool)]
    if kept.size == 0:
        raise ValueError("the audit flagged every training image; set audit.contamination to a "
                         "share below 1")
    return float(np.quantile(kept, 1.0 - false_reject))


def pixel_threshold(maps: np.ndarray, keep: np.ndarray, false_reject: float) -> float:
    """maps: (B, H, W) left-out training anomaly maps; keep: (B,) bool -> the
    (1 - false_reject) quantile of the kept images' pixels."""
    _check_rate(false_reject, "threshold.pixel_false_reject")
    kept = np.asarray(maps)[np.asarray(keep, bool)]
    if kept.size == 0:
        raise ValueError("the audit flagged every training image; set audit.contamination to a "
                         "share below 1")
    return float(np.quantile(kept.astype(np.float64).ravel(), 1.0 - false_reject))
