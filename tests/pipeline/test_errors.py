"""Every bad input through the command line: exit code 2, a last line `error: ...` naming the
field or path, and no traceback. Each case makes its own generated inputs."""
import os
import subprocess
import sys

import pytest

from softpatch_jax.data import synthetic

from conftest import REPO

pytestmark = pytest.mark.slow  # subprocesses

SMALL = ["--config.data.resize=32", "--config.data.image_size=32", "--config.data.batch_size=8",
         "--config.model.method=patchcore"]


def _cli(args, cwd=REPO, module="softpatch_jax.main", env=None):
    return subprocess.run([sys.executable, "-m", module] + args, cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, **(env or {})))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors_data")
    synthetic.make_mvtec_category(str(root), "alpha", n_train=8, n_good=3, n_defect=2, size=32)
    return str(root)


def _fit(data_root, workdir, *extra):
    return ["--config=configs/mvtec.py", f"--config.data.root={data_root}",
            f"--workdir={workdir}"] + SMALL + list(extra)


def _setup(case, tmp, data_root):
    """Arguments of one case (files it needs are made under `tmp`)."""
    w = str(tmp / "w")
    if case == "unknown_key":
        return _fit(data_root, w, "--config.model.foo=1")
    if case == "misspelt_key":
        return _fit(data_root, w, "--config.data.max_trian=5")
    if case == "bad_value_type":
        return _fit(data_root, w, "--config.data.max_train=abc")
    if case == "missing_config":
        return ["--config=configs/nope.py", f"--workdir={w}"]
    if case == "empty_workdir":
        return _fit(data_root, "")
    if case == "workdir_is_a_file":
        (tmp / "f").write_text("x")
        return _fit(data_root, str(tmp / "f"))
    if case == "file_in_the_way":
        (tmp / "f").write_text("x")
        return _fit(data_root, str(tmp / "f" / "sub"))
    if case in ("image_size_0", "batch_size_0"):
        field = case[:-2]
        return _fit(data_root, w, f"--config.data.{field}=0")
    if case == "resize_negative":
        return _fit(data_root, w, "--config.data.resize=-1")
    if case == "image_size_triple":
        return _fit(data_root, w, "--config.data.image_size=64,32,3")
    if case == "crop_larger_than_resize":
        return _fit(data_root, w, "--config.data.image_size=64,48", "--config.data.resize=40")
    if case == "tile_not_dividing":
        return _fit(data_root, w, "--config.data.image_size=64,48", "--config.data.resize=0",
                    "--config.data.tile=20")
    if case == "tile_with_fyd":
        return _fit(data_root, w, "--config.model.method=fyd", "--config.data.tile=16")
    if case == "missing_weights":
        return _fit(data_root, w, "--config.backbone.weights=/no/such/weights.pth")
    if case == "missing_noise_list":
        return _fit(data_root, w, "--config.noise.files=/no/such/list.txt")
    if case == "unknown_noise_name":
        return _fit(data_root, w, "--config.noise.files=test/blob/999.png")
    if case == "ratio_too_high":
        return _fit(data_root, w, "--config.noise.ratio=0.5")
    if case == "unknown_category":
        return _fit(data_root, w, "--config.data.category=bolt")
    if case == "missing_root":
        return _fit("/nonexistent", w)
    if case == "unexpected_argument":
        return _fit(data_root, w, "stray")
    if case == "unknown_flag":
        return _fit(data_root, w, "--bogus=1")
    if case == "predict_without_models":
        return ["--mode=predict", f"--workdir={w}", f"--images={data_root}"]
    if case == "predict_missing_image":
        return ["--mode=predict", f"--workdir={w}", "--images=/no/such.png"]
    if case == "predict_empty_glob":
        return ["--mode=predict", f"--workdir={w}", f"--images={tmp}/*.png"]
    raise KeyError(case)


CASES = {  # case: what the one line must say
    "unknown_key": "config.model has no field 'foo'",
    "misspelt_key": "did you mean --config.data.max_train?",
    "bad_value_type": "--config.data.max_train=abc",
    "missing_config": "--config='configs/nope.py' does not exist",
    "empty_workdir": "--workdir is empty",
    "workdir_is_a_file": "--workdir is a file, not a folder",
    "file_in_the_way": "(a parent of --workdir) is a file",
    "resize_negative": "data.resize=-1 must be >= 0 (0 = fit the whole image)",
    "image_size_0": "data.image_size=0 must be N or (height, width) of at least 1",
    "image_size_triple": "data.image_size=(64, 32, 3) must be N or (height, width)",
    "crop_larger_than_resize": "data.image_size=64x48 exceeds data.resize=40",
    "tile_not_dividing": "data.tile=20 must divide data.image_size=64x48 exactly",
    "tile_with_fyd": "data.tile=16 is not available with model.method=fyd",
    "batch_size_0": "data.batch_size=0 must be at least 1",
    "missing_weights": "backbone.weights='/no/such/weights.pth' does not exist",
    "missing_noise_list": "noise.files='/no/such/list.txt' is neither a file",
    "unknown_noise_name": "noise.files names ['test/blob/999.png']",
    "ratio_too_high": "lower noise.ratio to at most 0.125",
    "unknown_category": "unknown category bolt",
    "missing_root": "'/nonexistent' does not exist; set data.root",
    "unexpected_argument": "unexpected arguments: stray",
    "unknown_flag": "Unknown command line flag 'bogus'",
    "predict_without_models": "no fitted models in",
    "predict_missing_image": "--images: '/no/such.png' does not exist",
    "predict_empty_glob": "matches no file",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_exit_code_2(case, tmp_path, data_root):
    out = _cli(_setup(case, tmp_path, data_root))
    assert out.returncode == 2, (case, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and CASES[case] in last, (case, last)
    assert not (tmp_path / "w").exists()  # nothing was written


def test_the_suggested_ratio_leads_to_a_valid_run(tmp_path, data_root):
    import json
    import re

    out = _cli(_setup("ratio_too_high", tmp_path, data_root))
    ratio = re.search(r"at most ([0-9.]+)", out.stderr).group(1)
    w = tmp_path / "ok"
    out = _cli(_fit(data_root, str(w), f"--config.noise.ratio={ratio}"))
    assert out.returncode == 0, out.stderr[-2000:]
    alpha = json.loads((w / "metrics.json").read_text())["categories"]["alpha"]
    assert alpha["n_noise"] >= 1 and alpha["n_test_anomalous"] >= 1
    assert 0.0 <= alpha["image_auroc"] <= 1.0


def test_a_damaged_checkpoint_is_named(tmp_path, data_root):
    w = tmp_path / "w"
    assert _cli(_fit(data_root, str(w))).returncode == 0
    image = os.path.join(data_root, "alpha", "test", "good", "000.png")
    ckpt = w / "categories" / "alpha" / "checkpoint"
    for meta in ckpt.rglob("*"):  # corrupt the metadata and truncate the arrays
        if meta.is_file():
            meta.write_bytes(meta.read_bytes()[: len(meta.read_bytes()) // 3])
    out = _cli(["--mode=predict", f"--workdir={w}", f"--images={image}"])
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert "the fitted model in" in last and "checkpoint" in last and "refit" in last, last


def test_sweep_errors_are_one_line(tmp_path, data_root):
    out = _cli(["--config=configs/sweeps/noise.py", f"--workdir={tmp_path / 's'}",
                f"--config.data.root={data_root}", "--config.sweep.ratios=0,x"],
               module="experiments.sweep")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "sweep.ratios='0,x' must be a comma list of numbers" in out.stderr.splitlines()[-1]
