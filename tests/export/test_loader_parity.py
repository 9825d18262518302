"""What leaves the machine scores as what stays (issue 24): for new image files of other sizes,
aspects and modes than the training images, the export folder's own loader.py gives the image
scores, anomaly maps, verdicts and masks that `--mode=predict` gives, for every exportable
method, each fitted once (32 x 32, eight training images) with its stored label-free
thresholds."""
import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image

from softpatch_jax.data import synthetic
from softpatch_jax.export import exporter
from softpatch_jax.pipeline import evaluate, predict

from test_export import _config

SIZE = 32
BATCH = 4  # the exported program's batch, not predict's 8: 9 files as 4, 4 and 1 (padded)
# Both run the same float32 arithmetic: measured apart by <= 2e-7 relative (scores) and
# <= 2.2e-7 x the map's maximum (maps), FYD included. A map pixel's rounding follows the map's
# largest values (upsampling and blur sum them), hence test_export.py's map atol of 1e-6 x it.
RTOL, ATOL, MAP_ATOL = 1e-5, 1e-5, 1e-6
FIELDS = {"patchcore": {"bank.num_nn": 2, "bank.reweight_neighbours": 3},  # k > 1, reweighting
          "spade": {"spade.image_k": 3},  # fewer than a k-fold fit's training images
          "cflow": {"cflow.coupling_blocks": 2, "cflow.condition_dim": 8,  # a small, quick flow
                    "cflow.fiber_batch": 32, "cflow.meta_epochs": 2, "cflow.sub_epochs": 4}}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tiny"))
    synthetic.make_mvtec_category(root, "widget", n_train=8, n_good=3, n_defect=2, size=SIZE)
    return root


@pytest.fixture(scope="module")
def image_files(tiny_root, tmp_path_factory):
    """New files made from the category's 32 x 32 images (normal and defective): other sizes
    and aspects (upscaled, non-square both ways), grayscale, 16-bit, palette, a JPEG whose
    pixels are stored rotated under an EXIF orientation tag, and one with a patch of noise
    that every method finds anomalous (so verdicts and masks are not all False)."""
    folder = tmp_path_factory.mktemp("new")
    rng = np.random.default_rng(0)

    def source(*parts):
        with Image.open(os.path.join(tiny_root, "widget", *parts)) as img:
            return img.convert("RGB")
    normal, good, bad = (source("train", "good", "000.png"), source("test", "good", "000.png"),
                         source("test", "blob", "000.png"))
    deep = np.asarray(good.convert("L").resize((36, 52)), np.uint16) * 256 + 100  # not x257
    noisy = np.array(good.resize((50, 34)))
    noisy[6:26, 12:36] = rng.integers(0, 256, (20, 24, 3))
    exif = Image.Exif()
    exif[0x0112] = 6  # upright = stored turned 90 degrees clockwise
    files = {
        "same_size.png": (normal, {}),
        "tall.png": (bad.resize((40, 56)), {}),
        "wide.png": (good.resize((64, 48)), {}),
        "gray.png": (bad.convert("L").resize((48, 48)), {}),
        "deep.png": (Image.fromarray(deep), {}),  # I;16
        "palette.png": (normal.resize((45, 38)).convert("P"), {}),
        "rotated.jpg": (bad.resize((40, 56)).transpose(Image.Transpose.ROTATE_90),
                        {"exif": exif, "quality": 95}),
        "small_wide.png": (good.resize((28, 20)), {}),  # smaller than training: upscaled
        "noisy.png": (Image.fromarray(noisy), {}),
    }
    paths = []
    for name, (img, options) in files.items():
        paths.append(str(folder / name))
        img.save(paths[-1], **options)
    return paths


