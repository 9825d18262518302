"""What report.html needs of a test set beyond its results, computed by the pipeline while the
anomaly maps are still in memory (`report_assets`) and written beside each category's (or sweep
point's) files; the report (softpatch_jax/report/) reads them back from disk:

    curves.json                image (and, with masks, pixel) ROC and PR curves: exact points of
                               the full curves, thinned for drawing (`curves`)
    gallery.json, gallery/     the highest-scored test images, the anomalous ones scored lowest
                               (misses), the normal ones scored highest (false alarms): each the
                               image beside its heat-map overlay with the ground-truth contour

`overlay` also draws predict's per-image overlays.
"""
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from softpatch_jax.files import write_json

CURVES_FILE = "curves.json"
GALLERY_FILE = "gallery.json"
GALLERY_DIR = "gallery"
# The gallery's groups in the order the report shows them, with its headings.
GALLERY_GROUPS = (("highest", "Highest scores"),
                  ("misses", "Misses: anomalous images scored lowest"),
                  ("false_alarms", "False alarms: normal images scored highest"))
OVERLAY_ALPHA = 0.45  # as io/plots.py's overlays
GAP = 4  # white pixels between the image and its overlay


def binary_curve(labels, scores):
    """labels: (N,) {0,1}; scores: (N,) (any shapes, flattened) -> (thresholds (K,), tp (K,),
    fp (K,)): the K distinct scores in descending order and, for each, the positives and the
    negatives scored >= it (one sort, for ROC and PR alike)."""
    labels = np.asarray(labels).ravel().astype(bool)
    scores = np.asarray(scores).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in size")
    order = np.argsort(scores, kind="stable")[::-1]
    ranked = scores[order]
    last = np.append(ranked[1:] != ranked[:-1], True)  # the last index of each run of ties
    tp = np.cumsum(labels[order])[last]
    fp = np.arange(1, scores.size + 1)[last] - tp
    return ranked[last], tp, fp


def thin(x: np.ndarray, y: np.ndarray, max_points: int) -> np.ndarray:
    """Indices of the points of the polyline (x, y) (K,) kept for drawing: the first, the last
    and the first one in each 1/max_points of its length (L1), so the points dropped between two
    kept ones lie within 1/max_points of the length from the first along the curve."""
    step = np.abs(np.diff(x)) + np.abs(np.diff(y))
    arc = np.concatenate([[0.0], np.cumsum(step)])
    if arc[-1] <= 0:
        return np.unique([0, x.size - 1])
    bucket = np.minimum(np.floor(arc / arc[-1] * max_points), max_points - 1)
    keep = np.append(True, bucket[1:] != bucket[:-1])
    keep[-1] = True
    return np.flatnonzero(keep)


def curves(labels, scores, max_points: int = 200) -> Optional[dict]:
    """labels: (N,) {0,1}; scores: (N,) (any shapes, flattened) -> the ROC ({fpr, tpr,
    threshold}) and PR ({recall, precision, threshold}) curves with n_pos and n_neg, or None
    when a class is absent. Score >= threshold is positive; every point is the exact curve at
    one threshold, except the ROC's start (0, 0) and the PR's start (recall 0, precision 1),
    scikit-learn's conventions, whose threshold is None. Thinned to at most max_points + 1
    points per curve (`thin`)."""
    thresholds, tp, fp = binary_curve(labels, scores)
    n_pos, n_neg = int(tp[-1]), int(fp[-1])
    if n_pos == 0 or n_neg == 0:
        return None
    th = [None] + thresholds.astype(np.float64).tolist()
    fpr = np.concatenate([[0.0], fp / n_neg])
    tpr = np.concatenate([[0.0], tp / n_pos])
    recall = np.concatenate([[0.0], tp / n_pos])
    precision = np.concatenate([[1.0], tp / (tp + fp)])
    roc, pr = thin(fpr, tpr, max_points), thin(recall, precision, max_points)
    return {"n_pos": n_pos, "n_neg": n_neg,
            "roc": {"fpr": fpr[roc].tolist(), "tpr": tpr[roc].tolist(),
                    "threshold": [th[i] for i in roc]},
            "pr": {"recall": recall[pr].tolist(), "precision": precision[pr].tolist(),
                   "threshold": [th[i] for i in pr]}}


