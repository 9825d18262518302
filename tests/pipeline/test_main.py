"""The command line end to end: generated data, the real (packaged) ELPV data, and bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import MVTEC_ROOT, REPO

pytestmark = pytest.mark.slow  # end to end through the CLI, in subprocesses

SMALL = ["--config.data.resize=64", "--config.data.image_size=64", "--config.data.batch_size=8"]


def _run(args, workdir, cache_dir):
    env = dict(os.environ, XDG_CACHE_HOME=cache_dir)
    return subprocess.run([sys.executable, "-m", "softpatch_jax.main", f"--workdir={workdir}"]
                          + args, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)


def test_mvtec_format_end_to_end(mvtec_root, tmp_path, cache_dir):
    out = _run(["--config=configs/mvtec.py", f"--config.data.root={mvtec_root}",
                "--config.data.category=widget", "--config.noise.ratio=0.25",
                "--config.noise.overlap=True", "--config.model.lof_k=5"] + SMALL, tmp_path,
               cache_dir)  # model.lof_k: 0.2's name of denoise.lof_k, read as that
    assert out.returncode == 0, out.stderr[-3000:]
    assert "note: --config.model.lof_k is 0.2's name of --config.denoise.lof_k" in out.stderr
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["config"]["denoise"]["lof_k"] == 5
    widget = result["categories"]["widget"]
    assert widget["n_noise"] == 3 and widget["n_test"] == 12
    assert 0.0 <= widget["image_auroc"] <= 1.0 and 0.0 <= widget["pixel_auroc"] <= 1.0
    assert widget["pixel_auroc"] > 0.7  # the pasted blobs are easy to localise
    assert 0.0 <= widget["aupro"] <= 1.0 and 0.0 < widget["image_f1_max"] <= 1.0
    assert set(widget["image_auroc_per_defect"]) == {"blob", "scratch"}
    assert result["config"]["denoise"]["discriminator"] == "lof"
    assert "| widget |" in (tmp_path / "results.md").read_text()
    assert len((tmp_path / "categories" / "widget" / "noise.txt").read_text().split()) == 3
    # Predict mode scores new images from the saved model, exactly as the fitted run did.
    rows = [r.split(",") for r in (tmp_path / "categories" / "widget" / "scores.csv").read_text().split("\n")[1:] if r]
    images = [os.path.join(mvtec_root, "widget", r[0]) for r in rows[:4]]
    env_args = ["--mode=predict", f"--images={','.join(images)}"]
    out = _run(env_args, tmp_path, cache_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    pred = [r.split(",") for r in
            (tmp_path / "predictions" / "widget" / "scores.csv").read_text().split("\n")[1:] if r]
    common = os.path.commonpath([os.path.dirname(i) for i in images])
    assert [p[0] for p in pred] == [os.path.relpath(i, common) for i in images]
    np.testing.assert_allclose([float(p[3]) for p in pred], [float(r[3]) for r in rows[:4]],
                               rtol=1e-5)
    assert len(list((tmp_path / "predictions" / "widget" / "maps").rglob("*.png"))) == 4


def test_default_job_on_real_elpv_at_small_size(tmp_path, cache_dir):
    """The embedded default on the real ELPV cells, small: 24 training cells, 40 test cells."""
    out = _run(["--config=configs/default.py", "--config.data.max_train=24",
                "--config.data.max_test=40", "--config.data.category=mono"] + SMALL,
               tmp_path, cache_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    mono = json.loads((tmp_path / "metrics.json").read_text())["categories"]["mono"]
    assert mono["n_noise"] == 2 and "pixel_auroc" not in mono
    assert mono["image_auroc"] > 0.5  # real defects, real weights: better than chance


@pytest.mark.skipif(not os.path.isdir(os.path.join(MVTEC_ROOT, "transistor")),
                    reason="MVTec transistor not present in ../shared/data")
def test_real_mvtec_transistor_small(tmp_path, cache_dir):
    out = _run(["--config=configs/mvtec.py", f"--config.data.root={MVTEC_ROOT}",
                "--config.data.category=transistor", "--config.data.max_train=30",
                "--config.data.max_test=30", "--config.data.resize=128",
                "--config.data.image_size=128"], tmp_path, cache_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads((tmp_path / "metrics.json").read_text())["categories"]["transistor"]
    assert r["image_auroc"] > 0.6 and r["pixel_auroc"] > 0.7


@pytest.mark.parametrize("args,message", [
    (["--config.data.root=/nonexistent"], "does not exist; set data.root"),
    (["--config.data.category=bolt"], "unknown category bolt"),
    (["--config.noise.ratio=2.0"], "noise.ratio=2.0 needs 24 anomalous images"),
    (["--config.denoise.discriminator=median"], "denoise.discriminator='median' is unknown"),
    (["--config.denoise.lof_k=30"], "denoise.lof_k=30 needs more than 30"),
])
def test_bad_input_is_one_line(mvtec_root, tmp_path, cache_dir, args, message):
    base = ["--config=configs/mvtec.py", f"--config.data.root={mvtec_root}"]
    out = _run(base + SMALL + args, tmp_path, cache_dir)
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, out.stderr[-2000:]


@pytest.mark.parametrize("method", ["softpatch_plus", "padim", "patchcore", "fyd"])
def test_other_methods_end_to_end_and_predict(mvtec_root, tmp_path, cache_dir, method):
    out = _run(["--config=configs/mvtec.py", f"--config.data.root={mvtec_root}",
                f"--config.model.method={method}", "--config.denoise.lof_k=5",
                "--config.bank.reweight_neighbours=3", "--config.fyd.epochs=2",
                "--config.fyd.batch_size=4"] + SMALL, tmp_path, cache_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    widget = json.loads((tmp_path / "metrics.json").read_text())["categories"]["widget"]
    assert widget["pixel_auroc"] > 0.7, widget
    rows = [r.split(",") for r in (tmp_path / "categories" / "widget" / "scores.csv").read_text().split("\n")[1:] if r]
    images = [os.path.join(mvtec_root, "widget", r[0]) for r in rows[-2:]]
    out = _run(["--mode=predict", f"--images={','.join(images)}"], tmp_path, cache_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    pred = [r.split(",") for r in
            (tmp_path / "predictions" / "widget" / "scores.csv").read_text().split("\n")[1:] if r]
    np.testing.assert_allclose([float(p[3]) for p in pred], [float(r[3]) for r in rows[-2:]],
                               rtol=1e-5)
