"""A fitted category as a self-contained scorer for deployment (`--mode=export`).

    python -m softpatch_jax.main --mode=export --workdir=DIR [--category=c] [--export_batch=8]

writes DIR/export/<category>/ (staged, replaced whole):

    scorer.bin   the jitted scoring function serialised with `jax.export` (StableHLO), lowered for
                 CPU and CUDA: preprocessed images (B, S, S, 3) float32 -> image scores (B,),
                 anomaly maps (B, S, S), verdicts (B,) bool (score >= image threshold) and masks
                 (B, S, S) bool (map >= pixel threshold). Backbone, patch features (or PaDiM's
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

import softpatch_jax
from softpatch_jax.data import preprocess
from softpatch_jax.evaluation import anomaly_map
from softpatch_jax.features import padim as padim_features
from softpatch_jax.features.extractor import Embedder, finest_first
from softpatch_jax.files import staged_dir, write_json
from softpatch_jax.methods.fyd import model as fyd_model
from softpatch_jax.methods.fyd.method import FYD, FYDState
from softpatch_jax.methods.padim import GaussianState
from softpatch_jax.methods.patchcore import MemoryBank
from softpatch_jax.methods.softpatch import SoftPatch, TwoBanks
from softpatch_jax.ops import gaussian, knn
from softpatch_jax.ops import warp as affine

PLATFORMS = ("cpu", "cuda")
DEFAULT_BATCH = 8
EXPORTABLE = ("patchcore", "softpatch", "softpatch_plus", "padim", "fyd")
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
    tree: dict = {}
    for name, value in flat.items():
        *path, leaf = name.split("/")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


# -- the pieces of the scoring function (traceable) ---------------------------------------------
def chunked_k_nearest(queries: jnp.ndarray, bank: jnp.ndarray, bank_sq: jnp.ndarray, k: int,
                      rows: int) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """Exact k-NN by squared L2, traceable: (Q, D) queries, (M, D) bank, (M,) |b|^2 (as
    `knn._bank_sq` computes it) -> ((Q, k) squared distances ascending, (Q, k) int32 indices).
    Brute force's own chunk arithmetic (`knn._nearest_chunk`) over `rows`-query chunks in one
    `lax.map` (one compiled chunk; the (rows x M) block is the memory bound)."""
    q, d = queries.shape
    rows = max(1, min(rows, q))
    chunks = -(-q // rows)
    padded = jnp.pad(queries, ((0, chunks * rows - q), (0, 0)))  # padded rows are dropped
    dist, idx = jax.lax.map(lambda c: knn._nearest_chunk(c, bank, bank_sq, k),
                            padded.reshape(chunks, rows, d))
    return dist.reshape(-1, k)[:q], idx.reshape(-1, k)[:q]


def bank_inputs(bank: MemoryBank) -> Dict[str, np.ndarray]:
    """A memory bank's arrays for the exported function: features, soft weights and |b|^2
    computed as the in-process search computes it (so the arithmetic matches)."""
    features = np.asarray(bank.features, np.float32)
    return {"features": features, "weights": np.asarray(bank.weights, np.float32),
            "sq": np.asarray(knn._bank_sq(jnp.asarray(features)))}


def bank_patch_scores(feats: jnp.ndarray, bank: dict, num_nn: int, soft_weight: bool,
                      rows: int) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """(N, P, D) features -> ((N, P) patch scores, (N, P) nearest entry), as
    `patchcore.patch_scores`: mean squared distance to the `num_nn` nearest entries, times the
    nearest entry's soft weight when `soft_weight`."""
    n, p, d = feats.shape
    dist, idx = chunked_k_nearest(feats.reshape(n * p, d), bank["features"], bank["sq"], num_nn,
                                  rows)
    score = dist.mean(axis=1)
    if soft_weight:
        score = score * bank["weights"][idx[:, 0]]
    return score.reshape(n, p), idx[:, 0].reshape(n, p)


