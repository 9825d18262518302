"""What 0.2 wrote, 0.3 reads and recognises (issue 25): 0.2 itself (its package from this
repository's history) fits a workdir, runs a sweep and exports; then today's code, given the same
settings under today's names, refits the workdir without refusing it (to the same metrics),
finds every sweep point finished, predicts and exports from the 0.2 checkpoint, and scores
through the 0.2 export, all to the same numbers. tests/test_upgrade.py tests the upgrade step
itself without git."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from softpatch_jax.export import loader
from softpatch_jax.export.exporter import export_workdir
from softpatch_jax.pipeline import evaluate, predict, sweep

from conftest import REPO, load_config

V0_2 = "91a0612"  # the last commit of 0.2.0 (one flat `model` section)
SIZE = 32
# The same run under 0.2's names (on its command line) and today's.
OLD = ["--config.model.lof_k=3", "--config.model.threshold=0.2", "--config.model.coreset_ratio=0.2"]
NEW = {"denoise.lof_k": 3, "denoise.ratio": 0.2, "bank.coreset_ratio": 0.2}


def _v0_2_package(tmp_path) -> str:
    """0.2's package, configs and drivers extracted from git -> their folder (or a skip)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: cannot extract 0.2 from the repository's history")
    known = subprocess.run(["git", "-C", REPO, "cat-file", "-e", f"{V0_2}^{{commit}}"],
                           capture_output=True)
    if known.returncode != 0:
        pytest.skip(f"commit {V0_2} (0.2.0) is not in this clone (shallow?): nothing to compare")
    folder = tmp_path / "v0_2"
    folder.mkdir()
    archive = subprocess.run(["git", "-C", REPO, "archive", V0_2, "softpatch_jax", "configs",
                              "experiments"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return str(folder)


def _run_0_2(folder, module, args, cache_dir):
    env = dict(os.environ, PYTHONPATH=folder, XDG_CACHE_HOME=cache_dir)
    done = subprocess.run([sys.executable, "-m", module] + args, cwd=folder, env=env,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def _today(mvtec_root, cache_dir, config_file="mvtec.py"):
    c = load_config(config_file)
    c.data.update(dict(root=mvtec_root, category="widget", resize=SIZE, image_size=SIZE,
                       batch_size=8))
    c.update_from_flattened_dict(NEW)
    c.runtime.cache_dir = cache_dir
    return c


@pytest.mark.slow
def test_workdirs_sweeps_checkpoints_and_exports_of_0_2(mvtec_root, cache_dir, tmp_path):
    folder = _v0_2_package(tmp_path)
    fit_dir, sweep_dir = str(tmp_path / "fit"), str(tmp_path / "sweep")
    common = [f"--config.data.root={mvtec_root}", "--config.data.category=widget",
              f"--config.data.resize={SIZE}", f"--config.data.image_size={SIZE}",
              "--config.data.batch_size=8", f"--config.runtime.cache_dir={cache_dir}"] + OLD
    _run_0_2(folder, "softpatch_jax.main", ["--config=configs/mvtec.py", f"--workdir={fit_dir}"]
             + common, cache_dir)
    _run_0_2(folder, "experiments.sweep", ["--config=configs/sweeps/noise.py",
                                           f"--workdir={sweep_dir}", "--config.sweep.ratios=0.2",
                                           "--config.sweep.discriminators=lof,none",
                                           "--config.sweep.overlays=False"] + common, cache_dir)
    _run_0_2(folder, "softpatch_jax.main", ["--mode=export", f"--workdir={fit_dir}"], cache_dir)
    category = os.path.join(fit_dir, "categories", "widget")
    with open(os.path.join(category, "result.json")) as f:
        old_result = json.load(f)
    assert "model.threshold" in old_result["config"]  # written by 0.2 indeed

    # The 0.2 checkpoint loads as today's method and predicts the fit's test scores.
    method, _, config = predict.load_fitted(os.path.join(category, "checkpoint"))
    assert (method.name, method.denoise_ratio, method.lof_k, config.bank.coreset_ratio) == \
        ("softpatch", 0.2, 3, 0.2)
    with open(os.path.join(category, "scores.csv")) as f:
        rows = [line.rstrip("\n").split(",") for line in f][1:]
    paths = [os.path.join(mvtec_root, "widget", r[0]) for r in rows[:3]]
    names, scores = predict.predict_images(fit_dir, paths)["widget"]
    np.testing.assert_allclose(scores, [float(r[3]) for r in rows[:3]], rtol=1e-6)

    # The 0.2 export scores with today's loader as today's export of the 0.2 checkpoint does.
    old_scores = loader.Scorer(os.path.join(fit_dir, "export", "widget")).score_files(paths)
    shutil.move(os.path.join(fit_dir, "export"), str(tmp_path / "export_0_2"))
    export_workdir(fit_dir)
    new_scores = loader.Scorer(os.path.join(fit_dir, "export", "widget")).score_files(paths)
    np.testing.assert_allclose(new_scores["scores"], old_scores["scores"], rtol=1e-6)

    # Today's sweep of the same settings finds every 0.2 point finished.
    s = _today(mvtec_root, cache_dir, "sweeps/noise.py")
    s.sweep.ratios, s.sweep.discriminators, s.sweep.overlays = "0.2", "lof,none", False
    todo, stale = sweep._plan(s, sweep_dir, overwrite=False)
    assert (todo, stale) == ([], [])

    # Today's fit of the same settings into the 0.2 workdir is not refused; same metrics.
    new_result = evaluate.train_and_evaluate(_today(mvtec_root, cache_dir), fit_dir)["widget"]
    for metric in ("image_auroc", "pixel_auroc", "aupro"):
        assert new_result[metric] == old_result[metric]
