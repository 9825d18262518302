"""Scores new images with fitted models from a workdir, without refitting.

python -m softpatch_jax.main --mode=predict --workdir=DIR --images=a.png,parts/,'lot7/*.png'
    [--category=c]

`--images` takes files, folders (every image under them), globs and list files (.txt/.lst:
one path per line). Files that cannot be read as images are named in a warning (and in
unreadable.txt) and skipped. For each fitted category (or the one named)
DIR/predictions/<category>/ is replaced whole by predictions.csv and predictions.json (one row
per image, named by its path relative to the images' common folder, so images of the same name
in different folders stay apart: score, verdict at the category's label-free threshold or
`--threshold`, share of pixels over the pixel threshold), scores.csv, and per image
maps/<name>.png (heat map), masks/<name>.png (binary mask at the pixel threshold) and
overlays/<name>.png (the image beside its heat map with the mask's contour).
"""
import csv
import glob
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from ml_collections import ConfigDict
from tqdm.auto import tqdm

from softpatch_jax import methods
from softpatch_jax.data import preprocess
from softpatch_jax.data.mvtec import IMAGE_EXTS
from softpatch_jax.data.samples import Sample
from softpatch_jax.features.cache import config_key
from softpatch_jax.features.types import BackboneSpec
from softpatch_jax.io import assets, checkpoint, plots
from softpatch_jax.files import glob_once, staged_dir, walk_once, write_json
from softpatch_jax.io.text import csv_text_cell
from softpatch_jax.pipeline import compilation, decisions, evaluate
from softpatch_jax.pipeline.rundir import RunDir

_TMP_MARK = ".orbax-checkpoint-tmp"
LIST_EXTS = (".txt", ".lst", ".list")


def fitted_models(workdir: str) -> Dict[str, str]:
    """{category: checkpoint folder} of the categories fitted in `workdir`; stray entries (a
    .DS_Store, a folder left by a killed save) are ignored."""
    run = RunDir(workdir)
    models = {c: os.path.join(run.category_dir(c), "checkpoint") for c in run.categories()}
    models = {c: p for c, p in models.items() if os.path.isdir(p)}
    legacy = os.path.join(workdir, "checkpoints")  # the layout before categories/
    if not models and not os.path.isdir(run.root) and os.path.isdir(legacy):
        models = {c: os.path.join(legacy, c) for c in sorted(os.listdir(legacy))
                  if not c.startswith(".") and _TMP_MARK not in c
                  and os.path.isdir(os.path.join(legacy, c))}
    if not models:
        raise FileNotFoundError(f"no fitted models in {workdir!r}; fit first with the same "
                                "--workdir (python -m softpatch_jax.main --config ... "
                                "--workdir DIR)")
    return models


def split_images(flag: str) -> List[str]:
    """--images at its commas, except where pieces joined back name an existing file or folder
    (a name that holds a comma: `lot 7, line 2/`), the longest such join first. A piece is
    taken as written when it exists, else without its outer spaces (`a.png, b.png`)."""
    pieces = flag.split(",") if flag else []
    out, i = [], 0
    while i < len(pieces):
        j = next((j for j in range(len(pieces), i + 1, -1)
                  if os.path.lexists(",".join(pieces[i:j]))), i + 1)
        piece = ",".join(pieces[i:j])
        out.append(piece if os.path.lexists(piece) else piece.strip())
        i = j
    return [p for p in out if p]