def bank_image_scores(feats: jnp.ndarray, patch: jnp.ndarray, nearest: jnp.ndarray, bank: dict,
                      neighbours: int, rows: int) -> jnp.ndarray:
    """(N,) image scores as `PatchCore.image_scores`: the maximum patch score, or with
    `neighbours` > 0 the PatchCore paper's reweighting (`patchcore.reweighted_image_scores`,
    here in float32)."""
    if neighbours <= 0:
        return patch.max(axis=1)
    t = jnp.arange(patch.shape[0])
    best = jnp.argmax(patch, axis=1)
    f_star, m_star = feats[t, best], nearest[t, best]
    b = min(neighbours, bank["features"].shape[0])
    _, support = chunked_k_nearest(bank["features"][m_star], bank["features"], bank["sq"], b,
                                   rows)
    diff = f_star[:, None, :] - bank["features"][support]
    dist = jnp.sqrt(jnp.sum(diff * diff, axis=-1))
    soft = jnp.exp(dist - dist.max(axis=1, keepdims=True))
    return (1.0 - soft[:, 0] / soft.sum(axis=1)) * jnp.sqrt(patch[t, best])


def unwarp_grids(grids: jnp.ndarray, warps: jnp.ndarray) -> jnp.ndarray:
    """`fyd.model.unwarp_grids`, traceable: (N, h, w) grids in the aligned frame -> the input
    frame by each image's inverse warp (N, 2, 3), border padding."""
    return affine.warp(grids[..., None], affine.invert(warps), "border")[..., 0]


# -- the scoring function of a fitted category ----------------------------------------------------
def _feature_fn(method, embedder: Embedder, model_config):
    """(inputs tree, images) -> ((N, P, D) features, (N, 2, 3) warps or None)."""
    if isinstance(method, FYD):
        fyd = fyd_model.build(method.options, embedder.module, embedder.layers)
        channels = np.asarray(embedder.padim_channels)

        def aligned(tree, images):  # as fyd.model.AlignedEmbedder, with traced variables
            maps, warps, _, _ = fyd_model.align(fyd, tree["fyd"], tree["backbone"], images)
            ordered = finest_first(maps, fyd.taps)
            finest = max(fyd.taps, key=lambda t: maps[t].shape[1])
            warp = warps["image"]
            if finest in warps:  # finest-grid position -> aligned image -> input image
                warp = affine.compose(warps["image"], warps[finest])
            feats = padim_features.padim_features([m.astype(jnp.float32) for m in ordered],
                                                  channels)
            return feats, warp
        return aligned
    m = model_config

    def plain(tree, images):
        return Embedder._embed(embedder.module, embedder.layers, m.embed_dim, m.patch_size,
                               embedder.padim_channels, tree["backbone"], images), None
    return plain


def float32_threshold(value: Optional[float]) -> np.float32:
    """The float32 t with (x >= t) == (x >= value) for every float32 x: the smallest float32
    >= value. None -> NaN (no threshold: every comparison False)."""
    if value is None:
        return np.float32(np.nan)
    t = np.float32(value)
    return np.nextafter(t, np.float32(np.inf)) if float(t) < value else t


def check_exportable(method_name: str) -> None:
    if method_name not in EXPORTABLE:
        raise ValueError(f"model.method={method_name} cannot be exported (export knows "
                         f"{', '.join(EXPORTABLE)}); score it with --mode=predict")


