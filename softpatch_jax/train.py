"""Fit and evaluate SoftPatch on every selected category; write results as each one finishes."""
import logging
import os
import time
import zlib
from typing import Dict

import jax
import numpy as np
from tqdm.auto import tqdm

from softpatch_jax import anomaly_map, checkpoint, data, methods, metrics, report, softpatch
from softpatch_jax.data import noise, preprocess


def validate(config) -> None:
    """Fails fast, with one line naming the field, on impossible settings."""
    m = config.model
    if m.discriminator not in ("none",) + softpatch.discriminators.METHODS:
        raise ValueError(f"model.discriminator={m.discriminator!r} is unknown; choose none, "
                         f"{', '.join(softpatch.discriminators.METHODS)}")
    if config.data.image_size > config.data.resize:
        raise ValueError(f"data.image_size={config.data.image_size} exceeds data.resize="
                         f"{config.data.resize}; the centre crop must fit the resized image")
    if not 0.0 < m.coreset_ratio <= 1.0:
        raise ValueError(f"model.coreset_ratio={m.coreset_ratio} must lie in (0, 1]")
    if not 0.0 <= m.threshold < 1.0:
        raise ValueError(f"model.threshold={m.threshold} must lie in [0, 1)")
    noise.resolve_mode(config.noise.mode, config.noise.overlap)
    methods.check(config)
    if config.noise.ratio < 0:
        raise ValueError(f"noise.ratio={config.noise.ratio} must be >= 0")


def noise_file_list(spec: str):
    """noise.files: a comma list of sample names, or the path of a text file with one per line."""
    if spec and os.path.isfile(spec):
        with open(spec) as f:
            return [line.strip() for line in f if line.strip()]
    return [f.strip() for f in spec.split(",") if f.strip()]


def prepare_split(config, category: str) -> noise.NoisySplit:
    """Clean data of one category, capped as configured, with noise injected."""
    cat = data.load_category(config.data, category, config.seed)
    train = noise.subsample(cat.train, config.data.max_train,
                            noise.category_rng(config.seed, category, "train"))
    test = noise.subsample(cat.test, config.data.max_test,
                           noise.category_rng(config.seed, category, "test"), stratify=True)
    cat = data.Category(cat.name, train, test, cat.has_masks)
    files = noise_file_list(config.noise.files)
    mode = noise.resolve_mode(config.noise.mode, config.noise.overlap)
    return noise.inject_noise(cat, config.noise.ratio, mode, config.seed, files, config.noise.fold)


def record_noise(split: noise.NoisySplit, directory: str, category: str) -> None:
    with open(os.path.join(directory, f"noise_{category}.txt"), "w") as f:
        f.writelines(s.name + "\n" for s in split.injected)
    report.write_json(os.path.join(directory, f"noise_{category}.json"), noise.describe(split))


def write_scores(path: str, samples, image_scores) -> None:
    with open(path, "w") as f:
        f.write("name,label,defect,score\n")
        for s, v in zip(samples, image_scores):
            f.write(f"{s.name},{s.label},{s.defect},{float(v)!r}\n")


def evaluate_category(config, category: str, embedder, workdir: str,
                      overlay_path: str = "", save_checkpoint: bool = True) -> Dict:
    """Fits and scores one category. `embedder`: an Embedder or a FeatureCache around one.
    `overlay_path`: if set, a PNG of anomaly-map overlays of a few test images is written."""
    split = prepare_split(config, category)
    record_noise(split, workdir, category)
    d, m = config.data, config.model
    need = methods.min_train_images(config)
    if len(split.train) < need:
        what = f"model.lof_k={m.lof_k} needs more than {m.lof_k}" if need > 2 else \
            f"model.method={m.method} needs at least {need}"
        raise ValueError(f"{what} training images per position, but there are "
                         f"{len(split.train)}; add training images" +
                         (" or lower model.lof_k" if need > 2 else ""))
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), zlib.crc32(category.encode()))
    t_align = time.time()
    embedder, learned = methods.train_on_images(config, split.train, embedder,
                                                os.path.join(workdir, "fyd", category), key)
    t0 = time.time()
    train_feats = embedder.embed(split.train, d.resize, d.image_size, d.batch_size,
                                 f"{category}: train features")
    t1 = time.time()
    arrays = methods.fit(config, train_feats, key)
    arrays.update(learned)
    del train_feats
    t2 = time.time()
    test_feats, warps = methods.embed_test(embedder, split.test, d, f"{category}: test features")
    h, w = embedder.grid(d.image_size)
    if save_checkpoint:
        checkpoint.save_model(checkpoint.checkpoint_dir(workdir, category), arrays,
                              config.to_dict(), (h, w))
    image_scores, grids = methods.score(config, arrays, test_feats, (h, w), warps)
    labels = np.array([s.label for s in split.test])
    write_scores(os.path.join(workdir, f"scores_{category}.csv"), split.test, image_scores)
    result = {
        "image_auroc": metrics.image_auroc(labels, image_scores),
        "image_f1_max": metrics.f1_max(labels, image_scores),
        "image_auroc_per_defect": metrics.per_defect_auroc(
            labels, image_scores, [s.defect for s in split.test]),
        "n_train_clean": len(split.train) - len(split.injected),
        "n_noise": len(split.injected),
        "n_test": len(split.test),
        "n_test_anomalous": int(labels.sum()),
    }
    if "features" in arrays or "cls_features" in arrays:
        result["memory_bank"] = int(arrays.get("features", arrays.get("cls_features")).shape[0])
    has_masks = any(s.has_mask for s in split.test)
    if has_masks or overlay_path:
        maps = anomaly_map.anomaly_maps(grids, d.image_size, m.blur_sigma)
        masks = np.stack([preprocess.load_sample_mask(s, d.resize, d.image_size)
                          for s in split.test])
        if has_masks:
            result["pixel_auroc"] = metrics.pixel_auroc(masks, maps)
            result["aupro"] = metrics.aupro(masks, maps, max_fpr=0.3)
        if overlay_path:
            from softpatch_jax import plots

            plots.overlays(split.test, maps, masks, d.resize, d.image_size, overlay_path,
                           f"{category}: {m.method} ({methods.discriminator(config)})")
    t3 = time.time()
    if learned:
        result["seconds_train_alignment"] = round(t0 - t_align, 2)
    result.update(seconds_features_train=round(t1 - t0, 2), seconds_fit=round(t2 - t1, 2),
                  seconds_predict=round(t3 - t2, 2))
    return result


def train_and_evaluate(config, workdir: str) -> Dict[str, Dict]:
    validate(config)
    os.makedirs(workdir, exist_ok=True)
    categories = data.category_names(config.data.name, config.data.root, config.data.category,
                                     config.data.source)
    embedder = methods.make_embedder(config)
    title = (f"{config.data.name}: {config.model.method} ({methods.discriminator(config)}), "
             f"noise={config.noise.ratio} "
             f"({noise.resolve_mode(config.noise.mode, config.noise.overlap)}), "
             f"{config.model.backbone}")
    results: Dict[str, Dict] = {}
    for category in tqdm(categories, desc="categories", disable=len(categories) < 2):
        start = time.time()
        results[category] = evaluate_category(config, category, embedder, workdir)
        results[category]["seconds"] = round(time.time() - start, 2)
        logging.info("%s: %s", category, {k: v for k, v in results[category].items()})
        report.write_results(workdir, results, config.to_dict(), title)  # results as they go
    print(report.markdown_table(results, title))
    return results
