"""The paper-format tables (report/tables.py, experiments/table.py): the layout on hand-made rows
(Average, Gap, bold best, dashes), Markdown / CSV / LaTeX that a parser checks (balanced
braces, every row's column count), and on a real two-category sweep: the files, a missing point
and stale points (another results version, another base config, changed data) never shown."""
import csv
import json
import os
import re
import shutil

import pytest

from softpatch_jax.data import synthetic
from softpatch_jax.pipeline import sweep
from softpatch_jax.report import tables, write_report

from conftest import tiny_sweep_config
from experiments import table as table_cli


def _row(cat, mode, ratio, method, image, pixel=None):
    return {"category": cat, "mode": mode, "ratio": ratio, "method": method,
            "image_auroc": image, "pixel_auroc": pixel}


ROWS = [_row("a", "overlap", 0.0, "lof", 0.90, 0.95), _row("a", "overlap", 0.0, "none", 0.80, 0.93),
        _row("b", "overlap", 0.0, "lof", 0.70, 0.85), _row("b", "overlap", 0.0, "none", 0.60, 0.81),
        _row("a", "overlap", 0.1, "lof", 0.85, 0.90), _row("a", "overlap", 0.1, "none", 0.50, 0.70),
        _row("b", "overlap", 0.1, "lof", 0.65, 0.80), _row("b", "overlap", 0.1, "none", 0.40, 0.60),
        _row("a", "no_overlap", 0.1, "lof", 0.88, 0.91), _row("b", "no_overlap", 0.1, "lof", 0.66, 0.8),
        _row("a", "no_overlap", 0.1, "none", 0.70, 0.80)]  # (b, no_overlap, 0.1, none) missing


def test_layout_average_gap_best_and_missing():
    image, pixel = tables.paper_tables(ROWS)
    assert image.groups == [tables.CLEAN, ("no_overlap", 0.1), ("overlap", 0.1)]
    assert image.methods == ["lof", "none"] and image.rows == ["a", "b", "Average", "Gap"]
    v = image.values
    assert v[("Average", tables.CLEAN, "lof")] == pytest.approx(0.80)
    assert v[("Average", ("overlap", 0.1), "none")] == pytest.approx(0.45)
    assert v[("Gap", ("overlap", 0.1), "none")] == pytest.approx(0.45 - 0.70)
    assert v[("Gap", ("overlap", 0.1), "lof")] == pytest.approx(0.75 - 0.80)
    assert v[("Gap", tables.CLEAN, "lof")] is None
    # The missing point: a dash, and its column's Average and Gap are dashes, not partial means.
    assert v[("b", ("no_overlap", 0.1), "none")] is None
    assert v[("Average", ("no_overlap", 0.1), "none")] is None
    assert v[("Gap", ("no_overlap", 0.1), "none")] is None
    assert image.missing == [("b", "no_overlap", 0.1, "none")]
    md = tables.markdown(image)
    assert "| **Average** | **0.800** | 0.700 | **0.770** | - | **0.750** | 0.450 |" in md
    assert "| **Gap** |  |  | **-0.030** | - | **-0.050** | -0.250 |" in md
    assert "- missing: b, no_overlap, noise 0.1, none" in md
    assert pixel.values[("Average", tables.CLEAN, "none")] == pytest.approx(0.87)


def test_stale_points_are_listed_never_shown():
    stale_row = _row("b", "no_overlap", 0.1, "none", 0.99, 0.99)
    image, _ = tables.paper_tables(ROWS, [("points/b/x", stale_row, ["results version 0.1"])])
    assert image.values[("b", ("no_overlap", 0.1), "none")] is None
    assert image.missing == []
    assert image.stale == [("b", "no_overlap", 0.1, "none", "results version 0.1")]
    assert "0.990" not in tables.markdown(image) + tables.latex(image) + tables.html(image)
    assert "stale (not shown): b, no_overlap, noise 0.1, none: results version 0.1" in \
        tables.markdown(image)


def test_a_metric_no_point_has_gives_no_table_and_unknown_metrics_are_refused():
    rows = [dict(r, pixel_auroc=None) for r in ROWS]
    assert [t.metric for t in tables.paper_tables(rows)] == ["image_auroc"]
    with pytest.raises(ValueError, match="--metrics: 'f1' is not a table metric"):
        tables.paper_tables(ROWS, metrics=("f1",))


def _tabular_rows(tex: str):
    """(column count of the tabular's spec, [cell count of each row]) with \\multicolumn{n}
    counted as n cells."""
    spec = re.search(r"\\begin\{tabular\}\{([^}]*)\}", tex).group(1)
    n_cols = len(re.findall(r"[lcr]", spec))
    body = tex.split(r"\midrule", 1)[0].split(r"\toprule", 1)[1] + tex.split(r"\midrule", 1)[1]
    counts = []
    for line in body.split("\n"):
        line = re.sub(r"\\(cmidrule|midrule|bottomrule)(\([a-z]+\))?(\{[^}]*\})?", "", line)
        if not line.strip().endswith(r"\\"):
            continue
        cells = re.split(r"(?<!\\)&", line.strip()[:-2])
        counts.append(sum(int(m.group(1)) if (m := re.match(r"\s*\\multicolumn\{(\d+)\}", c))
                          else 1 for c in cells))
    return n_cols, counts


