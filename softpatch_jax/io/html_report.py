"""The report for people: DIR/report.html, one self-contained file (styles inline, charts as
inline SVG, images as data URIs, no network, no framework; a few lines of script only record
load errors), built from the files a run leaves on disk, so it can be rebuilt at any time.

What it needs beyond the results is written beside each category's (or sweep point's) files by
`report_assets` while the anomaly maps are still in memory:

    curves.json                image (and, with masks, pixel) ROC and PR curves: exact points of
                               the full curves, thinned for drawing (`curves`)
    gallery.json, gallery/     the highest-scored test images, the anomalous ones scored lowest
                               (misses), the normal ones scored highest (false alarms): each the
                               image beside its heat-map overlay with the ground-truth contour

`write_report(workdir)` writes DIR/report.html for a fit run (categories/, plus predictions/
when there are some), a sweep (points/; also one report.html per point, which the sweep's charts
and table link to) or a folder holding only predictions/. Every file it reads may be absent.
"""
import base64
import csv
import datetime
import json
import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from softpatch_jax.io import report
from softpatch_jax.files import atomic_path, write_json
from softpatch_jax.io.text import csv_text_value, html_text, md_plain, url_path
# result.json's `stage_seconds` are shown in run order (write_json sorts the keys); names not
# listed follow, in the stored order.
from softpatch_jax.timing import STAGES

REPORT_FILE = "report.html"
CURVES_FILE = "curves.json"
GALLERY_FILE = "gallery.json"
GALLERY_DIR = "gallery"
GALLERY_GROUPS = (("highest", "Highest scores"),
                  ("misses", "Misses: anomalous images scored lowest"),
                  ("false_alarms", "False alarms: normal images scored highest"))
OVERLAY_ALPHA = 0.45  # as io/plots.py's overlays
GAP = 4  # white pixels between the image and its overlay

# Metrics in the order and with the names the report shows them; absent ones are left out.
QUALITY = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"),
           ("image_ap", "image AP"), ("pixel_ap", "pixel AP"),
           ("image_f1_max", "image F1-max"), ("pixel_f1_max", "pixel F1-max"))
DECISION = (("image_precision", "image precision"), ("image_recall", "image recall"),
            ("image_f1", "image F1"), ("image_false_reject", "false reject"),
            ("image_false_accept", "false accept"), ("pixel_precision", "pixel precision"),
            ("pixel_recall", "pixel recall"), ("pixel_f1", "pixel F1"),
            ("pixel_iou", "pixel IoU"))
AUDIT = (("audit_auroc", "audit AUROC"), ("audit_ap", "audit AP"),
         ("audit_precision_at_n", "precision@n"), ("audit_found_at_n", "found in top n"),
         ("audit_flagged", "flagged"))
# The data summary's columns (`_data_row`); overlap: injected images that are also test images.
DATA_HEADER = ("category", "train (clean)", "injected", "overlap", "test normal",
               "test anomalous")
# Config fields shown up front (the whole config is one click further).
KEY_FIELDS = ("seed", "data.name", "data.root", "data.category", "data.resize",
              "data.image_size", "data.max_train", "data.max_test", "noise.ratio", "noise.mode",
              "noise.overlap", "noise.files", "model.method", "model.discriminator",
              "model.backbone", "model.layers", "model.threshold", "model.coreset_ratio",
              "threshold.false_reject", "threshold.source")
# Colour-blind-safe (Okabe-Ito) line colours.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
           "#F0E442")
NORMAL_COLOUR, ANOMALY_COLOUR = "#0072B2", "#D55E00"
# Wall time no stage accounts for is shown as a bar of its own above this (seconds).
UNACCOUNTED = 0.5


# ---------------------------------------------------------------------------------------------
# Curves, gallery picks and overlays (computed while the maps are in memory)

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


# ---------------------------------------------------------------------------------------------
# Reading what is on disk (absent files are None)

def _read_json(path: str):
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


# The text columns the package's CSV writers guard against formulas (`csv_text_cell`).
CSV_TEXT = ("name", "defect", "path", "verdict")


def _read_csv(path: str) -> Optional[List[dict]]:
    if not os.path.isfile(path):
        return None
    with open(path, newline="") as f:
        return [{k: csv_text_value(v) if k in CSV_TEXT and v else v for k, v in row.items()}
                for row in csv.DictReader(f)]


def _float(v) -> Optional[float]:
    try:
        out = float(v)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _get(config: dict, dotted: str):
    """A field of a nested config, or of a flat one ({'a.b': v}, as results store it)."""
    if dotted in config:
        return config[dotted]
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _data_uri(path: str) -> Optional[str]:
    if not os.path.isfile(path):
        return None
    ext = os.path.splitext(path)[1].lower()
    mime = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png",
            ".svg": "image/svg+xml"}.get(ext, "application/octet-stream")
    with open(path, "rb") as f:
        return f"data:{mime};base64,{base64.b64encode(f.read()).decode('ascii')}"


# ---------------------------------------------------------------------------------------------
# HTML pieces

