"""Sweeps: noise ratio x method entry x mode x category, resumable (driver: experiments/sweep.py).

Features are extracted once per (backbone, image size, ...) into DIR/features/<key>/ and shared by
every point (a file per image, keyed by its content stamp). Each point is computed in a staging
folder and moved whole to DIR/points/.../ (result.json with the metrics and the provenance,
noise.txt, noise.json, scores.csv, overlay.png); a rerun skips finished points of the same config
and data, so a killed sweep loses only the point in flight, and refuses (or with `overwrite`
recomputes) points of another config or data. After every point the aggregate
tables (DIR/results.csv, DIR/results.md, DIR/metrics.json) and the curves (DIR/auroc_vs_noise.png)
are rewritten from every finished point in DIR, so sweeps run one after another into one DIR (one
per noise mode, say) share one table.
"""
import csv
import dataclasses
import itertools
import json
import logging
import os
import shutil
import time

from softpatch_jax import data, methods
from softpatch_jax.features.cache import FeatureCache, config_key
from softpatch_jax.features.types import BackboneSpec
from softpatch_jax.io import plots, report
from softpatch_jax.files import atomic_path, fingerprint, staged_dir, write_json
from softpatch_jax.io.lock import workdir_lock
from softpatch_jax.io.text import csv_text_cell, md_cell
from softpatch_jax.pipeline import compilation, console, evaluate, provenance, rundir, validation
from softpatch_jax.settings import comma_list
from softpatch_jax.upgrade import upgrade, upgrade_flat


def points(config):
    """Every (category, mode, ratio, entry) of the sweep, in run order; an entry is a method or
    a SoftPatch discriminator (`methods.sweep_overrides`)."""
    cats = data.category_names(config.data.name, config.data.root, config.data.category,
                               config.data.source)
    try:
        ratios = [float(r) for r in comma_list(config.sweep.ratios)]
    except ValueError:
        raise ValueError(f"sweep.ratios={config.sweep.ratios!r} must be a comma list of numbers, "
                         "e.g. 0,0.05,0.1") from None
    for field in ("ratios", "modes", "discriminators"):
        if not comma_list(config.sweep[field]):
            raise ValueError(f"sweep.{field} is empty; give a comma list")
    return list(itertools.product(cats, comma_list(config.sweep.modes), ratios,
                                  comma_list(config.sweep.discriminators)))


def point_path(workdir, category, mode, ratio, entry):
    """DIR/points/<category>/<mode>/ratio<r>_<entry>/result.json; the folder also holds the
    point's noise files and overlay."""
    return os.path.join(workdir, "points", category, mode, f"ratio{ratio:g}_{entry}",
                        "result.json")


def point_config(config, mode, ratio, entry):
    """The run config of one point: the sweep's config with its noise and method set."""
    c = upgrade(config)  # a copy whose number-or-auto fields take `auto` (upgrade.ANY_TYPE)
    with c.unlocked():
        c.noise.mode, c.noise.ratio = mode, ratio
        for dotted, value in methods.sweep_overrides(entry, c).items():
            section, field = dotted.split(".")
            c[section][field] = value
        del c["sweep"]
    return c


def aggregate(workdir, rows):
    """Writes results.csv (one row per point), results.md (category x method per mode and
    ratio, with a mean row) and the curves."""
    cols = ["category", "mode", "ratio", "method"] + list(report.METRICS) + ["seconds"]
    # Every file atomically: shards of one sweep rewrite them concurrently.
    with atomic_path(os.path.join(workdir, "results.csv")) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        # Text cells guarded against formulas; the rows themselves go on to results.md as is.
        w.writerows({**r, **{k: csv_text_cell(r[k]) for k in ("category", "mode", "method")
                             if k in r}} for r in rows)
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
            lines += [f"## {metric}, noise {ratio:g} ({md_cell(mode)})", ""]
            lines += report.table(cells, names) + [""]
            for m in names:
                means.append({"mode": mode, "ratio": ratio, "method": m,
                              metric: report.mean(cells[c].get(m) for c in cats)})
    with atomic_path(os.path.join(workdir, "results.md")) as tmp, open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    merged = {}
    for r in means:
        merged.setdefault((r["mode"], r["ratio"], r["method"]), {}).update(r)
    write_json(os.path.join(workdir, "metrics.json"),
               {"points": rows, "means": list(merged.values())})
    with atomic_path(os.path.join(workdir, "auroc_vs_noise.png")) as tmp:
        plots.sweep_curves(list(merged.values()), tmp)


