"""What a result was computed from, stored with it so that a result is never reported for another
config or other data: the resolved config (minus the fields that cannot change a result), a
fingerprint of the category's files (each one's path, size and modification time, `Sample.stamp`)
and the results version (softpatch_jax.RESULTS_VERSION). A stored record is read with today's
field names (`upgrade.upgrade_flat`), so a 0.2 result of the same config is recognised.
"""
from typing import Dict, List, Sequence

import ml_collections

from softpatch_jax.files import fingerprint, unflatten
from softpatch_jax.upgrade import upgrade_flat
from softpatch_jax.version import RESULTS_VERSION

# Where files go and how the work is spread: never part of a result. (data.category selects
# which results to compute; each result is stored under its category's name.)
NON_RESULT_FIELDS = ("runtime.cache_dir", "runtime.compilation_cache", "runtime.distributed",
                     "sweep.overlays", "data.category")


def flatten(tree: dict, prefix: str = "") -> Dict[str, object]:
    """{'a': {'b': 1}} -> {'a.b': 1}; tuples as lists, as JSON stores them (so a stored
    (height, width) compares equal to the config's)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def result_config(config, drop: Sequence[str] = ()) -> Dict[str, object]:
    """The flat config fields a result depends on (`drop`: more fields to leave out)."""
    flat = flatten(config.to_dict() if hasattr(config, "to_dict") else config)
    return {k: v for k, v in flat.items()
            if k not in NON_RESULT_FIELDS and k not in drop}


def data_fingerprint(samples: Sequence) -> str:
    """Fingerprint of the samples' files (images and masks) and of their order."""
    return fingerprint({"samples": [s.stamp() for s in samples]})


# Fields whose `auto` reads the contamination estimate, and the estimate's version: a result of
# such a config is also a result of the estimate, so a stored one from another estimate is
# recomputed (estimate 2: the audit's count on a provisional fit, not the LOF patch maxima).
AUTO_ESTIMATE_FIELDS = ("denoise.ratio", "denoise.soft_weight", "softpatch_plus.cls_ratio",
                        "softpatch_plus.seg_ratio")
ESTIMATE_VERSION = "estimate-2"


def results_version(fields: Dict[str, object]) -> str:
    """RESULTS_VERSION, with the estimate's version where a field reads it (`auto`)."""
    if any(fields.get(k) == "auto" for k in AUTO_ESTIMATE_FIELDS):
        return f"{RESULTS_VERSION}+{ESTIMATE_VERSION}"
    return RESULTS_VERSION


def comparable_version(record: dict) -> str:
    """A stored record's results version as the points of one sweep compare it: RESULTS_VERSION
    where it is what today's code would record for its config (points may differ in whether
    they read the estimate), else what it says, marked."""
    version = record.get("version")
    today = results_version(upgrade_flat(record.get("config") or {}))
    return RESULTS_VERSION if version == today else f"{version} (today: {today})"


def record(config, samples: Sequence) -> dict:
    """The provenance stored with a result computed by `config` on `samples`."""
    fields = result_config(config)
    return {"config_fingerprint": fingerprint(fields), "data_fingerprint": data_fingerprint(samples),
            "version": results_version(fields), "config": fields}


def stored_config(record: dict, category: str = ""):
    """The config a stored record was computed from, as a ConfigDict with today's field names
    (less the fields that cannot change a result, NON_RESULT_FIELDS; `category` sets
    data.category)."""
    fields = upgrade_flat(record.get("config") or {})
    if category:
        fields = dict(fields, **{"data.category": category})
    return ml_collections.ConfigDict(unflatten(fields, "."))


def differences(stored: dict, current: dict, limit: int = 3) -> List[str]:
    """Readable differences between two records (empty when they agree); `stored` may be one
    written by 0.2 (its field names are upgraded)."""
    out = []
    if stored.get("version") != current.get("version"):
        out.append(f"results version {stored.get('version')} -> {current.get('version')}")
    a, b = upgrade_flat(stored.get("config") or {}), upgrade_flat(current.get("config") or {})
    fields = sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))
    out += [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in fields[:limit]]
    if len(fields) > limit:
        out.append(f"{len(fields) - limit} more fields")
    # Values equal in Python yet not in JSON (1 and 1.0): fingerprints of today's names (a 0.2
    # record's own fingerprint hashes its old names).
    if not out and fingerprint(a) != fingerprint(b):
        out.append("the config")
    if "data_fingerprint" in current and stored.get("data_fingerprint") != current[
            "data_fingerprint"]:
        out.append("the images or masks (added, removed or modified files)")
    return out