esc = html_text  # text and quoted attribute values alike


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return report.fmt(v)
    return esc(str(v))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """header: plain text; rows: cells as HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return (f'<table class="{cls}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


def _metric_table(per_row: Dict[str, dict], columns, links: Dict[str, str] = None,
                  corner: str = "category", mean_row: bool = True) -> str:
    """One row per key of per_row (its name linked through `links`), the columns of
    `columns` ((key, label)) that any row has, and a mean row."""
    cols = [(k, label) for k, label in columns if any(_present(r.get(k)) for r in per_row.values())]
    if not cols:
        return ""
    links = links or {}
    rows = []
    for name, r in per_row.items():
        cell = f'<a href="{esc(links[name])}">{esc(name)}</a>' if name in links else esc(name)
        rows.append([cell] + [_fmt(r.get(k)) for k, _ in cols])
    if mean_row and len(per_row) > 1:
        rows.append(["<b>mean</b>"] + [f"<b>{_fmt(report.mean(r.get(k) for r in per_row.values()))}</b>"
                                       for k, _ in cols])
    return _table([corner] + [label for _, label in cols], rows, "metrics")


def _present(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _svg_frame(x_range, y_range, x_label, y_label, title, width, height, ticks_x=None,
               key: str = ""):
    """-> (opening SVG with axes, grid and labels, px, py): px/py map data to SVG coordinates;
    `key`: SVG text (tspans) after the title."""
    left, right, top, bottom = 46, 12, 24, 38
    (x0, x1), (y0, y1) = x_range, y_range
    w, h = width - left - right, height - top - bottom

    def px(x):
        return left + (x - x0) / (x1 - x0) * w

    def py(y):
        return top + h - (y - y0) / (y1 - y0) * h

    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img">',
           f"<title>{esc(title)}</title>",
           f'<text x="{left}" y="15" class="t">{esc(title)}{key}</text>',
           f'<rect x="{left}" y="{top}" width="{w}" height="{h}" class="frame"/>']
    for k in range(5):
        yv = y0 + (y1 - y0) * k / 4
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{py(yv):.1f}" y2="{py(yv):.1f}" '
                   f'class="grid"/><text x="{left - 4}" y="{py(yv) + 3:.1f}" class="yt">'
                   f"{_tick(yv)}</text>")
    for xv in (ticks_x if ticks_x is not None else [x0 + (x1 - x0) * k / 4 for k in range(5)]):
        out.append(f'<line y1="{top}" y2="{top + h}" x1="{px(xv):.1f}" x2="{px(xv):.1f}" '
                   f'class="grid"/><text y="{top + h + 13}" x="{px(xv):.1f}" class="xt">'
                   f"{_tick(xv)}</text>")
    out.append(f'<text x="{left + w / 2:.1f}" y="{height - 6}" class="xl">{esc(x_label)}</text>')
    out.append(f'<text transform="translate(11 {top + h / 2:.1f}) rotate(-90)" class="xl">'
               f"{esc(y_label)}</text>")
    return out, px, py


def _tick(v: float) -> str:
    if abs(v) >= 1e6:
        return f"{v / 1e6:.3g}M"
    return f"{v / 1e3:.3g}k" if abs(v) >= 1e3 else f"{v:.3g}"


def svg_lines(series: Sequence[dict], x_label: str, y_label: str, title: str,
              x_range=(0.0, 1.0), y_range=(0.0, 1.0), diagonal: bool = False,
              marks: Sequence[dict] = (), ticks_x=None, legend: str = "bottom right",
              width: int = 330, height: int = 260) -> str:
    """A line chart. series: dicts with label, x, y, colour, and optional `points` (draw
    markers), `links` (per point: an href or None) and `tips` (per point: hover text);
    marks: operating points {x, y, label}; legend: 'bottom right' or 'bottom left' (where
    the curves leave room)."""
    out, px, py = _svg_frame(x_range, y_range, x_label, y_label, title, width, height, ticks_x)
    lx = width - 118 if legend == "bottom right" else 54
    ly0 = height - 44 - 14 * (len(series) - 1)
    if diagonal:
        out.append(f'<line x1="{px(x_range[0]):.1f}" y1="{py(y_range[0]):.1f}" '
                   f'x2="{px(x_range[1]):.1f}" y2="{py(y_range[1]):.1f}" class="chance"/>')
    for k, s in enumerate(series):
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(s["x"], s["y"]))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{s["colour"]}" '
                   f'stroke-width="2" class="curve"/>')
        if s.get("points"):
            for i, (x, y) in enumerate(zip(s["x"], s["y"])):
                tip = s.get("tips", [None] * len(s["x"]))[i]
                dot = (f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="4" fill="{s["colour"]}">'
                       + (f"<title>{esc(tip)}</title>" if tip else "") + "</circle>")
                link = s.get("links", [None] * len(s["x"]))[i]
                out.append(f'<a href="{esc(link)}" class="point">{dot}</a>' if link else dot)
        ly = ly0 + 14 * k
        out.append(f'<rect x="{lx}" y="{ly - 5}" width="10" height="3" '
                   f'fill="{s["colour"]}"/><text x="{lx + 14}" y="{ly}" class="lg">'
                   f"{esc(s['label'])}</text>")
    for m in marks:
        out.append(f'<circle cx="{px(m["x"]):.1f}" cy="{py(m["y"]):.1f}" r="5" class="mark">'
                   f"<title>{esc(m['label'])}</title></circle>")
    out.append("</svg>")
    return "".join(out)


def svg_histogram(groups: Sequence[tuple], title: str, x_label: str = "image score",
                  threshold: Optional[float] = None, bins: int = 24, width: int = 400,
                  height: int = 260) -> str:
    """Overlaid histograms of (label, values, colour) groups with the threshold as a dashed
    line; shared bins over all values (and the threshold)."""
    values = [np.asarray(v, np.float64) for _, v, _ in groups]
    pool = np.concatenate(values + ([np.array([threshold])] if threshold is not None else []))
    if pool.size == 0:
        return ""
    edges = np.histogram_bin_edges(pool, bins)
    if edges[-1] == edges[0]:
        edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    counts = [np.histogram(v, edges)[0] for v in values]
    top = 4 * -(-max(1, max(int(c.max()) for c in counts if c.size)) // 4)  # whole ticks
    ticks = np.linspace(edges[0], edges[-1], 5)
    key = ":" + "".join(f'<tspan fill="{colour}"> \u25a0 </tspan>{esc(label)} ({len(v)})'
                        for (label, _, colour), v in zip(groups, values))
    out, px, py = _svg_frame((edges[0], edges[-1]), (0, top), x_label, "images", title, width,
                             height, ticks, key)
    for (label, _, colour), c in zip(groups, counts):
        for lo, hi, n in zip(edges[:-1], edges[1:], c):
            if n:
                out.append(f'<rect x="{px(lo):.1f}" y="{py(n):.1f}" '
                           f'width="{max(px(hi) - px(lo) - 0.5, 0.5):.1f}" '
                           f'height="{py(0) - py(n):.1f}" fill="{colour}" opacity="0.55">'
                           f"<title>{esc(label)}: {int(n)}</title></rect>")
    if threshold is not None:
        x = px(threshold)
        side = ('x="{:.1f}" text-anchor="end"'.format(x - 3) if x > px((edges[0] + edges[-1]) / 2)
                else f'x="{x + 3:.1f}"')
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{py(top):.1f}" y2="{py(0):.1f}" '
                   f'class="threshold"><title>threshold {threshold:.6g}</title></line>'
                   f'<text {side} y="{py(top) + 10:.1f}" class="lg">threshold</text>')
    out.append("</svg>")
    return "".join(out)


def svg_ranks(scores: Sequence[float], injected: Sequence[bool], flagged: Sequence[bool],
              title: str, width: int = 680, height: int = 200) -> str:
    """Training images in rank order: a bar per image (its audit score), injected ones in the
    anomaly colour, flagged ones outlined."""
    scores = np.asarray(scores, np.float64)
    if scores.size == 0:
        return ""
    lo, hi = min(0.0, float(scores.min())), float(scores.max())
    hi = hi if hi > lo else lo + 1.0
    n = scores.size
    out, px, py = _svg_frame((0, n), (lo, hi), "rank (1 = most likely defective)",
                             "audit score", title, width, height,
                             np.unique(np.linspace(0, n, 5).round()))
    for i, (s, inj, flag) in enumerate(zip(scores, injected, flagged)):
        colour = ANOMALY_COLOUR if inj else "#999999"
        outline = ' stroke="#000" stroke-width="0.8"' if flag else ""
        out.append(f'<rect x="{px(i):.1f}" y="{py(s):.1f}" '
                   f'width="{max(px(i + 1) - px(i) - 0.3, 0.4):.2f}" '
                   f'height="{max(py(lo) - py(s), 0):.1f}" fill="{colour}"{outline}>'
                   f"<title>rank {i + 1}: {s:.4g}{' injected' if inj else ''}"
                   f"{' flagged' if flag else ''}</title></rect>")
    out.append(f'<rect x="{width - 118}" y="31" width="10" height="8" fill="{ANOMALY_COLOUR}"/>'
               f'<text x="{width - 104}" y="38" class="lg">injected</text>'
               f'<rect x="{width - 118}" y="45" width="10" height="8" fill="#999999" '
               f'stroke="#000" stroke-width="0.8"/>'
               f'<text x="{width - 104}" y="52" class="lg">flagged (outlined)</text></svg>')
    return "".join(out)


def _secs(v: float) -> str:
    """Seconds for a label: 0.04, 6.1, 1,234."""
    if 0 < abs(v) < 0.095:
        return f"{v:.2f}"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.1f}"


def svg_stage_bars(bars: Sequence[tuple], title: str, width: int = 460) -> str:
    """Horizontal bars of (label, seconds, colour) in the given order, each labelled with its
    name on the left and its seconds on the right, lengths scaled to the largest."""
    bars = [(label, max(float(v), 0.0), colour) for label, v, colour in bars]
    if not bars:
        return ""
    row, top = 16, 24
    left = min(10 + 6 * max(len(label) for label, _, _ in bars), width // 2)  # the names
    span = max(width - left - 52, 40)  # room for "1,234 s" after the longest bar
    height = top + row * len(bars) + 4
    vmax = max(v for _, v, _ in bars) or 1.0
    total = sum(v for _, v, _ in bars) or 1.0
    out = [f'<svg class="chart stages" xmlns="http://www.w3.org/2000/svg" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img">',
           f"<title>{esc(title)}</title>",
           f'<text x="8" y="15" class="t">{esc(title)}</text>',
           f'<line x1="{left}" x2="{left}" y1="{top - 2}" y2="{height - 4}" class="frame"/>']
    for k, (label, v, colour) in enumerate(bars):
        y = top + row * k
        w = v / vmax * span
        out.append(f"<g><title>{esc(label)}: {v:.2f} s, {100 * v / total:.0f}% of all bars"
                   f'</title><text x="{left - 4}" y="{y + 9}" class="yt">{esc(label)}</text>'
                   f'<rect class="bar" x="{left}" y="{y}" width="{w:.1f}" height="11" '
                   f'fill="{colour}"/><text x="{left + w + 4:.1f}" y="{y + 9}" class="lg">'
                   f"{_secs(v)} s</text></g>")
    out.append("</svg>")
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Sections

def _config_section(config: Optional[dict]) -> str:
    if not config:
        return ""
    rows = [[f"<code>{esc(f)}</code>", _fmt(_get(config, f))] for f in KEY_FIELDS
            if _get(config, f) not in (None, "")]
    full = esc(json.dumps(config, indent=2, sort_keys=True))
    return ('<section id="config"><h2>Config</h2>' + _table(["field", "value"], rows, "kv")
            + f"<details><summary>the whole resolved config</summary><pre>{full}</pre>"
            "</details></section>")


def _scores(folder: str):
    """scores.csv -> (names, labels (T,), defects, scores (T,)), or None."""
    rows = _read_csv(os.path.join(folder, "scores.csv"))
    if not rows:
        return None
    return ([r["name"] for r in rows], np.array([int(r.get("label") or 0) for r in rows]),
            [r.get("defect", "") for r in rows],
            np.array([_float(r["score"]) or 0.0 for r in rows]))


def _threshold(folder: str, result: dict) -> Optional[float]:
    stored = _read_json(os.path.join(folder, "threshold.json")) or {}
    return _float(stored.get("image_threshold", result.get("threshold_image")))


def _data_row(name: str, folder: str, result: dict, link: str = "") -> list:
    """One data-summary row: counts, and the injected files (which are also test images)."""
    injected = _read_json(os.path.join(folder, "noise.json")) or []
    scored = _scores(folder)
    test_names = set(scored[0]) if scored else set()
    overlap = sum(1 for r in injected if r.get("name") in test_names)
    cell = f'<a href="{esc(link)}">{esc(name)}</a>' if link else esc(name)
    return [cell, _fmt(result.get("n_train_clean")), _fmt(result.get("n_noise", len(injected))),
            str(overlap), _fmt(_n_normal(result)), _fmt(result.get("n_test_anomalous"))]


def _n_normal(result: dict):
    n, a = result.get("n_test"), result.get("n_test_anomalous")
    return n - a if isinstance(n, int) and isinstance(a, int) else None


def _injected_list(folder: str) -> str:
    injected = _read_json(os.path.join(folder, "noise.json")) or []
    if not injected:
        return "<p>No noise was injected into the training set.</p>"
    scored = _scores(folder)
    test_names = set(scored[0]) if scored else set()
    rows = []
    for r in injected[:500]:
        aug = ("" if "rotation_deg" not in r else
               f"rotated {r['rotation_deg']:.2f} deg, shifted {r.get('shift_x', 0):.3f}, "
               f"{r.get('shift_y', 0):.3f}")
        also = '<span class="tag bad">also a test image</span>' if r.get("name") in test_names else ""
        rows.append([esc(r.get("name", "")), esc(r.get("defect", "")), esc(aug), also])
    more = f"<p>... and {len(injected) - 500} more (noise.json)</p>" if len(injected) > 500 else ""
    return (f"<details><summary>{len(injected)} injected training images (noise.json)</summary>"
            + _table(["file", "defect", "augmentation", "overlap"], rows) + more + "</details>")


def _operating_point(scored, threshold: Optional[float]) -> Optional[dict]:
    """The image decision at `threshold` on the test set: fpr, tpr, precision."""
    if scored is None or threshold is None:
        return None
    _, labels, _, scores = scored
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not pos.size or not neg.size:
        return None
    tp, fp = int(np.sum(pos >= threshold)), int(np.sum(neg >= threshold))
    return {"fpr": fp / neg.size, "tpr": tp / pos.size,
            "precision": tp / (tp + fp) if tp + fp else None}


def _curve_charts(folder: str, result: dict) -> str:
    found = _read_json(os.path.join(folder, CURVES_FILE)) or {}
    scored = _scores(folder)
    threshold = _threshold(folder, result)
    op = _operating_point(scored, threshold)
    charts = []
    for level in ("image", "pixel"):
        c = found.get(level)
        if not c:
            continue
        auc = result.get(f"{level}_auroc")
        ap = result.get(f"{level}_ap")
        roc_label = f"AUROC {auc:.4f}" if _present(auc) else "ROC"
        pr_label = f"AP {ap:.4f}" if _present(ap) else "PR"
        marks_roc, marks_pr = [], []
        if level == "image" and op:
            label = f"threshold {threshold:.6g}: FPR {op['fpr']:.3f}, TPR {op['tpr']:.3f}"
            marks_roc.append({"x": op["fpr"], "y": op["tpr"], "label": label})
            if op["precision"] is not None:
                marks_pr.append({"x": op["tpr"], "y": op["precision"], "label": label})
        charts.append(svg_lines(
            [{"label": roc_label, "x": c["roc"]["fpr"], "y": c["roc"]["tpr"],
              "colour": PALETTE[0]}], "false positive rate", "true positive rate",
            f"{level} ROC ({_count(c['n_pos'])} anomalous / {_count(c['n_neg'])} normal)",
            diagonal=True, marks=marks_roc))
        charts.append(svg_lines(
            [{"label": pr_label, "x": c["pr"]["recall"], "y": c["pr"]["precision"],
              "colour": PALETTE[1]}], "recall", "precision", f"{level} precision-recall",
            marks=marks_pr, legend="bottom left"))
    if scored is not None:
        _, labels, _, scores = scored
        groups = [("normal", scores[labels == 0], NORMAL_COLOUR)]
        if (labels == 1).any():
            groups.append(("anomalous", scores[labels == 1], ANOMALY_COLOUR))
        charts.append(svg_histogram(groups, "test image scores", threshold=threshold))
    return '<div class="charts">' + "".join(charts) + "</div>" if charts else ""


def _count(n: int) -> str:
    """A count for a chart title: 4,321; 135k; 3.83M."""
    if n >= 10**6:
        return f"{n / 1e6:.3g}M"
    return f"{n / 1e3:.3g}k" if n >= 10**4 else f"{n:,}"


def _gallery(folder: str, threshold: Optional[float] = None) -> str:
    """The gallery groups; with a threshold each image says whether it would be rejected
    (score >= threshold) or accepted."""
    g = _read_json(os.path.join(folder, GALLERY_FILE))
    if not g:
        return ""
    lo, hi = g.get("scale", [0, 0])
    contour_note = " and the ground-truth contour in white" if g.get("masks") else ""
    out = ['<div class="scale">left: the test image; right: its anomaly map (colour scale '
           f'<span class="jet"></span> {lo:.4g} .. {hi:.4g}, shared by all){contour_note}'
           "</div>"]
    for key, title in GALLERY_GROUPS:
        ids = g.get("groups", {}).get(key) or []
        if not ids:
            continue
        figs = []
        for i in ids:
            item = g["images"].get(i, {})
            uri = _data_uri(os.path.join(folder, item.get("file", "")))
            if uri is None:
                continue
            tag = ('<span class="tag bad">anomalous</span>' if item.get("label") else
                   '<span class="tag ok">normal</span>')
            if threshold is not None:
                tag += (' <span class="tag">rejected</span>' if item.get("score", 0) >= threshold
                        else ' <span class="tag">accepted</span>')
            figs.append(f'<figure><img src="{uri}" alt="{esc(item.get("name", ""))}">'
                        f'<figcaption>{tag} <b>{item.get("score", 0):.4g}</b> '
                        f"{esc(item.get('defect', ''))}<br><small>"
                        f"{esc(item.get('name', ''))}</small></figcaption></figure>")
        out.append(f'<h4>{esc(title)}</h4><div class="gallery">{"".join(figs)}</div>')
    return '<div class="galleries"><h3>Gallery</h3>' + "".join(out) + "</div>"


def _audit(folder: str, name: str, result: dict) -> str:
    rows = _read_csv(os.path.join(folder, f"audit_{name}.csv"))
    if not rows:
        return ""
    rows = sorted(rows, key=lambda r: int(r.get("rank") or 0))
    scores = [_float(r.get("score")) or 0.0 for r in rows]
    injected = [r.get("injected") == "1" for r in rows]
    flagged = [r.get("flagged") == "1" for r in rows]
    n_inj = sum(injected)
    summary = f"{len(rows)} training images ranked by how likely each is defective"
    if "injected" in rows[0]:
        found = sum(injected[:n_inj])
        summary += (f"; {found} of the {n_inj} injected ones are among the top {n_inj}"
                    if n_inj else "; none was injected")
    summary += f"; {sum(flagged)} flagged."
    figures = " ".join(f"{label} <b>{_fmt(result[k])}</b>" for k, label in AUDIT
                       if _present(result.get(k)))
    top = [[esc(r.get("rank")), esc(r.get("file", "")), _fmt(_float(r.get("score"))),
            '<span class="tag">flagged</span>' if f else "",
            '<span class="tag bad">injected</span>' if i else ""]
           for r, f, i in list(zip(rows, flagged, injected))[:20]]
    return ('<div class="audit"><h3>Training-set audit</h3>'
            f"<p>{esc(summary)} {figures}</p>"
            + svg_ranks(scores, injected, flagged, "audit score by rank")
            + "<details><summary>the 20 top-ranked training images</summary>"
            + _table(["rank", "file", "score", "flagged", "injected"], top) + "</details></div>")


def _stage_chart(result: dict) -> str:
    """result.json's `stage_seconds` as bars (the longest stage in the anomaly colour; time no
    stage accounts for, when over half a second, as a grey bar of its own) and a line with the
    total and the part spent compiling (which overlaps the stages); "" without stages."""
    stages = result.get("stage_seconds")
    if not isinstance(stages, dict):
        return ""
    found = [(str(k), v) for k, v in stages.items()
             if not isinstance(v, bool) and _float(v) is not None]
    found.sort(key=lambda kv: STAGES.index(kv[0]) if kv[0] in STAGES else len(STAGES))
    if not found:
        return ""
    longest = max(range(len(found)), key=lambda i: _float(found[i][1]))
    bars = [(k, _float(v), ANOMALY_COLOUR if i == longest else PALETTE[0])
            for i, (k, v) in enumerate(found)]
    summed = sum(max(v, 0.0) for _, v, _ in bars)
    total = None if isinstance(result.get("seconds"), bool) else _float(result.get("seconds"))
    gap = round(total - summed, 2) if total is not None else 0.0
    if gap > UNACCOUNTED:
        bars.append(("other (unaccounted)", gap, "#999999"))
    line = (f"total {_secs(total)} s" if total is not None
            else f"stages sum to {_secs(summed)} s")
    compiling = result.get("seconds_compile")
    if not isinstance(compiling, bool) and _float(compiling) is not None:
        line += f"; of which compiling {_secs(_float(compiling))} s"
    return ('<div class="stages"><h3>Time</h3>'
            + svg_stage_bars(bars, "seconds by stage") + f'<p class="scale">{esc(line)}</p></div>')


def _category_section(name: str, folder: str, result: dict, rel: str, anchor: str) -> str:
    """One category (or sweep point): counts, metrics, curves, histogram, gallery, audit,
    time by stage."""
    n_test, n_anom = result.get("n_test"), result.get("n_test_anomalous")
    line = (f"{_fmt(result.get('n_train_clean'))} clean + {_fmt(result.get('n_noise'))} injected "
            f"training images; {_fmt(n_test)} test images ({_fmt(n_anom)} anomalous).")
    chips = " ".join(f'<span class="chip">{label} <b>{_fmt(result[k])}</b></span>'
                     for k, label in QUALITY if _present(result.get(k)))
    decisions = ""
    threshold = _threshold(folder, result)
    if threshold is not None:
        figs = " ".join(f"{label} <b>{_fmt(result[k])}</b>" for k, label in DECISION
                        if _present(result.get(k)))
        stored = _read_json(os.path.join(folder, "threshold.json")) or {}
        how = (f" (from the training images, {esc(str(stored['source']))}, false reject "
               f"{_fmt(stored.get('false_reject'))})" if stored.get("source") else "")
        op = _operating_point(_scores(folder), threshold)
        counts = ""
        if op:
            _, labels, _, _ = _scores(folder)
            n_pos, n_neg = int(labels.sum()), int((labels == 0).sum())
            counts = (f" It rejects {round(op['tpr'] * n_pos)} of the {n_pos} anomalous test "
                      f"images and {round(op['fpr'] * n_neg)} of the {n_neg} normal ones.")
        decisions = f"<p>Decision threshold {threshold:.6g}{how}.{counts} {figs}</p>"
    per_defect = result.get("image_auroc_per_defect") or {}
    defects = (_table(["defect", "image AUROC"], [[esc(d), _fmt(v)] for d, v in
                                                   per_defect.items()], "small")
               if len(per_defect) > 1 else "")
    note = f'<p class="note">{esc(result["note"])}</p>' if result.get("note") else ""
    files = " ".join(f'<a href="{esc(url_path(os.path.join(rel, f)))}">{esc(f)}</a>' for f in
                     ("result.json", "scores.csv", "noise.txt", "threshold.json",
                      f"audit_{name}.csv", "overlay.png")
                     if os.path.isfile(os.path.join(folder, f)))
    return (f'<section id="{anchor}" class="category"><h2>{esc(name)}</h2><p>{line}</p>'
            f"<p>{chips}</p>{decisions}{note}{_curve_charts(folder, result)}{defects}"
            f"{_gallery(folder, threshold)}{_audit(folder, name, result)}"
            f"{_stage_chart(result)}"
            f'<p class="files">files: {files}</p></section>')


def _predictions_section(workdir: str) -> str:
    root = os.path.join(workdir, "predictions")
    if not os.path.isdir(root):
        return ""
    parts = []
    for cat in sorted(c for c in os.listdir(root) if not c.startswith(".")):
        folder = os.path.join(root, cat)
        table_file = next((f for f in ("predictions.csv", "scores.csv")
                           if os.path.isfile(os.path.join(folder, f))), None)
        if table_file is None:
            continue
        rows = _read_csv(os.path.join(folder, table_file)) or []
        rows.sort(key=lambda r: -(_float(r.get("score")) or -math.inf))
        cols = [c for c in (rows[0].keys() if rows else []) if c not in ("label", "defect")]
        verdicts = {}
        for r in rows:
            if "verdict" in r:
                verdicts[r["verdict"]] = verdicts.get(r["verdict"], 0) + 1
        summary = f"{len(rows)} images scored"
        if verdicts:
            summary += ": " + ", ".join(f"{v} {esc(k)}" for k, v in sorted(verdicts.items()))
        figs = []
        for r in rows[:12]:
            stem = os.path.splitext(r.get("name", ""))[0]
            uri = next((u for u in (_data_uri(os.path.join(folder, sub, stem + ".png"))
                                    for sub in ("overlays", "maps")) if u), None)
            if uri:
                verdict = f' <span class="tag">{esc(r["verdict"])}</span>' if "verdict" in r else ""
                figs.append(f'<figure><img src="{uri}" alt="{esc(r.get("name", ""))}">'
                            f'<figcaption><b>{_fmt(_float(r.get("score")))}</b>{verdict}<br>'
                            f"<small>{esc(r.get('name', ''))}</small></figcaption></figure>")
        body = [[esc(str(r.get(c, ""))) for c in cols] for r in rows[:50]]
        parts.append(f'<h3>{esc(cat)}</h3><p>{summary} (<a href="'
                     f'{esc(url_path(os.path.join("predictions", cat, table_file)))}">'
                     f'{table_file}</a>'
                     f'{"; the 50 highest shown" if len(rows) > 50 else ""}).</p>'
                     + (f'<div class="gallery">{"".join(figs)}</div>' if figs else "")
                     + _table(cols, body))
    if not parts:
        return ""
    return '<section id="predictions"><h2>Predictions</h2>' + "".join(parts) + "</section>"


# ---------------------------------------------------------------------------------------------
# Pages

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;
background:#fafafa}
header{background:#1f2937;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#cbd5e1}nav{padding:6px 24px;background:#e5e7eb}
nav a{margin-right:14px}main{padding:8px 24px 40px;max-width:1500px}
section{background:#fff;border:1px solid #e5e7eb;border-radius:6px;padding:10px 16px;
margin:14px 0}h2{margin:4px 0 8px;font-size:18px}h3{font-size:15px;margin:14px 0 6px}
h4{font-size:13px;margin:10px 0 4px;color:#444}
table{border-collapse:collapse;margin:6px 0}th,td{border:1px solid #ddd;padding:3px 8px;
text-align:right}th{background:#f3f4f6}td:first-child,th:first-child{text-align:left}
table.kv td{text-align:left}.charts{display:flex;flex-wrap:wrap;gap:8px}
svg.chart{background:#fff;border:1px solid #eee}svg .frame{fill:none;stroke:#888}
svg .grid{stroke:#eee}svg .t{font-size:11px;font-weight:600}
svg .yt{font-size:10px;text-anchor:end}svg .xt{font-size:10px;text-anchor:middle}
svg .xl{font-size:11px;text-anchor:middle}svg .lg{font-size:10px}
svg .chance{stroke:#bbb;stroke-dasharray:4 3}svg .threshold{stroke:#111;stroke-width:1.5;
stroke-dasharray:5 3}svg .mark{fill:none;stroke:#111;stroke-width:2}
.gallery{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0;width:300px}
figure img{width:300px;border:1px solid #ddd;display:block}figcaption{font-size:12px}
.tag{display:inline-block;padding:0 5px;border-radius:3px;background:#e5e7eb;font-size:11px}
.tag.bad{background:#fde2d4;color:#8a2c0d}.tag.ok{background:#d6ebf7;color:#0b4a6f}
.chip{display:inline-block;margin:2px 6px 2px 0;padding:2px 8px;border-radius:10px;
background:#eef2ff}.note{color:#8a2c0d}.files{font-size:12px;color:#555}
.jet{display:inline-block;width:120px;height:10px;vertical-align:middle;background:
linear-gradient(90deg,#00007f,#0000ff 12%,#00ffff 37%,#ffff00 63%,#ff0000 88%,#7f0000)}
.scale{font-size:12px;color:#444}pre{font-size:12px;background:#f6f8fa;padding:8px;
overflow:auto;max-height:420px}small{color:#666}
"""