def gallery_picks(labels, scores, count: int = 6) -> Dict[str, List[int]]:
    """labels: (T,) {0,1}; scores: (T,) image scores -> test indices: `highest` (the `count`
    highest scores), `misses` (the anomalous images scored lowest) and `false_alarms` (the normal
    images scored highest); ties in index order."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, np.float64)
    down = np.argsort(-scores, kind="stable")
    up = np.argsort(scores, kind="stable")
    return {"highest": down[:count].tolist(),
            "misses": [int(i) for i in up if labels[i]][:count],
            "false_alarms": [int(i) for i in down if not labels[i]][:count]}


def contour(mask: np.ndarray) -> np.ndarray:
    """(S, S) bool -> (S, S) bool, the pixels on the mask's boundary, two wide: mask pixels with
    a 4-neighbour outside it (the frame counts as outside) and outside pixels with a
    4-neighbour inside it."""
    from scipy.ndimage import binary_dilation, binary_erosion

    mask = np.asarray(mask, bool)
    return (mask & ~binary_erosion(mask, border_value=0)) | (binary_dilation(mask) & ~mask)


def overlay(image: np.ndarray, amap: np.ndarray, mask: Optional[np.ndarray], lo: float,
            hi: float) -> np.ndarray:
    """image: (S, S, 3) in [0, 1]; amap: (S, S); mask: (S, S) bool or None -> (S, 2S + GAP, 3)
    uint8: the image, a white gap, and the image with the heat map (jet, lo..hi) blended in at
    OVERLAY_ALPHA and the mask's `contour` in white."""
    import matplotlib

    span = hi - lo
    level = np.clip((amap - lo) / span, 0.0, 1.0) if span > 0 else np.zeros_like(amap)
    heat = matplotlib.colormaps["jet"](level)[..., :3]
    blended = (1.0 - OVERLAY_ALPHA) * image + OVERLAY_ALPHA * heat
    if mask is not None:
        blended[contour(mask)] = 1.0
    gap = np.ones((image.shape[0], GAP, 3))
    return np.round(np.concatenate([image, gap, blended], axis=1) * 255).astype(np.uint8)


def report_assets(out_dir: str, samples: Sequence, image_scores: np.ndarray, maps: np.ndarray,
                  masks: Optional[np.ndarray], resize: int, image_size: int,
                  count: int = 6) -> None:
    """Writes what the report needs of one category's test set into `out_dir`: curves.json
    (image curves; pixel curves when `masks` hold anomalous pixels) and the gallery
    (`gallery_picks`; gallery/<index>.jpg and gallery.json). samples: (T,) test samples;
    image_scores: (T,); maps: (T, S, S) anomaly maps; masks: (T, S, S) or None."""
    from PIL import Image

    from softpatch_jax.data import preprocess

    labels = np.array([s.label for s in samples])
    image_scores = np.asarray(image_scores, np.float64)
    found = {"image": curves(labels, image_scores)}
    if masks is not None:
        found["pixel"] = curves(masks, maps)
    write_json(os.path.join(out_dir, CURVES_FILE), found)
    picks = gallery_picks(labels, image_scores, count)
    lo, hi = float(np.min(maps)), float(np.max(maps))  # one colour scale for all
    os.makedirs(os.path.join(out_dir, GALLERY_DIR), exist_ok=True)
    images = {}
    for i in sorted({i for group in picks.values() for i in group}):
        s = samples[i]
        img = preprocess.display_image(s, resize, image_size)
        mask = masks[i] if masks is not None and masks[i].any() else None
        name = f"{GALLERY_DIR}/{i:04d}.jpg"
        Image.fromarray(overlay(img, maps[i], mask, lo, hi)).save(
            os.path.join(out_dir, name), quality=88, subsampling=0)  # sharp contours
        images[str(i)] = {"file": name, "name": s.name, "label": int(s.label),
                          "defect": s.defect, "score": float(image_scores[i]),
                          "map_max": float(np.max(maps[i]))}
    write_json(os.path.join(out_dir, GALLERY_FILE),
               {"scale": [lo, hi], "images": images, "masks": masks is not None,
                "groups": {g: [str(i) for i in picks[g]] for g, _ in GALLERY_GROUPS}})
