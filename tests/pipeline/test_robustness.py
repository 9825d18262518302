"""Nothing lost, nothing stale: runs are transactions, results carry their provenance, bad input
is one line, result files are valid. Each test makes its own generated data."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from softpatch_jax.data import synthetic
from softpatch_jax.features.cache import FeatureCache
from softpatch_jax.pipeline import evaluate, predict, sweep

from conftest import load_config


@pytest.fixture
def root(tmp_path):
    """Two small generated categories, private to the test (tests change files in them)."""
    r = tmp_path / "data"
    synthetic.make_mvtec_category(str(r), "alpha", n_train=8, n_good=3, n_defect=2, size=32)
    synthetic.make_mvtec_category(str(r), "beta", n_train=8, n_good=3, n_defect=2, size=32,
                                  seed=1)
    return str(r)


def _config(root, cache_dir, category="alpha,beta"):
    c = load_config("mvtec.py")
    c.data.update(dict(root=root, category=category, resize=32, image_size=32, batch_size=8))
    c.model.method = "patchcore"
    c.noise.ratio = 0.0
    c.runtime.cache_dir = cache_dir
    return c


def _tree(path):
    """{relative path: bytes} of every file under `path`."""
    out = {}
    for d, _, files in os.walk(path):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, path)] = open(p, "rb").read()
    return out


def _strict_json(path):
    def reject(name):
        raise ValueError(f"{path} holds {name}")
    with open(path) as f:
        return json.loads(f.read(), parse_constant=reject)


# 1. A run is a transaction.

def test_a_failed_rerun_leaves_the_workdir_byte_identical(root, tmp_path, cache_dir,
                                                          monkeypatch):
    work = str(tmp_path / "run")
    evaluate.train_and_evaluate(_config(root, cache_dir), work)
    before = _tree(work)
    assert "categories/alpha/checkpoint" in " ".join(before)
    calls = []
    real = evaluate.score_category

    def failing(*args, **kwargs):  # the rerun fails while scoring
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("scoring failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "score_category", failing)
    c = _config(root, cache_dir, "alpha")
    with pytest.raises(RuntimeError):
        evaluate.train_and_evaluate(c, work)
    assert _tree(work) == before
    # Bad data found by the checks before any compute: nothing changes either.
    # (A damaged file is left out, not an error: tests/data/test_unreadable_files.py.)
    mask = os.path.join(root, "beta", "ground_truth", "blob", "000_mask.png")
    os.rename(mask, mask + ".moved")
    with pytest.raises(FileNotFoundError, match="mask of test image test/blob/000.png is missing"):
        evaluate.train_and_evaluate(_config(root, cache_dir), work)
    os.rename(mask + ".moved", mask)
    assert _tree(work) == before
    # A failed first run in a new folder leaves no folder behind.
    fresh = tmp_path / "fresh"
    monkeypatch.setattr(evaluate, "score_category", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        evaluate.train_and_evaluate(_config(root, cache_dir, "alpha"), str(fresh))
    assert not fresh.exists()


def test_metrics_describe_exactly_the_categories_on_disk(root, tmp_path, cache_dir):
    work = str(tmp_path / "run")
    evaluate.train_and_evaluate(_config(root, cache_dir), work)
    # A rerun of the same config on fewer categories keeps the other's complete result.
    evaluate.train_and_evaluate(_config(root, cache_dir, "alpha"), work)
    metrics = _strict_json(os.path.join(work, "metrics.json"))
    assert sorted(metrics["categories"]) == sorted(predict.fitted_models(work)) == ["alpha",
                                                                                      "beta"]
    # Another config refuses to mix, naming the changed field; --overwrite replaces the lot.
    other = _config(root, cache_dir, "alpha")
    other.bank.coreset_ratio = 0.5
    with pytest.raises(ValueError, match=r"bank.coreset_ratio: 0.1 -> 0.5.*--overwrite"):
        evaluate.train_and_evaluate(other, work)
    evaluate.train_and_evaluate(other, work, overwrite=True)
    metrics = _strict_json(os.path.join(work, "metrics.json"))
    assert list(metrics["categories"]) == list(predict.fitted_models(work)) == ["alpha"]
    assert metrics["config"]["bank"]["coreset_ratio"] == 0.5
    assert "beta" not in (tmp_path / "run" / "results.md").read_text()
    assert not (tmp_path / "run" / "categories" / "beta").exists()


def test_stray_entries_neither_break_predict_nor_survive_a_save(root, tmp_path, cache_dir):
    work = tmp_path / "run"
    c = _config(root, cache_dir, "alpha")
    evaluate.train_and_evaluate(c, str(work))
    (work / "categories" / ".DS_Store").write_bytes(b"\0\1")
    ckpt = work / "categories" / "alpha" / "checkpoint"
    (ckpt / ".DS_Store").write_bytes(b"\0")
    (ckpt / "2.orbax-checkpoint-tmp-1234").mkdir()  # a save killed half-way
    (ckpt / "2.orbax-checkpoint-tmp-1234" / "junk").write_text("x")
    image = os.path.join(root, "alpha", "test", "good", "000.png")
    names, scores = predict.predict_images(str(work), [image], write_maps=False)["alpha"]
    assert names == ["000.png"] and np.isfinite(scores).all()
    evaluate.train_and_evaluate(c, str(work))
    assert sorted(os.listdir(ckpt)) == ["1"]  # a fresh folder: the leftovers are gone


def test_legacy_checkpoints_folder_still_predicts(root, tmp_path, cache_dir):
    work = tmp_path / "run"
    evaluate.train_and_evaluate(_config(root, cache_dir, "alpha"), str(work))
    legacy = tmp_path / "legacy"
    (legacy / "checkpoints").mkdir(parents=True)
    shutil.copytree(work / "categories" / "alpha" / "checkpoint", legacy / "checkpoints" / "alpha")
    (legacy / "checkpoints" / ".DS_Store").write_text("")
    assert list(predict.fitted_models(str(legacy))) == ["alpha"]
    # A new run in a legacy workdir replaces the old layout only when asked to.
    with pytest.raises(ValueError, match="earlier version"):
        evaluate.train_and_evaluate(_config(root, cache_dir, "alpha"), str(legacy))
    evaluate.train_and_evaluate(_config(root, cache_dir, "alpha"), str(legacy), overwrite=True)
    assert not (legacy / "checkpoints").exists()


# 2. Nothing stale is reported as new.

def _sweep_config(root, cache_dir):
    c = load_config("sweeps/noise.py")
    c.data.update(dict(root=root, category="alpha", resize=32, image_size=32, batch_size=8))
    c.sweep.ratios, c.sweep.discriminators, c.sweep.overlays = "0", "none,lof", False
    c.denoise.lof_k = 3
    c.runtime.cache_dir = cache_dir
    return c


def test_a_sweep_rerun_with_a_changed_field_refuses_or_recomputes(root, tmp_path, cache_dir,
                                                                  monkeypatch):
    work = str(tmp_path / "sweep")
    first = {r["method"]: r for r in sweep.run_sweep(_sweep_config(root, cache_dir), work)}
    calls = []
    real = evaluate.evaluate_category
    monkeypatch.setattr(evaluate, "evaluate_category",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    sweep.run_sweep(_sweep_config(root, cache_dir), work)  # same config and data: all skipped
    assert calls == []
    changed = _sweep_config(root, cache_dir)
    changed.bank.coreset_ratio = 0.5
    with pytest.raises(ValueError, match=r"bank.coreset_ratio: 0.1 -> 0.5.*--overwrite"):
        sweep.run_sweep(changed, work)
    rows = {r["method"]: r for r in sweep.run_sweep(changed, work, overwrite=True)}
    assert len(calls) == 2 and rows["none"]["memory_bank"] > first["none"]["memory_bank"]
    # A point of another config elsewhere in DIR is never aggregated with these.
    seeded = _sweep_config(root, cache_dir)
    seeded.bank.coreset_ratio = 0.5
    seeded.sweep.discriminators = "none"
    seeded.seed = 3
    with pytest.raises(ValueError, match=r"seed: 0 -> 3"):
        sweep.run_sweep(seeded, work)
    # A replaced image changes the data fingerprint: the points are stale.
    img = os.path.join(root, "alpha", "train", "good", "000.png")
    Image.open(img).transpose(Image.FLIP_LEFT_RIGHT).save(img)
    with pytest.raises(ValueError, match="images or masks"):
        sweep.run_sweep(changed, work)


def test_a_changed_image_invalidates_its_cached_features(root, tmp_path):
    from softpatch_jax.data import mvtec

    class Counting:
        seen = []

        def grid(self, size):
            return (2, 2)

        def embed(self, samples, *args, **kwargs):
            self.seen += [s.name for s in samples]
            return np.stack([np.full((4, 3), os.path.getsize(s.path), np.float32)
                             for s in samples])

    inner = Counting()
    cache = FeatureCache(inner, str(tmp_path / "features"))
    samples = mvtec.load_category(root, "alpha").train[:3]
    cache.embed(samples, 32, 32)
    cache.embed(samples, 32, 32)
    assert len(inner.seen) == 3  # the second call read the cache
    Image.new("RGB", (32, 32), (200, 10, 10)).save(samples[1].path)  # replaced in place
    again = cache.embed(samples, 32, 32)
    assert inner.seen[3:] == [samples[1].name]
    assert again[1, 0, 0] == os.path.getsize(samples[1].path)


# 5. Results are always valid files.

def test_single_class_test_set_gives_null_and_a_note(tmp_path, cache_dir):
    r = tmp_path / "own"
    synthetic.make_category(str(r), "folder", "part", n_train=8, n_good=6, n_defect=0, size=32)
    shutil.rmtree(r / "part" / "defective", ignore_errors=True)
    c = load_config("default.py")
    c.data.update(dict(name="folder", root=str(r), category="part", resize=32, image_size=32,
                       batch_size=8, max_train=0, max_test=0))
    c.noise.ratio, c.model.method, c.runtime.cache_dir = 0.0, "patchcore", cache_dir
    evaluate.train_and_evaluate(c, str(tmp_path / "run"))
    metrics = _strict_json(tmp_path / "run" / "metrics.json")
    part = metrics["categories"]["part"]
    assert part["image_auroc"] is None and "only normal images" in part["note"]
    assert metrics["mean"]["image_auroc"] is None


def test_file_names_with_commas_and_duplicate_names_stay_apart(root, tmp_path, cache_dir):
    import csv

    test_dir = os.path.join(root, "alpha", "test", "good")
    os.rename(os.path.join(test_dir, "001.png"), os.path.join(test_dir, "0,01.png"))
    work = str(tmp_path / "run")
    evaluate.train_and_evaluate(_config(root, cache_dir, "alpha"), work)
    with open(os.path.join(work, "categories", "alpha", "scores.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert "test/good/0,01.png" in [r["name"] for r in rows]
    assert all(float(r["score"]) >= 0 for r in rows)
    # Three images named 000.png in three folders: three rows and three maps.
    lots = []
    for lot in ("lot1", "lot2", "lot3"):
        os.makedirs(tmp_path / "new" / lot)
        lots.append(str(tmp_path / "new" / lot / "000.png"))
    for i, p in enumerate(lots):
        shutil.copy(os.path.join(root, "alpha", "test", "blob" if i else "good", "000.png"), p)
    names, scores = predict.predict_images(work, lots)["alpha"]
    assert names == ["lot1/000.png", "lot2/000.png", "lot3/000.png"]
    assert scores[0] < scores[1]  # a normal and a defective part: not one image thrice
    maps = sorted(str(p.relative_to(tmp_path / "run" / "predictions" / "alpha" / "maps"))
                  for p in (tmp_path / "run" / "predictions" / "alpha" / "maps").rglob("*.png"))
    assert maps == ["lot1/000.png", "lot2/000.png", "lot3/000.png"]
    # Folders and globs are accepted; a later predict replaces the folder whole.
    names, _ = predict.predict_images(work, [str(tmp_path / "new" / "lot*" / "*.png")])["alpha"]
    assert len(names) == 3
    names, _ = predict.predict_images(work, [str(tmp_path / "new" / "lot2")])["alpha"]
    assert names == ["000.png"]
    assert [p.name for p in (tmp_path / "run" / "predictions" / "alpha" / "maps").rglob("*.png")
            ] == ["000.png"]