# Records script errors, failed loads and console errors where a headless browser's dumped DOM
# shows them (data-errors on <html>; data-broken-images and data-ready on <body> after load).
WATCH = """<script>
(function(){var errs=[],root=document.documentElement;
function note(m){errs.push(String(m));root.setAttribute('data-errors',String(errs.length));
root.setAttribute('data-error-text',errs.join(' | ').slice(0,2000));}
root.setAttribute('data-errors','0');
window.addEventListener('error',function(e){var t=e.target;note(e.message||(t&&(t.src||t.href))
||'load error');},true);
window.addEventListener('unhandledrejection',function(e){note(e.reason);});
var ce=console.error;console.error=function(){note([].slice.call(arguments).join(' '));
return ce.apply(console,arguments);};
window.addEventListener('load',function(){var b=0,im=document.images;
for(var i=0;i<im.length;i++){if(!im[i].complete||im[i].naturalWidth===0){b++;}}
document.body.setAttribute('data-images',String(im.length));
document.body.setAttribute('data-broken-images',String(b));
document.body.setAttribute('data-ready','1');});})();
</script>"""


def _page(title: str, subtitle: str, nav: Sequence[tuple], body: Sequence[str]) -> str:
    links = "".join(f'<a href="{esc(href)}">{esc(label)}</a>' for href, label in nav)
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{STYLE}</style>{WATCH}</head><body>"
            f"<header><h1>{esc(title)}</h1><p>{subtitle}</p></header>"
            + (f"<nav>{links}</nav>" if links else "")
            + "<main>" + "".join(b for b in body if b) + "</main></body></html>\n")


