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


def sweep_overrides(entry: str, model=None) -> dict:
    """A sweep's method entry -> the `config.model` fields it sets: a registered method name
    (other than the default) selects that method; a discriminator name (or `none`) selects
    SoftPatch with that discriminator. A variant, `name@field=value@field=value` (e.g.
    `lof@grouping=neighbourhood`), also sets those `config.model` fields; `model` (the
    config.model block) says which fields exist and their types (bool, int, float or str; in a
    str value `+` stands for `,`, which separates the sweep's entries: `fusion=lof+nearest`)."""
    name, *variant = entry.split("@")
    if name in names() and name != DEFAULT:
        fields = {"method": name}
    elif name == "none" or name in discriminators.names():
        fields = {"method": DEFAULT, "discriminator": name}
    else:
        raise ValueError(f"sweep.discriminators entry {entry!r} is neither a method "
                         f"({', '.join(names())}) nor a discriminator "
                         f"(none, {', '.join(discriminators.names())})")
    for setting in variant:
        field, sep, value = setting.partition("=")
        if not sep or not field or field == "method":
            raise ValueError(f"sweep.discriminators entry {entry!r}: {setting!r} must be "
                             "field=value, a config.model field other than method, e.g. "
                             "lof@grouping=neighbourhood")
        if model is None or field not in model:
            raise ValueError(f"sweep.discriminators entry {entry!r}: model.{field} is not a "
                             "config field")
        fields[field] = _typed(value, model[field], f"{entry!r}: model.{field}")
    return fields


def _typed(value: str, like, where: str):
    """A variant's value as the type of the field's current value `like`."""
    if isinstance(like, bool):
        if value.lower() in ("true", "1"):
            return True
        if value.lower() in ("false", "0"):
            return False
        raise ValueError(f"sweep.discriminators entry {where}={value!r} must be true or false")
    if isinstance(like, (int, float)):
        try:
            return type(like)(value)
        except ValueError:
            raise ValueError(f"sweep.discriminators entry {where}={value!r} must be "
                             f"{'an integer' if isinstance(like, int) else 'a number'}") from None
    return value.replace("+", ",")
