"""Sweep noise ratio x method x mode x category with one command; resumable.

python -m experiments.sweep --config configs/sweeps/noise.py --workdir DIR [--config.x=...]
    [--overwrite] [--shard=i/n]

See softpatch_jax/pipeline/sweep.py for what it writes, then DIR/report.html
(softpatch_jax/report/). A rerun skips the points already computed from the same config and data;
a point computed from another refuses the run, or with --overwrite is recomputed.
"""
from absl import app, flags
from ml_collections import config_flags

from softpatch_jax.pipeline import cli, console
from softpatch_jax.pipeline.sweep import run_sweep
from softpatch_jax.report import write_report

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Sweep directory (results, cached features, points).")
config_flags.DEFINE_config_file("config", None, "Sweep config file.", lock_config=True)
flags.DEFINE_bool("overwrite", False, "Recompute points computed from another config or data "
                  "(without it such a sweep refuses to start).")
flags.DEFINE_string("shard", "0/1", "i/n: run every n-th point starting at i, so that n "
                    "processes share one sweep directory (the tables aggregate finished points).")
flags.mark_flags_as_required(["config", "workdir"])


def sweep(config, workdir, overwrite=False, shard="0/1"):
    """Runs the sweep, then rewrites DIR/report.html once a point is finished (its path the last
    console line) -> every finished point's row."""
    rows = run_sweep(config, workdir, overwrite, shard)
    if rows:
        console.say(f"report: {write_report(workdir)}")
    return rows


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}; flags take the form --name=value")
    console.setup(FLAGS.workdir, FLAGS.verbosity)
    cli.run_or_exit(console.logged(sweep), FLAGS.config, FLAGS.workdir, FLAGS.overwrite,
                    FLAGS.shard)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
