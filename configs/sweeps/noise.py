"""Noise-ratio x discriminator sweep on MVTec-format data (the papers' tables).

python -m experiments.sweep --config configs/sweeps/noise.py --workdir DIR \
    --config.data.root=../shared/data/mvtec_ad --config.data.category=transistor
"""
import ml_collections

from configs import mvtec


def get_config():
    config = mvtec.get_config()
    config.sweep = ml_collections.ConfigDict()
    config.sweep.ratios = "0,0.05,0.1,0.2"           # comma list of noise.ratio values
    config.sweep.discriminators = "none,nearest,gaussian,lof"  # or any method name (methods.names())
    config.sweep.modes = "no_overlap"                 # comma list of noise.mode values
    config.sweep.overlays = True                      # anomaly-map overlays per point
    config.sweep.batch_points = 1                     # points run at once, coresets batched
    return config
