"""Run folders as the pipeline leaves them, written by hand for the report's tests
(tests/io/test_assets.py, tests/report/, tests/io/test_escaping.py): a generated test set with
anomaly maps that light up its defects (`category`), a fit workdir (`fit_workdir`) and a sweep
point (`sweep_point`)."""
import csv
import glob
import os

import numpy as np
import pytest

from softpatch_jax.data import preprocess, synthetic
from softpatch_jax.data.samples import Sample
from softpatch_jax.files import write_json
from softpatch_jax.io import assets


def category_samples(root):
    """The generated category's test samples (good, then blob) with their masks."""
    base = os.path.join(root, "widget")
    out = []
    for path in sorted(glob.glob(os.path.join(base, "test", "*", "*.png"))):
        defect = os.path.basename(os.path.dirname(path))
        name = os.path.relpath(path, base)
        mask = None if defect == "good" else os.path.join(
            base, "ground_truth", defect, os.path.basename(path)[:-4] + "_mask.png")
        out.append(Sample(path, int(defect != "good"), defect, name, mask))
    return out


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    """A generated test set with anomaly maps that light up the defects: (samples, scores,
    maps, masks)."""
    root = str(tmp_path_factory.mktemp("data"))
    synthetic.make_mvtec_category(root, "widget", n_train=4, n_good=6, n_defect=6, size=32)
    samples = category_samples(root)
    masks = np.stack([preprocess.load_sample_mask(s, 32, 32) for s in samples])
    rng = np.random.default_rng(5)
    maps = (rng.random(masks.shape) + 2.0 * masks).astype(np.float32)
    scores = maps.reshape(len(samples), -1).max(1) + rng.normal(0, 0.5, len(samples))
    return samples, scores, maps, masks


def fit_workdir(path, category, threshold=1.9):
    """DIR as a fit run leaves it: metrics.json, categories/widget/* (assets by report_assets)
    and a second category `bare` whose folder holds nothing but result.json."""
    samples, scores, maps, masks = category
    folder = os.path.join(path, "categories", "widget")
    os.makedirs(folder)
    assets.report_assets(folder, samples, scores, maps, masks, 32, 32, count=4)
    with open(os.path.join(folder, "scores.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "label", "defect", "score"])
        w.writerows([s.name, s.label, s.defect, repr(float(v))] for s, v in zip(samples, scores))
    injected = [{"name": samples[-1].name, "defect": "blob"},  # also a test image: overlap
                {"name": "test/blob/<b>extra</b>.png", "defect": "blob", "rotation_deg": 1.5,
                 "shift_x": 0.01, "shift_y": -0.02}]
    write_json(os.path.join(folder, "noise.json"), injected)
    write_json(os.path.join(folder, "threshold.json"),
               {"image_threshold": threshold, "pixel_threshold": None, "false_reject": 0.01,
                "source": "leave_one_out"})
    audit = [("train/good/003.png", 0.9, 1, 1, 1), ("train/good/000.png", 0.5, 2, 0, 0),
             ("train/good/001.png", 0.4, 3, 0, 1), ("train/good/002.png", 0.1, 4, 0, 0)]
    with open(os.path.join(folder, "audit_widget.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "score", "rank", "flagged", "injected"])
        w.writerows(audit)
    result = {"image_auroc": 0.875, "pixel_auroc": 0.99, "aupro": 0.9, "image_f1_max": 0.8,
              "image_auroc_per_defect": {"blob": 0.875, "scratch": 0.5}, "n_train_clean": 4,
              "n_noise": 2, "n_test": 12, "n_test_anomalous": 6, "image_precision": 0.75,
              "audit_auroc": 0.75, "seconds": 3.5, "threshold_image": threshold}
    write_json(os.path.join(folder, "result.json"), result)
    os.makedirs(os.path.join(path, "categories", "bare"))
    bare = {"image_auroc": 0.5, "n_test": 3, "note": "a note"}
    write_json(os.path.join(path, "categories", "bare", "result.json"), bare)
    write_json(os.path.join(path, "metrics.json"),
               {"categories": {"bare": bare, "widget": result}, "mean": {},
                "config": {"seed": 0, "data": {"name": "mvtec", "category": "widget"},
                           "noise": {"ratio": 0.5, "mode": "", "overlap": True},
                           "model": {"method": "softpatch"}}})
    return folder


def sweep_point(workdir, category, mode, ratio, method, auroc):
    rel = os.path.join("points", category, mode, f"ratio{ratio:g}_{method}")
    os.makedirs(os.path.join(workdir, rel))
    write_json(os.path.join(workdir, rel, "result.json"),
               {"category": category, "mode": mode, "ratio": ratio, "method": method,
                "image_auroc": auroc, "n_test": 10, "seconds": 1.0,
                "config": {"data": {"name": "mvtec"}, "noise": {"ratio": ratio}}})
    return rel
