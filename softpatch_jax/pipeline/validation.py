"""Everything that can be checked before any compute, with one line that names the field or path
and the fix: the config (one check per section, then the method's own), the workdir, and each
category's files (readable regular files, masks present and of their image's size).
"""
import difflib
import logging
import math
import os

from softpatch_jax import data, defaults, methods, shapes, upgrade
from softpatch_jax.data import noise
from softpatch_jax.data.mvtec import IMAGE_EXTS
from softpatch_jax.features import backbones
from softpatch_jax.settings import comma_list


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def config_schema(config):
    """The fields a config may set: softpatch_jax/defaults.py (with the sweep section when
    `config` has one) and every registered method's `config_fields`."""
    schema = defaults.get_config()
    if "sweep" in config:
        schema.sweep = defaults.sweep_section()
    for name in methods.names():
        for section, fields in methods.get(name).config_fields.items():
            if section not in schema:
                schema[section] = {}
            schema[section].update(fields)
    return schema


def _closest_anywhere(dotted: str, schema) -> str:
    """The field of any section closest to `dotted` (a 0.2 name counts as its new one), or ''."""
    leaves = [f"{s}.{k}" for s in schema.keys() if hasattr(schema[s], "keys")
              for k in schema[s].keys()]
    names = {**{leaf: leaf for leaf in leaves}, **upgrade.RENAMED}
    close = difflib.get_close_matches(dotted, list(names), n=1, cutoff=0.8)
    return names[close[0]] if close else ""


def check_known_fields(config, schema=None, prefix: str = "", root=None) -> None:
    """Every field `config` sets exists in `schema` (default: `config_schema`): a misspelt one,
    set in a config file or on the command line, is one line naming it and the closest real
    field (in its section, else in any: a knob set in the wrong section). Fields the config
    lacks are not checked (the code reads their defaults)."""
    schema = config_schema(config) if schema is None else schema
    root = schema if root is None else root
    known = list(schema.keys())
    for key in config.keys():
        where = f"{prefix}{key}"
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            elsewhere = "" if close else _closest_anywhere(where, root)
            fields = (f"did you mean {prefix}{close[0]}?" if close else
                      f"did you mean {elsewhere}?" if elsewhere else
                      f"the fields of {prefix[:-1] or 'the config'}: {', '.join(sorted(known))}")
            raise ValueError(f"config field {where} does not exist; {fields} "
                             "(softpatch_jax/defaults.py says what each field does)")
        value, expected = config[key], schema[key]
        if hasattr(value, "keys") and hasattr(expected, "keys"):
            check_known_fields(value, expected, f"{where}.", root)
        elif hasattr(value, "keys") != hasattr(expected, "keys"):
            kind = "a section" if hasattr(expected, "keys") else "a value"
            raise ValueError(f"config field {where} must be {kind}, as in "
                             "softpatch_jax/defaults.py")


def check_data(d) -> None:
    _require(d.name in data.names(), f"data.name={d.name!r} is unknown; choose one of "
             f"{', '.join(data.names())}")
    _require(d.source in ("folder", "tfds"),
             f"data.source={d.source!r} is unknown; choose folder or tfds")
    _require(d.batch_size >= 1, f"data.batch_size={d.batch_size} must be at least 1")
    _require(d.resize >= 0, f"data.resize={d.resize} must be >= 0 (0 = fit the whole image)")
    for field in ("image_size", "tile"):
        value = d[field]
        if field == "tile" and value == 0:
            continue
        try:
            ok = min(shapes.hw(value)) >= 1
        except ValueError:
            ok = False
        _require(ok, f"data.{field}={value!r} must be N or (height, width) of at least 1, e.g. "
                 f"--config.data.{field}=224 or =640,256"
                 + (" (0 = no tiling)" if field == "tile" else ""))
    height, width = shapes.hw(d.image_size)
    _require(d.resize == 0 or min(height, width) <= d.resize,
             f"data.image_size={shapes.describe(d.image_size)} exceeds data.resize={d.resize}; "
             "the centre crop must fit the resized image (or set data.resize=0 to fit the "
             "whole image into data.image_size)")
    shapes.tiles(d.image_size, d.tile)  # the tiles must cover the canvas
    _require(d.max_train >= 0, f"data.max_train={d.max_train} must be >= 0 (0 = all)")
    _require(d.max_test == 0 or d.max_test >= 2, f"data.max_test={d.max_test} must be 0 (all) "
             "or at least 2 (a normal and an anomalous image)")
    _require(0.0 < d.train_fraction < 1.0,
             f"data.train_fraction={d.train_fraction} must lie in (0, 1)")