def _balanced(tex: str) -> bool:
    depth = 0
    for i, ch in enumerate(tex):
        if ch in "{}" and (i == 0 or tex[i - 1] != "\\"):
            depth += 1 if ch == "{" else -1
            if depth < 0:
                return False
    return depth == 0


def test_latex_is_balanced_with_every_row_the_tabulars_width():
    rows = ROWS + [_row("c_1&2%", "overlap", 0.0, "lof@ratio=auto", 0.5, 0.5)]
    for t in tables.paper_tables(rows):
        tex = tables.latex(t)
        assert _balanced(tex)
        assert tex.count(r"\begin{") == tex.count(r"\end{") == 2
        n_cols, counts = _tabular_rows(tex)
        assert n_cols == 1 + 3 * 3 and len(counts) == 2 + 3 + 2
        assert all(c == n_cols for c in counts), counts
        assert r"c\_1\&2\%" in tex and r"lof@ratio=auto" in tex


def _two_category_sweep(root, workdir, cache_dir, entries="none,lof"):
    c = tiny_sweep_config(root, cache_dir, "widget,gadget")
    c.denoise.lof_k = 3
    c.sweep.ratios, c.sweep.modes = "0,0.25", "overlap"
    c.sweep.discriminators, c.sweep.overlays = entries, False
    return c, sweep.run_sweep(c, workdir)


def test_a_two_category_sweep_gives_md_csv_tex_with_missing_and_stale_points(tmp_path,
                                                                            cache_dir):
    root = str(tmp_path / "data")
    for i, name in enumerate(("widget", "gadget")):
        synthetic.make_mvtec_category(root, name, n_train=8, n_good=3, n_defect=3, size=32,
                                      seed=i)
    workdir = str(tmp_path / "sweep")
    _, rows = _two_category_sweep(root, workdir, cache_dir)
    assert len(rows) == 8
    paths = table_cli.write_tables(workdir)
    md = open(paths["md"]).read()
    for name in ("gadget", "widget", "**Average**", "**Gap**", "Noise-free: lof",
                 "Overlap, noise 0.25: none"):
        assert name in md
    assert "Not shown" not in md
    got = list(csv.reader(open(paths["csv"])))
    assert got[0][:4] == ["metric", "category", "clean 0 lof", "clean 0 none"]
    assert [r[1] for r in got[1:]] == ["gadget", "widget", "Average", "Gap"] * 2
    widget = next(r for r in rows if r["category"] == "widget" and r["ratio"] == 0.25
                  and r["method"] == "lof")
    line = next(r for r in got if r[:2] == ["image_auroc", "widget"])
    assert float(line[got[0].index("overlap 0.25 lof")]) == pytest.approx(
        widget["image_auroc"], abs=1e-4)
    tex = open(paths["tex"]).read()
    assert _balanced(tex) and len(set(_tabular_rows(tex.split(r"\end{table}")[0])[1])) == 1

    # A missing point, a point of another results version and one of another base config.
    def point(cat, r, m):
        return os.path.dirname(sweep.point_path(workdir, cat, "overlap", r, m))
    shutil.rmtree(point("gadget", 0.25, "none"))
    for (cat, r, m), change in {("widget", 0.25, "none"): {"version": "0.1.0"},
                                ("widget", 0.0, "lof"): {"config.bank.coreset_ratio": 0.5}
                                }.items():
        path = os.path.join(point(cat, r, m), "result.json")
        stored = json.load(open(path))
        for k, v in change.items():
            if k.startswith("config."):
                stored["config"][k[len("config."):]] = v
            else:
                stored[k] = v
        json.dump(stored, open(path, "w"))
    os.utime(os.path.join(point("gadget", 0.0, "lof"), "result.json"))  # the newest point
    paths = table_cli.write_tables(workdir, formats=("md",))
    md = open(paths["md"]).read()
    assert "- missing: gadget, overlap, noise 0.25, none" in md
    assert "- stale (not shown): widget, overlap, noise 0.25, none: results version 0.1.0" in md
    assert "- stale (not shown): widget, overlap, noise 0, lof: bank.coreset_ratio: 0.5 -> " \
        "0.1" in md
    # Changed data: every point of that category is stale with --check_data, shown without.
    gadget = os.path.join(root, "gadget", "train", "good")
    first = sorted(os.listdir(gadget))[0]
    os.utime(os.path.join(gadget, first), (1e9, 1e9))
    md = open(table_cli.write_tables(workdir, formats=("md",))["md"]).read()
    assert md.count("stale (not shown): gadget") == 2 * 3 and "the images or masks" in md
    md = open(table_cli.write_tables(workdir, formats=("md",), check_data=False)["md"]).read()
    assert "stale (not shown): gadget" not in md
    # The report's sweep page shows the same tables.
    html = open(write_report(workdir)).read()
    assert "Paper tables" in html and "stale (not shown): widget, overlap, noise 0.25" in html


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="holds no sweep"):
        table_cli.write_tables(str(tmp_path))
    os.makedirs(tmp_path / "points")
    with pytest.raises(ValueError, match="no finished point"):
        table_cli.write_tables(str(tmp_path))
    with pytest.raises(ValueError, match="--format: pdf unknown"):
        table_cli.write_tables(str(tmp_path), formats=("pdf",))
