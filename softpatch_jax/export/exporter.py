"""A fitted category as a self-contained scorer for deployment (`--mode=export`).

    python -m softpatch_jax.main --mode=export --workdir=DIR [--category=c] [--export_batch=8]

writes DIR/export/<category>/ (staged, replaced whole):

    scorer.bin   the jitted scoring function serialised with `jax.export` (StableHLO), lowered for
                 CPU and CUDA: preprocessed images (B, H, W, 3) float32 -> image scores (B,),
                 anomaly maps (B, H, W), verdicts (B,) bool (score >= image threshold) and masks
                 (B, H, W) bool (map >= pixel threshold). Backbone, patch features (or PaDiM's
                 channels; FYD's alignment), 1-NN against the memory bank(s) or the Gaussians,
                 maps (upsampling + blur): all inside.
    arrays.npz   its inputs besides the images, one array per '/'-joined name: the backbone's
                 variables, the fitted arrays (banks with their |b|^2, Gaussians, FYD's
                 parameters) and the two thresholds (NaN: none).
    meta.json    image size, resize, normalisation, batch size, method, thresholds (null: none,
                 verdicts or masks then all False), package and jax versions, platforms.
    loader.py    a copy of `export/loader.py`: scores images with numpy, jax (and PIL) only.

The batch size B is fixed at export (`--export_batch`); the loader pads the last batch. Fixed
resampling matrices (patch-feature pooling, map operators) are constants of the program.
Thresholds come from DIR/categories/<category>/threshold.json ("image_threshold", float;
"pixel_threshold", float or null), or the image threshold from `--threshold` when given.
"""
import json
import logging
import math
import os
import shutil
from typing import Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from softpatch_jax import methods, shapes
from softpatch_jax.data import preprocess
from softpatch_jax.evaluation import anomaly_map
from softpatch_jax.features.extractor import Embedder
from softpatch_jax import files
from softpatch_jax.files import staged_dir, write_json
from softpatch_jax.ops import warp as affine
from softpatch_jax.version import __version__

PLATFORMS = ("cpu", "cuda")
DEFAULT_BATCH = 8
LOADER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "loader.py")
FILES = ("scorer.bin", "arrays.npz", "meta.json", "loader.py")

ScoreFn = Callable[[jnp.ndarray, Dict[str, jnp.ndarray]], Dict[str, jnp.ndarray]]


# -- the inputs: nested dicts of arrays <-> one flat {'a/b/c': array} (arrays.npz) -------------
def flatten(tree: dict, prefix: str = "") -> Dict[str, np.ndarray]:
    """Nested dicts of arrays -> {'/'-joined path: NumPy array}."""
    flat = {}
    for key, value in tree.items():
        if "/" in str(key):
            raise ValueError(f"cannot export an array named {key!r}: '/' joins the names")
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "/"))
        else:
            arr = np.asarray(value)
            if arr.dtype.kind not in "biuf":  # npz stores bfloat16 as opaque bytes
                arr = arr.astype(np.float32)
            flat[name] = arr
    return flat


def unflatten(flat: Dict[str, object]) -> dict:
    """The inverse of `flatten` (works on traced arrays)."""
    return files.unflatten(flat, "/")


# -- the scoring function of a fitted category ----------------------------------------------------
def float32_threshold(value: Optional[float]) -> np.float32:
    """The float32 t with (x >= t) == (x >= value) for every float32 x: the smallest float32
    >= value. None -> NaN (no threshold: every comparison False)."""
    if value is None:
        return np.float32(np.nan)
    t = np.float32(value)
    return np.nextafter(t, np.float32(np.inf)) if float(t) < value else t


def check_exportable(method_name: str) -> None:
    """One line when the registered method has no traced scorer (Method.traced_scorer)."""
    if not methods.get(method_name).exportable():
        raise ValueError(f"model.method={method_name} has no traced scorer, so it cannot be "
                         f"exported (exportable: {', '.join(exportable())}); score it with "
                         "--mode=predict")


def exportable() -> Tuple[str, ...]:
    """The registered methods that export: those with a traced scorer."""
    return tuple(n for n in methods.names() if methods.get(n).exportable())