def scoring_function(method, fitted, embedder: Embedder, config,
                     image_threshold: Optional[float] = None,
                     pixel_threshold: Optional[float] = None) -> Tuple[ScoreFn, Dict]:
    """The pure scoring function of a fitted category and its inputs besides the images.
    -> (fn(images (N, S, S, 3) float32, inputs {name: array}) -> {'scores' (N,), 'maps'
    (N, S, S), 'verdicts' (N,) bool, 'masks' (N, S, S) bool}, inputs: flat {name: array})."""
    check_exportable(method.name)
    size = config.data.image_size
    h, w = embedder.grid(size)
    ky = jnp.asarray(anomaly_map.map_operator(h, size, method.blur_sigma))
    kx = jnp.asarray(anomaly_map.map_operator(w, size, method.blur_sigma))
    features = _feature_fn(method, embedder, config.model)
    tree = {"backbone": embedder.variables, "image_threshold": float32_threshold(image_threshold),
            "pixel_threshold": float32_threshold(pixel_threshold)}

    if isinstance(fitted, (MemoryBank, TwoBanks)):
        two = isinstance(fitted, TwoBanks)
        if two:
            tree["cls"] = bank_inputs(fitted.classification)
            tree["seg"] = bank_inputs(fitted.segmentation)
        else:
            tree["bank"] = bank_inputs(fitted)
        # PatchCore's own score never weights; SoftPatch(+) as configured.
        soft = method.soft_weight if isinstance(method, SoftPatch) else False
        def rows(bank):  # query rows per chunk, as the in-process search takes them
            return knn._brute_step(bank["features"].shape[0], method.budget_mb)

        def grids_and_image(x, feats):
            image_bank = x["cls"] if two else x["bank"]
            patch, nearest = bank_patch_scores(feats, image_bank, method.num_nn, soft,
                                               rows(image_bank))
            image = bank_image_scores(feats, patch, nearest, image_bank,
                                      method.reweight_neighbours, rows(image_bank))
            if two:  # maps from the segmentation bank
                patch, _ = bank_patch_scores(feats, x["seg"], method.num_nn, soft,
                                             rows(x["seg"]))
            return patch, image
    elif isinstance(fitted, (GaussianState, FYDState)):
        g = fitted.gaussians if isinstance(fitted, FYDState) else fitted
        tree["gaussians"] = {"mean": np.asarray(g.mean, np.float32),
                             "chol": np.asarray(g.chol, np.float32)}
        if isinstance(fitted, FYDState):
            tree["fyd"] = fitted.variables["params"]

        def grids_and_image(x, feats):
            dist = gaussian._score_chunk(jnp.transpose(feats, (1, 0, 2)), x["gaussians"]["mean"],
                                         x["gaussians"]["chol"])
            return dist.T, None  # PaDiM: the image score is the map's maximum
    else:
        raise ValueError(f"model.method={method.name} cannot be exported ({type(fitted).__name__}"
                         " is not a memory bank or Gaussians)")

    def score(images, inputs):
        x = unflatten(inputs)
        feats, warps = features(x, images)
        patch, image = grids_and_image(x, feats)
        grids = patch.reshape(images.shape[0], h, w)
        if warps is not None:
            grids = unwarp_grids(grids, warps)
        maps = anomaly_map._apply(grids, ky, kx)
        if image is None:
            image = maps.max(axis=(1, 2))
        return {"scores": image, "maps": maps, "verdicts": image >= x["image_threshold"],
                "masks": maps >= x["pixel_threshold"]}

    return score, flatten(tree)


def export_function(fn: ScoreFn, inputs: Dict[str, np.ndarray], batch: int,
                    image_size: int, platforms=PLATFORMS) -> jax.export.Exported:
    """`fn` lowered for (batch, S, S, 3) float32 images and `inputs`' shapes and dtypes."""
    images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
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
    from softpatch_jax.pipeline import evaluate, predict, rundir

    stored_image, pixel, source = read_thresholds(rundir.RunDir(workdir).category_dir(category))
    method, fitted, config = predict.load_fitted(checkpoint)
    check_exportable(method.name)
    image = stored_image if image_threshold is None else float(image_threshold)
    if image is None:
        logging.warning("%s: no %s: exported without a threshold (verdicts all False, "
                        "meta.json image_threshold null); pass --threshold=VALUE or refit",
                        category, source)
    embedder = evaluate.extractor_for(config, method)
    fn, inputs = scoring_function(method, fitted, embedder, config, image, pixel)
    exported = export_function(fn, inputs, batch, config.data.image_size, platforms)
    d = config.data
    meta = {
        "category": category, "method": method.name, "label": method.label,
        "backbone": config.model.backbone, "image_size": d.image_size, "resize": d.resize,
        "mean": preprocess.IMAGENET_MEAN.tolist(), "std": preprocess.IMAGENET_STD.tolist(),
        "batch_size": batch, "grid": list(embedder.grid(d.image_size)),
        "image_threshold": image, "pixel_threshold": pixel,
        "threshold_source": ("--threshold" if image_threshold is not None
                             else source if stored_image is not None else None),
        "verdict_rule": "score >= image_threshold; mask = map >= pixel_threshold",
        "outputs": ["scores", "maps", "verdicts", "masks"],
        "platforms": list(exported.platforms), "package_version": softpatch_jax.__version__,
        "jax_version": jax.__version__, "config": config.to_dict(),
    }
    final = os.path.join(workdir, "export", category)
    with staged_dir(final) as out:
        with open(os.path.join(out, "scorer.bin"), "wb") as f:
            f.write(exported.serialize())
        np.savez(os.path.join(out, "arrays.npz"), **inputs)
        write_json(os.path.join(out, "meta.json"), meta)
        shutil.copyfile(LOADER, os.path.join(out, "loader.py"))
    return final


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
