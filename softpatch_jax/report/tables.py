"""A sweep's results in the layout of the SoftPatch paper's tables: one row per category, then an
**Average** row and a **Gap** row (each method's average minus its own noise-free average); one
column group per noise setting (the noise-free one first, then each (mode, ratio) with noise),
methods as columns; one table per metric; the best value of each row within a group in bold.

`paper_tables(fresh, stale)` builds the tables from a sweep's checked points
(pipeline.sweep.checked_points: stale points are never shown); `markdown`, `csv_rows`, `latex`
and `html` render them (experiments/table.py writes the files, the report's sweep page shows the
HTML). A cell whose point is missing or stale is a dash, and the point is listed under the table;
an Average (and so a Gap) over a column with a dash is a dash too, never a mean of what is there.
"""
import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

from softpatch_jax.io.text import html_text

# Metrics the tables can show, with their names in titles.
METRICS = {"image_auroc": "Image AUROC", "pixel_auroc": "Pixel AUROC", "aupro": "AUPRO",
           "image_ap": "Image AP", "pixel_ap": "Pixel AP"}
DEFAULT_METRICS = ("image_auroc", "pixel_auroc")
CLEAN = ("clean", 0.0)  # the noise-free group: ratio 0 points, whatever their mode
AVERAGE, GAP = "Average", "Gap"
MODE_NAMES = {"no_overlap": "No overlap", "overlap": "Overlap",
              "overlap_repeat": "Overlap, repeated"}


@dataclasses.dataclass
class PaperTable:
    """One metric's table. `groups` [(mode, ratio)], CLEAN first when present; `rows` the
    categories; `values[(row, group, method)]` a value or None (missing, stale or not
    computed), for the category rows and AVERAGE and GAP; `missing` [(category, mode, ratio,
    method)] and `stale` [(category, mode, ratio, method, reasons)] the points not shown."""
    metric: str
    groups: List[Tuple[str, float]]
    methods: List[str]
    rows: List[str]
    values: Dict[tuple, Optional[float]]
    missing: List[tuple]
    stale: List[tuple]

    @property
    def title(self) -> str:
        return METRICS.get(self.metric, self.metric)

    def best(self, row: str, group) -> Optional[float]:
        """The row's best value within `group` (the highest; None when the row has none)."""
        vals = [v for v in (self.values.get((row, group, m)) for m in self.methods)
                if v is not None]
        return max(vals) if vals else None


def group_name(group) -> str:
    mode, ratio = group
    if group == CLEAN:
        return "Noise-free"
    return f"{MODE_NAMES.get(mode, mode)}, noise {ratio:g}"


def _group_of(row: dict):
    return CLEAN if float(row["ratio"]) == 0 else (str(row["mode"]), float(row["ratio"]))


def _number(v) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def paper_tables(fresh: Sequence[dict], stale: Sequence[tuple] = (),
                 metrics: Sequence[str] = DEFAULT_METRICS) -> List[PaperTable]:
    """fresh: point rows (category, mode, ratio, method and metrics); stale: [(folder, row,
    reasons)]. The grid is every category x setting x method any point (fresh or stale) has;
    a ratio 0 point of any mode is the noise-free one (the modes differ only in the noise). A
    metric no point has (pixel AUROC without masks) gives no table."""
    for metric in metrics:
        if metric not in METRICS:
            raise ValueError(f"--metrics: {metric!r} is not a table metric; choose from "
                             f"{', '.join(METRICS)}")
    every = list(fresh) + [row for _, row, _ in stale]
    groups = sorted({_group_of(r) for r in every}, key=lambda g: (g != CLEAN, g[1], g[0]))
    methods = sorted({str(r["method"]) for r in every})
    cats = sorted({str(r["category"]) for r in every})
    found: Dict[tuple, dict] = {}
    for r in fresh:  # the first mode's noise-free point where several modes have one
        found.setdefault((str(r["category"]), _group_of(r), str(r["method"])), r)
    stale_by_cell = {}
    for _, r, reasons in stale:
        stale_by_cell.setdefault((str(r["category"]), _group_of(r), str(r["method"])),
                                 (r, reasons))
    missing, stale_listed = [], []
    for cat in cats:
        for g in groups:
            for m in methods:
                if (cat, g, m) in found:
                    continue
                if (cat, g, m) in stale_by_cell:
                    r, reasons = stale_by_cell[(cat, g, m)]
                    stale_listed.append((cat, str(r["mode"]), float(r["ratio"]), m,
                                         "; ".join(reasons)))
                else:
                    missing.append((cat, g[0] if g != CLEAN else "any mode", g[1], m))
    tables = []
    for metric in metrics:
        values = {}
        for cat in cats:
            for g in groups:
                for m in methods:
                    values[(cat, g, m)] = _number((found.get((cat, g, m)) or {}).get(metric))
        for g in groups:
            for m in methods:
                col = [values[(c, g, m)] for c in cats]
                values[(AVERAGE, g, m)] = (None if any(v is None for v in col)
                                           else sum(col) / len(col))
        for g in groups:
            for m in methods:
                avg, clean = values[(AVERAGE, g, m)], values.get((AVERAGE, CLEAN, m))
                values[(GAP, g, m)] = (None if g == CLEAN or avg is None or clean is None
                                       else avg - clean)
        if any(values[(c, g, m)] is not None for c in cats for g in groups for m in methods):
            tables.append(PaperTable(metric, groups, methods, cats + [AVERAGE, GAP], values,
                                     missing, stale_listed))
    return tables


