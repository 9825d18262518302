"""The alignment study (issue 17): method entries x noise settings x datasets, one sweep folder
per dataset, and one table over all of them.

python -m experiments.alignment_study --config configs/sweeps/alignment.py --root runs/study \
    [--config.sweep.discriminators=none,lof,lof@grouping=neighbourhood] [--report_only]

For each dataset of `sweep.datasets` (its data.* fields from `sweep.data.<dataset>`) it calls
`pipeline.sweep.run_sweep` once per noise mode of `sweep.settings` (ratio:mode pairs) into
<root>/<dataset>, and once more for `sweep.reference` at ratio 0 (PatchCore on clean data); the
sweeps skip finished points, so a rerun with more entries computes only the new ones (the
features are cached per dataset). `transistor_rotated` is generated first when missing
(softpatch_jax/data/rotated.py; a no-op when present). After every sweep <root>/study.md is
rewritten from the finished points of every dataset folder (`pipeline.sweep.finished_points`):
dataset x setting rows, method columns, one table per metric, and the seconds per point.

The study's config is pinned at its first run (<root>/study_config.json, the flat fields other
than sweep.*): configs/ keeps gaining fields while the study runs, and a field that appears (or
goes) later would make every finished point differ from the new ones. A later run leaves out the
fields added since (the code reads an absent field as the behaviour from before it existed) and
restores the ones removed, with a warning naming them; a field whose value differs still makes
the sweep refuse, as it should.
"""
import collections
import json
import logging
import os
import time
from typing import Dict, List, Tuple

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from softpatch_jax.io import report
from softpatch_jax.io.files import atomic_path, write_json
from softpatch_jax.pipeline import cli, provenance
from softpatch_jax.settings import comma_list

FLAGS = flags.FLAGS
flags.DEFINE_string("root", "runs/study", "Study folder: one sweep folder per dataset, study.md.")
config_flags.DEFINE_config_file("config", "configs/sweeps/alignment.py", "Study config file.",
                                lock_config=False)
flags.DEFINE_bool("report_only", False, "Only rebuild study.md from the finished points.")

PINNED = "study_config.json"
TIMINGS = "timings.json"
TABLE_METRICS = ("image_auroc", "pixel_auroc", "aupro")
DATA_FIELDS = ("name", "root", "category", "max_train", "max_test")


def parse_settings(spec: str) -> List[Tuple[float, str]]:
    """'0:no_overlap,0.1:overlap' -> [(0.0, 'no_overlap'), (0.1, 'overlap')]."""
    out = []
    for item in comma_list(spec):
        ratio, sep, mode = item.partition(":")
        try:
            out.append((float(ratio), mode))
        except ValueError:
            sep = ""
        if not sep or not mode:
            raise ValueError(f"sweep.settings entry {item!r} must be ratio:mode, e.g. "
                             "0.1:overlap")
    if not out:
        raise ValueError("sweep.settings is empty; give ratio:mode pairs, e.g. 0:no_overlap")
    return out


def dataset_names(config) -> List[str]:
    names = comma_list(config.sweep.datasets)
    unknown = [n for n in names if n not in config.sweep.data]
    if unknown or not names:
        raise ValueError(f"sweep.datasets names {', '.join(unknown) or 'nothing'}; each needs a "
                         f"sweep.data.<name> block (defined: {', '.join(config.sweep.data)})")
    return names


