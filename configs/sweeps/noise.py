"""Noise-ratio x discriminator sweep on MVTec-format data (the papers' tables).

python -m experiments.sweep --config configs/sweeps/noise.py --workdir DIR \
    --config.data.root=../shared/data/mvtec_ad --config.data.category=transistor
"""
from configs import mvtec
from softpatch_jax import defaults


def get_config():
    config = mvtec.get_config()
    config.sweep = defaults.sweep_section()  # ratios, discriminators, modes, overlays, ...
    return config
