"""Sweeps: noise ratio x method entry x mode x category, resumable (driver: experiments/sweep.py).

Features are extracted once per (backbone, image size, ...) into DIR/features/<key>/ and shared by
every point. Each finished point is written at once to DIR/points/.../result.json; a rerun skips
finished points, so a killed sweep loses only the point in flight. After every point the aggregate
tables (DIR/results.csv, DIR/results.md, DIR/metrics.json) and the curves (DIR/auroc_vs_noise.png)
are rewritten from every finished point in DIR, so sweeps run one after another into one DIR (one
per noise mode, say) share one table.
"""
import csv
import itertools
import json
import logging
import os
import time

from tqdm.auto import tqdm

from softpatch_jax import data, methods
from softpatch_jax.features.cache import FeatureCache, config_key
from softpatch_jax.io import plots, report
from softpatch_jax.io.files import write_json
from softpatch_jax.pipeline import evaluate
from softpatch_jax.settings import comma_list


def points(config):
    """Every (category, mode, ratio, entry) of the sweep, in run order; an entry is a method or
    a SoftPatch discriminator (`methods.sweep_overrides`)."""
    cats = data.category_names(config.data.name, config.data.root, config.data.category,
                               config.data.source)
    ratios = [float(r) for r in comma_list(config.sweep.ratios)]
    return list(itertools.product(cats, comma_list(config.sweep.modes), ratios,
                                  comma_list(config.sweep.discriminators)))


def point_path(workdir, category, mode, ratio, entry):
    """DIR/points/<category>/<mode>/ratio<r>_<entry>/result.json; the folder also holds the
    point's noise files and overlay."""
    return os.path.join(workdir, "points", category, mode, f"ratio{ratio:g}_{entry}",
                        "result.json")


def point_config(config, mode, ratio, entry):
    """The run config of one point: the sweep's config with its noise and method set."""
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.noise.mode, c.noise.ratio = mode, ratio
        c.model.update(methods.sweep_overrides(entry))
        del c["sweep"]
    return c


def aggregate(workdir, rows):
    """Writes results.csv (one row per point), results.md (category x method per mode and
    ratio, with a mean row) and the curves."""
    cols = ["category", "mode", "ratio", "method"] + list(report.METRICS) + ["seconds"]
    with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines, means = [], []
    for mode, ratio in sorted({(r["mode"], r["ratio"]) for r in rows}):
        sub = [r for r in rows if r["mode"] == mode and r["ratio"] == ratio]
        names = sorted({r["method"] for r in sub})
        cats = sorted({r["category"] for r in sub})
        for metric in report.METRICS:
            cells = {c: {} for c in cats}
            for r in sub:
                cells[r["category"]][r["method"]] = r.get(metric)
            if all(v is None for row in cells.values() for v in row.values()):
                continue
            lines += [f"## {metric}, noise {ratio:g} ({mode})", ""]
            lines += report.table(cells, names) + [""]
            for m in names:
                means.append({"mode": mode, "ratio": ratio, "method": m,
                              metric: report.mean(cells[c].get(m) for c in cats)})
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    merged = {}
    for r in means:
        merged.setdefault((r["mode"], r["ratio"], r["method"]), {}).update(r)
    write_json(os.path.join(workdir, "metrics.json"),
               {"points": rows, "means": list(merged.values())})
    plots.sweep_curves(list(merged.values()), os.path.join(workdir, "auroc_vs_noise.png"))


def finished_points(workdir):
    """Every finished point under DIR/points, also those of earlier sweeps into the same DIR
    (e.g. one per noise mode), in a stable order."""
    rows = []
    for root, _, files in sorted(os.walk(os.path.join(workdir, "points"))):
        if "result.json" in files:
            with open(os.path.join(root, "result.json")) as f:
                rows.append(json.load(f))
    return sorted(rows, key=lambda r: (r["category"], r["mode"], r["ratio"], r["method"]))


def run_sweep(config, workdir):
    os.makedirs(workdir, exist_ok=True)
    evaluate.validate(config)
    todo = points(config)
    for category, mode, ratio, entry in todo:  # fail fast: every point is possible, before work
        if not os.path.isfile(point_path(workdir, category, mode, ratio, entry)):
            pc = point_config(config, mode, ratio, entry)
            methods.from_config(pc)
            evaluate.prepare_split(pc, category)
    extractors = {}  # one per feature kind (patch features; PaDiM's), built on first use
    rows = []
    for category, mode, ratio, entry in tqdm(todo, desc="sweep points"):
        path = point_path(workdir, category, mode, ratio, entry)
        if not os.path.isfile(path):
            pc = point_config(config, mode, ratio, entry)
            method = methods.from_config(pc)
            key = config_key(pc.model, pc.data, method.features, pc.seed)
            if key not in extractors:
                extractors[key] = evaluate.extractor_for(pc, method)
            extractor = extractors[key]
            if method.cacheable_features:
                extractor = FeatureCache(extractor,
                                         os.path.join(workdir, "features", key, category))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            overlay = os.path.join(os.path.dirname(path), "overlay.png") \
                if config.sweep.overlays else ""
            start = time.time()
            result = evaluate.evaluate_category(pc, category, extractor, os.path.dirname(path),
                                                overlay, save_checkpoint=False, method=method)
            result.update(category=category, mode=mode, ratio=ratio, method=entry,
                          seconds=round(time.time() - start, 2))
            write_json(path, result)  # atomic: a killed point leaves nothing behind
            logging.info("point %s: %s", path, result)
        with open(path) as f:
            rows.append(json.load(f))
        aggregate(workdir, finished_points(workdir))
    with open(os.path.join(workdir, "results.md")) as f:
        print(f.read())
    return rows
