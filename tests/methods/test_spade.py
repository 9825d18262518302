"""SPADE (methods/spade.py): image and patch scores against a NumPy reference on generated
features, its checks, and the run through sweep, fit, checkpoint, predict, export and report."""

import jax
import numpy as np
import pytest

from softpatch_jax import methods
from softpatch_jax.methods import spade
from softpatch_jax.methods.base import Features
from softpatch_jax.pipeline import evaluate, sweep
from softpatch_jax.report import write_report

from conftest import load_config, loader_and_predict_scores, tiny_sweep_config


def _config(fields=None):
    c = load_config("default.py")
    c.update_from_flattened_dict({"model.method": "spade", "spade.image_k": 3,
                                  "spade.pixel_k": 2, "model.blur_sigma": 1.0, **(fields or {})})
    c.data.image_size = 12
    c.runtime.memory_budget_mb = 1
    return c


def _spade_numpy(test, train, image_k, pixel_k):
    """float64: pooled kNN over training images, then each test patch's mean distance to its
    pixel_k nearest patches among those images' patches (any position)."""
    dist = lambda a, b: np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))  # noqa: E731
    pooled_d = dist(test.mean(1), train.mean(1))
    near = np.argsort(pooled_d, axis=1, kind="stable")[:, :image_k]
    image = np.take_along_axis(pooled_d, near, 1).mean(1)
    patch = np.stack([np.sort(dist(test[t], train[near[t]].reshape(-1, train.shape[2])),
                              axis=1)[:, :pixel_k].mean(1) for t in range(len(test))])
    return image, patch


def test_scores_match_numpy():
    rng = np.random.default_rng(0)
    train = (rng.normal(size=(1, 9, 5)) + rng.normal(size=(7, 9, 5)) * 0.5).astype(np.float32)
    test = (rng.normal(size=(1, 9, 5)) + rng.normal(size=(5, 9, 5))).astype(np.float32)
    m = methods.from_config(_config())
    fitted = m.fit(Features(train, (3, 3)), jax.random.PRNGKey(0), progress=False)
    scores = m.score(fitted, Features(test, (3, 3)))
    image, patch = _spade_numpy(test.astype(np.float64), train.astype(np.float64), 3, 2)
    np.testing.assert_allclose(scores.image, image, rtol=1e-4)
    np.testing.assert_allclose(scores.grids.reshape(5, -1), patch, rtol=1e-4, atol=1e-5)
    again = m.score(m.fitted_from_arrays(fitted.to_arrays()), Features(test, (3, 3)))
    np.testing.assert_array_equal(again.image, scores.image)
    # In chunks of 2 test images (the last one padded): the same scores.
    patch2, image2 = spade.spade_scores(test, fitted.to_arrays(), 3, 2, rows=2)
    np.testing.assert_allclose(np.asarray(patch2), scores.grids.reshape(5, -1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(image2), scores.image, rtol=1e-6)


def test_fields_and_too_few_images_are_refused():
    with pytest.raises(ValueError, match="spade.image_k=0 must be >= 1"):
        methods.from_config(_config({"spade.image_k": 0}))
    m = methods.from_config(_config())
    m.check(3)
    with pytest.raises(ValueError, match="spade.image_k=3 needs at least that many"):
        m.check(2)


def test_spade_runs_through_sweep_fit_predict_export_and_report(mvtec_root, tmp_path,
                                                                cache_dir):
    c = tiny_sweep_config(mvtec_root, cache_dir)
    c.spade.image_k = 4
    c.sweep.ratios, c.sweep.modes = "0.25", "overlap"
    c.sweep.discriminators, c.sweep.overlays = "spade,spade@pixel_k=3", False
    rows = {r["method"]: r for r in sweep.run_sweep(c, str(tmp_path / "sweep"))}
    assert set(rows) == {"spade", "spade@pixel_k=3"}
    run = c.copy_and_resolve_references()
    with run.unlocked():
        run.noise.ratio, run.noise.mode, run.model.method = 0.25, "overlap", "spade"
        del run["sweep"]
    workdir = str(tmp_path / "fit")
    result = evaluate.train_and_evaluate(run, workdir)["widget"]
    assert result["image_auroc"] == rows["spade"]["image_auroc"]
    assert result["threshold_source"] == "kfold"  # no leave-own-image-out form: folds
    exported, predicted = loader_and_predict_scores(workdir, mvtec_root, "spade")
    np.testing.assert_allclose(exported, predicted, rtol=1e-4)
    assert "spade" in open(write_report(workdir)).read()
