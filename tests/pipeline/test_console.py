"""The quiet console and DIR/run.log: levels, the buffered log file, the summary table, and the
command line end to end (library INFO only in run.log unless --verbosity=1)."""
import logging
import os
import re
import subprocess
import sys
import warnings

import pytest
from absl import logging as absl_logging

from softpatch_jax.pipeline import console

from conftest import REPO


@pytest.fixture
def root_logger():
    """Restores the root logger's handlers and level and the warnings capture after a test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    for h in handlers:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)
    logging.captureWarnings(False)


def test_levels():
    assert console.levels(-1) == console.levels(0) == (logging.WARNING, logging.INFO)
    assert console.levels(1) == (logging.INFO, logging.INFO)
    assert console.levels(2) == (logging.DEBUG, logging.DEBUG)


def test_run_log_waits_for_the_workdir(tmp_path):
    work = tmp_path / "new"
    handler = console.RunLog(str(work))
    logger = logging.getLogger("test_console.buffer")
    logger.propagate, logger.level = False, logging.INFO
    logger.addHandler(handler)
    try:
        logger.info("before")
        assert not work.exists()  # nothing is created: a failed check leaves no folder
        work.mkdir()
        logger.info("after")
        logger.debug("below the level")
    finally:
        logger.removeHandler(handler)
        handler.close()
    lines = (work / "run.log").read_text().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == ["before", "after"]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO test_console.buffer ", lines[0])
    # An empty --workdir (a bad flag) writes nowhere, not into the current folder.
    empty = console.RunLog("")
    logger.addHandler(empty)
    try:
        cwd = os.getcwd()
        os.chdir(tmp_path)
        logger.info("nowhere")
    finally:
        os.chdir(cwd)
        logger.removeHandler(empty)
    assert sorted(os.listdir(tmp_path)) == ["new"]


def test_setup_keeps_library_info_off_the_console(tmp_path, root_logger, capsys):
    console.setup(str(tmp_path), -1, ["cmd", "--flag"])
    absl_logging.info("orbax says hello")  # orbax logs through absl
    logging.getLogger("jax._src.xla_bridge").info("Unable to initialize backend 'tpu'")
    logging.warning("a warning that matters")
    warnings.warn("a python warning")
    console.say("a line for people")
    captured = capsys.readouterr()
    err = captured.err
    assert captured.out == "a line for people\n"
    log = (tmp_path / "run.log").read_text()
    assert "orbax says hello" in log and "Unable to initialize backend" in log
    assert "a warning that matters" in log and "a python warning" in log
    assert "a line for people" in log and "cmd --flag" in log
    assert "orbax" not in err and "backend" not in err and "cmd --flag" not in err
    assert "warning: a warning that matters" in err and "a python warning" in err
    # --verbosity=1: library INFO on the console too.
    console.setup(str(tmp_path), 1)
    absl_logging.info("orbax again")
    assert "info: orbax again" in capsys.readouterr().err
    ours = [h for h in logging.getLogger().handlers
            if isinstance(h, console.RunLog) or getattr(h, "_console", False)]
    assert len(ours) == 2  # replaced, not added


def test_logged_writes_the_error_to_the_log(tmp_path, root_logger):
    console.setup(str(tmp_path), -1)

    def failing():
        raise ValueError("bad input named here")

    with pytest.raises(ValueError):
        console.logged(failing)()
    log = (tmp_path / "run.log").read_text()
    assert "the command failed: bad input named here" in log and "Traceback" in log


def test_summary_lines():
    results = {"mono": {"image_auroc": 0.94, "seconds": 112.04},
               "poly": {"image_auroc": 0.721, "pixel_auroc": 0.5, "aupro": None,
                        "seconds": 70.0}}
    lines = console.summary_lines(results, "/w/report.html", "/w/run.log")
    assert lines == [
        "category  image AUROC  pixel AUROC  AUPRO      seconds",
        "mono           0.9400            -      -        112.0",
        "poly           0.7210       0.5000      -         70.0",
        "mean           0.8305       0.5000      -  182.0 total",
        "log: /w/run.log",
        "report: /w/report.html"]
    assert console.summary_lines({"a": {}}) == [
        "category  image AUROC  pixel AUROC  AUPRO  seconds",
        "a                   -            -      -        -"]
    estimated = {"mono": {"image_auroc": 0.94, "contamination_images": 0.0, "seconds": 10.0},
                 "poly": {"image_auroc": 0.72, "contamination_images": 0.125, "seconds": 20.0}}
    assert console.summary_lines(estimated) == [
        "category  image AUROC  pixel AUROC  AUPRO  est. defective     seconds",
        "mono           0.9400            -      -          0.0000        10.0",
        "poly           0.7200            -      -          0.1250        20.0",
        "mean           0.8300            -      -          0.0625  30.0 total"]
    assert console.headline({"image_auroc": 0.5, "aupro": 0.25}) == (
        "image AUROC 0.5000, AUPRO 0.2500")


def _console_lines(text: str):
    """The lines a person sees, less progress-bar redraws (tqdm's \\r updates)."""
    out = []
    for line in text.split("\n"):
        line = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line.split("\r")[-1]).strip()
        if line and not re.search(r"\d+%\|", line):
            out.append(line)
    return out


@pytest.mark.slow
def test_the_command_line_is_quiet_and_logs_everything(mvtec_root, tmp_path, cache_dir):
    env = dict(os.environ, XDG_CACHE_HOME=cache_dir)
    work = tmp_path / "w"
    base = [sys.executable, "-m", "softpatch_jax.main", f"--workdir={work}"]
    fit = subprocess.run(base + [
        "--config=configs/mvtec.py", f"--config.data.root={mvtec_root}",
        "--config.data.category=widget", "--config.noise.ratio=0.25", "--config.denoise.lof_k=3",
        "--config.data.resize=64", "--config.data.image_size=64"],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert fit.returncode == 0, fit.stderr[-3000:]
    seen = _console_lines(fit.stdout + fit.stderr)
    assert len(seen) <= 8, seen
    # SoftPatch estimates how contaminated the pile looks: its own column
    assert re.fullmatch(r"category +image AUROC +pixel AUROC +AUPRO +est. defective +seconds",
                        seen[-4]), seen
    assert re.fullmatch(r"widget +[0-9.]+ +[0-9.]+ +[0-9.]+ +0\.[0-9]{4} +[0-9.]+", seen[-3]), seen
    assert seen[-2] == f"log: {work / 'run.log'}" and seen[-1] == f"report: {work / 'report.html'}"
    assert (work / "report.html").is_file()
    log = (work / "run.log").read_text()
    assert "CheckpointManager" in log and "[1/1] widget: image AUROC" in log
    assert "CheckpointManager" not in fit.stderr
    # Predict: quiet by default, library INFO with --verbosity=1; both append to run.log.
    image = os.path.join(mvtec_root, "widget", "test", "good", "000.png")
    quiet = subprocess.run(base + ["--mode=predict", f"--images={image}"], cwd=REPO,
                           capture_output=True, text=True, env=env, timeout=600)
    loud = subprocess.run(base + ["--mode=predict", f"--images={image}", "--verbosity=1"],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert quiet.returncode == loud.returncode == 0, quiet.stderr[-2000:] + loud.stderr[-2000:]
    assert len(_console_lines(quiet.stdout + quiet.stderr)) == 2  # the scores and the report
    assert "info: " in loud.stderr and "info: " not in quiet.stderr
    assert (work / "run.log").read_text().count(" ==== ") == 3
