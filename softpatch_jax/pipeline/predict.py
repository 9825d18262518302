"""Scores new images with fitted models from a workdir, without refitting.

python -m softpatch_jax.main --mode=predict --workdir=DIR --images=a.png,parts/,'lot7/*.png'
    [--category=c]

`--images` takes files, folders (every image under them) and globs. For each fitted category (or
the one named) DIR/predictions/<category>/ is replaced whole by scores.csv (image score = max
patch score; one row per image, named by its path relative to the images' common folder, so
images of the same name in different folders stay apart) and one anomaly-map PNG per image
(maps/<relative path>.png).
"""
import glob
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
from ml_collections import ConfigDict
from tqdm.auto import tqdm

from softpatch_jax import methods
from softpatch_jax.data.mvtec import IMAGE_EXTS
from softpatch_jax.data.samples import Sample
from softpatch_jax.features.cache import config_key
from softpatch_jax.io import checkpoint, html_report, plots
from softpatch_jax.io.files import staged_dir
from softpatch_jax.pipeline import evaluate
from softpatch_jax.pipeline.rundir import RunDir

_TMP_MARK = ".orbax-checkpoint-tmp"


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


def expand_images(specs: Sequence[str]) -> List[str]:
    """Files, folders (every image file under them, sorted) and globs -> image paths."""
    paths = []
    for spec in specs:
        if os.path.isdir(spec):
            found = sorted(os.path.join(root, f) for root, _, files in os.walk(spec)
                           for f in files if f.lower().endswith(IMAGE_EXTS))
            if not found:
                raise FileNotFoundError(f"--images: folder {spec!r} holds no images "
                                        f"({', '.join(IMAGE_EXTS)})")
        elif glob.has_magic(spec):
            found = sorted(p for p in glob.glob(spec, recursive=True) if not os.path.isdir(p))
            if not found:
                raise FileNotFoundError(f"--images: pattern {spec!r} matches no file")
        elif os.path.lexists(spec):
            found = [spec]
        else:
            raise FileNotFoundError(f"--images: {spec!r} does not exist; pass files, folders or "
                                    "globs: --images=PATH[,PATH...]")
        for p in found:
            if not os.path.isfile(p):
                raise ValueError(f"--images: {p!r} is not a regular file; remove it from the "
                                 "list")
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


def predict_images(workdir: str, images: Sequence[str], category: str = "",
                   write_maps: bool = True) -> Dict[str, Tuple[List[str], np.ndarray]]:
    """-> {category: (image names, (N,) image scores)}, also written to
    DIR/predictions/<category>/."""
    paths = expand_images(images)
    models = fitted_models(workdir)
    if category and category not in models:
        raise ValueError(f"--category={category!r} is not fitted in {workdir!r}; fitted: "
                         f"{', '.join(models)}")
    names = output_names(paths)
    samples = [Sample(p, 0, "unknown", n) for p, n in zip(paths, names)]
    fitted = {c: load_fitted(models[c]) for c in ([category] if category else models)}
    out, extractors = {}, {}
    for cat, (method, state, config) in fitted.items():
        d = config.data
        key = config_key(config.model, d, method.features, config.seed)
        if key not in extractors:  # categories fitted with one backbone share it
            extractors[key] = evaluate.extractor_for(config, method)
        extractor = method.extractor_for(state, extractors[key])
        feats = extractor.extract(samples, d.resize, d.image_size, d.batch_size,
                                  f"{cat}: features")
        scores = method.score(state, feats)
        with staged_dir(os.path.join(workdir, "predictions", cat)) as target:
            evaluate.write_scores(os.path.join(target, "scores.csv"), samples, scores.image)
            if write_maps:
                maps = scores.maps()
                vmax = float(maps.max())
                for s, amap in tqdm(list(zip(samples, maps)), desc=f"{cat}: maps", leave=False):
                    dest = os.path.join(target, "maps", os.path.splitext(s.name)[0] + ".png")
                    os.makedirs(os.path.dirname(dest), exist_ok=True)
                    plots.map_png(s, amap, d.resize, d.image_size, dest, vmax)
        out[cat] = (names, scores.image)
    html_report.write_report(workdir)  # the fit's report, with a predictions section
    return out
