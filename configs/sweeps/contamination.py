"""The contamination study (issue 27): fixed against `auto` denoising ratios x noise settings
from clean to 40% repeated defects x the alignment study's datasets.

python -m experiments.alignment_study --config configs/sweeps/contamination.py --root runs/c27

The alignment study's driver and datasets (configs/sweeps/alignment.py); study.md checks issue
27's goals (experiments/alignment_study.py, `contamination_goals_markdown`). Its audit and
label-free thresholds stay off, as the alignment study's: an `auto` entry's estimate comes from
its provisional fit, which runs anyway.
"""
from configs.sweeps import alignment


def get_config():
    config = alignment.get_config()
    s = config.sweep
    s.discriminators = ("none,lof,lof@ratio=auto@soft_weight=auto,softpatch_plus,"
                        "softpatch_plus@cls_ratio=auto@seg_ratio=auto@soft_weight=auto")
    s.settings = ("0:no_overlap,0.05:overlap,0.1:no_overlap,0.1:overlap,0.2:overlap_repeat,"
                  "0.3:overlap_repeat,0.4:overlap_repeat")
    s.goals = "contamination"
    return config