def _stamp(workdir: str) -> str:
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"written {when} from {esc(os.path.abspath(workdir))}"


def _write(path: str, text: str) -> str:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    return os.path.abspath(path)


def _anchor(name: str) -> str:
    return "cat-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _title(workdir: str, config: Optional[dict]) -> str:
    results_md = os.path.join(workdir, "results.md")
    if os.path.isfile(results_md):
        with open(results_md) as f:
            first = f.readline().strip()
        if first.startswith("# "):
            return md_plain(first[2:])  # report.markdown_table escaped it
    if config:
        return f"{_get(config, 'data.name')}: {_get(config, 'model.method')}"
    return os.path.basename(os.path.abspath(workdir))


def _links(workdir: str, names: Sequence[str]) -> str:
    found = [n for n in names if os.path.isfile(os.path.join(workdir, n))]
    return ('<p class="files">files: ' + " ".join(f'<a href="{esc(url_path(n))}">{esc(n)}</a>'
                                                   for n in found) + "</p>") if found else ""


def fit_report(workdir: str) -> str:
    """DIR/report.html of a fit run (and its predictions) -> the path."""
    stored = _read_json(os.path.join(workdir, "metrics.json")) or {}
    config = stored.get("config")
    results = stored.get("categories") or {}
    folders = {c: os.path.join(workdir, "categories", c) for c in results}
    anchors = {c: "#" + _anchor(c) for c in results}
    summary = ['<section id="summary"><h2>Results</h2>']
    if results:
        summary.append(_metric_table(results, QUALITY, anchors))
        decisions = _metric_table(results, DECISION, anchors)
        if decisions:
            summary.append("<h3>At the decision threshold (set from the training images)</h3>"
                           + decisions)
        audit = _metric_table(results, AUDIT, anchors)
        if audit:
            summary.append("<h3>Training-set audit (ranking the injected images)</h3>" + audit)
    else:
        summary.append("<p>No finished category yet.</p>")
    summary.append(_links(workdir, ("metrics.json", "results.md", "run.log")) + "</section>")
    data_rows = [_data_row(c, folders[c], r, anchors[c]) for c, r in results.items()]
    data = ""
    if data_rows:
        mode = _noise_mode(config)
        data = ('<section id="data"><h2>Data</h2>'
                f"<p>Noise: ratio {_fmt(_get(config or {}, 'noise.ratio'))}, mode "
                f"{esc(mode)}. Overlap: injected images that are also test images.</p>"
                + _table(DATA_HEADER, data_rows)
                + "".join(f"<h4>{esc(c)}</h4>{_injected_list(folders[c])}" for c in results)
                + "</section>")
    sections = [_category_section(c, folders[c], r, os.path.join("categories", c),
                                  _anchor(c)) for c, r in results.items()]
    predictions = _predictions_section(workdir)
    nav = ([("#summary", "results")] + [(anchors[c], c) for c in results]
           + ([("#predictions", "predictions")] if predictions else [])
           + [("#data", "data"), ("#config", "config")])
    page = _page(_title(workdir, config), _stamp(workdir), nav,
                 summary + sections + [predictions, data, _config_section(config)])
    return _write(os.path.join(workdir, REPORT_FILE), page)


