"""The alignment study (issue 17): methods and grouping variants x noise settings x datasets with
aligned parts (MVTec transistor, ELPV cells) and misaligned ones (transistor with every image
rotated by a seeded angle, VisA fryum whose parts turn freely).

python -m experiments.alignment_study --config configs/sweeps/alignment.py --root runs/study

One sweep folder per dataset (<root>/<dataset>, experiments.sweep's layout and resumable points),
then <root>/study.md from every finished point. See experiments/alignment_study.py.
"""
import ml_collections

from configs.sweeps import noise


def _data(name: str, root: str, category: str, max_train: int, max_test: int):
    return ml_collections.ConfigDict(dict(name=name, root=root, category=category,
                                          max_train=max_train, max_test=max_test))


def get_config():
    config = noise.get_config()
    s = config.sweep
    s.discriminators = "none,lof,softpatch_plus"  # method entries (and name@field=value variants)
    s.overlays = False                            # the study needs only the figures
    # Noise settings as ratio:mode; one sweep call per mode into the dataset's folder.
    s.settings = "0:no_overlap,0.1:no_overlap,0.1:overlap,0.2:overlap_repeat"
    # PatchCore on clean data, the reference every goal compares with (also `none` at ratio 0).
    s.reference = "patchcore"
    s.datasets = "transistor,transistor_rotated,fryum,elpv"
    # Each dataset's data.* fields. fryum is capped (seeded; the test cap stratified) to keep the
    # study affordable on 2 cores; transistor and its rotated copy use every image.
    s.data = ml_collections.ConfigDict()
    s.data.transistor = _data("mvtec", "../shared/data/mvtec_ad", "transistor", 0, 0)
    s.data.transistor_rotated = _data("mvtec", "runs/data", "transistor_rotated", 0, 0)
    s.data.fryum = _data("visa", "../shared/data/visa", "fryum", 100, 100)
    s.data.elpv = _data("elpv", "", "mono,poly", 100, 200)
    # The rule for the proposed defaults and the goals (study.md): aligned datasets, on which a
    # variant may lose at most aligned_tolerance against position grouping, and misaligned ones.
    s.aligned = "transistor,elpv"
    s.misaligned = "transistor_rotated,fryum"
    s.aligned_tolerance = 0.01
    # The defaults the goals are checked for, one entry per family, where they were chosen
    # otherwise than by the rule ('' = the rule's picks). docs/studies.md: why SoftPatch+ takes auto.
    s.chosen = "lof,softpatch_plus@grouping=auto"
    # Whose goals study.md checks: alignment (issue 17's) | contamination (issue 27's,
    # configs/sweeps/contamination.py).
    s.goals = "alignment"
    # transistor_rotated is generated (softpatch_jax/data/rotated.py) from this category into
    # its data.root, each image turned by a seeded angle in [-180, 180).
    s.rotate_source = "../shared/data/mvtec_ad/transistor"
    s.rotation_seed = 0
    # The study needs AUROC and AUPRO only: no training-set audit, no label-free thresholds
    # (k-fold refits would multiply the cost of SoftPatch+ points).
    if "audit" in config:
        config.audit.enabled = False
    if "threshold" in config:
        config.threshold.source = "none"
    return config
