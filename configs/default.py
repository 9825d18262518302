"""Default job: SoftPatch-LOF on the ELPV solar cells (mono and poly), 10% noise, EfficientNet-Lite0.

Every field, its default and what it does: softpatch_jax/defaults.py. Every field can be
overridden on the command line, e.g. `--config.denoise.discriminator=gaussian`.
"""
from softpatch_jax.defaults import get_config  # noqa: F401
