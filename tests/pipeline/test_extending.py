"""Adding a method or a discriminator is one new class or scorer plus one registration line; both
then run through fit, score, the sweep and predict with nothing else changed."""
import csv
import os

import flax.struct
import jax.numpy as jnp
import numpy as np

from softpatch_jax import methods
from softpatch_jax.methods.base import FeatureSpec, Method, Scores
from softpatch_jax.ops import discriminators
from softpatch_jax.pipeline import evaluate, predict, sweep
from softpatch_jax.settings import comma_list

from conftest import load_config


@flax.struct.dataclass
class MeanState:
    mean: np.ndarray  # (P, D) the mean training patch per position

    def to_arrays(self):
        return {"mean": np.asarray(self.mean)}


@methods.register
class DistanceToMean(Method):
    """A toy method: squared distance of each patch to its position's mean training patch."""
    name = "toy_distance_to_mean"

    def __init__(self, *, layers, image_size, blur_sigma):
        self.features = FeatureSpec(tuple(layers))
        self.image_size, self.blur_sigma = image_size, blur_sigma

    @classmethod
    def from_config(cls, config):
        return cls(layers=comma_list(config.model.layers), image_size=config.data.image_size,
                   blur_sigma=config.model.blur_sigma)

    def fit(self, features, key, learned=None, progress=True):
        return MeanState(features.patches.mean(axis=0))

    def score(self, fitted, features):
        grids = ((features.patches - fitted.mean) ** 2).sum(-1).reshape(len(features),
                                                                         *features.grid)
        return Scores(grids.reshape(len(features), -1).max(1), grids, self.image_size,
                      self.blur_sigma)

    def fitted_from_arrays(self, arrays):
        return MeanState(arrays["mean"])


def spread_scores(x):
    """A toy discriminator: 1 + distance of each member to its group's mean."""
    return 1.0 + jnp.sqrt(jnp.sum((x - x.mean(axis=0)) ** 2, axis=1))


discriminators.register("toy_spread", lambda k: spread_scores)


def _config(root):
    c = load_config("sweeps/noise.py")
    c.data.root, c.data.category = root, "widget"
    c.data.resize = c.data.image_size = 32
    c.data.batch_size = 8
    c.sweep.ratios, c.sweep.discriminators = "0.25", "toy_distance_to_mean,toy_spread"
    c.sweep.overlays = False
    return c


def _scores_csv(path):
    with open(path) as f:
        return {r["name"]: float(r["score"]) for r in csv.DictReader(f)}


def test_toy_method_and_discriminator_run_everywhere(mvtec_root, tmp_path, cache_dir):
    assert "toy_distance_to_mean" in methods.names()
    # Sweep: the method by its name, the discriminator under SoftPatch.
    c = _config(mvtec_root)
    c.runtime.cache_dir = cache_dir
    rows = sweep.run_sweep(c, str(tmp_path / "sweep"))
    by_entry = {r["method"]: r for r in rows}
    assert set(by_entry) == {"toy_distance_to_mean", "toy_spread"}
    for r in rows:
        assert 0.0 <= r["image_auroc"] <= 1.0 and 0.0 <= r["pixel_auroc"] <= 1.0
    assert "toy_spread" in (tmp_path / "sweep" / "results.md").read_text()
    # Fit (with a checkpoint) and predict: the same scores as the fitted run.
    for entry in ("toy_distance_to_mean", "toy_spread"):
        run = c.copy_and_resolve_references()
        with run.unlocked():
            run.model.update(methods.sweep_overrides(entry))
            del run["sweep"]
        workdir = str(tmp_path / entry)
        result = evaluate.train_and_evaluate(run, workdir)["widget"]
        assert result["image_auroc"] == by_entry[entry]["image_auroc"]
        fitted = _scores_csv(os.path.join(workdir, "categories", "widget", "scores.csv"))
        names = sorted(fitted)[:3]
        images = [os.path.join(mvtec_root, "widget", n) for n in names]
        _, scores = predict.predict_images(workdir, images, write_maps=False)["widget"]
        np.testing.assert_allclose(scores, [fitted[n] for n in names], rtol=1e-5)
