"""Export (`--mode=export`): the exported scorer gives the in-process scores and maps on the same
images; its 1-NN and reweighting equal the package's and NumPy's; the standalone loader reads
images as data/preprocess.py does and works in a fresh process that cannot import softpatch_jax."""
import json
import logging
import os
import shutil
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from softpatch_jax import methods
from softpatch_jax.data import preprocess
from softpatch_jax.export import exporter, loader
from softpatch_jax.io import checkpoint
from softpatch_jax.files import write_json
from softpatch_jax.methods import patchcore
from softpatch_jax.ops import knn
from softpatch_jax.pipeline import evaluate, provenance

from conftest import REPO, load_config

SIZE = 64
BATCH = 5  # 12 test images: batches of 5, 5 and 2 (padded)


def _config(root, cache_dir, method, size=SIZE, fields=None):
    """A `size`-pixel fit of `method` on widget (also test_loader_parity.py's)."""
    c = load_config("default.py")
    c.data.update(dict(name="mvtec", root=root, category="widget", max_train=0, max_test=0,
                       resize=size, image_size=size, batch_size=8))
    c.noise.ratio, c.noise.overlap = 0.25, True
    c.update_from_flattened_dict({"model.method": method, "denoise.lof_k": 5, **(fields or {})})
    c.fyd.epochs, c.fyd.batch_size = 2, 4
    c.runtime.cache_dir = cache_dir
    return c


def _fit(c, workdir, extractors):
    """Fits widget as a fit run stores it (categories/widget/{checkpoint, result.json}) ->
    (test samples, in-process Scores of them). Extractors are shared between methods."""
    method = methods.from_config(c)
    split = evaluate.prepare_split(c, "widget")
    if method.features not in extractors:
        extractors[method.features] = evaluate.extractor_for(c, method)
    fitted = evaluate.fit_category(method, split.train, extractors[method.features], c.data,
                                   evaluate.category_key(c.seed, "widget"),
                                   os.path.join(workdir, "train"), "widget")
    out = os.path.join(workdir, "categories", "widget")
    os.makedirs(out)
    checkpoint.save_model(os.path.join(out, "checkpoint"), fitted.state.to_arrays(), c.to_dict(),
                          fitted.extractor.grid(SIZE))
    write_json(os.path.join(out, "result.json"), provenance.record(c, split.train + split.test))
    return split.test, evaluate.score_category(method, fitted, split.test, c.data, "test")


def _images(samples):
    return np.stack([preprocess.load_image(s.path, SIZE, SIZE) for s in samples])


def _midpoint(values, q):
    """A threshold between two neighbouring values near quantile q (no value sits on it)."""
    v = np.sort(np.unique(values.reshape(-1)))
    i = int(q * (len(v) - 1))
    return float((v[i] + v[i + 1]) / 2)


CASES = {
    "softpatch_lof": {"model.method": "softpatch", "denoise.discriminator": "lof"},
    "softpatch_plus": {"model.method": "softpatch_plus"},
    "padim": {"model.method": "padim"},
    "patchcore_knn_reweight": {"model.method": "patchcore", "bank.num_nn": 2,
                               "bank.reweight_neighbours": 3},
    "fyd": {"model.method": "fyd"},
}


@pytest.fixture(scope="module")
def fitted(mvtec_root, cache_dir, tmp_path_factory):
    """fitted(name, workdir) -> (test samples, in-process Scores): the case fitted once per
    module (extractors shared between cases), its fitted workdir copied to `workdir`."""
    runs, extractors = {}, {}

    def get(name, workdir):
        if name not in runs:
            fields = dict(CASES[name])
            c = _config(mvtec_root, cache_dir, fields.pop("model.method"), fields=fields)
            first = str(tmp_path_factory.mktemp(name))
            runs[name] = (first,) + _fit(c, first, extractors)
        first, samples, ref = runs[name]
        shutil.copytree(os.path.join(first, "categories"), os.path.join(workdir, "categories"))
        return samples, ref
    return get


def _check_parity(out, ref, image_thr, pixel_thr):
    np.testing.assert_allclose(out["scores"], ref.image, rtol=1e-5)
    maps = ref.maps()
    np.testing.assert_allclose(out["maps"], maps, rtol=1e-5, atol=1e-6 * np.abs(maps).max())
    np.testing.assert_array_equal(out["verdicts"], ref.image >= image_thr)
    np.testing.assert_array_equal(out["masks"], maps >= pixel_thr)


