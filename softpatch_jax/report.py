"""Results on disk: metrics.json (per category + mean + resolved config) and results.md."""
import json
import math
import os
from typing import Dict

METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max")


def _mean(values):
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else None


def write_json(path: str, obj) -> None:
    """Writes atomically: a reader never sees a half-written file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def summarise(per_category: Dict[str, dict]) -> dict:
    return {m: _mean(r.get(m) for r in per_category.values()) for m in METRICS}


def markdown_table(per_category: Dict[str, dict], title: str = "") -> str:
    cols = [m for m in METRICS if any(r.get(m) is not None for r in per_category.values())]
    lines = [f"# {title}", ""] if title else []
    lines.append("| category | " + " | ".join(cols) + " |")
    lines.append("|---" * (len(cols) + 1) + "|")

    def fmt(v):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"

    for name, r in per_category.items():
        lines.append(f"| {name} | " + " | ".join(fmt(r.get(m)) for m in cols) + " |")
    if len(per_category) > 1:
        mean = summarise(per_category)
        lines.append("| **mean** | " + " | ".join(fmt(mean[m]) for m in cols) + " |")
    return "\n".join(lines) + "\n"


def write_results(workdir: str, per_category: Dict[str, dict], config: dict, title: str) -> None:
    write_json(os.path.join(workdir, "metrics.json"),
               {"categories": per_category, "mean": summarise(per_category), "config": config})
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(markdown_table(per_category, title))
