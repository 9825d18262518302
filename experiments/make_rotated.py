"""Writes a rotated copy of an MVTec-layout category (issue 17: a misaligned development set).

python -m experiments.make_rotated --src ../shared/data/mvtec_ad/transistor --dst runs/data --seed 0

writes runs/data/transistor_rotated/ (the name defaults to <source name>_rotated), readable as
data.name=mvtec, data.root=runs/data, data.category=transistor_rotated. A rerun with the same
source and seed does nothing. See softpatch_jax/data/rotated.py.
"""
import os

from absl import app, flags

from softpatch_jax.pipeline import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("src", None, "Source category folder (train/, test/, ground_truth/).")
flags.DEFINE_string("dst", None, "Folder that receives the rotated category.")
flags.DEFINE_string("name", "", "Name of the rotated category ('' = <source name>_rotated).")
flags.DEFINE_integer("seed", 0, "Seed of the per-image angles.")
flags.mark_flags_as_required(["src", "dst"])


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}; flags take the form --name=value")
    from softpatch_jax.data.rotated import make_rotated_category

    name = FLAGS.name or os.path.basename(os.path.normpath(FLAGS.src)) + "_rotated"
    path = cli.run_or_exit(make_rotated_category, FLAGS.src, FLAGS.dst, name, FLAGS.seed)
    print(path)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