def _export_with_thresholds(fitted, name, workdir):
    samples, ref = fitted(name, workdir)
    image_thr, pixel_thr = _midpoint(ref.image, 0.5), _midpoint(ref.maps(), 0.9)
    write_json(os.path.join(workdir, "categories", "widget", "threshold.json"),
               {"image_threshold": image_thr, "pixel_threshold": pixel_thr, "source": "test"})
    folder = exporter.export_workdir(workdir, batch=BATCH)["widget"]
    out = loader.Scorer(folder).score(_images(samples))
    _check_parity(out, ref, image_thr, pixel_thr)
    return folder, out


@pytest.mark.parametrize("name", ["softpatch_plus", "padim", pytest.param(
    "patchcore_knn_reweight", marks=pytest.mark.slow)])  # softpatch_lof: the next test
def test_exported_scores_and_maps_equal_in_process(fitted, tmp_path, name):
    folder, out = _export_with_thresholds(fitted, name, str(tmp_path))
    assert sorted(os.listdir(folder)) == sorted(exporter.FILES)
    meta = json.loads(open(os.path.join(folder, "meta.json")).read())
    assert meta["batch_size"] == BATCH and meta["image_size"] == SIZE
    assert meta["method"] == CASES[name]["model.method"] and meta["jax_version"] == jax.__version__
    assert meta["platforms"] == ["cpu", "cuda"] and meta["threshold_source"].endswith(
        "threshold.json")
    assert 0 < out["verdicts"].sum() < len(out["scores"]) and out["masks"].any()


@pytest.mark.slow
def test_fyd_exports_its_aligned_path(fitted, tmp_path):
    _export_with_thresholds(fitted, "fyd", str(tmp_path))


def test_without_thresholds_scores_equal_and_verdicts_are_off(fitted, tmp_path, caplog):
    """SoftPatch-LOF's parity, exported without threshold.json: one warning, meta.json says
    so, the loader gives no verdicts or masks and the program's own are all False."""
    samples, ref = fitted("softpatch_lof", str(tmp_path))
    with caplog.at_level(logging.WARNING):
        folder = exporter.export_workdir(str(tmp_path), batch=BATCH)["widget"]
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "no " in warning[0] and "threshold.json" in warning[0]
    meta = json.loads(open(os.path.join(folder, "meta.json")).read())
    assert meta["image_threshold"] is None and meta["pixel_threshold"] is None
    assert meta["threshold_source"] is None
    scorer = loader.Scorer(folder)
    out = scorer.score(_images(samples))
    assert out["verdicts"] is None and out["masks"] is None
    np.testing.assert_allclose(out["scores"], ref.image, rtol=1e-5)
    maps = ref.maps()
    np.testing.assert_allclose(out["maps"], maps, rtol=1e-5, atol=1e-6 * np.abs(maps).max())
    raw = scorer._call(_images(samples[:BATCH]), scorer._inputs)  # the program's own outputs
    assert not np.asarray(raw["verdicts"]).any() and not np.asarray(raw["masks"]).any()


def test_chunked_nearest_equals_numpy_and_the_pruned_search():
    rng = np.random.default_rng(0)
    # Low-rank structure, so that the pruned search really prunes.
    basis = rng.normal(size=(8, 48))
    bank = (rng.normal(size=(700, 8)) @ basis + 0.05 * rng.normal(size=(700, 48)))
    queries = (rng.normal(size=(301, 8)) @ basis + 0.05 * rng.normal(size=(301, 48)))
    bank, queries = bank.astype(np.float32), queries.astype(np.float32)
    ref = ((queries[:, None].astype(np.float64) - bank[None]) ** 2).sum(-1)
    sq = jnp.asarray(patchcore.bank_arrays(patchcore.MemoryBank(bank, np.ones(700)))["sq"])
    fn = jax.jit(knn.traced_k_nearest, static_argnames=("k", "rows"))
    pruned = knn.PrunedSearch(rank=15, min_bank=512)
    for k in (1, 3):
        dist, idx = fn(jnp.asarray(queries), jnp.asarray(bank), sq, k=k, rows=64)  # 5 chunks
        np.testing.assert_array_equal(np.asarray(idx), np.argsort(ref, axis=1)[:, :k])
        np.testing.assert_allclose(np.asarray(dist), np.sort(ref, axis=1)[:, :k], rtol=1e-4)
        p_dist, p_idx = pruned.k_nearest(queries, bank, k)
        assert pruned.last_stats["mode"] == "pruned" and pruned.last_stats["certified"] > 0
        np.testing.assert_array_equal(np.asarray(idx), p_idx)
        np.testing.assert_allclose(np.asarray(dist), p_dist, rtol=1e-5)


