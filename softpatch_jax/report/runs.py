"""The one reader of the folders runs leave on disk, for the report's pages: a fit run's
metrics.json, results.md and predictions/, each category's (or sweep point's) files (result.json,
scores.csv, threshold.json, noise.json, audit_<category>.csv and the assets io/assets.py writes:
curves.json, gallery.json, gallery/) and a sweep's points/. Every file may be absent: a reader
then returns None (or an empty value where the pages need no difference). Nothing here writes.
"""
import base64
import csv
import json
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from softpatch_jax.io.assets import CURVES_FILE, GALLERY_FILE
from softpatch_jax.io.text import csv_text_value, md_plain
from softpatch_jax.upgrade import upgrade, upgrade_flat

# The text columns the package's CSV writers guard against formulas (`csv_text_cell`).
CSV_TEXT = ("name", "defect", "path", "verdict")
# What predict leaves per category, the first found read: its table, then its scores alone.
PREDICTION_TABLES = ("predictions.csv", "scores.csv")


# ---------------------------------------------------------------------------------------------
# Files and values

def read_json(path: str):
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def read_csv(path: str) -> Optional[List[dict]]:
    """The rows of a CSV file the package wrote, its text cells as they were before the guard."""
    if not os.path.isfile(path):
        return None
    with open(path, newline="") as f:
        return [{k: csv_text_value(v) if k in CSV_TEXT and v else v for k, v in row.items()}
                for row in csv.DictReader(f)]


def number(v) -> Optional[float]:
    """A stored value as a finite float, or None (absent, text, NaN, infinite)."""
    try:
        out = float(v)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def config_field(config: dict, dotted: str):
    """A field of a nested config, or of a flat one ({'a.b': v}, as results store it)."""
    if dotted in config:
        return config[dotted]
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def image_uri(path: str) -> Optional[str]:
    """An image file as a data URI (the report embeds its images), or None when absent."""
    if not os.path.isfile(path):
        return None
    ext = os.path.splitext(path)[1].lower()
    mime = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png",
            ".svg": "image/svg+xml"}.get(ext, "application/octet-stream")
    with open(path, "rb") as f:
        return f"data:{mime};base64,{base64.b64encode(f.read()).decode('ascii')}"


def present(folder: str, names: Sequence[str]) -> List[str]:
    """The names (relative to `folder`) of the files that are there, in the given order."""
    return [n for n in names if os.path.isfile(os.path.join(folder, n))]


# ---------------------------------------------------------------------------------------------
# A fit run's workdir

def fit_run(workdir: str) -> Tuple[Optional[dict], Dict[str, dict]]:
    """metrics.json -> (the resolved config, in today's shape, or None, {category: result})."""
    stored = read_json(os.path.join(workdir, "metrics.json")) or {}
    config = stored.get("config")
    return (upgrade(config).to_dict() if config else None), stored.get("categories") or {}


def category_folder(workdir: str, category: str) -> str:
    return os.path.join(workdir, "categories", category)


def results_title(workdir: str) -> Optional[str]:
    """The heading results.md starts with, as plain text, or None."""
    path = os.path.join(workdir, "results.md")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        first = f.readline().strip()
    return md_plain(first[2:]) if first.startswith("# ") else None  # io/report.py escaped it


def predictions(workdir: str) -> List[Tuple[str, str, str, List[dict]]]:
    """[(category, its folder, its table's file name, the table's rows as stored)] of
    DIR/predictions/*/ in name order; folders without a table are left out."""
    root = os.path.join(workdir, "predictions")
    if not os.path.isdir(root):
        return []
    out = []
    for cat in sorted(c for c in os.listdir(root) if not c.startswith(".")):
        folder = os.path.join(root, cat)
        table = next(iter(present(folder, PREDICTION_TABLES)), None)
        if table is not None:
            out.append((cat, folder, table, read_csv(os.path.join(folder, table)) or []))
    return out


def prediction_image(folder: str, name: str) -> Optional[str]:
    """The data URI of a predicted image's overlay (else its heat map), or None."""
    stem = os.path.splitext(name)[0]
    return next((u for u in (image_uri(os.path.join(folder, sub, stem + ".png"))
                             for sub in ("overlays", "maps")) if u), None)


# ---------------------------------------------------------------------------------------------
# A category's (or sweep point's) folder

def scores(folder: str):
    """scores.csv -> (names, labels (T,), defects, scores (T,)), or None."""
    rows = read_csv(os.path.join(folder, "scores.csv"))
    if not rows:
        return None
    return ([r["name"] for r in rows], np.array([int(r.get("label") or 0) for r in rows]),
            [r.get("defect", "") for r in rows],
            np.array([number(r["score"]) or 0.0 for r in rows]))


def stored_threshold(folder: str) -> dict:
    """threshold.json ({} when absent)."""
    return read_json(os.path.join(folder, "threshold.json")) or {}


def threshold(folder: str, result: dict) -> Optional[float]:
    """The image decision threshold: threshold.json's, else the result's."""
    return number(stored_threshold(folder).get("image_threshold", result.get("threshold_image")))


def injected(folder: str) -> List[dict]:
    """noise.json: the injected training images ([] when absent)."""
    return read_json(os.path.join(folder, "noise.json")) or []


def curves(folder: str) -> dict:
    """curves.json ({} when absent)."""
    return read_json(os.path.join(folder, CURVES_FILE)) or {}


def gallery(folder: str) -> Optional[dict]:
    return read_json(os.path.join(folder, GALLERY_FILE))


def audit(folder: str, category: str) -> List[dict]:
    """audit_<category>.csv's rows in rank order ([] when absent)."""
    rows = read_csv(os.path.join(folder, f"audit_{category}.csv")) or []
    return sorted(rows, key=lambda r: int(r.get("rank") or 0))


# ---------------------------------------------------------------------------------------------
# A sweep's workdir

def sweep_points(workdir: str) -> List[tuple]:
    """[(folder relative to DIR, result)] of every finished point (a 0.2 point's config with
    today's field names)."""
    out = []
    root = os.path.join(workdir, "points")
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if "result.json" in files:
            result = read_json(os.path.join(folder, "result.json"))
            if result is not None:
                if result.get("config"):
                    result = dict(result, config=upgrade_flat(result["config"]))
                out.append((os.path.relpath(folder, workdir), result))
    return sorted(out, key=lambda p: (str(p[1].get("category")), str(p[1].get("mode")),
                                      number(p[1].get("ratio")) or 0.0, str(p[1].get("method"))))


def is_sweep(workdir: str) -> bool:
    return os.path.isdir(os.path.join(workdir, "points"))
