"""The package's version, and the version of its results."""

__version__ = "0.3.0"
# The first version whose results (scores, features, fitted models) this one reproduces to the
# last digit, recorded with every result and cache entry so that results of another are
# recomputed, never mixed: 0.3 changed the config's shape (softpatch_jax/upgrade.py), not a
# number. Set it to __version__ when a change alters a result.
RESULTS_VERSION = "0.2.0"
