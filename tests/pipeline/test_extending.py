"""Adding a method or a discriminator is one new class or scorer plus one registration line; both
then run through fit, score, the sweep and predict with nothing else changed. A discriminator
that also declares a neighbour form runs under every denoise.grouping; one that does not is
refused under the groupings that need it, in one line."""
import csv
import functools
import importlib.util
import os

import jax.numpy as jnp
import numpy as np
import pytest

from softpatch_jax import methods
from softpatch_jax.export import exporter
from softpatch_jax.ops import discriminators, grouping
from softpatch_jax.pipeline import evaluate, predict, sweep

from conftest import load_config
from toy_method import DistanceToMean


methods.register(DistanceToMean)


def spread_scores(x):
    """A toy discriminator: 1 + distance of each member to its group's mean."""
    return 1.0 + jnp.sqrt(jnp.sum((x - x.mean(axis=0)) ** 2, axis=1))


discriminators.register("toy_spread", lambda k: spread_scores)


def knn_mean_scores(x, k):
    """A toy discriminator: (B, D) -> (B,) mean distance of each member to its k nearest others."""
    d = jnp.sqrt(jnp.sum((x[:, None] - x[None]) ** 2, axis=-1))
    d = jnp.where(jnp.eye(len(x), dtype=bool), jnp.inf, d)
    return jnp.mean(jnp.sort(d, axis=1)[:, :k], axis=1)


# Its neighbour form, for denoise.grouping=neighbourhood / global / auto: two more declarations.
discriminators.register("toy_knn_mean", lambda k: functools.partial(knn_mean_scores, k=k),
                        min_group=lambda k: k + 1, neighbours=lambda k: k,
                        from_neighbours=lambda dist, idx: jnp.mean(dist, axis=1))


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
            run.update_from_flattened_dict(methods.sweep_overrides(entry))
            del run["sweep"]
        workdir = str(tmp_path / entry)
        result = evaluate.train_and_evaluate(run, workdir)["widget"]
        assert result["image_auroc"] == by_entry[entry]["image_auroc"]
        fitted = _scores_csv(os.path.join(workdir, "categories", "widget", "scores.csv"))
        names = sorted(fitted)[:3]
        images = [os.path.join(mvtec_root, "widget", n) for n in names]
        _, scores = predict.predict_images(workdir, images, write_maps=False)["widget"]
        np.testing.assert_allclose(scores, [fitted[n] for n in names], rtol=1e-5)
        if entry == "toy_distance_to_mean":  # and exports, with no export code of its own
            folder = exporter.export_workdir(workdir, batch=2)["widget"]
            spec = importlib.util.spec_from_file_location("toy_loader",
                                                          os.path.join(folder, "loader.py"))
            loader = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(loader)
            out = loader.Scorer(folder).score_files(images)
            np.testing.assert_allclose(out["scores"], [fitted[n] for n in names], rtol=1e-5)


GRID = (4, 5)
RADIUS = 1


def _grouping_features(aligned, b=7, d=6, seed=0):
    """(B, P, d) features: `aligned`, one base pattern per position plus small noise (auto takes
    position grouping); else noise alone (nothing lines up: auto takes neighbourhood)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, GRID[0] * GRID[1], d))
    if aligned:
        x = rng.normal(size=(1, GRID[0] * GRID[1], d)) * 3.0 + 0.05 * x
    return x.astype(np.float32)


def _knn_mean_reference(x, radius, k):
    """NumPy: each patch's mean distance to its k nearest candidates, the patches of the other
    images within the Chebyshev `radius` on the grid (None: anywhere)."""
    b, p, d = x.shape
    image, pos = np.divmod(np.arange(b * p), p)
    row, col = np.divmod(pos, GRID[1])
    cheb = np.maximum(abs(row[:, None] - row[None]), abs(col[:, None] - col[None]))
    cand = (image[:, None] != image[None]) & (True if radius is None else cheb <= radius)
    flat = x.reshape(-1, d).astype(np.float64)
    dist = np.sqrt(((flat[:, None] - flat[None]) ** 2).sum(-1))
    dist = np.sort(np.where(cand, dist, np.inf), axis=1)[:, :k]
    return dist.mean(1).reshape(b, p)


@pytest.mark.parametrize("name,aligned,runs_as", [
    ("position", False, "position"), ("neighbourhood", False, "neighbourhood"),
    ("global", False, "global"), ("auto", True, "position"), ("auto", False, "neighbourhood")])
def test_toy_neighbour_discriminator_runs_under_every_grouping(name, aligned, runs_as):
    """As SoftPatch runs it: checked, `auto` resolved, scored under the resolved grouping."""
    grouping.check(name, RADIUS, ["toy_knn_mean"], "denoise.discriminator")
    assert "toy_knn_mean" in grouping.supporting(name)
    x = _grouping_features(aligned)
    run, _ = grouping.resolve(name, x, GRID, RADIUS)
    assert run == runs_as
    ours = grouping.grouped_scores(x, "toy_knn_mean", run, k=3, radius=RADIUS, grid=GRID)
    radius = {"position": 0, "neighbourhood": RADIUS, "global": None}[run]
    np.testing.assert_allclose(ours, _knn_mean_reference(x, radius, 3), rtol=1e-4)


@pytest.mark.parametrize("name", ["neighbourhood", "global", "auto"])
def test_discriminator_without_a_neighbour_form_is_refused_in_one_line(name):
    """toy_spread declares only its group scorer: position grouping alone. The message names
    the field and the registered discriminators that do run under the grouping."""
    with pytest.raises(ValueError) as err:
        grouping.check(name, RADIUS, ["toy_spread"], "denoise.discriminator")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"denoise.grouping={name} does not support "
                              "denoise.discriminator=toy_spread; use ")
    assert "toy_knn_mean" in message and "toy_spread there" not in message
    for listed in message.split("; use ")[1].split(" there")[0].split(" or "):
        assert listed in grouping.supporting(name)
    if name != "auto":  # auto is resolved per fit; the config check refuses it
        with pytest.raises(ValueError, match="does not support denoise.discriminator=toy_spread"):
            grouping.grouped_scores(_grouping_features(False), "toy_spread", name, k=3,
                                    radius=RADIUS, grid=GRID)
    c = load_config("default.py")
    c.model.method, c.denoise.discriminator, c.denoise.grouping = "softpatch", "toy_spread", name
    with pytest.raises(ValueError, match=f"denoise.grouping={name} does not support"):
        methods.from_config(c)
    grouping.check("position", RADIUS, ["toy_spread"], "denoise.discriminator")