def expand_images(specs: Sequence[str]) -> List[str]:
    """Files, folders (every image file under them, sorted) and globs -> image paths."""
    paths = []
    for spec in specs:
        if os.path.isdir(spec):  # each real folder once: link loops end the walk
            found = sorted(os.path.join(root, f) for root, files in walk_once(spec)
                           for f in files if f.lower().endswith(IMAGE_EXTS))
            if not found:
                raise FileNotFoundError(f"--images: folder {spec!r} holds no images "
                                        f"({', '.join(IMAGE_EXTS)})")
        elif glob.has_magic(spec):
            found = [p for p in glob_once(spec) if not os.path.isdir(p)]
            if not found:
                raise FileNotFoundError(f"--images: pattern {spec!r} matches no file")
        elif os.path.lexists(spec):
            if not os.path.isfile(spec):  # named by the user: a wrong path
                raise ValueError(f"--images: {spec!r} is not a regular file; remove it from the "
                                 "list")
            found = [spec]
        else:
            raise FileNotFoundError(f"--images: {spec!r} does not exist; pass files, folders or "
                                    "globs: --images=PATH[,PATH...]")
        # What a folder or a glob finds that is no regular file (a broken link, a link loop, a
        # FIFO) is skipped as the fit's folder readers skip it (data/mvtec.images_in).
        special = [p for p in found if not os.path.isfile(p)]
        if special:
            logging.warning("--images: skipping %d entries of %r that are not regular files "
                            "(directories, FIFOs, sockets or broken links): %s%s", len(special),
                            spec, ", ".join(special[:5]), ", ..." if len(special) > 5 else "")
            found = [p for p in found if os.path.isfile(p)]
            if not found:
                raise FileNotFoundError(f"--images: {spec!r} holds no regular image file")
        paths += found
    if not paths:
        raise FileNotFoundError("no images given; pass --images=PATH[,PATH...] (files, folders "
                                "or globs)")
    unique = list(dict.fromkeys(os.path.abspath(p) for p in paths))  # each file once
    return unique


def output_names(paths: Sequence[str]) -> List[str]:
    """Unique names: each path relative to the folder all of them share."""
    base = os.path.commonpath([os.path.dirname(p) for p in paths])
    return [os.path.relpath(p, base).replace(os.sep, "/") for p in paths]


def load_fitted(path: str) -> Tuple[methods.Method, object, ConfigDict]:
    """A fitted model -> (method, fitted state, config); a damaged one gives one line naming
    the folder."""
    try:
        arrays, meta = checkpoint.load_model(path)
        config = ConfigDict(meta["config"])
        method = methods.from_config(config)
        return method, method.fitted_from_arrays(arrays), config
    except Exception as e:  # orbax/tensorstore raise many types for damaged files
        if "changed since the model was fitted" in str(e):
            raise
        raise ValueError(f"the fitted model in {path!r} cannot be read ({_short(e)}); refit "
                         "the category with the same --workdir") from None


def _short(e: Exception) -> str:
    line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return line[:160]


def read_image_list(path: str) -> List[str]:
    """A list file: one image path per line (blank lines and lines starting with # skipped);
    relative paths are taken from the list file's folder."""
    base = os.path.dirname(os.path.abspath(path))
    with open(path) as f:
        lines = [line.strip() for line in f]
    return [line if os.path.isabs(line) else os.path.join(base, line)
            for line in lines if line and not line.startswith("#")]


def _specs(images: Sequence[str]) -> List[str]:
    """--images entries with list files (a regular file that is not an image) expanded."""
    out = []
    for spec in images:
        if (os.path.isfile(spec) and not spec.lower().endswith(IMAGE_EXTS)
                and spec.lower().endswith(LIST_EXTS)):
            listed = read_image_list(spec)
            if not listed:
                raise ValueError(f"--images: list file {spec!r} names no image")
            out += listed
        else:
            out.append(spec)
    return out


def readable(paths: Sequence[str]) -> Tuple[List[str], List[Tuple[str, str]]]:
    """-> (the paths whose whole image decodes, [(path, why)] for those that do not): the fit's
    policy (data.leave_out_unreadable), with the same check."""
    good, bad = [], []
    for p in paths:
        try:
            preprocess.check_image(p)
            good.append(p)
        except ValueError as e:
            bad.append((p, _short(e)))
    return good, bad


