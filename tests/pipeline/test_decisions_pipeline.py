"""Decisions in the pipeline: the thresholds never read test labels, the audit and thresholds
land on disk, and predict gives verdicts, masks and overlays at them."""
import csv
import dataclasses
import json
import os

import numpy as np
import pytest
from PIL import Image

from softpatch_jax.data import synthetic
from softpatch_jax.pipeline import evaluate, predict

from conftest import load_config


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("parts")
    synthetic.make_mvtec_category(str(r), "gizmo", n_train=14, n_good=4, n_defect=6, size=48,
                                  seed=3)
    return str(r)


def _config(root, cache_dir, method="softpatch"):
    c = load_config("mvtec.py")
    c.data.update(dict(root=root, category="gizmo", resize=48, image_size=48, batch_size=8))
    c.update_from_flattened_dict({"model.method": method, "denoise.lof_k": 4,
                                  "bank.coreset_ratio": 0.2})
    c.noise.ratio, c.noise.mode = 0.2, "overlap"
    c.threshold.false_reject = 0.1
    c.runtime.cache_dir = cache_dir
    return c


def _run(config, split, out):
    os.makedirs(out)
    method = evaluate.methods.from_config(config)
    extractor = evaluate.extractor_for(config, method)
    return evaluate.evaluate_category(config, "gizmo", extractor, out, out + "_train",
                                      save_checkpoint=False, method=method, split=split)


@pytest.mark.parametrize("method", ["softpatch", "padim"])
def test_thresholds_and_audit_do_not_read_test_labels(root, cache_dir, tmp_path, method):
    c = _config(root, cache_dir, method)
    split = evaluate.prepare_split(c, "gizmo")
    result = _run(c, split, str(tmp_path / "a"))
    labels = [s.label for s in split.test]
    shuffled = np.random.default_rng(0).permutation(labels)
    assert list(shuffled) != labels
    test = [dataclasses.replace(s, label=int(lab), defect="good" if lab == 0 else "blob")
            for s, lab in zip(split.test, shuffled)]
    again = _run(c, dataclasses.replace(split, test=test), str(tmp_path / "b"))
    for name in ("threshold.json", "audit_gizmo.csv"):
        with open(tmp_path / "a" / name) as f1, open(tmp_path / "b" / name) as f2:
            assert f1.read() == f2.read(), name
    assert result["threshold_image"] == again["threshold_image"]
    assert result["threshold_source"] == ("leave_one_out" if method == "softpatch" else "kfold")
    # the figures at the threshold are those of the test scores against the test labels
    with open(tmp_path / "a" / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    scores = np.array([float(r["score"]) for r in rows])
    lab = np.array([int(r["label"]) for r in rows], bool)
    predicted = scores >= result["threshold_image"]
    assert result["image_false_reject"] == pytest.approx(predicted[~lab].mean())
    assert result["image_recall"] == pytest.approx(predicted[lab].mean())
    with open(tmp_path / "a" / "audit_gizmo.csv") as f:
        audit = list(csv.DictReader(f))
    assert [int(r["rank"]) for r in audit] == list(range(1, len(split.train) + 1))
    assert sum(int(r["injected"]) for r in audit) == len(split.injected)
    assert result["audit_auroc"] is not None


def test_predict_gives_verdicts_masks_and_overlays(root, cache_dir, tmp_path):
    work = str(tmp_path / "run")
    evaluate.train_and_evaluate(_config(root, cache_dir), work)
    with open(os.path.join(work, "categories", "gizmo", "threshold.json")) as f:
        stored = json.load(f)
    assert stored["image_threshold"] is not None and stored["pixel_threshold"] is not None
    good = os.path.join(root, "gizmo", "test", "good")
    bad = os.path.join(root, "gizmo", "test", "blob")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    listing = tmp_path / "more.txt"
    listing.write_text(f"# new parts\n{bad}/000.png\n\n{bad}/001.png\n")
    out = predict.predict_images(work, [good, str(listing), str(broken)])
    names, scores = out["gizmo"]
    assert len(names) == 6
    folder = os.path.join(work, "predictions", "gizmo")
    with open(os.path.join(folder, "predictions.json")) as f:
        pred = json.load(f)
    assert pred["image_threshold"] == stored["image_threshold"]
    for row, score in zip(pred["images"], scores):
        assert row["score"] == pytest.approx(float(score))
        assert row["verdict"] == ("anomalous" if score >= stored["image_threshold"] else "normal")
        stem = os.path.splitext(row["name"])[0] + ".png"
        mask = np.asarray(Image.open(os.path.join(folder, "masks", stem)))
        assert set(np.unique(mask)) <= {0, 255}
        assert mask.mean() / 255 == pytest.approx(row["anomalous_pixels"], abs=1e-6)
        assert os.path.isfile(os.path.join(folder, "overlays", stem))
        assert os.path.isfile(os.path.join(folder, "maps", stem))
    with open(os.path.join(folder, "predictions.csv")) as f:
        assert [r["verdict"] for r in csv.DictReader(f)] == [r["verdict"] for r in pred["images"]]
    with open(os.path.join(folder, "unreadable.txt")) as f:
        assert "broken.png" in f.read()
    # --threshold overrides the stored one
    cut = float(np.median(scores))
    predict.predict_images(work, [good], threshold=cut)
    with open(os.path.join(folder, "predictions.json")) as f:
        pred = json.load(f)
    assert pred["threshold_source"] == "--threshold"
    assert [r["verdict"] == "anomalous" for r in pred["images"]] == [
        r["score"] >= cut for r in pred["images"]]
    with pytest.raises(ValueError, match="none of the 1 images"):
        predict.predict_images(work, [str(broken)])


@pytest.mark.parametrize("fields", [{}, {"model.method": "patchcore"},
                                    {"denoise.ratio": "auto"}])
def test_one_number_for_the_audit_the_estimate_and_the_auto_ratio(root, cache_dir, tmp_path,
                                                                   fields):
    """result.json's estimated share of defective images is the audit's flagged share, for a
    fixed ratio, for a method without denoising, and for an `auto` ratio (which it sets)."""
    c = _config(root, cache_dir)
    c.update_from_flattened_dict(fields)
    split = evaluate.prepare_split(c, "gizmo")
    result = _run(c, split, str(tmp_path / "a"))
    n = len(split.train)
    assert result["contamination_images"] * n == pytest.approx(result["audit_flagged"])
    with open(tmp_path / "a" / "audit_gizmo.csv") as f:
        assert sum(int(r["flagged"]) for r in csv.DictReader(f)) == result["audit_flagged"]
    # the provisional fit has its own stage seconds
    assert ("estimate" in result["stage_seconds"]) == (fields.get("denoise.ratio") == "auto")
    if fields.get("denoise.ratio") == "auto":
        assert result["contamination_source"] == "left_out"
        assert result["denoise_ratios"]["denoise.ratio"] == pytest.approx(
            min(0.5, 1.5 * result["contamination_images"]))
    else:
        assert result["contamination_source"] == "audit"