def _exported_loader(folder, name):
    """The export folder's loader.py, imported from there (not the package's copy)."""
    spec = importlib.util.spec_from_file_location(f"exported_loader_{name}",
                                                  os.path.join(folder, "loader.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read_json(*parts):
    with open(os.path.join(*parts)) as f:
        return json.load(f)


@pytest.fixture(scope="module", params=exporter.exportable())
def scored(request, tiny_root, cache_dir, image_files, tmp_path_factory):
    """One fit of the method, then `image_files` scored by predict (in process; its maps caught
    on their way to predictions.json) and by the exported loader.py -> dict."""
    name = request.param
    work = str(tmp_path_factory.mktemp(name))
    config = _config(tiny_root, cache_dir, name, size=SIZE, fields=FIELDS.get(name))
    config.threshold.folds = 2  # the fewest refits where the threshold needs k-fold (FYD, PaDiM)
    config.fyd.epochs = 1  # parity needs a trained alignment, not a good one
    evaluate.train_and_evaluate(config, work)
    caught = {}
    write = predict._write_decisions

    def catch(target, samples, scores, maps, *args, **kwargs):
        caught["maps"] = np.array(maps)
        return write(target, samples, scores, maps, *args, **kwargs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(predict, "_write_decisions", catch)
        names, scores = predict.predict_images(work, image_files, write_maps=False)["widget"]
    folder = exporter.export_workdir(work, batch=BATCH)["widget"]
    return dict(
        method=name, names=names, scores=scores, maps=caught["maps"],
        rows=_read_json(work, "predictions", "widget", "predictions.json"),
        stored=_read_json(work, "categories", "widget", "threshold.json"),
        meta=_read_json(folder, "meta.json"),
        loader=_exported_loader(folder, name).Scorer(folder).score_files(image_files))


def test_loader_scores_and_maps_equal_predict(scored, image_files):
    assert scored["names"] == [os.path.basename(p) for p in image_files]  # same rows, in order
    out = scored["loader"]
    assert out["maps"].shape == scored["maps"].shape == (len(image_files), SIZE, SIZE)
    np.testing.assert_allclose(out["scores"], scored["scores"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(out["maps"], scored["maps"], rtol=RTOL,
                               atol=MAP_ATOL * np.abs(scored["maps"]).max())
    # No two files read alike: their maps differ, and so do their scores, except CFLOW's, whose
    # image score saturates at the number of stages wherever a patch is unlike all training.
    assert len(np.unique(scored["maps"].reshape(len(image_files), -1), axis=0)) == len(image_files)
    if scored["method"] != "cflow":
        assert len(np.unique(scored["scores"])) == len(image_files)


def test_verdicts_and_masks_at_the_stored_thresholds(scored):
    stored, rows, out = scored["stored"], scored["rows"]["images"], scored["loader"]
    image_thr, pixel_thr = stored["image_threshold"], stored["pixel_threshold"]
    assert scored["meta"]["image_threshold"] == scored["rows"]["image_threshold"] == image_thr
    assert scored["meta"]["pixel_threshold"] == scored["rows"]["pixel_threshold"] == pixel_thr
    verdicts = np.array([r["verdict"] for r in rows])
    assert 0 < (verdicts == "anomalous").sum() < len(rows)  # a constant verdict would not pass
    np.testing.assert_array_equal(verdicts == "anomalous", scored["scores"] >= image_thr)
    masks = scored["maps"] >= pixel_thr
    np.testing.assert_array_equal(masks.mean(axis=(1, 2)), [r["anomalous_pixels"] for r in rows])
    # The loader decides as predict wherever the two could not round to opposite sides of the
    # threshold: all but a few pixels, or for CFLOW, whose maps plateau at the number of stages
    # (untrained here) with its threshold on the plateau, most pixels.
    sure = np.abs(scored["scores"] - image_thr) > ATOL + RTOL * np.abs(image_thr)
    np.testing.assert_array_equal(out["verdicts"][sure], (scored["scores"] >= image_thr)[sure])
    sure = np.abs(scored["maps"] - pixel_thr) > MAP_ATOL * np.abs(scored["maps"]).max()
    if scored["method"] == "cflow":  # its anomalous pixels all lie on the plateau here
        assert sure.mean() > 0.5
    else:
        assert sure.mean() > 0.99 and masks[sure].any() and not masks[sure].all()
    np.testing.assert_array_equal(out["masks"][sure], masks[sure])
