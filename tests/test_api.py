"""The Python API (softpatch_jax/api.py): a fit on the training files of a category gives the
command line's scores for it to the last digit; arrays and paths of the same images give the
same fit; save / load, a command-line category folder and export from Python all score alike;
bad input is one line naming what is wrong; examples/api.py runs."""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import softpatch_jax
from softpatch_jax.export import loader
from softpatch_jax.pipeline import evaluate
from softpatch_jax.upgrade import upgrade

from conftest import REPO, load_config

SIZE = 32
SETTINGS = dict(lof_k=3, coreset_ratio=0.2, image_size=SIZE, resize=SIZE,
                config={"data.batch_size": 8})


@pytest.fixture(scope="module")
def cli_run(mvtec_root, cache_dir, tmp_path_factory):
    """The command line's fit of widget without noise -> (workdir, train paths, test paths)."""
    c = load_config("mvtec.py")
    c.data.update(dict(root=mvtec_root, category="widget", resize=SIZE, image_size=SIZE,
                       batch_size=8))
    c.update_from_flattened_dict({"denoise.lof_k": 3, "bank.coreset_ratio": 0.2,
                                  "noise.ratio": 0.0, "runtime.cache_dir": cache_dir})
    work = str(tmp_path_factory.mktemp("cli"))
    evaluate.train_and_evaluate(c, work)
    split = evaluate.prepare_split(upgrade(c), "widget")
    return work, [s.path for s in split.train], [s.path for s in split.test]


def _cli_scores(work):
    with open(os.path.join(work, "categories", "widget", "scores.csv")) as f:
        return {r["name"]: float(r["score"]) for r in csv.DictReader(f)}


def test_a_fit_from_python_scores_as_the_command_line(cli_run, mvtec_root, cache_dir):
    work, train, test = cli_run
    model = softpatch_jax.SoftPatch(cache_dir=cache_dir, **SETTINGS)
    fitted = model.fit(train, name="widget")  # the category's name seeds the fit, as there
    result = model.predict(fitted, test)
    cli = _cli_scores(work)
    names = [os.path.relpath(p, os.path.join(mvtec_root, "widget")) for p in test]
    np.testing.assert_array_equal(result.scores, np.array([cli[n] for n in names], np.float32))
    assert result.maps.shape == (len(test), SIZE, SIZE)
    assert result.verdicts.dtype == bool and result.masks.shape == result.maps.shape
    assert fitted.audit.scores.shape == (len(train),) and set(fitted.audit.ranking) == set(train)

    # The same images as arrays (uint8, and floats in [0, 1]): the same fit and scores.
    arrays = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in train])
    same = model.fit(arrays, name="widget")
    np.testing.assert_array_equal(same.predict(test).scores, result.scores)
    floats = [a.astype(np.float64) / 255.0 for a in arrays]
    np.testing.assert_array_equal(model.fit(floats, name="widget").predict(test).scores,
                                  result.scores)

    # Save / load, and the command line's own category folder, score alike.
    saved = fitted.save(os.path.join(work, "from_python"))
    loaded = softpatch_jax.load(saved)
    np.testing.assert_array_equal(loaded.predict(test).scores, result.scores)
    order = np.argsort(-fitted.audit.scores, kind="stable")  # the file lists them by rank
    assert loaded.audit.names == [fitted.audit.names[i] for i in order]
    np.testing.assert_array_equal(loaded.audit.scores, fitted.audit.scores[order])
    np.testing.assert_array_equal(loaded.audit.flagged, fitted.audit.flagged[order])
    from_cli = softpatch_jax.load(os.path.join(work, "categories", "widget"))
    np.testing.assert_array_equal(from_cli.predict(test).scores, result.scores)
    assert from_cli.image_threshold == fitted.image_threshold
    # the command line's audit file read back: the same audit as the fit from Python
    np.testing.assert_array_equal(np.sort(from_cli.audit.scores), np.sort(fitted.audit.scores))

    # Export from Python: the standalone scorer agrees.
    folder = fitted.export(os.path.join(work, "export_from_python"), batch=4)
    exported = loader.Scorer(folder).score_files(test)
    # float32 distances of the exported brute search against the pruned one (about 1e4 here)
    np.testing.assert_allclose(exported["scores"], result.scores, rtol=2e-5)
    np.testing.assert_array_equal(exported["verdicts"], result.verdicts)


@pytest.mark.parametrize("fields, message", [
    (dict(discriminatr="lof"), "softpatch_jax.SoftPatch: discriminatr is not a config field"),
    (dict(batch_size=4), "batch_size is a field of fyd.batch_size and data.batch_size; name "
                         "one"),
    (dict(discriminator="median"), "denoise.discriminator='median' is unknown"),
    (dict(config={"bank.coreset_ratio": 0.0}), r"bank.coreset_ratio=0.0 must lie in \(0, 1\]"),
    (dict(prefilter="padim"), "model.prefilter is applied by the command line's fit and sweeps "
                              "only"),
])
def test_bad_settings_are_one_line_before_any_compute(fields, message):
    with pytest.raises(ValueError, match=message) as e:
        softpatch_jax.SoftPatch(**fields)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("images, message", [
    ("train.png", "is one path; give a list"),
    ([], "no images given"),
    ([np.zeros((8, 8, 2), np.uint8)], r"images\[0\]: an image array must be"),
    ([np.full((8, 8), 2.0)], r"images\[0\]: an image array must hold uint8 values or floats"),
    (["/no/such.png"], r"images\[0\] = '/no/such.png' cannot be read"),
    ([3], r"images\[0\] is a int; give image paths or numpy arrays"),
    (np.zeros((8, 8), np.uint8), "pass a single image as a list of one"),
])
def test_bad_images_are_one_line(images, message):
    model = softpatch_jax.PatchCore(image_size=SIZE, resize=SIZE)
    with pytest.raises(ValueError, match=message):
        model.fit(images)


def test_each_method_has_its_class():
    for cls, name in ((softpatch_jax.SoftPatch, "softpatch"),
                      (softpatch_jax.SoftPatchPlus, "softpatch_plus"),
                      (softpatch_jax.PatchCore, "patchcore"), (softpatch_jax.PaDiM, "padim"),
                      (softpatch_jax.FYD, "fyd")):
        model = cls(image_size=SIZE, resize=SIZE)
        assert model.method.name == name and model.config.model.method == name
    assert softpatch_jax.Model("padim", dim=10).config.padim.dim == 10
    assert softpatch_jax.PatchCore(seed=3).config.seed == 3  # the seed of every random choice


@pytest.mark.slow
def test_the_example_runs(tmp_path, cache_dir):
    env = dict(os.environ, PYTHONPATH=REPO, XDG_CACHE_HOME=cache_dir)
    done = subprocess.run([sys.executable, os.path.join(REPO, "examples", "api.py")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "most suspicious training images" in done.stdout
    assert "exported scorer, largest difference" in done.stdout
