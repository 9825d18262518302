"""Noise-ratio x discriminator sweep on MVTec-format data (the papers' tables).

python -m experiments.sweep --config configs/sweeps/noise.py --workdir DIR \
    --config.data.root=../shared/data/mvtec_ad --config.data.category=transistor
"""
import importlib.util
import os

import ml_collections

_spec = importlib.util.spec_from_file_location(
    "softpatch_mvtec_config",
    os.path.join(os.path.dirname(os.path.dirname(__file__)), "mvtec.py"))
_mvtec = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mvtec)


def get_config():
    config = _mvtec.get_config()
    config.sweep = ml_collections.ConfigDict()
    config.sweep.ratios = "0,0.05,0.1,0.2"           # comma list of noise.ratio values
    config.sweep.discriminators = "none,nearest,gaussian,lof"  # or patchcore, softpatch_plus, padim
    config.sweep.modes = "no_overlap"                 # comma list of noise.mode values
    config.sweep.overlays = True                      # anomaly-map overlays per point
    return config
