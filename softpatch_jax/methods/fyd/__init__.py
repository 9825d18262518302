"""FYD (Focus Your Distribution): `model.py` (the modules and losses), `stn.py` (spatial
transformers), `train.py` (optax training with orbax checkpoints) and `method.py` (the method:
alignment trained in `prepare`, then PaDiM on the aligned maps)."""
from softpatch_jax.methods.fyd import method  # noqa: F401 (registers the method)
