"""Fit and evaluate a method on every selected category; write results as each one finishes.

One category runs in steps: `prepare_split` (data and injected noise), `fit_category` (the
method's preparation, training features, fit), `score_category` (test features, scores) and
`category_metrics`; `evaluate_category` chains them and writes the category's files.
"""
import csv
import dataclasses
import logging
import os
import time
import zlib
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import numpy as np

from softpatch_jax import data, methods
from softpatch_jax.data import noise, preprocess
from softpatch_jax.evaluation import metrics
from softpatch_jax.features.extractor import make_extractor
from softpatch_jax.features.types import BackboneSpec
from softpatch_jax.io import assets, checkpoint, report
from softpatch_jax.files import json_safe, write_json
from softpatch_jax.io.text import csv_text_cell
from softpatch_jax.pipeline import (compilation, console, decisions, prefilter, provenance,
                                    rundir, validation)
from softpatch_jax.settings import comma_list
from softpatch_jax.timing import NO_CLOCK, STAGES, StageClock
from softpatch_jax.upgrade import upgrade


def extractor_for(config, method: methods.Method):
    """The feature extractor of `method` with the backbone fields of `config`."""
    return make_extractor(BackboneSpec.from_config(config), method.features, config.seed,
                          config.runtime.cache_dir, config.runtime.multi_device,
                          tile=config.data.tile)


def noise_file_list(spec: str):
    """noise.files: a comma list of sample names, or the path of a text file with one per line."""
    path = validation.noise_list_file(spec)
    if path:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    return comma_list(spec)


@dataclasses.dataclass(frozen=True)
class Readable:
    """One category's usable samples, those left out ([(name, why)]) and the check's seconds."""
    category: data.Category
    left_out: Tuple[Tuple[str, str], ...]
    seconds: float


def readable_category(config, category: str) -> Readable:
    """The category as its reader lists it, less the files that cannot be read (left out and
    listed: data.leave_out_unreadable). Raises when no training image is left."""
    start = time.perf_counter()
    listed = data.load_category(config.data, category, config.seed)
    cat, left_out = data.leave_out_unreadable(listed)
    if not cat.train:
        why = dict(left_out)[listed.train[0].name]
        raise ValueError(f"none of the training images of category {category!r} can be read "
                         f"(e.g. {why})")
    return Readable(cat, tuple(left_out), time.perf_counter() - start)


def prepare_split(config, category: str, readable: Optional[Readable] = None
                  ) -> noise.NoisySplit:
    """Clean data of one category (`readable`, checked here when None), capped as configured,
    with noise injected. The noise is drawn from the readable files only."""
    readable = readable or readable_category(config, category)
    cat = readable.category
    train = noise.subsample(cat.train, config.data.max_train,
                            noise.category_rng(config.seed, category, "train"))
    test = noise.subsample(cat.test, config.data.max_test,
                           noise.category_rng(config.seed, category, "test"), stratify=True)
    cat = data.Category(cat.name, train, test)
    mode = noise.resolve_mode(config.noise.mode, config.noise.overlap)
    split = noise.inject_noise(cat, config.noise.ratio, mode, config.seed,
                               noise_file_list(config.noise.files), config.noise.fold)
    return dataclasses.replace(split, left_out=readable.left_out,
                               check_seconds=readable.seconds)


def record_noise(split: noise.NoisySplit, directory: str) -> None:
    """noise.txt, noise.json and, when files were left out, unreadable.txt (name TAB why)."""
    with open(os.path.join(directory, "noise.txt"), "w") as f:
        f.writelines(s.name + "\n" for s in split.injected)
    write_json(os.path.join(directory, "noise.json"), noise.describe(split))
    if split.left_out:
        with open(os.path.join(directory, "unreadable.txt"), "w") as f:
            f.writelines(f"{name}\t{why}\n" for name, why in split.left_out)


