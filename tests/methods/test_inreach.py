"""InReaCh (methods/inreach.py): its fit against a NumPy reference (positions, associations,
channels, filters -> the bank), its scores against NumPy 1-NN squared distances and the map's
maximum, the position test against NumPy, its config checks, and the whole run through fit,
checkpoint, predict, sweep, export and the report on generated data."""
import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from softpatch_jax import methods
from softpatch_jax.evaluation import anomaly_map
from softpatch_jax.export import exporter
from softpatch_jax.methods import inreach
from softpatch_jax.methods.base import Features
from softpatch_jax.pipeline import evaluate, predict, sweep
from softpatch_jax.report import write_report

from conftest import load_config, tiny_sweep_config
from inreach_reference import associate_numpy as _associate_numpy
from inreach_reference import members_numpy as _members_numpy

GRID = (3, 4)


def _config(fields=None):
    c = load_config("default.py")
    c.update_from_flattened_dict({"model.method": "inreach", "inreach.seeds": 3,
                                  "inreach.min_channel_length": 2, **(fields or {})})
    c.data.image_size = 16
    c.runtime.memory_budget_mb = 64
    return c


def _features(b, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(0).normal(size=(1, GRID[0] * GRID[1], 6)) * 2.0
    x = base + rng.normal(size=(b, GRID[0] * GRID[1], 6)) * 0.6
    x[:, 0] += shift
    return x.astype(np.float32)


def _with_positions_numpy(x, weight):
    """Row and column times weight / grid size appended (nothing appended at weight 0)."""
    if weight == 0:
        return x
    h, w = GRID
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    pos = np.stack([rows.ravel() * weight / h, cols.ravel() * weight / w], 1)
    return np.concatenate([x, np.broadcast_to(pos, x.shape[:2] + (2,))], 2)


@pytest.mark.parametrize("weight,spread", [(5.0, "spherical"), (0.0, "code")])
def test_fit_and_score_match_numpy(weight, spread):
    m = methods.from_config(_config({"inreach.spread": spread}))
    train = _features(9, 1)
    fitted = m.fit(Features(train, GRID), jax.random.PRNGKey(0), learned=weight,
                   progress=False)
    # The bank: every nominal patch of the reference, in row-major order.
    ref_x = _with_positions_numpy(train.astype(np.float64), weight)
    seed, seed_patch, _, mutual = _associate_numpy(ref_x, 3)
    nominal = _members_numpy(ref_x, seed, seed_patch, mutual, 2, 5.0, spread)
    assert 0 < nominal.sum() < nominal.size
    b_idx, p_idx = np.nonzero(nominal)
    np.testing.assert_allclose(fitted.bank.features, ref_x[b_idx, p_idx], rtol=1e-6)
    np.testing.assert_array_equal(fitted.bank.sources, b_idx)
    np.testing.assert_array_equal(fitted.bank.positions, p_idx)
    assert float(fitted.position_weight) == weight
    # Scores: squared distance to the nearest bank patch; the image score is the map's maximum.
    test = _features(4, 7, shift=3.0)
    scores = m.score(fitted, Features(test, GRID))
    q = _with_positions_numpy(test.astype(np.float64), weight)
    bank = ref_x[b_idx, p_idx]
    d2 = ((q[:, :, None] - bank[None, None]) ** 2).sum(-1).min(-1)
    np.testing.assert_allclose(scores.grids.reshape(4, -1), d2, rtol=1e-4, atol=1e-4)
    maps = anomaly_map.anomaly_maps(d2.reshape(4, *GRID), 16, 13.0)
    np.testing.assert_allclose(scores.image, maps.max(axis=(1, 2)), rtol=1e-4)
    # The checkpoint's arrays give back the same state, and the same scores.
    again = m.fitted_from_arrays(fitted.to_arrays())
    np.testing.assert_array_equal(m.score(again, Features(test, GRID)).image, scores.image)


def test_leave_own_image_out_scores_exclude_the_images_own_patches():
    m = methods.from_config(_config())
    train = _features(8, 2)
    fitted = m.fit(Features(train, GRID), jax.random.PRNGKey(0), learned=0.0, progress=False)
    left_out = m.training_scores(fitted, Features(train, GRID)).grids.reshape(8, -1)
    bank, sources = fitted.bank.features, fitted.bank.sources
    for i in range(8):
        other = bank[sources != i]
        d2 = ((train[i][:, None].astype(np.float64) - other[None]) ** 2).sum(-1).min(-1)
        np.testing.assert_allclose(left_out[i], d2, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(16, 16), (12, 16)])
