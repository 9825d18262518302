"""Sweep noise ratio x discriminator x mode x category with one command; resumable.

python -m experiments.sweep --config configs/sweeps/noise.py --workdir DIR [--config.x=...]

Features are extracted once per (backbone, image size, ...) into DIR/features/<key>/ and shared by
every point. Each finished point is written at once to DIR/points/.../result.json; a rerun skips finished
points, so a killed sweep loses only the point in flight. After every point the aggregate tables
(DIR/results.csv, DIR/results.md, DIR/metrics.json) and the curves (DIR/auroc_vs_noise.png) are
rewritten from every finished point in DIR, so sweeps run one after another into one DIR (one per
noise mode, say) share one table.
"""
import csv
import itertools
import json
import logging
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags
from tqdm.auto import tqdm

from softpatch_jax import data, methods, plots, report, train
from softpatch_jax.feature_cache import FeatureCache, config_key

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Sweep directory (results, cached features, points).")
config_flags.DEFINE_config_file("config", None, "Sweep config file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])

METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max")


def _split(spec: str):
    return [s.strip() for s in str(spec).split(",") if s.strip()]


def points(config):
    """Every (category, mode, ratio, discriminator) of the sweep, in run order."""
    cats = data.category_names(config.data.name, config.data.root, config.data.category,
                               config.data.source)
    ratios = [float(r) for r in _split(config.sweep.ratios)]
    return list(itertools.product(cats, _split(config.sweep.modes), ratios,
                                  _split(config.sweep.discriminators)))


def point_path(workdir, category, mode, ratio, disc):
    """DIR/points/<category>/<mode>/ratio<r>_<disc>/result.json; the folder also holds the
    point's noise files and overlay."""
    return os.path.join(workdir, "points", category, mode, f"ratio{ratio:g}_{disc}",
                        "result.json")


def point_config(config, mode, ratio, method):
    """`method`: a SoftPatch discriminator (none, nearest, gaussian, lof) or another method
    (patchcore, softpatch_plus, padim)."""
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.noise.mode, c.noise.ratio = mode, ratio
        if method in methods.METHODS and method != "softpatch":
            c.model.method = method
        else:
            c.model.method, c.model.discriminator = "softpatch", method
        del c["sweep"]
    return c


def aggregate(workdir, rows):
    """Writes results.csv (one row per point), results.md (category x method per mode and
    ratio, with a mean row) and the curves."""
    cols = ["category", "mode", "ratio", "method"] + list(METRICS) + ["seconds"]
    with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines, means = [], []
    for mode, ratio in sorted({(r["mode"], r["ratio"]) for r in rows}):
        sub = [r for r in rows if r["mode"] == mode and r["ratio"] == ratio]
        methods = sorted({r["method"] for r in sub})
        cats = sorted({r["category"] for r in sub})
        for metric in METRICS:
            cell = {(r["category"], r["method"]): r.get(metric) for r in sub}
            if all(v is None for v in cell.values()):
                continue
            lines += [f"## {metric}, noise {ratio:g} ({mode})", "",
                      "| category | " + " | ".join(methods) + " |",
                      "|---" * (len(methods) + 1) + "|"]
            fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
            for c in cats:
                lines.append(f"| {c} | " + " | ".join(fmt(cell.get((c, m))) for m in methods)
                             + " |")
            mean_row = {}
            for m in methods:
                vals = [cell[(c, m)] for c in cats if cell.get((c, m)) is not None]
                mean_row[m] = sum(vals) / len(vals) if vals else None
            lines += ["| **mean** | " + " | ".join(fmt(mean_row[m]) for m in methods) + " |", ""]
            for m in methods:
                means.append({"mode": mode, "ratio": ratio, "method": m, metric: mean_row[m]})
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    merged = {}
    for r in means:
        merged.setdefault((r["mode"], r["ratio"], r["method"]), {}).update(r)
    report.write_json(os.path.join(workdir, "metrics.json"),
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
    train.validate(config)
    todo = points(config)
    for category, mode, ratio, disc in todo:  # fail fast: every split is possible, before work
        if not os.path.isfile(point_path(workdir, category, mode, ratio, disc)):
            pc = point_config(config, mode, ratio, disc)
            methods.check(pc)
            train.prepare_split(pc, category)
    embedders = {}  # one per feature kind (patch features; PaDiM's), built on first use
    rows = []
    for category, mode, ratio, disc in tqdm(todo, desc="sweep points"):
        path = point_path(workdir, category, mode, ratio, disc)
        if not os.path.isfile(path):
            pc = point_config(config, mode, ratio, disc)
            methods.check(pc)
            key = config_key(pc.model, pc.data, pc.seed)
            if key not in embedders:
                embedders[key] = methods.make_embedder(pc)
            cache = embedders[key] if pc.model.method == "fyd" else FeatureCache(
                embedders[key], os.path.join(workdir, "features", key, category))  # FYD: trained
            os.makedirs(os.path.dirname(path), exist_ok=True)
            overlay = os.path.join(os.path.dirname(path), "overlay.png") \
                if config.sweep.overlays else ""
            start = time.time()
            result = train.evaluate_category(pc, category, cache, os.path.dirname(path),
                                             overlay, save_checkpoint=False)
            result.update(category=category, mode=mode, ratio=ratio, method=disc,
                          seconds=round(time.time() - start, 2))
            report.write_json(path, result)  # atomic: a killed point leaves nothing behind
            logging.info("point %s: %s", path, result)
        with open(path) as f:
            rows.append(json.load(f))
        aggregate(workdir, finished_points(workdir))
    with open(os.path.join(workdir, "results.md")) as f:
        print(f.read())
    return rows


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.getLogger().setLevel(logging.INFO)
    try:
        run_sweep(FLAGS.config, FLAGS.workdir)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