def _noise_mode(config: Optional[dict]) -> str:
    from softpatch_jax.data import noise

    mode, overlap = _get(config or {}, "noise.mode"), _get(config or {}, "noise.overlap")
    try:
        return noise.resolve_mode(mode or "", bool(overlap))
    except ValueError:
        return str(mode)


def _sweep_points(workdir: str) -> List[tuple]:
    """[(folder relative to DIR, result)] of every finished point."""
    out = []
    root = os.path.join(workdir, "points")
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if "result.json" in files:
            result = _read_json(os.path.join(folder, "result.json"))
            if result is not None:
                out.append((os.path.relpath(folder, workdir), result))
    return sorted(out, key=lambda p: (str(p[1].get("category")), str(p[1].get("mode")),
                                      _float(p[1].get("ratio")) or 0.0, str(p[1].get("method"))))


def point_report(workdir: str, rel: str, result: dict) -> str:
    """DIR/<rel>/report.html of one sweep point -> the path."""
    folder = os.path.join(workdir, rel)
    name = str(result.get("category", ""))
    back = "/".join([".."] * len(rel.split(os.sep))) + "/" + REPORT_FILE
    title = (f"{name}: {result.get('method')}, noise {_plain(result.get('ratio'))} "
             f"({result.get('mode')})")
    section = _category_section(name, folder, result, ".", _anchor(name))
    data = ('<section id="data"><h2>Data</h2>'
            + _table(DATA_HEADER, [_data_row(name, folder, result)]) + _injected_list(folder)
            + "</section>")
    page = _page(title, _stamp(folder), [(back, "back to the sweep")],
                 [section, data, _config_section(result.get("config"))])
    return _write(os.path.join(folder, REPORT_FILE), page)