def test_position_test_matches_numpy(shape):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=shape + (3,), dtype=np.uint8) for _ in range(5)]
    images = [np.clip(im.astype(int) + np.arange(shape[1])[None, :, None] * 8, 0, 255
                      ).astype(np.uint8) for im in images]  # a left-right ramp: asymmetric
    ours = inreach.mean_image_asymmetry(images, min(shape), shape, 2, progress=False)
    mean = np.mean([im.astype(np.float64) for im in images], axis=0)
    other = mean.transpose(1, 0, 2) if shape[0] == shape[1] else mean[::-1, ::-1]
    assert ours == pytest.approx(np.mean((mean - other) ** 2), rel=1e-4)
    for factor, weight in ((0.9, 5.0), (1.1, 0.0)):  # on at or above the threshold only
        c = _config({"inreach.position_threshold": ours * factor, "data.resize": min(shape)})
        c.data.image_size = shape
        assert methods.from_config(c).prepare(images, None, "", None)[1] == weight


@pytest.mark.parametrize("field,value,message", [
    ("inreach.spread", "median", "inreach.spread='median' must be code"),
    ("inreach.seeds", 0, "inreach.seeds=0 must be >= 1"),
    ("inreach.max_channel_std", 0.0, "inreach.max_channel_std=0.0 must be > 0"),
    ("inreach.position_weight", -1.0, "inreach.position_weight=-1.0 must be >= 0"),
    ("bank.sampler", "random", "bank.sampler='random' does not apply to model.method=inreach")])
def test_bad_fields_are_refused_naming_them(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        methods.from_config(_config({field: value}))


def test_too_few_training_images_are_refused():
    m = methods.from_config(_config())
    m.check(3)
    with pytest.raises(ValueError, match="inreach.min_channel_length=2"):
        m.check(2)


def _scores_csv(path):
    import csv
    with open(path) as f:
        return {r["name"]: float(r["score"]) for r in csv.DictReader(f)}


def test_inreach_runs_through_sweep_fit_predict_export_and_report(mvtec_root, tmp_path,
                                                                   cache_dir):
    c = tiny_sweep_config(mvtec_root, cache_dir)
    c.inreach.seeds, c.inreach.min_channel_length = 3, 2
    c.sweep.ratios, c.sweep.discriminators = "0,0.25", "inreach,inreach@spread=code"
    c.sweep.modes, c.sweep.overlays = "overlap", False
    rows = sweep.run_sweep(c, str(tmp_path / "sweep"))
    assert {r["method"] for r in rows} == {"inreach", "inreach@spread=code"}
    assert all(0.0 <= r["image_auroc"] <= 1.0 for r in rows)
    # The fit: its result, checkpoint and stages; predict from the checkpoint; export.
    run = c.copy_and_resolve_references()
    with run.unlocked():
        run.noise.ratio, run.noise.mode = 0.25, "overlap"
        run.model.method = "inreach"
        del run["sweep"]
    workdir = str(tmp_path / "fit")
    result = evaluate.train_and_evaluate(run, workdir)["widget"]
    by_entry = {(r["method"], r["ratio"]): r for r in rows}
    assert result["image_auroc"] == by_entry[("inreach", 0.25)]["image_auroc"]
    stored = json.load(open(os.path.join(workdir, "categories", "widget", "result.json")))
    assert "position_test" in stored["stage_seconds"] and stored["memory_bank"] > 0
    fitted = _scores_csv(os.path.join(workdir, "categories", "widget", "scores.csv"))
    names = sorted(fitted)[:3]
    images = [os.path.join(mvtec_root, "widget", n) for n in names]
    _, scores = predict.predict_images(workdir, images, write_maps=False)["widget"]
    np.testing.assert_allclose(scores, [fitted[n] for n in names], rtol=1e-5)
    folder = exporter.export_workdir(workdir, batch=2)["widget"]
    spec = importlib.util.spec_from_file_location("inreach_loader",
                                                  os.path.join(folder, "loader.py"))
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    out = loader.Scorer(folder).score_files(images)
    # float32 |q|^2 + |b|^2 - 2 q.b: a score near 0 (an injected test image's own patches are
    # in the bank) is equal up to the cancellation of the largest scores' scale.
    expected = [fitted[n] for n in names]
    np.testing.assert_allclose(out["scores"], expected, rtol=1e-4, atol=1e-5 * max(expected))
    assert "inreach" in open(write_report(workdir)).read()
