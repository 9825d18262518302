"""Configs in the shape 0.2 stored them, in today's: `upgrade(config)` is the one step between a
config from anywhere (a config file, a workdir, a sweep point, a checkpoint, an export) and the
code that reads it, so nothing below reads a 0.2 name or guesses a default for a missing field.

0.2 kept every method's knobs in one flat `model` section; 0.3 gives the backbone, the memory
bank, the denoising, SoftPatch+ and PaDiM a section each and renames the denoising ratios
(`model.threshold` collided with the `threshold` section). The results are the same to the last
digit (softpatch_jax.RESULTS_VERSION), so a stored 0.2 result whose upgraded config equals
today's is recognised, not recomputed.
"""
import copy
from typing import Dict

import ml_collections

# 0.2 field -> today's.
RENAMED: Dict[str, str] = {
    "model.backbone": "backbone.name",
    "model.weights": "backbone.weights",
    "model.layers": "backbone.layers",
    "model.dtype": "backbone.dtype",
    "model.patch_size": "backbone.patch_size",
    "model.embed_dim": "backbone.embed_dim",
    "model.coreset_ratio": "bank.coreset_ratio",
    "model.projection_dim": "bank.projection_dim",
    "model.num_starts": "bank.num_starts",
    "model.num_nn": "bank.num_nn",
    "model.reweight_neighbours": "bank.reweight_neighbours",
    "model.discriminator": "denoise.discriminator",
    "model.threshold": "denoise.ratio",
    "model.lof_k": "denoise.lof_k",
    "model.grouping": "denoise.grouping",
    "model.group_radius": "denoise.group_radius",
    "model.soft_weight": "denoise.soft_weight",
    "model.fusion": "softpatch_plus.fusion",
    "model.fusion_rule": "softpatch_plus.fusion_rule",
    "model.fusion_weights": "softpatch_plus.fusion_weights",
    "model.rank_norm": "softpatch_plus.rank_norm",
    "model.soft_source": "softpatch_plus.soft_source",
    "model.shared_projection": "softpatch_plus.shared_projection",
    "model.cls_threshold": "softpatch_plus.cls_ratio",
    "model.seg_threshold": "softpatch_plus.seg_ratio",
    "model.padim_layers": "padim.layers",
    "model.padim_dim": "padim.dim",
}

# What 0.2 read for a field that a config stored before the field existed lacks (the meaning
# such a config had); filled in only for 0.2 configs.
LEGACY_DEFAULTS: Dict[str, object] = {
    "denoise.grouping": "position",
    "denoise.group_radius": 2,
    "softpatch_plus.fusion_rule": "mean",
    "softpatch_plus.fusion_weights": "",
    "softpatch_plus.rank_norm": "global",
    "softpatch_plus.soft_source": "first",
    "softpatch_plus.shared_projection": True,
    "runtime.exact_pruning": True,
    "runtime.multi_device": True,
    "runtime.compilation_cache": True,
    "data.source": "folder",
    "data.tfds_dir": "",
}


# Fields added since 0.3.0 with the value that means what a config stored before them meant;
# filled in wherever a stored config or result lacks them, so its results stay recognised.
ADDED: Dict[str, object] = {
    "data.tile": 0,
    "bank.sampler": "greedy",
    "model.prefilter": "",
    "model.prefilter_share": "auto",
}

# Sections added whole since 0.3.0: a stored config (one with a model section) that lacks one
# meant its defaults (softpatch_jax/defaults.py), which no method it could name read.
ADDED_SECTIONS = ("inreach", "spade", "cflow")


def _added_section(section: str) -> dict:
    from softpatch_jax import defaults  # ground floor, beside this module

    return defaults.get_config()[section].to_dict()


# Fields that take more than one type (N or (height, width); a number or auto): ml_collections
# would otherwise refuse a pair or `auto` where the stored value is a number.
ANY_TYPE = ("data.image_size", "data.tile", "denoise.ratio", "denoise.soft_weight",
            "softpatch_plus.cls_ratio", "softpatch_plus.seg_ratio", "model.prefilter_share")


def is_legacy(config) -> bool:
    """Whether `config` (nested) is in 0.2's shape: its model section holds a moved field."""
    model = config.get("model") if hasattr(config, "get") else None
    return bool(model) and any(f"model.{k}" in RENAMED for k in model.keys())


def upgrade(config) -> ml_collections.ConfigDict:
    """A config (ConfigDict or nested dict) in today's shape, as a new unlocked ConfigDict; one in
    today's shape comes back equal. A 0.2 name set beside today's sections (a 0.2 config file
    that starts from `defaults.get_config()`) replaces the default its new name holds; one set
    beside a new name that holds another value too is refused in one line naming both."""
    tree = config.to_dict() if hasattr(config, "to_dict") else copy.deepcopy(dict(config))
    if is_legacy(tree):
        model, default = tree["model"], None
        for old, new in RENAMED.items():
            field = old.split(".", 1)[1]
            if field not in model:
                continue
            value = model.pop(field)
            section, name = new.split(".")
            target = tree.setdefault(section, {})
            if name in target and target[name] != value:
                if default is None:
                    from softpatch_jax import defaults  # ground floor, beside this module

                    default = defaults.get_config()
                if target[name] != default[section][name]:
                    raise ValueError(f"config sets {old}={value!r} (0.2's name) and {new}="
                                     f"{target[name]!r}; keep only {new}")
            target[name] = value
        for dotted, value in LEGACY_DEFAULTS.items():
            section, name = dotted.split(".")
            if section in tree:
                tree[section].setdefault(name, value)
    for dotted, value in ADDED.items():
        section, name = dotted.split(".")
        if section in tree:
            tree[section].setdefault(name, value)
    for section in ADDED_SECTIONS:
        if "model" in tree and section not in tree:
            tree[section] = _added_section(section)
    for dotted in ANY_TYPE:
        section, name = dotted.split(".")
        if name in tree.get(section, {}):
            tree[section][name] = ml_collections.FieldReference(tree[section][name],
                                                                field_type=object)
    return ml_collections.ConfigDict(tree)


def upgrade_flat(fields: dict) -> dict:
    """A flat config ({'model.threshold': 0.15, ...}, as results store it) with today's names
    and the fields added since (`ADDED`, `ADDED_SECTIONS`) filled in where its section is
    there."""
    out = {RENAMED.get(k, k): v for k, v in fields.items()}
    sections = {k.split(".", 1)[0] for k in out}
    for dotted, value in ADDED.items():
        if dotted.split(".", 1)[0] in sections:
            out.setdefault(dotted, value)
    for section in ADDED_SECTIONS:
        if "model" in sections and section not in sections:
            out.update({f"{section}.{k}": v for k, v in _added_section(section).items()})
    return out


def renamed_override(dotted: str) -> str:
    """Today's name of a 0.2 field named on the command line ('model.threshold' ->
    'denoise.ratio'), or '' if it was not renamed."""
    return RENAMED.get(dotted, "")
