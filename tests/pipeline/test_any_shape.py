"""Parts of any shape: tall generated surfaces whose defects lie at the top or bottom edge (the
ends a centre square crop cuts away), fitted whole (data.resize=0, data.image_size=(h, w)).
Each defect is scored above every normal image and is where its map peaks; predict, the Python
API and the export cut maps back to each image's own pixels, so they keep its aspect ratio."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import softpatch_jax
from softpatch_jax import shapes
from softpatch_jax.data import synthetic

from conftest import REPO

CANVAS = (160, 48)


@pytest.fixture(scope="module")
def surfaces(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("surfaces"))
    synthetic.make_surface_folder(root, "top", edge="top", seed=1)
    synthetic.make_surface_folder(root, "bottom", edge="bottom", seed=2)
    return root


def _files(root, category, kind):
    folder = os.path.join(root, category, kind)
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder))]


@pytest.mark.parametrize("edge", ["top", "bottom"])
def test_an_edge_defect_is_scored_and_peaks_in_the_map(surfaces, edge):
    good = _files(surfaces, edge, "good")
    model = softpatch_jax.SoftPatch(lof_k=3, coreset_ratio=0.2, image_size=CANVAS, resize=0,
                                    config={"data.batch_size": 8})
    fitted = model.fit(good[:12])
    defective = _files(surfaces, edge, "defective")
    result = model.predict(fitted, defective + good[12:])
    n = len(defective)
    assert result.maps.shape == (len(result.scores), *CANVAS)
    assert result.scores[:n].min() > result.scores[n:].max()
    for i, path in enumerate(defective):
        amap = result.image_map(i)
        mask = np.asarray(Image.open(_files(surfaces, edge, "masks")[i])) > 0
        w, h = Image.open(path).size
        top, left, bh, bw = shapes.placement(w, h, 0, CANVAS).box
        assert amap.shape == (bh, bw) and abs(bw / bh - w / h) < 2.0 / bh  # its aspect ratio
        small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(
            (bw, bh), Image.BILINEAR)) > 0
        near = ndimage.binary_dilation(small, iterations=6)  # a map is blurred (sigma 4)
        peak = np.unravel_index(np.argmax(amap), amap.shape)
        assert near[peak], (edge, i, peak)
        # the defect lies where a centre square crop of the same image never looks
        side = min(h, w)
        ys = np.nonzero(mask.any(axis=1))[0]
        assert ys.max() < (h - side) // 2 or ys.min() >= (h + side) // 2


@pytest.mark.slow
def test_tall_parts_through_the_command_line_predict_and_export(surfaces, tmp_path, cache_dir):
    """`--config.data.image_size=160,48 --config.data.resize=0` on the folder reader: every
    category's image AUROC is 1 and its pixel AUROC high; predict's masks and the export's
    image maps have each image's own shape."""
    work = str(tmp_path / "w")
    base = [sys.executable, "-m", "softpatch_jax.main", f"--workdir={work}"]
    fit = subprocess.run(base + [
        "--config=configs/default.py", "--config.data.name=folder",
        f"--config.data.root={surfaces}", "--config.data.image_size=160,48",
        "--config.data.resize=0", "--config.data.batch_size=8", "--config.noise.ratio=0",
        "--config.data.train_fraction=0.6", "--config.denoise.lof_k=3",
        f"--config.runtime.cache_dir={cache_dir}"], cwd=REPO, capture_output=True, text=True)
    assert fit.returncode == 0, fit.stderr[-2000:]
    for category in ("top", "bottom"):
        with open(os.path.join(work, "categories", category, "result.json")) as f:
            result = json.load(f)
        assert result["image_auroc"] == 1.0 and result["pixel_auroc"] > 0.95, result
        assert result["config"]["data.image_size"] == [160, 48]
    defective = _files(surfaces, "top", "defective")
    pred = subprocess.run(base + ["--mode=predict", "--category=top",
                                  "--images=" + ",".join(defective)],
                          cwd=REPO, capture_output=True, text=True)
    assert pred.returncode == 0, pred.stderr[-2000:]
    out = os.path.join(work, "predictions", "top")
    for path in defective:
        w, h = Image.open(path).size
        _, _, bh, bw = shapes.placement(w, h, 0, CANVAS).box
        name = os.path.basename(path)
        found = [os.path.join(r, name) for r, _, fs in os.walk(os.path.join(out, "masks"))
                 if name in fs]
        assert found and Image.open(found[0]).size == (bw, bh)
    exp = subprocess.run(base + ["--mode=export", "--category=top"], cwd=REPO,
                         capture_output=True, text=True)
    assert exp.returncode == 0, exp.stderr[-2000:]
    sys.path.insert(0, os.path.join(work, "export", "top"))
    try:
        import loader as exported_loader  # the export folder's own copy

        scored = exported_loader.Scorer(os.path.join(work, "export", "top")).score_files(
            defective)
    finally:
        sys.path.pop(0)
        sys.modules.pop("loader", None)
    assert scored["maps"].shape[1:] == CANVAS
    for path, amap in zip(defective, scored["image_maps"]):
        w, h = Image.open(path).size
        assert amap.shape == shapes.placement(w, h, 0, CANVAS).box[2:]