def noise_list_file(spec: str) -> str:
    """The list file noise.files names, or '' when it is a comma list of sample names: a single
    entry that is not an image name is a list file, and must exist."""
    items = comma_list(spec)
    if len(items) != 1 or items[0].lower().endswith(IMAGE_EXTS):
        return ""
    path = items[0]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"noise.files={spec!r} is neither a file nor a list of image "
                                "names; give the path of a text file with one test image name "
                                "per line, or a comma list like test/bent_lead/002.png")
    return path


def check_noise(n) -> None:
    _require(math.isfinite(n.ratio) and n.ratio >= 0, f"noise.ratio={n.ratio} must be >= 0")
    noise.resolve_mode(n.mode, n.overlap)
    _require(n.fold >= 0, f"noise.fold={n.fold} must be >= 0")
    noise_list_file(n.files)


def check_backbone(b) -> None:
    backbones.check_weights(b.name, b.weights)


def check_runtime(r) -> None:
    _require(r.memory_budget_mb > 0, f"runtime.memory_budget_mb={r.memory_budget_mb} must be > 0")
    cache = r.compilation_cache
    _require(isinstance(cache, bool), f"runtime.compilation_cache={cache!r} must be True or False")


def check_config(config) -> methods.Method:
    """Checks every section of a run config -> the method it selects."""
    check_known_fields(config)
    check_data(config.data)
    check_noise(config.noise)
    check_backbone(config.backbone)
    check_runtime(config.runtime)
    from softpatch_jax.pipeline import decisions

    decisions.Settings.from_config(config)  # audit.* and threshold.*
    from softpatch_jax.pipeline import prefilter

    first = prefilter.options(config)
    if first.method:
        methods.from_config(prefilter.first_config(config))  # its own fields, checked
    return methods.from_config(config)


def check_workdir(workdir: str) -> None:
    """The workdir is (or can be made) a writable folder; nothing is created here."""
    if not workdir:
        raise ValueError("--workdir is empty; give the folder for the run's files")
    path = os.path.abspath(workdir)
    probe = path
    while not os.path.lexists(probe):  # the deepest part that exists must be a writable folder
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        what = "--workdir" if probe == path else f"{probe!r} (a parent of --workdir)"
        raise ValueError(f"{what} is a file, not a folder; choose another --workdir")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write to {probe!r}; choose a writable --workdir")


def check_split(split: noise.NoisySplit, category: str) -> None:
    """Warns, once per category, about the files left out because they cannot be read (the
    images were checked when the split was prepared: evaluate.readable_category) and when the
    test set has a single class."""
    if split.left_out:
        shown = "; ".join(f"{name} ({why})" for name, why in split.left_out[:3])
        logging.warning("category %s: %d file(s) cannot be read and are left out (listed in "
                        "unreadable.txt): %s%s", category, len(split.left_out), shown,
                        "; ..." if len(split.left_out) > 3 else "")
    note = single_class_note(split)
    if note:
        logging.warning("category %s: %s", category, note)


def single_class_note(split: noise.NoisySplit) -> str:
    labels = {s.label for s in split.test}
    if len(labels) == 2:
        return ""
    kind = "anomalous" if labels == {1} else "normal"
    return (f"the test set has only {kind} images, so image AUROC and F1 are undefined (null); "
            "add test images of the other class")