def test_reweighting_equals_patchcore():
    rng = np.random.default_rng(2)
    test = rng.normal(size=(4, 7, 5)).astype(np.float32)
    bank = patchcore.MemoryBank(rng.normal(size=(25, 5)).astype(np.float32),
                                rng.uniform(0.5, 2, 25).astype(np.float32))
    patch = patchcore.patch_scores(test, bank, knn.BruteForce(), soft_weight=True, num_nn=2)
    ref = patchcore.reweighted_image_scores(test, patch, bank, neighbours=9)
    x = {k: jnp.asarray(v) for k, v in patchcore.bank_arrays(bank).items()}

    @jax.jit
    def scores(feats, x):  # 28 queries in chunks of 8 (the last padded)
        patch, nearest = patchcore.traced_patch_scores(feats, x, 2, True, rows=8)
        return (patch, patchcore.traced_image_scores(feats, patch, nearest, x, 9, rows=8),
                patchcore.traced_image_scores(feats, patch, nearest, x, 0, rows=8))
    ours, image, plain = scores(jnp.asarray(test), x)
    np.testing.assert_allclose(np.asarray(ours), patch, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(image), ref, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(ours).max(1))


def test_thresholds_round_up_to_float32_and_flatten_round_trips():
    for value in (0.1, 1e-3, 47137.708046875, 3.0):
        t = exporter.float32_threshold(value)
        assert t.dtype == np.float32 and float(t) >= value
        assert float(np.nextafter(t, np.float32(-np.inf))) < value  # the smallest such float32
    assert np.isnan(exporter.float32_threshold(None))
    tree = {"a": {"b": np.ones(2), "c": {"d": np.zeros(1, np.int32)}}, "e": np.float32(1)}
    flat = exporter.flatten(tree)
    assert sorted(flat) == ["a/b", "a/c/d", "e"]
    back = exporter.unflatten(flat)
    np.testing.assert_array_equal(back["a"]["c"]["d"], tree["a"]["c"]["d"])
    with pytest.raises(ValueError, match="'/' joins"):
        exporter.flatten({"a/b": np.ones(1)})


def _write(path, arr, **kw):
    Image.fromarray(arr).save(path, **kw)
    return str(path)