def _cell(table: PaperTable, row: str, group, method: str, digits: int,
          bold) -> str:
    v = table.values.get((row, group, method))
    if v is None:
        return "-"
    text = f"{v:+.{digits}f}" if row == GAP else f"{v:.{digits}f}"
    best = table.best(row, group)
    return bold(text) if best is not None and f"{best:.{digits}f}" == f"{v:.{digits}f}" \
        and len(table.methods) > 1 else text


def _gap_groups(table: PaperTable, row: str):
    """The groups a row has cells in (the Gap row has none in the noise-free group)."""
    return [g for g in table.groups if not (row == GAP and g == CLEAN)]


def not_shown(table: PaperTable) -> List[str]:
    """Lines listing the missing and stale points (empty when every cell is there)."""
    lines = [f"missing: {c}, {mode}, noise {r:g}, {m}" for c, mode, r, m in table.missing]
    lines += [f"stale (not shown): {c}, {mode}, noise {r:g}, {m}: {why}"
              for c, mode, r, m, why in table.stale]
    if CLEAN not in table.groups:
        lines.append("Gap: the sweep has no noise-free point (noise 0) to measure it from")
    return lines


def markdown(table: PaperTable, digits: int = 3) -> str:
    """A GitHub table: a header row naming group and method per column, the best of each row
    within a group in bold, the points not shown listed below it."""
    header = ["category"] + [f"{group_name(g)}: {m}" for g in table.groups for m in table.methods]
    lines = [f"### {table.title}", "", "| " + " | ".join(_md(h) for h in header) + " |",
             "|" + "---|" * len(header)]
    for row in table.rows:
        cells = [f"**{row}**" if row in (AVERAGE, GAP) else _md(row)]
        for g in table.groups:
            for m in table.methods:
                cells.append("" if row == GAP and g == CLEAN else
                             _cell(table, row, g, m, digits, lambda t: f"**{t}**"))
        lines.append("| " + " | ".join(cells) + " |")
    extra = not_shown(table)
    if extra:
        lines += ["", "Not shown:", ""] + [f"- {_md(x)}" for x in extra]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def csv_rows(tables: Sequence[PaperTable], digits: int = 4) -> List[List[str]]:
    """One CSV for all the tables: metric, category, then a column per (setting, method); a
    missing value is empty."""
    first = tables[0]
    out = [["metric", "category"] + [f"{g[0]} {g[1]:g} {m}" if g != CLEAN else f"clean 0 {m}"
                                     for g in first.groups for m in first.methods]]
    for t in tables:
        for row in t.rows:
            vals = [t.values.get((row, g, m)) for g in t.groups for m in t.methods]
            out.append([t.metric, row] + ["" if v is None else f"{v:.{digits}f}" for v in vals])
    return out


TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
               "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
               "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    return "".join(TEX_SPECIAL.get(ch, ch) for ch in str(text))


def latex(table: PaperTable, digits: int = 3) -> str:
    """A booktabs `table` environment: a row of group headers (\\multicolumn over the group's
    methods, \\cmidrule under each), a row of method names, the category rows, a rule, Average
    and Gap; the points not shown as a comment. Needs \\usepackage{booktabs}."""
    n = len(table.methods)
    spec = "l" + "".join("|" + "c" * n for _ in table.groups)
    head = [""] + [rf"\multicolumn{{{n}}}{{c}}{{{tex_escape(group_name(g))}}}"
                   for g in table.groups]
    rules = "".join(rf"\cmidrule(lr){{{2 + i * n}-{1 + (i + 1) * n}}}"
                    for i in range(len(table.groups)))
    names = ["Category"] + [tex_escape(m) for _ in table.groups for m in table.methods]
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{tex_escape(table.title)}}}",
             r"\resizebox{\linewidth}{!}{%", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(head) + r" \\", rules, " & ".join(names) + r" \\", r"\midrule"]
    for row in table.rows:
        if row == AVERAGE:
            lines.append(r"\midrule")
        cells = [tex_escape(row)]
        for g in table.groups:
            for m in table.methods:
                cells.append("" if row == GAP and g == CLEAN else
                             _cell(table, row, g, m, digits, lambda t: rf"\textbf{{{t}}}"))
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table}"]
    lines += [f"% {tex_escape(x)}" for x in not_shown(table)]
    return "\n".join(lines) + "\n"


def html(table: PaperTable, digits: int = 3) -> str:
    """The report's form: a two-row header (groups, then methods), the best in bold, the
    points not shown listed below."""
    esc = html_text
    n = len(table.methods)
    top = '<th rowspan="2">category</th>' + "".join(
        f'<th colspan="{n}">{esc(group_name(g))}</th>' for g in table.groups)
    sub = "".join(f"<th>{esc(m)}</th>" for _ in table.groups for m in table.methods)
    body = []
    for row in table.rows:
        name = f"<b>{esc(row)}</b>" if row in (AVERAGE, GAP) else esc(row)
        cells = [("" if row == GAP and g == CLEAN else
                  _cell(table, row, g, m, digits, lambda t: f"<b>{t}</b>"))
                 for g in table.groups for m in table.methods]
        body.append("<tr><td>" + name + "</td>" + "".join(f"<td>{c}</td>" for c in cells)
                    + "</tr>")
    extra = not_shown(table)
    listed = ("<p>Not shown:</p><ul>" + "".join(f"<li>{esc(x)}</li>" for x in extra)
              + "</ul>") if extra else ""
    return (f"<h3>{esc(table.title)}</h3><table class=\"metrics paper\"><thead><tr>{top}</tr>"
            f"<tr>{sub}</tr></thead><tbody>{''.join(body)}</tbody></table>{listed}")