RESERVED = ("backbone", "image_threshold", "pixel_threshold")


def scoring_function(method, fitted, embedder: Embedder, config,
                     image_threshold: Optional[float] = None,
                     pixel_threshold: Optional[float] = None) -> Tuple[ScoreFn, Dict]:
    """The pure scoring function of a fitted category and its inputs besides the images: the
    method's own traced features and scorer (Method.traced_features / traced_scorer), then the
    maps and the thresholds. -> (fn(images (N, H, W, 3) float32, inputs {name: array}) ->
    {'scores' (N,), 'maps' (N, H, W), 'verdicts' (N,) bool, 'masks' (N, H, W) bool}, inputs:
    flat {name: array})."""
    check_exportable(method.name)
    size = config.data.image_size
    (h, w), (height, width) = embedder.grid(size), shapes.hw(size)
    ky = jnp.asarray(anomaly_map.map_operator(h, height, method.blur_sigma))
    kx = jnp.asarray(anomaly_map.map_operator(w, width, method.blur_sigma))
    features = method.traced_features(embedder)
    grids_and_image, method_inputs = method.traced_scorer(fitted)
    clash = sorted(set(method_inputs) & set(RESERVED))
    if clash:
        raise ValueError(f"model.method={method.name}: its traced scorer's inputs use the "
                         f"reserved names {', '.join(clash)}")
    tree = {"backbone": embedder.variables, "image_threshold": float32_threshold(image_threshold),
            "pixel_threshold": float32_threshold(pixel_threshold), **method_inputs}

    def score(images, inputs):
        x = unflatten(inputs)
        feats, warps = features(x, images)
        patch, image = grids_and_image(x, feats)
        grids = patch.reshape(images.shape[0], h, w)
        if warps is not None:
            grids = affine.unwarp(grids, warps)
        maps = anomaly_map.apply_operators(grids, ky, kx)
        if image is None:
            image = maps.max(axis=(1, 2))
        return {"scores": image, "maps": maps, "verdicts": image >= x["image_threshold"],
                "masks": maps >= x["pixel_threshold"]}

    return score, flatten(tree)


def export_function(fn: ScoreFn, inputs: Dict[str, np.ndarray], batch: int,
                    image_size, platforms=PLATFORMS) -> jax.export.Exported:
    """`fn` lowered for (batch, H, W, 3) float32 images (`image_size` N or (H, W)) and
    `inputs`' shapes and dtypes."""
    images = jax.ShapeDtypeStruct((batch, *shapes.hw(image_size), 3), jnp.float32)
    avals = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in inputs.items()}
    return jax.export.export(jax.jit(fn), platforms=platforms)(images, avals)


# -- thresholds and the export folder ------------------------------------------------------------
def read_thresholds(category_dir: str) -> Tuple[Optional[float], Optional[float], str]:
    """-> (image threshold, pixel threshold, the file) from `category_dir`/threshold.json;
    (None, None, path) when there is none."""
    path = os.path.join(category_dir, "threshold.json")
    if not os.path.isfile(path):
        return None, None, path
    try:
        with open(path) as f:
            record = json.load(f)
        image, pixel = record["image_threshold"], record.get("pixel_threshold")
        for name, v in (("image_threshold", image), ("pixel_threshold", pixel)):
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise ValueError(f"{name}={v!r} is not a finite number")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"cannot read {path!r} ({type(e).__name__}: {e}); refit the category "
                         "or remove the file") from None
    return (None if image is None else float(image),
            None if pixel is None else float(pixel), path)


def export_category(workdir: str, category: str, checkpoint: str, batch: int = DEFAULT_BATCH,
                    image_threshold: Optional[float] = None, platforms=PLATFORMS) -> str:
    """Exports one fitted category to DIR/export/<category>/ -> that folder. `image_threshold`
    (not None) overrides threshold.json's."""
    from softpatch_jax.pipeline import predict, rundir

    stored_image, pixel, source = read_thresholds(rundir.RunDir(workdir).category_dir(category))
    method, fitted, config = predict.load_fitted(checkpoint)
    image = stored_image if image_threshold is None else float(image_threshold)
    where = ("--threshold" if image_threshold is not None
             else source if stored_image is not None else None)
    if image is None:
        logging.warning("%s: no %s: exported without a threshold (verdicts all False, "
                        "meta.json image_threshold null); pass --threshold=VALUE or refit",
                        category, source)
    return export_fitted(method, fitted, config, os.path.join(workdir, "export", category),
                         category, batch, image, pixel, where, platforms)


