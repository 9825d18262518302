"""The methods behind `model.method`, selected by name in this one place.

- `softpatch`: SoftPatch with `denoise.discriminator` (`none` makes it PatchCore).
- `patchcore`: no denoising, no soft weights; `bank.num_nn` nearest neighbours and, with
  `bank.reweight_neighbours` > 0, the PatchCore paper's softmax reweighting of image scores.
- `softpatch_plus`: fused discriminators (`softpatch_plus.fusion`, rank-normalised,
  `softpatch_plus.fusion_rule`), a classification bank (`softpatch_plus.cls_ratio`) for image
  scores and a segmentation bank (`softpatch_plus.seg_ratio`) for maps.
- `padim`: a Gaussian per position over `padim.dim` random channels of `padim.layers`.
- `fyd`: PaDiM on maps aligned by spatial transformers trained on the training images.
- `inreach`: InReaCh, a memory bank of the training patches that mutual nearest neighbours
  chain into channels spanning enough images (`inreach.*`).
- `spade`: SPADE, kNN over pooled image features, then patch kNN against the nearest
  training images' patches (`spade.*`).
- `cflow`: CFLOW-AD, a conditional normalising flow per tapped stage, conditioned on the
  position (`cflow.*`).

Adding a method: a `Method` subclass (methods/base.py) in a new module and `register(cls)`;
adding a discriminator: a scorer and `ops.discriminators.register(name, ...)`.
"""
from softpatch_jax import upgrade
from softpatch_jax.methods import (cflow, fyd, inreach, padim, patchcore,  # noqa: F401
                                   softpatch, spade)
from softpatch_jax.methods.base import Features, FeatureSpec, Method, Scores  # noqa: F401
from softpatch_jax.methods.registry import get, names, register  # noqa: F401
from softpatch_jax.ops import discriminators

DEFAULT = "softpatch"


def from_config(config) -> Method:
    """The method `config.model.method` names, built from the config (and checked)."""
    return get(config.model.method).from_config(config)


def sweep_overrides(entry: str, config=None) -> dict:
    """A sweep's method entry -> the config fields it sets, as {'section.field': value}: a
    registered method name (other than the default) selects that method; a discriminator name
    (or `none`) selects SoftPatch with that discriminator. A variant,
    `name@field=value@field=value` (e.g. `lof@grouping=neighbourhood`), also sets those fields:
    `section.field`, or a field name found in one section only (0.2's `model.*` names too, e.g.
    `threshold` for denoise.ratio); `config` says which fields exist and their types (bool,
    int, float or str; in a str value `+` stands for `,`, which separates the sweep's entries:
    `fusion=lof+nearest`). `first+entry` (e.g. `padim+patchcore`, `padim+lof`) fits `entry`
    on the training images that method `first` does not drop (model.prefilter,
    pipeline/prefilter.py)."""
    name, *variant = entry.split("@")
    first, plus, name = name.rpartition("+")
    if plus:
        if first not in names():
            raise ValueError(f"sweep.discriminators entry {entry!r}: {first!r} before '+' must "
                             f"be a method ({', '.join(names())}) that drops training images")
        fields = sweep_overrides("@".join([name] + variant), config)
        return {**fields, "model.prefilter": first}
    if name in names() and name != DEFAULT:
        fields = {"model.method": name}
    elif name == "none" or name in discriminators.names():
        fields = {"model.method": DEFAULT, "denoise.discriminator": name}
    else:
        raise ValueError(f"sweep.discriminators entry {entry!r} is neither a method "
                         f"({', '.join(names())}) nor a discriminator "
                         f"(none, {', '.join(discriminators.names())})")
    for setting in variant:
        field, sep, value = setting.partition("=")
        if not sep or not field:
            raise ValueError(f"sweep.discriminators entry {entry!r}: {setting!r} must be "
                             "field=value, e.g. lof@grouping=neighbourhood")
        dotted = resolve_field(field, config, f"sweep.discriminators entry {entry!r}")
        section, key = dotted.split(".")
        like = config[section][key]
        if dotted in upgrade.ANY_TYPE and like == "auto":
            like = 0.0  # a number-or-auto field whose default is auto: a number is a number
        fields[dotted] = (value if value == "auto" and dotted in upgrade.ANY_TYPE
                          else _typed(value, like, f"{entry!r}: {dotted}"))
    return fields


# Sections a sweep variant may set (the method is the entry's name), with those registered
# methods declare (Method.config_fields).
VARIANT_SECTIONS = ("model", "backbone", "bank", "denoise", "softpatch_plus", "padim", "fyd",
                    "inreach", "spade", "cflow")


def _variant_sections() -> tuple:
    own = [s for n in names() for s in get(n).config_fields if s not in VARIANT_SECTIONS]
    return VARIANT_SECTIONS + tuple(dict.fromkeys(own))


def resolve_field(field: str, config, where: str, extra_sections=()) -> str:
    """A field named by a sweep variant or a Python API keyword as 'section.field': given so,
    or a name one section holds (0.2's `model.*` names first, e.g. `threshold` is
    denoise.ratio), among the method sections and `extra_sections`; one line naming `where`
    otherwise."""
    if config is None:
        raise ValueError(f"{where}: variants need the config")
    sections = _variant_sections() + tuple(extra_sections)
    if "." in field:
        candidates = [field]
    else:
        renamed = upgrade.renamed_override(f"model.{field}")
        candidates = [renamed] if renamed else [
            f"{s}.{field}" for s in sections if s in config and field in config[s]]
    if len(candidates) > 1:
        raise ValueError(f"{where}: {field} is a field of {' and '.join(candidates)}; name "
                         f"one, e.g. {candidates[0]}=...")
    dotted = candidates[0] if candidates else field
    section, _, key = dotted.partition(".")
    if section not in sections or key not in (config.get(section) or {}) \
            or dotted == "model.method":
        raise ValueError(f"{where}: {field} is not a config field that can be set here (a "
                         f"field of {', '.join(sections)}, other than model.method)")
    return dotted


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
