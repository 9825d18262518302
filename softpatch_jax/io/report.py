"""Results on disk: metrics.json (per category + mean + resolved config) and results.md, and the
one markdown table (rows x columns with a mean row) that runs and sweeps print."""
import math
import os
from typing import Dict, Iterable, Optional, Sequence

from softpatch_jax.files import write_json
from softpatch_jax.io.text import md_cell

# Ranking metrics (label-using; what papers report).
RANKING = ("image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "image_f1_max",
           "pixel_f1_max")
# Decisions without labels: the training-set audit against the injected images, and the test
# figures at the label-free thresholds (compare image_f1 with the oracle image_f1_max).
DECISIONS = ("audit_auroc", "audit_ap", "audit_precision_at_n", "image_f1",
             "image_false_reject", "image_false_accept", "pixel_f1", "pixel_iou")
METRICS = RANKING + DECISIONS


def present(v) -> bool:
    """A value to show and average: not None, not NaN."""
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def mean(values: Iterable) -> Optional[float]:
    """Mean of the values that are present (not None, not NaN); None if there are none."""
    vals = [v for v in values if present(v)]
    return sum(vals) / len(vals) if vals else None


def summarise(per_category: Dict[str, dict]) -> dict:
    return {m: mean(r.get(m) for r in per_category.values()) for m in METRICS}


def fmt(v) -> str:
    return f"{v:.4f}" if present(v) else "-"


def table(cells: Dict[str, Dict[str, object]], columns: Sequence[str], corner: str = "category",
          mean_row: bool = True) -> list:
    """Markdown lines: one row per key of `cells` ({row: {column: value}}), a **mean** row of
    each column's present values when `mean_row`. Row and column names come from data and
    config, so each is one escaped cell (`md_cell`)."""
    lines = [f"| {md_cell(corner)} | " + " | ".join(md_cell(c) for c in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for name, row in cells.items():
        lines.append(f"| {md_cell(name)} | " + " | ".join(fmt(row.get(c)) for c in columns)
                     + " |")
    if mean_row:
        means = {c: mean(row.get(c) for row in cells.values()) for c in columns}
        lines.append("| **mean** | " + " | ".join(fmt(means[c]) for c in columns) + " |")
    return lines


def markdown_table(per_category: Dict[str, dict], title: str = "") -> str:
    """The ranking metrics, then (where present) the decisions without labels."""
    lines = [f"# {md_cell(title)}", ""] if title else []  # the report reads it back
    for i, group in enumerate((RANKING, DECISIONS)):
        cols = [m for m in group if any(r.get(m) is not None for r in per_category.values())]
        if not cols:
            continue
        if i:
            lines += ["", "Without labels: the training-set audit against the injected images, "
                      "and the test figures at the label-free threshold (compare image_f1 with "
                      "image_f1_max):", ""]
        lines += table(per_category, cols, mean_row=len(per_category) > 1)
    return "\n".join(lines) + "\n"


def write_results(workdir: str, per_category: Dict[str, dict], config: dict, title: str) -> None:
    write_json(os.path.join(workdir, "metrics.json"),
               {"categories": per_category, "mean": summarise(per_category), "config": config})
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(markdown_table(per_category, title))