def sweeps(config, root: str) -> List[Tuple[str, str, object]]:
    """The study's sweeps in run order -> [(dataset, workdir, sweep config)]: per dataset, one
    per noise mode of sweep.settings (its ratios together), then the reference at ratio 0."""
    settings = parse_settings(config.sweep.settings)
    by_mode: Dict[str, List[float]] = collections.OrderedDict()
    for ratio, mode in settings:
        by_mode.setdefault(mode, []).append(ratio)
    out = []
    for name in dataset_names(config):
        for mode, ratios, entries in [(m, r, config.sweep.discriminators)
                                      for m, r in by_mode.items()] + (
                [("no_overlap", [0.0], config.sweep.reference)] if config.sweep.reference
                else []):
            c = config.copy_and_resolve_references()
            for field in DATA_FIELDS:
                c.data[field] = config.sweep.data[name][field]
            c.sweep.ratios = ",".join(f"{r:g}" for r in ratios)
            c.sweep.modes = mode
            c.sweep.discriminators = entries
            out.append((name, os.path.join(root, name), c))
    return out


def _base_fields(config) -> dict:
    return provenance.flatten({k: v for k, v in config.to_dict().items() if k != "sweep"})


def pin_config(config, root: str):
    """The study's config with the field set of its first run (module docstring) -> (config,
    [warnings])."""
    path = os.path.join(root, PINNED)
    live = _base_fields(config)
    if not os.path.isfile(path):
        os.makedirs(root, exist_ok=True)
        write_json(path, live)
        return config, []
    with open(path) as f:
        pinned = json.load(f)
    added = sorted(set(live) - set(pinned))
    removed = sorted(set(pinned) - set(live))
    if not added and not removed:
        return config, []
    config = config.copy_and_resolve_references()
    for dotted in added:  # left out: the study's points were computed without them
        *parents, leaf = dotted.split(".")
        node = config
        for p in parents:
            node = node[p]
        del node[leaf]
    for section in {d.split(".")[0] for d in added}:
        if section in config and not config[section].keys():
            del config[section]
    for dotted in removed:
        *parents, leaf = dotted.split(".")
        node = config
        for p in parents:
            if p not in node:
                node[p] = ml_collections.ConfigDict()
            node = node[p]
        node[leaf] = pinned[dotted]
    notes = []
    if added:
        notes.append(f"config fields added since the study began are left out: {', '.join(added)}")
    if removed:
        notes.append(f"config fields removed since the study began are kept: {', '.join(removed)}")
    return config, notes


def ensure_rotated(config) -> None:
    """Generates transistor_rotated (a no-op when it is there from the same source and seed)."""
    if "transistor_rotated" not in dataset_names(config):
        return
    from softpatch_jax.data.rotated import make_rotated_category

    d = config.sweep.data.transistor_rotated
    make_rotated_category(config.sweep.rotate_source, d.root, d.category,
                          config.sweep.rotation_seed)


def setting_label(ratio: float, mode: str) -> str:
    return f"{ratio:g} {mode}"


def study_rows(config, root: str) -> List[dict]:
    """Every finished point of every dataset folder, with its `dataset` and `row` label."""
    from softpatch_jax.pipeline.sweep import finished_points

    rows = []
    for name in dataset_names(config):
        workdir = os.path.join(root, name)
        if not os.path.isdir(workdir):
            continue
        cats = comma_list(config.sweep.data[name].category)
        for r in finished_points(workdir):
            label = name if len(cats) == 1 else f"{name}/{r['category']}"
            rows.append({**r, "dataset": name,
                         "row": f"{label}, {setting_label(r['ratio'], r['mode'])}"})
    return rows


def _columns(config, rows) -> List[str]:
    wanted = comma_list(config.sweep.discriminators) + comma_list(config.sweep.reference)
    present = {r["method"] for r in rows}
    return [m for m in wanted if m in present] + sorted(present - set(wanted))


def _row_order(config, rows) -> List[str]:
    order = {s: i for i, s in enumerate(parse_settings(config.sweep.settings))}
    names = {n: i for i, n in enumerate(dataset_names(config))}
    keyed = {r["row"]: (names[r["dataset"]], r["category"], order.get((r["ratio"], r["mode"]),
                                                                      len(order)))
             for r in rows}
    return sorted(keyed, key=keyed.get)