def test_loader_reads_images_as_the_package_does(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: read upright by both
    Image.fromarray(rgb).save(tmp_path / "rot.jpg", exif=exif)
    paths = [_write(tmp_path / "tall.png", rgb),
             _write(tmp_path / "wide.png", rgb.transpose(1, 0, 2).copy()),
             _write(tmp_path / "gray.png", rgb[..., 0]),
             _write(tmp_path / "rgba.png", np.dstack([rgb, rgb[..., :1]])),
             _write(tmp_path / "deep.png", (rgb[..., 0].astype(np.uint16) * 257 + 3)),
             str(tmp_path / "rot.jpg")]
    mean, std = preprocess.IMAGENET_MEAN, preprocess.IMAGENET_STD
    for path in paths:
        for resize, crop in ((64, 56), (80, 80)):
            np.testing.assert_array_equal(loader.load_image(path, resize, crop, mean, std),
                                          preprocess.load_image(path, resize, crop), path)
    Image.fromarray(rng.uniform(0, 1, (40, 40)).astype(np.float32)).save(tmp_path / "f.tiff")
    np.testing.assert_array_equal(
        loader.load_image(str(tmp_path / "f.tiff"), 40, 40, mean, std),
        preprocess.load_image(str(tmp_path / "f.tiff"), 40, 40))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_loader_refuses_special_files_as_the_package_does(tmp_path):
    fifo = str(tmp_path / "fifo.png")
    os.mkfifo(fifo)
    # Opening a FIFO waits for a writer: should a reader open it, one comes after 5 s and the
    # read fails otherwise, rather than hanging the run.
    writer = threading.Timer(5.0, lambda: os.close(os.open(fifo, os.O_RDWR | os.O_NONBLOCK)))
    writer.start()
    mean, std = preprocess.IMAGENET_MEAN, preprocess.IMAGENET_STD
    readers = (lambda p: loader.load_image(p, 40, 40, mean, std),
               lambda p: preprocess.load_image(p, 40, 40))
    try:
        for path, kind in ((fifo, "a FIFO"), (str(tmp_path), "a directory")):
            for read in readers:
                with pytest.raises(ValueError, match=f"not a regular file \\(it is {kind}\\)"):
                    read(path)
    finally:
        writer.cancel()


def test_export_errors_name_the_flag_or_file(fitted, tmp_path, monkeypatch):
    from softpatch_jax.methods import registry
    from softpatch_jax.methods.base import Method

    class Untraced(Method):  # a method that never wrote a traced scorer
        name = "untraced"
    monkeypatch.setitem(registry._METHODS, "untraced", Untraced)
    with pytest.raises(ValueError, match=r"--export_batch=0 must be >= 1"):
        exporter.export_workdir(str(tmp_path), batch=0)
    with pytest.raises(FileNotFoundError, match="no fitted models"):
        exporter.export_workdir(str(tmp_path))
    with pytest.raises(ValueError, match="model.method=untraced has no traced scorer, so it "
                                         "cannot be exported"):
        exporter.check_exportable("untraced")
    assert "untraced" not in exporter.exportable()
    assert {"patchcore", "softpatch", "softpatch_plus", "padim", "fyd"} <= set(
        exporter.exportable())
    fitted("padim", str(tmp_path))
    with pytest.raises(ValueError, match="--category='bolt' is not fitted"):
        exporter.export_workdir(str(tmp_path), category="bolt")
    bad = tmp_path / "categories" / "widget" / "threshold.json"
    bad.write_text('{"image_threshold": "high"}')
    with pytest.raises(ValueError, match=r"threshold.json.*image_threshold='high'.*refit"):
        exporter.export_workdir(str(tmp_path))
    with pytest.raises(ValueError, match=r"--threshold=nan must be a finite number"):
        exporter.export_workdir(str(tmp_path), image_threshold=float("nan"))
    assert not (tmp_path / "export").exists()  # nothing written before the checks pass


LOADER_RUN = """
import runpy, sys
sys.modules["softpatch_jax"] = None  # any import of the package fails
sys.argv = ["loader.py"] + sys.argv[1:]
runpy.run_path("loader.py", run_name="__main__")
"""


def test_loader_in_a_fresh_process_without_the_package(fitted, tmp_path):
    run = str(tmp_path / "run")
    samples, ref = fitted("softpatch_plus", run)
    thr = _midpoint(ref.image, 0.5)  # no threshold.json: --threshold's value
    folder = exporter.export_workdir(run, batch=4, image_threshold=thr)["widget"]
    meta = json.loads(open(os.path.join(folder, "meta.json")).read())
    assert meta["threshold_source"] == "--threshold" and meta["pixel_threshold"] is None
    deploy = tmp_path / "deploy"
    shutil.copytree(folder, deploy / "model")  # the folder alone, elsewhere
    shutil.copy(deploy / "model" / "loader.py", deploy / "loader.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    paths = [s.path for s in samples[:6]]
    out = subprocess.run([sys.executable, "-c", LOADER_RUN, "model"] + paths, cwd=deploy,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split("\t") for line in out.stdout.splitlines()[2:]]
    assert [r[0] for r in rows] == paths
    np.testing.assert_allclose([float(r[1]) for r in rows], ref.image[:6], rtol=1e-5)
    assert [r[2] for r in rows] == ["anomalous" if s >= thr else "normal" for s in ref.image[:6]]
    # The guard works: the package itself cannot be imported there.
    blocked = subprocess.run([sys.executable, "-c", LOADER_RUN.replace(
        'runpy.run_path("loader.py", run_name="__main__")', "import softpatch_jax")], cwd=deploy,
        env=env, capture_output=True, text=True, timeout=60)
    assert blocked.returncode != 0 and "ModuleNotFoundError" in blocked.stderr


@pytest.mark.slow
def test_export_mode_end_to_end(fitted, cache_dir, tmp_path):
    samples, ref = fitted("softpatch_lof", str(tmp_path))
    env = dict(os.environ, XDG_CACHE_HOME=cache_dir)
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "softpatch_jax.main", f"--workdir={tmp_path}", "--mode=export",
         *a], cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    out = run("--export_batch=0")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == ("error: --export_batch=0 must be >= 1 "
                                                   "(images per call of the exported scorer)")
    out = run("--export_batch=4")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "widget" in out.stdout and os.path.join("export", "widget") in out.stdout
    scored = loader.Scorer(str(tmp_path / "export" / "widget")).score_files(
        [s.path for s in samples])
    np.testing.assert_allclose(scored["scores"], ref.image, rtol=1e-5)
