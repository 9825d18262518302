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
dataset x setting rows, method columns, one table per metric, the seconds per point, and the
goals `sweep.goals` names: issue 17's (`alignment`) or issue 27's (`contamination`,
configs/sweeps/contamination.py: fixed against `auto` denoising ratios).

The study's config is pinned at its first run (<root>/study_config.json, the flat fields other
than sweep.*): configs/ keeps gaining fields while the study runs, and a field that appears (or
goes) later would make every finished point differ from the new ones. A later run leaves out the
fields added since (the code reads an absent field as the behaviour from before it existed),
restores the ones removed, and keeps the pinned value of a field whose value differs now (a
default that changed since, or an override: the study's points must not mix configs), with a
warning naming them.
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
from softpatch_jax.files import atomic_path, write_json
from softpatch_jax import defaults
from softpatch_jax.pipeline import cli, provenance, validation
from softpatch_jax.settings import comma_list
from softpatch_jax.upgrade import upgrade_flat

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
            for field in set(c.sweep.keys()) - set(defaults.sweep_section().keys()):
                del c.sweep[field]  # the study's own fields: the sweep driver reads none
            out.append((name, os.path.join(root, name), c))
    return out


def _base_fields(config) -> dict:
    """The flat fields other than sweep.*, as JSON holds them (tuples as lists)."""
    flat = provenance.flatten({k: v for k, v in config.to_dict().items() if k != "sweep"})
    return json.loads(json.dumps(flat, default=str))


def _parent(config, dotted: str, create: bool = False):
    """'a.b.c' -> (the ConfigDict config.a.b, 'c'); `create`: missing sections are made."""
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
        if create and p not in node:
            node[p] = ml_collections.ConfigDict()
        node = node[p]
    return node, leaf


def pin_config(config, root: str):
    """The study's config with the field set of its first run (module docstring) -> (config,
    [warnings]). A pinned config written by 0.2 is read with today's field names."""
    path = os.path.join(root, PINNED)
    live = _base_fields(config)
    if not os.path.isfile(path):
        os.makedirs(root, exist_ok=True)
        write_json(path, live)
        return config, []
    with open(path) as f:
        pinned = upgrade_flat(json.load(f))  # a study pinned by 0.2: today's names
    added = sorted(set(live) - set(pinned))
    removed = sorted(set(pinned) - set(live))
    changed = sorted(d for d in set(live) & set(pinned) if live[d] != pinned[d])
    if not added and not removed and not changed:
        return config, []
    config = config.copy_and_resolve_references()
    for dotted in changed:  # a default changed since (or an override): the study's value holds
        node, leaf = _parent(config, dotted)
        value = pinned[dotted]
        node[leaf] = tuple(value) if isinstance(node[leaf], tuple) else value
    for dotted in added:  # left out: the study's points were computed without them
        node, leaf = _parent(config, dotted)
        del node[leaf]
    for section in {d.split(".")[0] for d in added}:
        if section in config and not config[section].keys():
            del config[section]
    for dotted in removed:
        node, leaf = _parent(config, dotted, create=True)
        node[leaf] = pinned[dotted]
    notes = []
    if added:
        notes.append(f"config fields added since the study began are left out: {', '.join(added)}")
    if removed:
        notes.append(f"config fields removed since the study began are kept: {', '.join(removed)}")
    if changed:
        notes.append("config fields whose value differs from the study's first run keep that "
                     "value: " + ", ".join(f"{d}={pinned[d]!r} (now {live[d]!r})"
                                           for d in changed)
                     + "; start a new --root to study other values")
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
    b, d = config.backbone, config.data
    lines += ["", f"Backbone {b.name} ({b.layers}), image_size {d.image_size}, resize "
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
    title, goals_lines = study_goals(config)
    lines = [f"# {title}", ""] + caption(config)
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
    lines += ["## seconds per point (mean)", "", "| dataset | " + " | ".join(columns) + " |",
              "|---" * (len(columns) + 1) + "|"]
    for d, per in secs.items():
        means = [report.mean(per.get(m, [])) for m in columns]
        lines.append(f"| {d} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in means)
                     + " |")
    lines.append("")
    lines += goals_lines(config, rows)
    return "\n".join(lines) + "\n"


# Proposed defaults and the goals, from the same rows. A cell is one row of the tables
# (dataset or ELPV category, noise setting); clean PatchCore is `sweep.reference` at ratio 0 of
# the cell's dataset and category (else `none` at ratio 0).

def _cells(rows) -> Dict[str, dict]:
    """{row label: {'dataset', 'category', 'ratio', 'mode', 'm': {method: point}}}."""
    cells = collections.OrderedDict()
    for r in rows:
        c = cells.setdefault(r["row"], {k: r[k] for k in ("dataset", "category", "ratio", "mode")})
        c.setdefault("m", {})[r["method"]] = r
    return cells


def _value(cell, method, metric):
    point = cell["m"].get(method)
    return None if point is None else point.get(metric)


def _clean_patchcore(cells, cell, reference: str):
    """Image and pixel AUROC of PatchCore on clean data for the cell's dataset and category."""
    for name in comma_list(reference) + ["none"]:
        for other in cells.values():
            if (other["dataset"], other["category"], other["ratio"]) == (
                    cell["dataset"], cell["category"], 0.0) and name in other["m"]:
                return {m: _value(other, name, m) for m in ("image_auroc", "pixel_auroc")}
    return None


def choose_default(config, rows, family: str) -> Tuple[str, List[str]]:
    """The rule: among the entries of `family` (the family's name and its `name@...` variants),
    the one with the best mean image AUROC over all cells, among those that lose at most
    `sweep.aligned_tolerance` image and pixel AUROC against the family's default entry on every
    aligned cell (datasets of `sweep.aligned`, every setting) and have every cell the default
    has; a variant must beat the default's mean by more than 0.001 to replace it.
    -> (chosen entry, markdown lines)."""
    cells = _cells(rows)
    aligned = set(comma_list(config.sweep.aligned))
    misaligned = set(comma_list(config.sweep.misaligned))
    tol = config.sweep.aligned_tolerance
    variants = [m for m in _columns(config, rows) if m.split("@")[0] == family]
    have = [k for k, c in cells.items() if family in c["m"]]
    stats = {}
    for v in variants:
        img = [_value(cells[k], v, "image_auroc") for k in have]
        worst = {}
        for metric in ("image_auroc", "pixel_auroc"):
            losses = [_value(cells[k], family, metric) - _value(cells[k], v, metric)
                      for k in have if cells[k]["dataset"] in aligned
                      and _value(cells[k], family, metric) is not None
                      and _value(cells[k], v, metric) is not None]
            worst[metric] = max(losses) if losses else None
        complete = all(x is not None for x in img)
        def mean_of(group):  # noqa: E306
            return report.mean(_value(cells[k], v, "image_auroc") for k in have
                               if cells[k]["dataset"] in group)
        stats[v] = dict(mean=report.mean(img), aligned=mean_of(aligned),
                        misaligned=mean_of(misaligned), worst_image=worst["image_auroc"],
                        worst_pixel=worst["pixel_auroc"], complete=complete,
                        eligible=complete and all(w is None or w <= tol + 1e-12
                                                  for w in worst.values()))
    chosen = family
    if family in stats:
        best = max((v for v in variants if stats[v]["eligible"]), default=family,
                   key=lambda v: stats[v]["mean"])
        if stats[best]["mean"] > stats[family]["mean"] + 0.001:
            chosen = best
    lines = [f"### {family}: variants by the rule", "",
             "| entry | mean image AUROC, all cells | aligned | misaligned | worst aligned "
             "image loss | worst aligned pixel loss | complete | eligible |",
             "|---" * 8 + "|"]
    for v in variants:
        st = stats[v]
        lines.append(f"| {v}{' **(chosen)**' if v == chosen else ''} | {report.fmt(st['mean'])} | "
                     f"{report.fmt(st['aligned'])} | {report.fmt(st['misaligned'])} | "
                     f"{report.fmt(st['worst_image'])} | {report.fmt(st['worst_pixel'])} | "
                     f"{'yes' if st['complete'] else 'no'} | {'yes' if st['eligible'] else 'no'} |")
    return chosen, lines + [""]


def chosen_defaults(config, rule: Tuple[str, str]) -> Tuple[str, str]:
    """The (SoftPatch, SoftPatch+) entries the goals are checked for: `sweep.chosen` (one entry
    of each family, when the defaults were chosen otherwise than by the rule), else the rule's."""
    spec = comma_list(config.sweep.get("chosen", ""))
    if not spec:
        return rule
    fams = [e.split("@")[0] for e in spec]
    if sorted(fams) != ["lof", "softpatch_plus"]:
        raise ValueError(f"sweep.chosen={config.sweep.chosen!r} must name one lof entry and one "
                         "softpatch_plus entry, e.g. lof,softpatch_plus@grouping=auto")
    return spec[fams.index("lof")], spec[fams.index("softpatch_plus")]


def goals_markdown(config, rows) -> List[str]:
    """The rule's choices and the issue's three goals, cell by cell, with the cells that miss."""
    cells = _cells(rows)
    aligned = set(comma_list(config.sweep.aligned))
    misaligned = set(comma_list(config.sweep.misaligned))
    tol = config.sweep.aligned_tolerance
    sp, spp = choose_default(config, rows, "lof"), choose_default(config, rows, "softpatch_plus")
    (lof, lof_lines), (plus, plus_lines) = sp, spp
    lines = ["## Proposed defaults", "",
             f"Rule: per family, the entry with the best mean image AUROC over all cells, among "
             f"those with every cell and losing at most {tol:g} image and pixel AUROC against the "
             "family's default (position grouping) on every aligned cell "
             f"({', '.join(sorted(aligned))}); it must beat the default's mean by more than "
             "0.001.", ""] + lof_lines + plus_lines
    f = report.fmt
    ref = config.sweep.reference
    # Goal 1: misaligned, 0.1 overlap: at least half of the gap to clean PatchCore recovered;
    # checked for the chosen SoftPatch and the chosen SoftPatch+ (both are SoftPatch).
    rule = (lof, plus)
    lof, plus = chosen_defaults(config, rule)
    note = "" if (lof, plus) == rule else (
        f" (sweep.chosen; the rule proposes `{rule[0]}` and `{rule[1]}`: docs/studies.md says why)")
    lines += ["## Goals", "", f"Chosen: SoftPatch `{lof}`, SoftPatch+ `{plus}`{note}.", ""]
    misses = []
    for title, family, chosen in (("SoftPatch", "lof", lof), ("SoftPatch+", "softpatch_plus",
                                                                plus)):
        lines += [f"**1a ({title}).** Misaligned parts, 0.1 overlap: the chosen {title} "
                  "recovers at least half of the image-AUROC gap between SoftPatch-LOF "
                  "(position) and clean PatchCore.", "",
                  "| cell | SP-LOF | chosen | clean PatchCore | gap | recovered | met |",
                  "|---" * 7 + "|"]
        for k, c in cells.items():
            if c["dataset"] not in misaligned or (c["ratio"], c["mode"]) != (0.1, "overlap"):
                continue
            base, new = _value(c, "lof", "image_auroc"), _value(c, chosen, "image_auroc")
            clean = (_clean_patchcore(cells, c, ref) or {}).get("image_auroc")
            if None in (base, new, clean):
                lines.append(f"| {k} | {f(base)} | {f(new)} | {f(clean)} | - | - | missing |")
                continue
            gap = clean - base
            share = (new - base) / gap if gap > 0 else None
            met = gap <= 0 and new >= base - 1e-12 or gap > 0 and share >= 0.5
            misses += [] if met else [f"1a ({title}) {k}"]
            lines.append(f"| {k} | {f(base)} | {f(new)} | {f(clean)} | {gap:+.4f} | "
                         f"{'-' if share is None else f'{share:.0%}'} | "
                         f"{'yes' if met else '**no**'} |")
        lines += ["", f"**1b ({title}).** Aligned parts, every setting: the chosen {title} loses "
                  f"at most {tol:g} image / pixel AUROC against position grouping.", ""]
        lines += _loss_table(cells, [k for k, c in cells.items() if c["dataset"] in aligned],
                             family, chosen, tol, ("image_auroc", "pixel_auroc"),
                             f"1b ({title})", misses)
        lines.append("")
    # Goal 2: SoftPatch+ never more than 0.01 below SoftPatch-LOF; its pixel lead under overlap.
    lines += ["**2a.** The chosen SoftPatch+ is never more than 0.01 below the chosen "
              "SoftPatch (and today's SoftPatch-LOF) on image AUROC, in any cell.", ""]
    lines += _loss_table(cells, list(cells), lof, plus, 0.01, ("image_auroc",), "2a", misses)
    if lof != "lof":
        lines += [""] + _loss_table(cells, list(cells), "lof", plus, 0.01, ("image_auroc",),
                                    "2a (today's LOF)", misses)
    lines += ["", "**2b.** Under overlap the chosen SoftPatch+ keeps a pixel-AUROC lead over "
              "the chosen SoftPatch.", "", "| cell | SoftPatch | SoftPatch+ | lead | met |",
              "|---" * 5 + "|"]
    for k, c in cells.items():
        if c["mode"] == "no_overlap":
            continue
        a, b = _value(c, lof, "pixel_auroc"), _value(c, plus, "pixel_auroc")
        if a is None or b is None:
            continue
        misses += [] if b > a else [f"2b {k}"]
        lines.append(f"| {k} | {f(a)} | {f(b)} | {b - a:+.4f} | {'yes' if b > a else '**no**'} |")
    # Goal 3: without overlap, at most 0.02 below PatchCore (clean, and in the same cell).
    lines += ["", "**3.** Without overlap the chosen SoftPatch and SoftPatch+ lose at most 0.02 "
              "image AUROC to clean PatchCore (and to PatchCore, `none`, in the same cell).", "",
              "| cell | clean PatchCore | PatchCore here | SoftPatch | SoftPatch+ | worst loss "
              "(clean) | worst loss (here) | met |", "|---" * 8 + "|"]
    for k, c in cells.items():
        if c["mode"] != "no_overlap":
            continue
        clean = (_clean_patchcore(cells, c, ref) or {}).get("image_auroc")
        here = _value(c, "none", "image_auroc")
        ours = [_value(c, m, "image_auroc") for m in (lof, plus)]
        if None in ours or clean is None:
            continue
        worst_clean = clean - min(ours)
        worst_here = None if here is None else here - min(ours)
        met = worst_clean <= 0.02 + 1e-12
        misses += [] if met else [f"3 {k}"]
        lines.append(f"| {k} | {f(clean)} | {f(here)} | {f(ours[0])} | {f(ours[1])} | "
                     f"{worst_clean:+.4f} | {'-' if worst_here is None else f'{worst_here:+.4f}'}"
                     f" | {'yes' if met else '**no**'} |")
    lines += ["", "Cells that miss: " + ("; ".join(misses) if misses else "none"), ""]
    return lines


def _loss_table(cells, keys, base: str, new: str, tol: float, metrics, goal: str,
                misses: List[str]) -> List[str]:
    """Rows of `new` against `base` per cell: each metric's loss; a loss above `tol` misses."""
    lines = ["| cell | " + " | ".join(f"{base} {m} | {new} {m} | loss" for m in metrics)
             + " | met |", "|---" * (1 + 3 * len(metrics) + 1) + "|"]
    for k in keys:
        c = cells[k]
        vals = [(_value(c, base, m), _value(c, new, m)) for m in metrics]
        if any(a is None or b is None for a, b in vals[:1]):
            continue
        parts, met = [], True
        for a, b in vals:
            if a is None or b is None:
                parts.append(f"{report.fmt(a)} | {report.fmt(b)} | -")
                continue
            met &= a - b <= tol + 1e-12
            parts.append(f"{a:.4f} | {b:.4f} | {a - b:+.4f}")
        misses += [] if met else [f"{goal} {k}"]
        lines.append(f"| {k} | " + " | ".join(parts) + f" | {'yes' if met else '**no**'} |")
    return lines


# Issue 27's goals: image AUROC within a tolerance of clean PatchCore by setting, and an `auto`
# entry's estimate within ESTIMATE_TOLERANCE of the true share of defective training images.
CLEAN_TOLERANCE, NOISY_ALIGNED, NOISY_MISALIGNED, DENSE_TOLERANCE = 0.005, 0.01, 0.02, 0.03
ESTIMATE_TOLERANCE = 0.03


def _contamination_tolerance(cell, aligned) -> "float | None":
    """The goal's tolerance for a cell: noise 0, 0.1 (either mode; aligned or not) and 0.4
    overlap_repeat; None where the issue sets no goal."""
    if cell["ratio"] == 0.0:
        return CLEAN_TOLERANCE
    if cell["ratio"] == 0.1 and cell["mode"] in ("no_overlap", "overlap"):
        return NOISY_ALIGNED if cell["dataset"] in aligned else NOISY_MISALIGNED
    if cell["ratio"] == 0.4 and cell["mode"] == "overlap_repeat":
        return DENSE_TOLERANCE
    return None


def contamination_goals_markdown(config, rows) -> List[str]:
    """Issue 27's goals, cell by cell, for every entry but PatchCore: image AUROC against clean
    PatchCore, and each `auto` entry's estimate against the truth."""
    cells = _cells(rows)
    aligned = set(comma_list(config.sweep.aligned))
    entries = [m for m in _columns(config, rows) if m not in ("none", "patchcore")]
    f = report.fmt
    misses = []
    lines = ["## Goals (issue 27)", "",
             f"Image AUROC against clean PatchCore: within {CLEAN_TOLERANCE:g} at noise 0, "
             f"{NOISY_ALIGNED:g} (aligned: {', '.join(sorted(aligned))}) or {NOISY_MISALIGNED:g} "
             f"(the others) at 0.1 in either mode, {DENSE_TOLERANCE:g} at 0.4 overlap_repeat. "
             "Each entry's value, with its gap (clean PatchCore - entry).", "",
             "| cell | clean PatchCore | tolerance | " + " | ".join(entries) + " |",
             "|---" * (3 + len(entries)) + "|"]
    for k, c in cells.items():
        tol = _contamination_tolerance(c, aligned)
        if tol is None:
            continue
        clean = (_clean_patchcore(cells, c, config.sweep.reference) or {}).get("image_auroc")
        parts = []
        for e in entries:
            v = _value(c, e, "image_auroc")
            if v is None or clean is None:
                parts.append(f(v))
                continue
            met = clean - v <= tol + 1e-12
            misses += [] if met else [f"{e} {k}"]
            parts.append(f"{v:.4f} ({clean - v:+.4f}{'' if met else ' **missed**'})")
        lines.append(f"| {k} | {f(clean)} | {tol:g} | " + " | ".join(parts) + " |")
    auto = [e for e in entries if "=auto" in e]
    lines += ["", f"The estimated share of defective training images (`contamination_images`) of "
              f"the `auto` entries against the true share, within {ESTIMATE_TOLERANCE:g}.", "",
              "| cell | true | " + " | ".join(auto) + " |", "|---" * (2 + len(auto)) + "|"]
    for k, c in cells.items():
        points = [c["m"].get(e) for e in auto]
        known = [p for p in points if p is not None and p.get("n_noise") is not None]
        if not known:
            continue
        true = known[0]["n_noise"] / (known[0]["n_noise"] + known[0]["n_train_clean"])
        parts = []
        for e, p in zip(auto, points):
            est = None if p is None else p.get("contamination_images")
            if est is None:
                parts.append("-")
                continue
            met = abs(est - true) <= ESTIMATE_TOLERANCE + 1e-12
            misses += [] if met else [f"estimate {e} {k}"]
            parts.append(f"{est:.3f}{'' if met else ' **missed**'}")
        lines.append(f"| {k} | {true:.3f} | " + " | ".join(parts) + " |")
    lines += ["", "Cells that miss: " + ("; ".join(misses) if misses else "none"), ""]
    return lines


# sweep.goals: study.md's title and the goals it checks.
GOALS = {"alignment": ("Alignment study (issue 17)", goals_markdown),
         "contamination": ("Contamination study (issue 27)", contamination_goals_markdown)}


def study_goals(config):
    """(study.md's title, the goals' markdown function) of sweep.goals; one line if unknown."""
    goals = config.sweep.get("goals", "alignment")
    if goals not in GOALS:
        raise ValueError(f"sweep.goals={goals!r} is unknown; choose one of {', '.join(GOALS)}")
    return GOALS[goals]


def write_study(config, root: str) -> str:
    path = os.path.join(root, "study.md")
    rows = study_rows(config, root)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(study_markdown(config, rows))
    write_json(os.path.join(root, "study.json"), {"points": rows})
    return path


def check_study_fields(config) -> None:
    """A misspelt field in a study config is one line: the study's fields are those of
    configs/sweeps/alignment.py (the run and sweep fields, and the study's own)."""
    from configs.sweeps import alignment

    schema = alignment.get_config()
    if "sweep" in config and "data" in config.sweep:  # a dataset of one's own: its data.* fields
        template = next(iter(schema.sweep.data.values()))
        for name in config.sweep.data.keys():
            if name not in schema.sweep.data:
                schema.sweep.data[name] = template
    validation.check_known_fields(config, schema)
    study_goals(config)  # before any sweep computes


def run_study(config, root: str) -> str:
    """Runs every sweep of the study (resumable), rewriting study.md after each."""
    from softpatch_jax.pipeline import console
    from softpatch_jax.pipeline.sweep import run_sweep
    from softpatch_jax.report import write_report

    check_study_fields(config)
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
        if run_sweep(c, workdir):  # each sweep folder's report.html, as experiments/sweep.py
            console.say(f"report: {write_report(workdir)}")
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
