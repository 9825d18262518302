"""A sweep's results as the SoftPatch paper's tables: rows per category plus Average and Gap,
a column group per noise setting, methods as columns, image and pixel AUROC apart.

python -m experiments.table --workdir SWEEP_DIR [--format=md,csv,tex] [--metrics=...]
    [--digits=3] [--check_data=true]

Writes SWEEP_DIR/table.md, table.csv and table.tex (those --format names) from the finished
points that a rerun of the sweep would keep (pipeline/sweep.py `checked_points`: a point of an
older results version, of another base config or, with --check_data, of changed data is stale
and never shown); a missing or stale point is a dash, listed under its table. The tables'
layout: softpatch_jax/report/tables.py.
"""
import csv
import io
import os

from absl import app, flags

from softpatch_jax.files import atomic_path
from softpatch_jax.io.text import csv_text_cell
from softpatch_jax.pipeline import cli
from softpatch_jax.pipeline.sweep import checked_points
from softpatch_jax.report import tables
from softpatch_jax.settings import comma_list

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A sweep directory (experiments/sweep.py).")
flags.DEFINE_string("format", "md,csv,tex", "Comma list of md, csv, tex.")
flags.DEFINE_string("metrics", ",".join(tables.DEFAULT_METRICS),
                    f"Comma list of the tables' metrics ({', '.join(tables.METRICS)}).")
flags.DEFINE_integer("digits", 3, "Decimals shown (md, tex; the CSV keeps 4).")
flags.DEFINE_bool("check_data", True, "Check that each point's images and masks are those it "
                  "was computed on (stat only); false tables points whose data is not here.")
flags.mark_flags_as_required(["workdir"])

FORMATS = ("md", "csv", "tex")


def write_tables(workdir: str, formats=FORMATS, metrics=tables.DEFAULT_METRICS,
                 digits: int = 3, check_data: bool = True) -> dict:
    """Writes DIR/table.<format> for each format -> {format: path}. Raises ValueError (one line)
    for an unknown format or metric, a folder that is not a sweep's, or one with no finished
    point."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"--format: {', '.join(unknown)} unknown; choose from "
                         f"{', '.join(FORMATS)}")
    if not os.path.isdir(os.path.join(workdir, "points")):
        raise ValueError(f"--workdir={workdir!r} holds no sweep (no points/ folder); give the "
                         "folder experiments.sweep wrote")
    checked = checked_points(workdir, check_data)
    if not checked.fresh and not checked.stale:
        raise ValueError(f"--workdir={workdir!r} holds no finished point yet")
    made = tables.paper_tables(checked.fresh, checked.stale, metrics)
    if not made:
        raise ValueError(f"no point in {workdir!r} has {', '.join(metrics)}; choose "
                         "--metrics its points have")
    texts = {"md": lambda: "\n".join(tables.markdown(t, digits) for t in made),
             "tex": lambda: "\n".join(tables.latex(t, digits) for t in made),
             "csv": lambda: _csv_text(tables.csv_rows(made))}
    paths = {}
    for fmt in formats:
        path = os.path.join(workdir, f"table.{fmt}")
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            f.write(texts[fmt]())
        paths[fmt] = path
    return paths


def _csv_text(rows) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(rows[0])
    w.writerows([csv_text_cell(r[0]), csv_text_cell(r[1])] + r[2:] for r in rows[1:])
    return out.getvalue()


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}; flags take the form --name=value")
    paths = cli.run_or_exit(write_tables, FLAGS.workdir, comma_list(FLAGS.format),
                            comma_list(FLAGS.metrics), FLAGS.digits, FLAGS.check_data)
    for path in paths.values():
        print(path)


if __name__ == "__main__":
    app.run(main)
