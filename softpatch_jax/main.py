"""Command line: python -m softpatch_jax.main --config configs/default.py --workdir DIR.

Any config field can be overridden with --config.<field>=<value>.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from softpatch_jax import train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for metrics.json, results.md and run files.")
config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.INFO)
    try:
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (ValueError, FileNotFoundError, ImportError) as e:
        # Bad input: one line naming the problem and the fix, no traceback.
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