def caption(config) -> List[str]:
    lines = ["Data per dataset (data.max_train / data.max_test: seeded caps, the test cap "
             "stratified; 0 = all images):", ""]
    for name in dataset_names(config):
        d = config.sweep.data[name]
        lines.append(f"- `{name}`: data.name={d.name}, data.root={d.root or repr('')}, "
                     f"category {d.category}, max_train {d.max_train}, max_test {d.max_test}")
    m, d = config.model, config.data
    lines += ["", f"Backbone {m.backbone} ({m.layers}), image_size {d.image_size}, resize "
              f"{d.resize}, seed {config.seed}. `none` = PatchCore through SoftPatch (no "
              "discriminator), `lof` = SoftPatch-LOF (position grouping), `patchcore` = the "
              "PatchCore method (reference, clean data only). Rows: dataset (/ category), noise "
              "ratio and mode.", ""]
    return lines


def study_markdown(config, rows) -> str:
    """study.md: one table per metric (dataset x setting rows, method columns), then the
    seconds per point."""
    columns = _columns(config, rows)
    order = _row_order(config, rows)
    lines = ["# Alignment study (issue 17)", ""] + caption(config)
    for metric in TABLE_METRICS:
        cells = {row: {} for row in order}
        for r in rows:
            cells[r["row"]][r["method"]] = r.get(metric)
        cells = {k: v for k, v in cells.items() if any(x is not None for x in v.values())}
        if cells:
            lines += [f"## {metric}", ""]
            lines += report.table(cells, columns, corner="dataset, setting", mean_row=False)
            lines.append("")
    secs = {}
    for r in rows:
        secs.setdefault(r["dataset"], {}).setdefault(r["method"], []).append(r.get("seconds"))
    cells = {d: {m: report.mean(v) for m, v in per.items()} for d, per in secs.items()}
    lines += ["## seconds per point (mean)", ""]
    lines += report.table(cells, columns, corner="dataset", mean_row=False)
    return "\n".join(lines) + "\n"


def write_study(config, root: str) -> str:
    path = os.path.join(root, "study.md")
    rows = study_rows(config, root)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(study_markdown(config, rows))
    write_json(os.path.join(root, "study.json"), {"points": rows})
    return path


def run_study(config, root: str) -> str:
    """Runs every sweep of the study (resumable), rewriting study.md after each."""
    from softpatch_jax.pipeline.sweep import run_sweep

    plan = sweeps(config, root)  # checks the study's fields before anything is written
    config, notes = pin_config(config, root)
    for note in notes:
        logging.warning(note)
        print(f"warning: {note}", flush=True)
    plan = sweeps(config, root)
    ensure_rotated(config)
    timings_path = os.path.join(root, TIMINGS)
    timings = []
    if os.path.isfile(timings_path):
        with open(timings_path) as f:
            timings = json.load(f)
    for name, workdir, c in plan:
        print(f"== {name}: ratios {c.sweep.ratios} {c.sweep.modes}, entries "
              f"{c.sweep.discriminators}", flush=True)
        start = time.time()
        before = len(_finished(workdir))
        run_sweep(c, workdir)
        timings.append({"dataset": name, "modes": c.sweep.modes, "ratios": c.sweep.ratios,
                        "entries": c.sweep.discriminators,
                        "points": len(_finished(workdir)) - before,
                        "seconds": round(time.time() - start, 1),
                        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")})
        write_json(timings_path, timings)
        write_study(config, root)
    return write_study(config, root)


def _finished(workdir: str) -> list:
    from softpatch_jax.pipeline.sweep import finished_points

    return finished_points(workdir) if os.path.isdir(workdir) else []


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}; flags take the form --name=value")
    logging.getLogger().setLevel(logging.WARNING)
    if FLAGS.report_only:
        path = cli.run_or_exit(write_study, FLAGS.config, FLAGS.root)
    else:
        path = cli.run_or_exit(run_study, FLAGS.config, FLAGS.root)
    print(f"study table: {path}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