def items_and_names(images, names: Optional[Sequence[str]] = None) -> Tuple[list, List[str]]:
    """The Python API's images -> (items the extractor reads, their names): a list of image
    paths or arrays, or one array of N images ((N, H, W, 3|1|4) or (N, H, W)). Paths must name
    readable images, arrays hold uint8 or floats in [0, 1] (preprocess.array_image); one line
    naming the first that does not. Names: `names`, else the paths as given, else image_<i>."""
    if isinstance(images, (str, os.PathLike)):
        raise ValueError(f"images={str(images)!r} is one path; give a list of image paths or "
                         "arrays, or an (N, H, W, 3) array")
    if isinstance(images, np.ndarray):
        if images.ndim not in (3, 4):
            raise ValueError(f"an array of images must be (N, H, W) or (N, H, W, C), got shape "
                             f"{images.shape}; pass a single image as a list of one")
        items = list(images)
    else:
        items = [os.fspath(i) if isinstance(i, os.PathLike) else i for i in images]
    if not items:
        raise ValueError("no images given")
    for i, item in enumerate(items):
        if isinstance(item, str):
            try:
                preprocess.check_image(item)
            except (OSError, ValueError) as e:
                raise ValueError(f"images[{i}] = {item!r} cannot be read ({_short(e)})") from None
        elif isinstance(item, np.ndarray):  # converted once: the loader then only wraps it
            try:
                items[i] = np.asarray(preprocess.array_image(item))
            except ValueError as e:
                raise ValueError(f"images[{i}]: {e}") from None
        else:
            raise ValueError(f"images[{i}] is a {type(item).__name__}; give image paths or "
                             "numpy arrays")
    if names is None:
        names = [item if isinstance(item, str) else f"image_{i}" for i, item in enumerate(items)]
    elif len(names) != len(items):
        raise ValueError(f"{len(names)} names for {len(items)} images")
    return items, list(names)


def score_items(method: methods.Method, state, config, items: Sequence, extractor,
                desc: str = "features") -> methods.Scores:
    """Scores of `items` (Samples, paths or arrays) with a fitted `state`: the features of the
    fit's extractor (aligned by the method where it aligns), then the method's `score`."""
    d = config.data
    feats = method.extractor_for(state, extractor).extract(items, d.resize, d.image_size,
                                                           d.batch_size, desc)
    return method.score(state, feats)


def stored_thresholds(checkpoint_dir: str) -> Optional[dict]:
    """threshold.json of a fitted category (beside its checkpoint), or None."""
    return decisions.read_threshold(os.path.dirname(checkpoint_dir))