def write_scores(path: str, samples, image_scores) -> None:
    """scores.csv; names and defects guarded against formulas (the report reads them back
    through text.csv_text_value), scores as written by repr."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["name", "label", "defect", "score"])
        w.writerows([csv_text_cell(s.name), s.label, csv_text_cell(s.defect), repr(float(v))]
                     for s, v in zip(samples, image_scores))


def category_key(seed: int, category: str) -> jax.Array:
    return jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(category.encode()))


@dataclasses.dataclass
class Fitted:
    """One category's fit: the method's fitted state, the extractor that scores with it, the
    seconds each step took, and the audit and thresholds (None when not asked for)."""
    state: Any
    extractor: Any
    seconds: Dict[str, float]
    calibration: Optional[decisions.Calibration] = None


def fit_category(method: methods.Method, train_samples: Sequence, extractor, data_config,
                 key: jax.Array, directory: str, label: str = "",
                 settings: Optional[decisions.Settings] = None, seed: int = 0,
                 clock: StageClock = NO_CLOCK) -> Fitted:
    """The method's preparation (FYD trains its alignment in `directory`), the features of
    `train_samples` (Samples, paths or image arrays), the fit; with `settings`, also the training-set audit and the label-free thresholds
    (pipeline/decisions.py). `clock` gets every stage ('alignment', 'features_train', the
    fit's, 'calibration', 'audit')."""
    d = data_config
    t0 = time.time()
    with clock.stage(method.prepare_stage):
        extractor, learned = method.prepare(train_samples, extractor, directory, key)
    if learned is None:
        clock.seconds.pop(method.prepare_stage, None)
    t1 = time.time()
    with clock.stage("features_train"):
        train = extractor.extract(train_samples, d.resize, d.image_size, d.batch_size,
                                  f"{label}: train features")
    t2 = time.time()
    calibration = None
    if settings is None:
        with clock.stage("fit"):
            state = method.fit(train, key, learned)
    else:
        state, calibration = decisions.fit_and_calibrate(method, train, key, learned, settings,
                                                         seed, clock)
    del train
    seconds = dict(seconds_features_train=round(t2 - t1, 2), seconds_fit=round(time.time() - t2, 2))
    if learned is not None and method.prepare_stage == "alignment":
        seconds["seconds_train_alignment"] = round(t1 - t0, 2)
    return Fitted(state, extractor, seconds, calibration)


def score_category(method: methods.Method, fitted: Fitted, samples, data_config,
                   desc: str, clock: StageClock = NO_CLOCK) -> methods.Scores:
    """Test features ('features_test') and scores ('scoring', the maps included)."""
    d = data_config
    with clock.stage("features_test"):
        test = fitted.extractor.extract(samples, d.resize, d.image_size, d.batch_size, desc)
    with clock.stage("scoring"):
        scores = method.score(fitted.state, test)
        scores.maps()  # the maps are part of scoring (every caller reads them)
    return scores


def category_metrics(split: noise.NoisySplit, scores: methods.Scores, masks=None) -> Dict:
    """Image metrics, and pixel metrics against `masks` ((T, H, W), None without masks); a
    metric that a single-class test set leaves undefined is None, with a `note` saying why."""
    labels = np.array([s.label for s in split.test])
    result = {
        "image_auroc": metrics.auroc(labels, scores.image),
        "image_ap": metrics.average_precision(labels, scores.image),
        "image_f1_max": metrics.f1_max(labels, scores.image),
        "image_auroc_per_defect": metrics.per_defect_auroc(
            labels, scores.image, [s.defect for s in split.test]),
        "n_train_clean": len(split.train) - len(split.injected),
        "n_noise": len(split.injected),
        "n_test": len(split.test),
        "n_test_anomalous": int(labels.sum()),
        "n_unreadable": len(split.left_out),
    }
    if masks is not None:
        result["pixel_auroc"] = metrics.pixel_auroc(masks, scores.maps())
        result["aupro"] = metrics.aupro(masks, scores.maps(), max_fpr=0.3)
        result["pixel_ap"] = metrics.pixel_ap(masks, scores.maps())
        result["pixel_f1_max"] = metrics.pixel_f1_max(masks, scores.maps())
    note = validation.single_class_note(split)
    if note:
        result["note"] = note
    return json_safe(result)


def load_masks(samples, data_config) -> np.ndarray:
    """(T, H, W) ground-truth masks of test samples (zeros where a sample has none)."""
    return np.stack([preprocess.load_sample_mask(s, data_config.resize, data_config.image_size)
                     for s in samples])


def evaluate_category(config, category: str, extractor, out_dir: str, train_dir: str,
                      overlay: bool = False, save_checkpoint: bool = True,
                      method: methods.Method = None, split: noise.NoisySplit = None) -> Dict:
    """Fits and scores one category, writing its files to `out_dir` (noise.txt, noise.json,
    scores.csv, checkpoint/, overlay.png); `train_dir`: where a method that trains keeps its
    resumable state. `extractor`: an Embedder or a FeatureCache around one. `split`: the
    prepared split (prepared here if None). -> the category's result."""
    method = method or methods.from_config(config)
    split = split or prepare_split(config, category)
    method.check(len(split.train))
    settings = decisions.Settings.from_config(config)
    record_noise(split, out_dir)
    d = config.data
    clock = StageClock()
    if split.check_seconds:
        clock.seconds["image_check"] = split.check_seconds
    # Image-level denoising: a first method drops the most suspicious training images.
    first, dropped = prefilter.drop_suspicious(
        config, split, jax.random.fold_in(category_key(config.seed, category), 1), train_dir,
        category, extractor_for, clock)
    if dropped is not None:
        injected = decisions.injected_flags(split)
        prefilter.write_ranking(os.path.join(out_dir, f"prefilter_{category}.csv"),
                                decisions.audit_names(split.train), dropped, injected)
        prefiltered = dropped.record(first, injected)
    protocol = split  # the noise as injected: the counts and the test set
    split = split if dropped is None else dropped.split
    fitted = fit_category(method, split.train, extractor, d, category_key(config.seed, category),
                          train_dir, category, settings, config.seed, clock)
    cal = fitted.calibration
    t_score = time.time()
    if save_checkpoint:
        with clock.stage("checkpoint"):
            checkpoint.save_model(os.path.join(out_dir, "checkpoint"), fitted.state.to_arrays(),
                                  config.to_dict(), extractor.grid(d.image_size))
    scores = score_category(method, fitted, split.test, d, f"{category}: test features", clock)
    with clock.stage("metrics"):
        write_scores(os.path.join(out_dir, "scores.csv"), split.test, scores.image)
        has_masks = any(s.has_mask for s in split.test)
        masks = load_masks(split.test, d) if has_masks or overlay else None  # read once
        result = category_metrics(protocol, scores, masks if has_masks else None)
        result.update(method.summary(fitted.state))
        if dropped is not None:
            result.update(prefiltered)
        if cal.contamination is not None:  # how contaminated the pile looks, and what it removed
            result.update(cal.contamination.record(), denoise_ratios=cal.ratios)
    with clock.stage("audit"):
        if cal.noise_scores is not None:
            injected = decisions.injected_flags(split)
            decisions.write_audit(os.path.join(out_dir, f"audit_{category}.csv"),
                                  decisions.audit_names(split.train), cal, injected)
            result.update(decisions.audit_figures(cal, injected))
    with clock.stage("metrics"):
        if cal.image_threshold is not None:
            decisions.write_threshold(out_dir, cal, settings)
            labels = np.array([s.label for s in split.test])
            result.update(decisions.test_figures(cal, labels, scores.image,
                                                 masks if has_masks else None,
                                                 scores.maps() if has_masks else None))
            result["threshold_source"] = cal.source
            result["train_false_reject"] = cal.train_false_reject
            if cal.exact_share is not None:
                result["calibration_exact_share"] = round(cal.exact_share, 4)
    result = json_safe(result)
    t_report = time.time()  # curves and gallery for report.html, while the maps are in memory
    with clock.stage("report_assets"):
        if overlay:
            from softpatch_jax.io import plots

            plots.overlays(split.test, scores.maps(), masks, d.resize, d.image_size,
                           os.path.join(out_dir, "overlay.png"),
                           f"{category}: {method.name} ({method.label})")
        assets.report_assets(out_dir, split.test, scores.image, scores.maps(),
                             masks if has_masks else None, d.resize, d.image_size)
    result["seconds_report_assets"] = round(time.time() - t_report, 2)
    result.update(fitted.seconds, seconds_predict=round(t_report - t_score, 2))
    result["stage_seconds"] = {name: clock.rounded()[name] for name in STAGES
                               if name in clock.seconds}
    return result


def run_title(config, method: methods.Method) -> str:
    return (f"{config.data.name}: {method.name} ({method.label}), noise={config.noise.ratio} "
            f"({noise.resolve_mode(config.noise.mode, config.noise.overlap)}), "
            f"{config.backbone.name}")


def train_and_evaluate(config, workdir: str, overwrite: bool = False) -> Dict[str, Dict]:
    """Fits and evaluates every selected category into `workdir` (see `rundir.RunDir`).

    Everything that can be checked is checked first (config, workdir, every category's files);
    each category's files then appear together when it succeeds, and metrics.json/results.md
    always describe exactly the categories on disk. A config in 0.2's shape is upgraded first.
    -> {category: result}; the report and the closing summary are the command's (main.py), as
    the report sits above the pipeline."""
    config = upgrade(config)
    method = validation.check_config(config)
    validation.check_workdir(workdir)
    categories = data.category_names(config.data.name, config.data.root, config.data.category,
                                     config.data.source)
    splits = {}
    for category in categories:  # every category's data, before any compute
        splits[category] = prepare_split(config, category)
        method.check(len(splits[category].train))
        validation.check_split(splits[category], category)
    records = {c: provenance.record(config, s.train + s.test) for c, s in splits.items()}
    run = rundir.RunDir(workdir)
    run.conflicts(next(iter(records.values())), categories, overwrite)  # refuse before the lock
    title = run_title(config, method)
    compilation.enable_persistent_cache(config.runtime)  # before the first compile
    with run.transaction():
        # Again under the lock: a fit that finished meanwhile may have left other results.
        stale = run.conflicts(next(iter(records.values())), categories, overwrite)
        extractor = extractor_for(config, method)
        for i, category in enumerate(categories):
            start = time.time()
            with run.stage(category) as out, compilation.CompileCounter() as compiled:
                result = evaluate_category(config, category, extractor, out,
                                           os.path.join(workdir, method.name, category),
                                           method=method, split=splits[category])
                result["seconds"] = round(time.time() - start, 2)
                result.update(compiles=compiled.compiles, compile_cache_hits=compiled.cache_hits,
                              seconds_compile=round(compiled.seconds, 2))
                write_json(os.path.join(out, "result.json"), {**result, **records[category]})
            run.remove(stale)  # results of another config go with the first new category
            stale = []
            logging.info("%s: %s", category, result)
            console.say(f"[{i + 1}/{len(categories)}] {category}: {console.headline(result)} "
                        f"({result['seconds']:.1f} s)")
            report.write_results(workdir, run.results(), config.to_dict(), title)
    return run.results()