SWEPT_FIELDS = ("noise.mode", "noise.ratio", "model.method", "model.discriminator")


def _seconds(v) -> str:
    return f"{v:.1f}" if isinstance(v, (int, float)) else "-"


def _plain(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _axis_order(v: str):
    number = _float(v)
    return (0, number, "") if number is not None else (1, 0.0, v)


def sweep_report(workdir: str) -> str:
    """DIR/report.html of a sweep and one report.html per point -> the path."""
    pts = _sweep_points(workdir)
    for rel, result in pts:
        point_report(workdir, rel, result)
    link = {rel: url_path(os.path.join(rel, REPORT_FILE)) for rel, _ in pts}
    metrics = [(k, label) for k, label in QUALITY[:3]
               if any(_present(r.get(k)) for _, r in pts)]
    charts = []
    for category in sorted({str(r.get("category")) for _, r in pts}):
        for mode in sorted({str(r.get("mode")) for _, r in pts}):
            sub = [(rel, r) for rel, r in pts if str(r.get("category")) == category
                   and str(r.get("mode")) == mode]
            if not sub:
                continue
            ratios = sorted({_float(r.get("ratio")) or 0.0 for _, r in sub})
            x_range = (ratios[0], ratios[-1]) if ratios[-1] > ratios[0] else (
                ratios[0] - 0.05, ratios[0] + 0.05)
            for key, label in metrics:
                series = []
                for k, method in enumerate(sorted({str(r.get("method")) for _, r in sub})):
                    line = sorted((_float(r.get("ratio")) or 0.0, r.get(key), rel)
                                  for rel, r in sub if str(r.get("method")) == method
                                  and _present(r.get(key)))
                    if line:
                        series.append({
                            "label": method, "x": [p[0] for p in line],
                            "y": [p[1] for p in line], "colour": PALETTE[k % len(PALETTE)],
                            "points": True, "links": [link[p[2]] for p in line],
                            "tips": [f"{method}, noise {p[0]:g}: {label} {p[1]:.4f} "
                                     "(click for its report)" for p in line]})
                if series:
                    charts.append(svg_lines(series, "noise ratio", label,
                                            f"{category}: {label} ({mode})", x_range=x_range,
                                            ticks_x=ratios, legend="bottom left", width=360,
                                            height=280))
    cols = [k for k, _ in QUALITY if any(_present(r.get(k)) for _, r in pts)]
    labels = dict(QUALITY)
    rows = [[esc(str(r.get("category"))), esc(str(r.get("mode"))), esc(_plain(r.get("ratio"))),
             esc(str(r.get("method")))] + [_fmt(r.get(k)) for k in cols]
            + [_seconds(r.get("seconds")), f'<a href="{esc(link[rel])}">report</a>']
            for rel, r in pts]
    table = _table(["category", "mode", "ratio", "method"] + [labels[k] for k in cols]
                   + ["seconds", "point"], rows)
    means = ""
    if len({r.get("category") for _, r in pts}) > 1:
        cells = {}
        for _, r in pts:
            key = f"{r.get('mode')}, noise {r.get('ratio')}, {r.get('method')}"
            cells.setdefault(key, []).append(r)
        mean_rows = {k: {c: report.mean(r.get(c) for r in rs) for c in cols}
                     for k, rs in sorted(cells.items())}
        means = ("<h3>Mean over categories</h3>"
                 + _metric_table(mean_rows, [(c, labels[c]) for c in cols], corner="setting",
                                 mean_row=False))
    # The fields the points differ in are the sweep's axes, in the title; the rest is shared.
    config = {k: v for k, v in (pts[0][1].get("config") or {}).items()
              if k not in SWEPT_FIELDS} if pts else None
    axes = "; ".join(", ".join(sorted({_plain(r.get(k)) for _, r in pts}, key=_axis_order))
                     for k in ("category", "mode", "ratio", "method"))
    title = (f"Sweep: {_get(config or {}, 'data.name')} {axes} ({len(pts)} points)" if pts
             else "Sweep: no finished point yet")
    body = ['<section id="curves"><h2>Metrics against noise</h2><p>One line per method; '
            "each point links to its own report.</p>"
            + '<div class="charts">' + "".join(charts) + "</div></section>",
            '<section id="table"><h2>Results</h2>' + table + means
            + _links(workdir, ("results.csv", "results.md", "metrics.json",
                               "auroc_vs_noise.png", "run.log")) + "</section>",
            _config_section(config)]
    page = _page(title, _stamp(workdir), [("#curves", "curves"), ("#table", "results"),
                                          ("#config", "config")], body)
    return _write(os.path.join(workdir, REPORT_FILE), page)


def write_report(workdir: str) -> str:
    """Writes DIR/report.html from what is in `workdir`: a sweep (points/), a fit run
    (metrics.json, categories/; with its predictions/) or predictions alone -> its path."""
    if os.path.isdir(os.path.join(workdir, "points")):
        return sweep_report(workdir)
    return fit_report(workdir)
