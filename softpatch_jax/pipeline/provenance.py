"""What a result was computed from, stored with it so that a result is never reported for another
config or other data: the resolved config (minus the fields that cannot change a result), a
fingerprint of the category's files (each one's path, size and modification time, `Sample.stamp`)
and the results version (softpatch_jax.RESULTS_VERSION). A stored record is read with today's
field names (`upgrade.upgrade_flat`), so a 0.2 result of the same config is recognised.
"""
from typing import Dict, List, Sequence

from softpatch_jax.files import fingerprint
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


def record(config, samples: Sequence) -> dict:
    """The provenance stored with a result computed by `config` on `samples`."""
    fields = result_config(config)
    return {"config_fingerprint": fingerprint(fields), "data_fingerprint": data_fingerprint(samples),
            "version": RESULTS_VERSION, "config": fields}


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
