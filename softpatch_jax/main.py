"""Command line.

Fit and evaluate: python -m softpatch_jax.main --config configs/default.py --workdir DIR
  (any config field can be overridden with --config.<field>=<value>)
Score new images: python -m softpatch_jax.main --mode=predict --workdir DIR --images=a.png,dir/
Export for deployment: python -m softpatch_jax.main --mode=export --workdir DIR [--export_batch=8]
  (DIR/export/<category>/: a jax.export scorer and a loader needing only jax and numpy)
The console shows warnings, progress and a summary; --verbosity=1 adds library INFO logging;
DIR/run.log gets everything (pipeline/console.py). Fit and predict end by rewriting
DIR/report.html (softpatch_jax/report/, above the pipeline, so written here).
"""
import os

from absl import app, flags
from ml_collections import config_flags

from softpatch_jax.export import exporter
from softpatch_jax.io.lock import workdir_lock
from softpatch_jax.ops import sharding
from softpatch_jax.pipeline import cli, console, evaluate, predict
from softpatch_jax.report import write_report

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for metrics.json, results.md and run files.")
config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.",
                                lock_config=True)
flags.DEFINE_enum("mode", "fit", ["fit", "predict", "export"], "fit: fit and evaluate; "
                  "predict: score --images with the models fitted in --workdir; export: write "
                  "each fitted model as a standalone scorer to --workdir/export/<category>/.")
flags.DEFINE_string("images", "", "Predict mode: image files, folders, globs and list files "
                    "to score, comma-separated (a name that holds a comma is kept whole).")
flags.DEFINE_string("category", "", "Predict and export modes: the fitted category to use "
                    "('' = all).")
flags.DEFINE_integer("export_batch", exporter.DEFAULT_BATCH, "Export mode: images per call of "
                     "the exported scorer (fixed at export; the loader pads the last batch).")
flags.DEFINE_float("threshold", None, "Predict and export modes: the image threshold for "
                   "verdicts (score >= it is anomalous), overriding the label-free one stored "
                   "at fit time.")
flags.DEFINE_bool("overwrite", False, "Fit: replace results of another config in --workdir "
                  "(without it such a run refuses to start).")
flags.mark_flags_as_required(["workdir"])


def run():
    if FLAGS.mode == "fit":
        return fit()
    if not os.path.isdir(FLAGS.workdir):
        return use_fitted()  # which names the missing workdir
    # Shared with other predictions and exports; refused while a fit replaces the models.
    with workdir_lock(FLAGS.workdir, FLAGS.mode, shared=True):
        return use_fitted()


def use_fitted():
    if FLAGS.mode == "export":
        threshold = FLAGS.threshold
        for cat, folder in exporter.export_workdir(FLAGS.workdir, FLAGS.category,
                                                   FLAGS.export_batch, threshold).items():
            print(f"{cat}: exported -> {folder} (python {folder}/loader.py {folder} IMAGE...)")
        return
    if FLAGS.mode == "predict":
        found = predict.predict_images(FLAGS.workdir, predict.split_images(FLAGS.images),
                                       FLAGS.category, threshold=FLAGS.threshold)
        path = write_report(FLAGS.workdir)  # the fit's report, with a predictions section
        for cat, (names, scores) in found.items():
            top = int(scores.argmax())
            verdicts = predict.verdict_counts(FLAGS.workdir, cat)
            print(f"{cat}: {len(names)} images scored{verdicts} -> "
                  f"{FLAGS.workdir}/predictions/{cat}/predictions.csv "
                  f"(highest: {names[top]} = {float(scores[top]):.6g})")
        print(f"report: {path}")


def fit():
    if FLAGS.config is None:
        raise ValueError("--config is required to fit; give a config file such as "
                         "configs/default.py")
    sharding.maybe_initialize_distributed(FLAGS.config.runtime.distributed)
    results = evaluate.train_and_evaluate(FLAGS.config, FLAGS.workdir, overwrite=FLAGS.overwrite)
    path = write_report(FLAGS.workdir)
    for line in console.summary_lines(results, path, console.log_path(FLAGS.workdir)):
        console.say(line)


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}; flags take the form --name=value")
    console.setup(FLAGS.workdir, FLAGS.verbosity)
    cli.run_or_exit(console.logged(run))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
