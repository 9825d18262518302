"""Files as users have them, through the command line (issue 24): a fit over a category with
damaged files, an empty class folder and names with spaces, accents, commas, quotes and markup
completes, leaves the damaged files out (one warning, unreadable.txt, result.json) and scores as a
fit over the same category without them; predict applies the same policy to its images, of any
size and aspect."""
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from softpatch_jax.data import synthetic

from conftest import REPO

pytestmark = pytest.mark.slow  # fits through the command line, in subprocesses

ODD = 'part 1, é "q" <b>&amp;'  # a space, an accent, a comma, quotes and markup


def _category(root):
    """A category whose training and test files carry odd names; -> its folder."""
    base = synthetic.make_mvtec_category(str(root), "w", n_train=8, n_good=3, n_defect=2,
                                         size=32)
    train = os.path.join(base, "train", "good")
    os.rename(os.path.join(train, "003.png"), os.path.join(train, f"{ODD}.png"))
    os.rename(os.path.join(base, "test", "blob", "001.png"),
              os.path.join(base, "test", "blob", f"{ODD}.png"))
    os.rename(os.path.join(base, "ground_truth", "blob", "001_mask.png"),
              os.path.join(base, "ground_truth", "blob", f"{ODD}_mask.png"))
    os.makedirs(os.path.join(base, "test", "scratch"))  # an empty class folder: ignored
    return base


def _fit(root, workdir, cache_dir, *extra):
    return subprocess.run(
        [sys.executable, "-m", "softpatch_jax.main", "--config=configs/mvtec.py",
         f"--config.data.root={root}", f"--workdir={workdir}", "--config.data.resize=32",
         "--config.data.image_size=32", "--config.data.batch_size=8",
         f"--config.runtime.cache_dir={cache_dir}", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=300)


def _metrics(workdir):
    with open(os.path.join(workdir, "categories", "w", "result.json")) as f:
        r = json.load(f)
    return {k: r[k] for k in ("image_auroc", "pixel_auroc", "aupro", "n_train_clean", "n_test")}


def test_a_fit_leaves_out_damaged_files_and_scores_as_without_them(tmp_path, cache_dir):
    clean = _category(tmp_path / "clean")
    damaged = tmp_path / "damaged"
    shutil.copytree(clean, damaged / "w")
    train = damaged / "w" / "train" / "good"
    (train / "100.png").write_bytes(b"")                                 # zero bytes
    (train / "101.png").write_bytes((train / "000.png").read_bytes()[:-60])  # truncated
    (train / "102.jpg").write_text("a text file named like an image")  # not an image

    reference = _fit(tmp_path / "clean", tmp_path / "w_clean", cache_dir)
    assert reference.returncode == 0, reference.stderr[-2000:]
    done = _fit(damaged, tmp_path / "w", cache_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    warned = [line for line in done.stderr.splitlines() if "cannot be read" in line]
    assert len(warned) == 1 and "3 file(s)" in warned[0] and "train/good/100.png" in warned[0]
    out = tmp_path / "w" / "categories" / "w"
    listed = (out / "unreadable.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in listed] == [
        "train/good/100.png", "train/good/101.png", "train/good/102.jpg"]
    with open(out / "result.json") as f:
        assert json.load(f)["n_unreadable"] == 3
    assert _metrics(tmp_path / "w") == _metrics(tmp_path / "w_clean")
    with open(out / "scores.csv", newline="") as f:  # the odd name survives the CSV
        names = [row["name"].lstrip("'") for row in csv.DictReader(f)]
    assert f"test/blob/{ODD}.png" in names


def test_predict_scores_any_size_and_leaves_out_what_it_cannot_read(tmp_path, cache_dir):
    root = tmp_path / "data"
    _category(root)
    fitted = _fit(root, tmp_path / "w", cache_dir)
    assert fitted.returncode == 0, fitted.stderr[-2000:]
    lot = tmp_path / f"lot {ODD}"
    lot.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"tall.png": (24, 90), "wide.png": (120, 40), "tiny.png": (9, 7), f"{ODD}.png": (32, 32)}
    for name, (w, h) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(lot / name)
    (lot / "empty.png").write_bytes(b"")
    (lot / "cut.png").write_bytes((lot / "tall.png").read_bytes()[:-50])
    os.symlink("loop.png", lot / "loop.png")
    done = subprocess.run([sys.executable, "-m", "softpatch_jax.main", "--mode=predict",
                           f"--workdir={tmp_path / 'w'}", f"--images={lot}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    target = tmp_path / "w" / "predictions" / "w"
    with open(target / "predictions.json") as f:
        rows = json.load(f)["images"]
    assert sorted(r["name"] for r in rows) == sorted(sizes)
    assert all(np.isfinite(r["score"]) for r in rows)
    listed = [line.split("\t")[0] for line in (target / "unreadable.txt").read_text().splitlines()]
    assert sorted(os.path.basename(p) for p in listed) == ["cut.png", "empty.png"]
    for name in sizes:  # every image got its map, under its own (odd) name
        assert (target / "maps" / name).is_file() and (target / "overlays" / name).is_file()
