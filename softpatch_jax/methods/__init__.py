"""The methods behind `model.method`, selected by name in this one place.

- `softpatch`: SoftPatch with `model.discriminator` (`none` makes it PatchCore).
- `patchcore`: no denoising, no soft weights; `model.num_nn` nearest neighbours and, with
  `model.reweight_neighbours` > 0, the PatchCore paper's softmax reweighting of image scores.
- `softpatch_plus`: fused discriminators (`model.fusion`, rank-normalised, `model.fusion_rule`),
  a classification bank (`model.cls_threshold`) for image scores and a segmentation bank
  (`model.seg_threshold`) for maps.
- `padim`: a Gaussian per position over `model.padim_dim` random channels of `model.padim_layers`.
- `fyd`: PaDiM on maps aligned by spatial transformers trained on the training images.

Adding a method: a `Method` subclass (methods/base.py) in a new module and `register(cls)`;
adding a discriminator: a scorer and `ops.discriminators.register(name, ...)`.
"""
from softpatch_jax.methods import fyd, padim, patchcore, softpatch  # noqa: F401 (registration)
from softpatch_jax.methods.base import Features, FeatureSpec, Method, Scores  # noqa: F401
from softpatch_jax.methods.registry import get, names, register  # noqa: F401
from softpatch_jax.ops import discriminators

DEFAULT = "softpatch"


def from_config(config) -> Method:
    """The method `config.model.method` names, built from the config (and checked)."""
    return get(config.model.method).from_config(config)


def sweep_overrides(entry: str) -> dict:
    """A sweep's method entry -> the `config.model` fields it sets: a registered method name
    (other than the default) selects that method; a discriminator name (or `none`) selects
    SoftPatch with that discriminator."""
    if entry in names() and entry != DEFAULT:
        return {"method": entry}
    if entry == "none" or entry in discriminators.names():
        return {"method": DEFAULT, "discriminator": entry}
    raise ValueError(f"sweep.discriminators entry {entry!r} is neither a method "
                     f"({', '.join(names())}) nor a discriminator "
                     f"(none, {', '.join(discriminators.names())})")
