"""CFLOW-AD: conditional normalising flows per tapped stage (flow.py: the modules; train.py:
their training; method.py: the registered method)."""
from softpatch_jax.methods.cflow import method  # noqa: F401 (registers the method)
