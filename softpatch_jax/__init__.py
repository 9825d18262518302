"""softpatch-jax: fully unsupervised industrial anomaly detection in JAX/Flax."""

# Part of every result's fingerprint: results of another version are recomputed, never mixed.
__version__ = "0.2.0"
