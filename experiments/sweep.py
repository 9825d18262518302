"""Sweep noise ratio x method x mode x category with one command; resumable.

python -m experiments.sweep --config configs/sweeps/noise.py --workdir DIR [--config.x=...]

See softpatch_jax/pipeline/sweep.py for what it writes.
"""
import logging

from absl import app, flags
from ml_collections import config_flags

from softpatch_jax.pipeline import cli
from softpatch_jax.pipeline.sweep import run_sweep

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Sweep directory (results, cached features, points).")
config_flags.DEFINE_config_file("config", None, "Sweep config file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.getLogger().setLevel(logging.INFO)
    cli.run_or_exit(run_sweep, FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