def _write_decisions(target: str, samples, scores, maps, image_threshold, pixel_threshold,
                     source: str, d, write_maps: bool) -> List[dict]:
    """predictions.csv / .json and, per image, maps/ (heat map), masks/ (binary, at the pixel
    threshold) and overlays/ (image | heat map with the predicted mask's contour) PNGs."""
    from PIL import Image

    rows = []
    lo, hi = float(maps.min()), float(maps.max())
    for s, score, amap in tqdm(list(zip(samples, scores, maps)), desc="maps", leave=False):
        stem = os.path.splitext(s.name)[0] + ".png"
        top, left, height, width = preprocess.canvas_box(s, d.resize, d.image_size)
        amap = amap[top:top + height, left:left + width]  # the image's own pixels: its aspect
        mask = None if pixel_threshold is None else amap >= pixel_threshold
        row = {"name": s.name, "path": s.path, "score": float(score),
               "verdict": ("" if image_threshold is None else
                           "anomalous" if score >= image_threshold else "normal"),
               "anomalous_pixels": None if mask is None else float(mask.mean())}
        rows.append(row)
        if not write_maps:
            continue
        for sub in ("maps", "masks", "overlays"):
            os.makedirs(os.path.dirname(os.path.join(target, sub, stem)), exist_ok=True)
        image = preprocess.display_image(s, d.resize, d.image_size)[
            top:top + height, left:left + width]  # read once for both
        plots.map_png(s, amap, d.resize, d.image_size, os.path.join(target, "maps", stem), hi,
                      image)
        if mask is not None:
            Image.fromarray((mask * 255).astype(np.uint8)).save(os.path.join(target, "masks",
                                                                             stem))
        Image.fromarray(assets.overlay(image, amap, mask, lo, hi)).save(
            os.path.join(target, "overlays", stem))
    with open(os.path.join(target, "predictions.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        # Text guarded against formulas (the report reads it back through
        # text.csv_text_value); the numbers as they are.
        w.writerows({**r, "name": csv_text_cell(r["name"]), "path": csv_text_cell(r["path"]),
                     "score": repr(r["score"]),
                     "anomalous_pixels": "" if r["anomalous_pixels"] is None
                     else f"{r['anomalous_pixels']:.6f}"} for r in rows)
    write_json(os.path.join(target, "predictions.json"),
               {"image_threshold": image_threshold, "pixel_threshold": pixel_threshold,
                "threshold_source": source, "images": rows})
    return rows


def predict_images(workdir: str, images: Sequence[str], category: str = "",
                   write_maps: bool = True, threshold: Optional[float] = None
                   ) -> Dict[str, Tuple[List[str], np.ndarray]]:
    """-> {category: (image names, (N,) image scores)}, also written to
    DIR/predictions/<category>/ with verdicts at the category's stored label-free threshold
    (`threshold` overrides the image threshold). Images that cannot be read are skipped with a
    warning naming each; the rest are scored."""
    if threshold is not None and not np.isfinite(threshold):
        raise ValueError(f"--threshold={threshold} must be a finite number")
    paths, unreadable = readable(expand_images(_specs(images)))
    if unreadable:
        logging.warning("%d image(s) cannot be read and are left out (listed in each category's "
                        "unreadable.txt): %s%s", len(unreadable),
                        "; ".join(why for _, why in unreadable[:3]),
                        "; ..." if len(unreadable) > 3 else "")
    if not paths:
        raise ValueError(f"none of the {len(unreadable)} images given could be read; see the "
                         "warnings above")
    models = fitted_models(workdir)
    if category and category not in models:
        raise ValueError(f"--category={category!r} is not fitted in {workdir!r}; fitted: "
                         f"{', '.join(models)}")
    names = output_names(paths)
    samples = [Sample(p, 0, "unknown", n) for p, n in zip(paths, names)]
    fitted = {c: load_fitted(models[c]) for c in ([category] if category else models)}
    out, extractors = {}, {}
    for cat, (method, state, config) in fitted.items():
        compilation.enable_persistent_cache(config.runtime)  # the fit's (a no-op once set)
        d = config.data
        key = config_key(BackboneSpec.from_config(config), d, method.features, config.seed)
        if key not in extractors:  # categories fitted with one backbone share it
            extractors[key] = evaluate.extractor_for(config, method)
        scores = score_items(method, state, config, samples, extractors[key], f"{cat}: features")
        stored = stored_thresholds(models[cat]) or {}
        image_thr = threshold if threshold is not None else stored.get("image_threshold")
        source = "--threshold" if threshold is not None else stored.get("source", "none")
        if image_thr is None:
            logging.warning("%s: no stored threshold (fitted before thresholds existed, or with "
                            "threshold.source=none); scores without verdicts: refit, or pass "
                            "--threshold=VALUE", cat)
        with staged_dir(os.path.join(workdir, "predictions", cat)) as target:
            evaluate.write_scores(os.path.join(target, "scores.csv"), samples, scores.image)
            _write_decisions(target, samples, scores.image, scores.maps(), image_thr,
                             stored.get("pixel_threshold"), source, d, write_maps)
            if unreadable:
                with open(os.path.join(target, "unreadable.txt"), "w") as f:
                    f.writelines(f"{p}\t{why}\n" for p, why in unreadable)
        out[cat] = (names, scores.image)
    return out


def verdict_counts(workdir: str, category: str) -> str:
    """', 3 anomalous, 9 normal' from a category's predictions.json ('' without verdicts)."""
    import json

    with open(os.path.join(workdir, "predictions", category, "predictions.json")) as f:
        rows = json.load(f)["images"]
    counts = {}
    for r in rows:
        if r["verdict"]:
            counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    return "".join(f", {n} {v}" for v, n in sorted(counts.items()))
