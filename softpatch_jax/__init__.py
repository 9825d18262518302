"""softpatch-jax: fully unsupervised industrial anomaly detection in JAX/Flax."""
from softpatch_jax.version import RESULTS_VERSION, __version__  # noqa: F401

# The Python API (softpatch_jax/api.py), imported on first use so that `import softpatch_jax`
# alone stays light (the ground-floor modules need only the version).
API = ("Model", "SoftPatch", "SoftPatchPlus", "PatchCore", "PaDiM", "FYD", "Fitted", "Prediction",
       "Audit", "load")


def __getattr__(name):
    if name in API:
        from softpatch_jax import api

        return getattr(api, name)
    raise AttributeError(f"module 'softpatch_jax' has no attribute {name!r}")
