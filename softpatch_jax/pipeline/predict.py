"""Scores new images with fitted models from a workdir, without refitting.

python -m softpatch_jax.main --mode=predict --workdir=DIR --images=a.png,b.png [--category=c]

Writes DIR/predictions/<category>/scores.csv (image score = max patch score) and one anomaly-map
PNG per image (maps/<image>.png), for each fitted category (or the one named).
"""
import os
from typing import Dict, List, Sequence

import numpy as np
from ml_collections import ConfigDict
from tqdm.auto import tqdm

from softpatch_jax import methods
from softpatch_jax.data.samples import Sample
from softpatch_jax.features.cache import config_key
from softpatch_jax.io import checkpoint, plots
from softpatch_jax.pipeline import evaluate


def fitted_categories(workdir: str) -> List[str]:
    root = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no fitted models in {workdir!r} (no checkpoints/ folder); "
                                "fit first with the same --workdir")
    return sorted(c for c in os.listdir(root) if os.path.isdir(os.path.join(root, c)))


def predict_images(workdir: str, paths: Sequence[str], category: str = "",
                   write_maps: bool = True) -> Dict[str, np.ndarray]:
    """-> {category: (N,) image scores}, also written to DIR/predictions/<category>/."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing or not paths:
        raise FileNotFoundError(f"images not found: {missing[:3] or 'none given'}; pass "
                                "--images=PATH[,PATH...]")
    categories = [category] if category else fitted_categories(workdir)
    samples = [Sample(os.path.abspath(p), 0, "unknown", os.path.basename(p)) for p in paths]
    out, extractors = {}, {}
    for cat in categories:
        arrays, meta = checkpoint.load_model(checkpoint.checkpoint_dir(workdir, cat))
        config = ConfigDict(meta["config"])
        method = methods.from_config(config)
        d = config.data
        key = config_key(config.model, d, method.features, config.seed)
        if key not in extractors:  # categories fitted with one backbone share it
            extractors[key] = evaluate.extractor_for(config, method)
        fitted = method.fitted_from_arrays(arrays)
        extractor = method.extractor_for(fitted, extractors[key])
        feats = extractor.extract(samples, d.resize, d.image_size, d.batch_size,
                                  f"{cat}: features")
        scores = method.score(fitted, feats)
        target = os.path.join(workdir, "predictions", cat)
        os.makedirs(target, exist_ok=True)
        evaluate.write_scores(os.path.join(target, "scores.csv"), samples, scores.image)
        if write_maps:
            maps = scores.maps()
            os.makedirs(os.path.join(target, "maps"), exist_ok=True)
            vmax = float(maps.max())
            for s, amap in tqdm(list(zip(samples, maps)), desc=f"{cat}: maps", leave=False):
                name = os.path.splitext(s.name)[0] + ".png"
                plots.map_png(s, amap, d.resize, d.image_size,
                              os.path.join(target, "maps", name), vmax)
        out[cat] = scores.image
    return out
