"""softpatch-jax: fully unsupervised industrial anomaly detection in JAX/Flax."""

__version__ = "0.3.0"
# The first version whose results (scores, features, fitted models) this one reproduces to the
# last digit, recorded with every result and cache entry so that results of another are
# recomputed, never mixed: 0.3 changed the config's shape (softpatch_jax/upgrade.py), not a
# number. Set it to __version__ when a change alters a result.
RESULTS_VERSION = "0.2.0"

# The Python API (softpatch_jax/api.py), imported on first use so that `import softpatch_jax`
# alone stays light (setup.py and the ground-floor modules need only the version).
API = ("Model", "SoftPatch", "SoftPatchPlus", "PatchCore", "PaDiM", "FYD", "Fitted", "Prediction",
       "Audit", "load")


def __getattr__(name):
    if name in API:
        from softpatch_jax import api

        return getattr(api, name)
    raise AttributeError(f"module 'softpatch_jax' has no attribute {name!r}")