def export_fitted(method, fitted, config, folder: str, category: str,
                  batch: int = DEFAULT_BATCH, image_threshold: Optional[float] = None,
                  pixel_threshold: Optional[float] = None, threshold_source: Optional[str] = None,
                  platforms=PLATFORMS) -> str:
    """Writes the standalone scorer of a fitted `method` (its state `fitted`, fitted with
    `config`) to `folder` (scorer.bin, arrays.npz, meta.json, loader.py), replacing it whole ->
    `folder`. Thresholds None: verdicts / masks all False."""
    from softpatch_jax.pipeline import evaluate

    check_exportable(method.name)
    folder = os.path.abspath(folder)
    if batch < 1:
        raise ValueError(f"batch={batch} must be >= 1 (images per call of the exported scorer)")
    embedder = evaluate.extractor_for(config, method)
    fn, inputs = scoring_function(method, fitted, embedder, config, image_threshold,
                                  pixel_threshold)
    exported = export_function(fn, inputs, batch, config.data.image_size, platforms)
    d = config.data
    meta = {
        "category": category, "method": method.name, "label": method.label,
        "backbone": config.backbone.name, "image_size": shapes.canonical(d.image_size),
        "resize": d.resize,
        "mean": preprocess.IMAGENET_MEAN.tolist(), "std": preprocess.IMAGENET_STD.tolist(),
        "batch_size": batch, "grid": list(embedder.grid(d.image_size)),
        "image_threshold": image_threshold, "pixel_threshold": pixel_threshold,
        "threshold_source": threshold_source,
        "verdict_rule": "score >= image_threshold; mask = map >= pixel_threshold",
        "outputs": ["scores", "maps", "verdicts", "masks"],
        "platforms": list(exported.platforms), "package_version": __version__,
        "jax_version": jax.__version__, "config": config.to_dict(),
    }
    with staged_dir(folder) as out:
        with open(os.path.join(out, "scorer.bin"), "wb") as f:
            f.write(exported.serialize())
        np.savez(os.path.join(out, "arrays.npz"), **inputs)
        write_json(os.path.join(out, "meta.json"), meta)
        shutil.copyfile(LOADER, os.path.join(out, "loader.py"))
    return folder


def export_workdir(workdir: str, category: str = "", batch: int = DEFAULT_BATCH,
                   image_threshold: Optional[float] = None) -> Dict[str, str]:
    """Exports every fitted category of `workdir` (or the one named) -> {category: folder}.
    Checks the flags, the categories and their methods and thresholds before any compute."""
    from softpatch_jax.pipeline import predict, rundir

    if batch < 1:
        raise ValueError(f"--export_batch={batch} must be >= 1 (images per call of the "
                         "exported scorer)")
    if image_threshold is not None and not math.isfinite(image_threshold):
        raise ValueError(f"--threshold={image_threshold} must be a finite number")
    models = predict.fitted_models(workdir)
    if category and category not in models:
        raise ValueError(f"--category={category!r} is not fitted in {workdir!r}; fitted: "
                         f"{', '.join(models)}")
    chosen = [category] if category else list(models)
    run = rundir.RunDir(workdir)
    for cat in chosen:  # cheap checks first: the method (as the result records it) and the
        #                 thresholds of each
        result = os.path.join(run.category_dir(cat), "result.json")
        if os.path.isfile(result):  # absent in the layout before categories/
            with open(result) as f:
                method = (json.load(f).get("config") or {}).get("model.method")
            if method:
                check_exportable(method)
        read_thresholds(run.category_dir(cat))
    return {cat: export_category(workdir, cat, models[cat], batch, image_threshold)
            for cat in chosen}
