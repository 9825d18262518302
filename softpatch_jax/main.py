"""Command line.

Fit and evaluate: python -m softpatch_jax.main --config configs/default.py --workdir DIR
  (any config field can be overridden with --config.<field>=<value>)
Score new images: python -m softpatch_jax.main --mode=predict --workdir DIR --images=a.png,b.png
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

from softpatch_jax.ops import sharding
from softpatch_jax.pipeline import cli, evaluate, predict

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for metrics.json, results.md and run files.")
config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.",
                                lock_config=True)
flags.DEFINE_enum("mode", "fit", ["fit", "predict"], "fit: fit and evaluate; predict: score "
                  "--images with the models fitted in --workdir.")
flags.DEFINE_list("images", [], "Images to score in predict mode.")
flags.DEFINE_string("category", "", "Predict mode: the fitted category to use ('' = all).")
flags.mark_flags_as_required(["workdir"])


def run():
    if FLAGS.mode == "predict":
        for cat, scores in predict.predict_images(FLAGS.workdir, FLAGS.images,
                                                  FLAGS.category).items():
            print(f"{cat}: " + ", ".join(f"{os.path.basename(p)}={v:.6g}"
                                         for p, v in zip(FLAGS.images, scores)))
        return
    if FLAGS.config is None:
        raise app.UsageError("--config is required to fit")
    sharding.maybe_initialize_distributed(FLAGS.config.runtime.distributed)
    evaluate.train_and_evaluate(FLAGS.config, FLAGS.workdir)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.INFO)
    cli.run_or_exit(run)


if __name__ == "__main__":
    app.run(main)