# The fields points of one sweep differ in; the rest of their configs must agree.
POINT_FIELDS = ("noise.mode", "noise.ratio", "model.method", "denoise.discriminator")
PROVENANCE = ("config", "config_fingerprint", "data_fingerprint", "version")


def _base(record: dict, varied=()) -> dict:
    """A point's provenance without the fields that vary across the points of a sweep
    (POINT_FIELDS, and `varied`: the model fields its entries set, `_entry_fields`)."""
    config = {k: v for k, v in upgrade_flat(record.get("config") or {}).items()
              if k not in POINT_FIELDS and k not in varied}
    return {"config": config, "version": provenance.comparable_version(record),
            "config_fingerprint": fingerprint(config)}


def _entry_fields(config, entries) -> set:
    """'section.field' for every config field the sweep entries set (variants such as
    lof@grouping=neighbourhood included; an entry that no longer parses sets none)."""
    fields = set()
    for entry in entries:
        try:
            fields |= set(methods.sweep_overrides(str(entry), config))
        except ValueError:
            pass
    return fields


def _read(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def finished_points(workdir):
    """Every finished point under DIR/points, also those of earlier sweeps into the same DIR
    (e.g. one per noise mode), in a stable order, without their provenance."""
    rows = [{k: v for k, v in row.items() if k not in PROVENANCE}
            for _, row, _ in _stored_points(workdir)]
    return sorted(rows, key=_row_order)


def _stored_points(workdir):
    """[(folder relative to DIR, stored result, its modification time)] of every finished
    point under DIR/points (a point being moved by another shard is skipped)."""
    stored = []
    for root, _, files in sorted(os.walk(os.path.join(workdir, "points"))):
        path = os.path.join(root, "result.json")
        if "result.json" in files and not os.path.basename(root).startswith("."):
            try:
                stored.append((os.path.relpath(root, workdir), _read(path),
                               os.path.getmtime(path)))
            except FileNotFoundError:  # replaced by another shard just now
                continue
    return stored


def _row_order(r):
    return (r["category"], r["mode"], r["ratio"], r["method"])


@dataclasses.dataclass
class CheckedPoints:
    """A sweep folder's finished points by the sweep's provenance rules: `fresh`, rows as
    `finished_points` gives them; `stale`, [(folder relative to DIR, row, reasons)]."""
    fresh: list
    stale: list


def checked_points(workdir: str, check_data: bool = True) -> CheckedPoints:
    """Every finished point under DIR/points, split by the rules under which a rerun of the
    sweep would skip it: a point is stale when today's code records another results version
    for its config; when its base config (less the fields the sweep's entries vary) differs
    from that of the newest point of today's version in DIR, the sweep that ran last; and, with `check_data`,
    when its category's files changed since it was computed (the data is listed and stat-ed,
    not read; a category that cannot be listed now raises, naming it)."""
    stored = _stored_points(workdir)
    if not stored:
        return CheckedPoints([], [])
    today = [s for s in stored
             if provenance.comparable_version(s[1]) == provenance.RESULTS_VERSION]
    newest = max(today or stored, key=lambda s: s[2])[1]
    varied = _entry_fields(provenance.stored_config(newest),
                           [r.get("method") for _, r, _ in stored])
    reference = _base(newest, varied)
    listed = {}
    fresh, stale = [], []
    for rel, record, _ in stored:
        row = {k: v for k, v in record.items() if k not in PROVENANCE}
        version = provenance.comparable_version(record)
        reasons = ([f"results version {version}"] if version != provenance.RESULTS_VERSION
                   else provenance.differences(_base(record, varied), reference))
        if not reasons and check_data:
            reasons = _data_changes(record, listed)
        (stale.append((rel, row, reasons)) if reasons else fresh.append(row))
    return CheckedPoints(sorted(fresh, key=_row_order),
                         sorted(stale, key=lambda s: _row_order(s[1])))


def _data_changes(record: dict, listed: dict) -> list:
    """[why] when the files of the point's split differ from those it was computed on (its
    category listed once per data config, in `listed`)."""
    category = record["category"]
    config = provenance.stored_config(record, category)
    key = (category, fingerprint(config.data.to_dict()), config.seed)
    if key not in listed:
        try:
            listed[key] = evaluate.readable_category(config, category)
        except (OSError, ValueError) as e:
            raise ValueError(f"the data of category {category!r} cannot be listed now ({e}), "
                             "so its points cannot be checked; make it readable, or pass "
                             "--check_data=false to table them without checking") from None
    split = evaluate.prepare_split(config, category, listed[key])
    now = provenance.data_fingerprint(split.train + split.test)
    return [] if now == record.get("data_fingerprint") else [
        "the images or masks (added, removed or modified files)"]


def parse_shard(spec: str):
    """'i/n' -> (i, n): this process runs every n-th point, starting at point i."""
    try:
        i, n = (int(v) for v in spec.split("/"))
    except ValueError:
        i, n = -1, 0
    if not 0 <= i < n:
        raise ValueError(f"--shard={spec!r} must be i/n with 0 <= i < n, e.g. 0/4")
    return i, n


def _plan(config, workdir, overwrite, shard=(0, 1)):
    """Checks every point before any work -> (points to compute as (point, config, method,
    split, record), paths to remove). A finished point of the same config and data is skipped;
    one of another config or data (or another point in DIR of another base config) refuses
    the sweep, or with `overwrite` is recomputed (removed)."""
    validation.check_workdir(workdir)
    validation.check_config(config)
    todo, stale, readable, first = [], [], {}, None
    for point in points(config)[shard[0]::shard[1]]:
        category, mode, ratio, entry = point
        pc = point_config(config, mode, ratio, entry)
        method = validation.check_config(pc)
        fresh = category not in readable  # the files are checked once per category
        if fresh:
            readable[category] = evaluate.readable_category(pc, category)
        split = evaluate.prepare_split(pc, category, readable[category])
        method.check(len(split.train))
        if fresh:
            validation.check_split(split, category)
            readable[category] = dataclasses.replace(readable[category], seconds=0.0)  # once
        record = provenance.record(pc, split.train + split.test)
        first = first or record
        path = point_path(workdir, category, mode, ratio, entry)
        if os.path.isfile(path):
            diff = provenance.differences(_read(path), record)
            if not diff:
                continue
            stale.append((os.path.dirname(path), diff))
        todo.append((point, pc, method, split, record))
    mine = {os.path.dirname(point_path(workdir, *p)) for p, *_ in todo}
    for root, _, files in sorted(os.walk(os.path.join(workdir, "points"))):
        if os.path.basename(root).startswith("."):  # another shard's point being moved
            continue
        if "result.json" in files and root not in mine and first is not None:
            stored = _read(os.path.join(root, "result.json"))
            varied = _entry_fields(config, [stored.get("method")] +
                                   comma_list(config.sweep.discriminators))
            diff = provenance.differences(_base(stored, varied), _base(first, varied))
            if diff:
                stale.append((root, diff))
    if stale and not overwrite:
        where, diff = stale[0]
        raise ValueError(f"{len(stale)} finished point(s) in {workdir!r} were computed from "
                         f"another config or data (e.g. {os.path.relpath(where, workdir)}: "
                         f"{'; '.join(diff)}); choose another --workdir, or pass --overwrite to "
                         "recompute")
    return todo, [p for p, _ in stale if p not in mine]


def _run_point(workdir, config, item, extractor, staging):
    """Computes one planned point into its folder (staged: a failed point leaves nothing)."""
    (category, mode, ratio, entry), pc, method, split, record = item
    folder = os.path.dirname(point_path(workdir, category, mode, ratio, entry))
    rel = os.path.relpath(folder, os.path.join(workdir, "points"))
    start = time.time()
    with staged_dir(folder, staging) as out:
        result = evaluate.evaluate_category(
            pc, category, extractor, out, os.path.join(workdir, method.name, rel),
            bool(config.sweep.overlays), save_checkpoint=False, method=method, split=split)
        result.update(category=category, mode=mode, ratio=ratio, method=entry,
                      seconds=round(time.time() - start, 2))
        write_json(os.path.join(out, "result.json"), {**result, **record})
    logging.info("point %s: %s", rel, result)
    console.say(f"{rel}: {console.headline(result)} ({result['seconds']:.1f} s)")
    return result


def _extractor(workdir, pc, method, category, extractors):
    """The point's extractor: one per feature kind, with the shared feature cache."""
    key = config_key(BackboneSpec.from_config(pc), pc.data, method.features, pc.seed)
    if key not in extractors:
        extractors[key] = evaluate.extractor_for(pc, method)
    if not method.cacheable_features:
        return extractors[key]
    return FeatureCache(extractors[key], os.path.join(workdir, "features", key, category))


def _run_batch(workdir, config, items, extractors, staging):
    """Points at once in threads, their coresets batched (`batching`); features are cached
    first so that the threads do not extract the same images twice."""
    import concurrent.futures

    from softpatch_jax.pipeline import batching

    hub = batching.CoresetHub()
    per_point, batched = [], []
    for point, pc, method, split, record in items:
        extractor = _extractor(workdir, pc, method, point[0], extractors)
        per_point.append(extractor)
        if method.cacheable_features:
            d = pc.data
            extractor.embed(split.train + split.test, d.resize, d.image_size, d.batch_size,
                            f"{point[0]}: features")
        method = method.with_sampler(lambda sampler: batching.batched(sampler, hub))
        batched.append((point, pc, method, split, record))
        hub.join()  # all join before any runs: a lone early selection would run unbatched
    items = batched

    def run(item, extractor):
        try:
            return _run_point(workdir, config, item, extractor, staging)
        finally:
            hub.leave()

    with concurrent.futures.ThreadPoolExecutor(len(items)) as pool:
        futures = [pool.submit(run, item, e) for item, e in zip(items, per_point)]
        for f in futures:
            f.result()
    logging.info("batched coreset calls of sizes %s", hub.batches)


def run_sweep(config, workdir, overwrite: bool = False, shard: str = "0/1"):
    """Runs the sweep's points into `workdir`; `shard` 'i/n' runs every n-th point (n processes,
    one folder: a job array or the hosts of a slice), the tables aggregate every finished one.
    `sweep.batch_points` > 1 runs that many points at once with their coresets batched. A config
    in 0.2's shape is upgraded first. -> every finished point's row; the command writes the
    report (experiments/sweep.py)."""
    config = upgrade(config)
    todo, stale = _plan(config, workdir, overwrite, parse_shard(shard))
    batch = config.sweep.get("batch_points", 1)
    if batch < 1:
        raise ValueError(f"sweep.batch_points={batch} must be >= 1")
    os.makedirs(workdir, exist_ok=True)
    compilation.enable_persistent_cache(config.runtime)
    with workdir_lock(workdir, "sweep", shared=True):  # shards share it; a fit refuses
        rundir.remove_dead_staging(workdir)
        return _run_planned(config, workdir, todo, stale, batch)


def _run_planned(config, workdir, todo, stale, batch):
    for path in stale:
        logging.warning("removing %s (a point of another config; --overwrite)", path)
        shutil.rmtree(path)
    staging = os.path.join(workdir, f".staging-{os.getpid()}")
    extractors = {}  # one per feature kind (patch features; PaDiM's), built on first use
    try:
        console.say(f"{len(todo)} points to compute -> {os.path.abspath(workdir)}")
        for i in range(0, len(todo), batch):
            items = todo[i:i + batch]
            if len(items) == 1:
                (category, *_), pc, method, *_ = items[0]
                _run_point(workdir, config, items[0],
                           _extractor(workdir, pc, method, category, extractors), staging)
            else:
                _run_batch(workdir, config, items, extractors, staging)
            aggregate(workdir, finished_points(workdir))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    rows = finished_points(workdir)
    if rows:
        aggregate(workdir, rows)
        with open(os.path.join(workdir, "results.md")) as f:
            print(f.read())
    return rows
