"""Fitted models on disk (orbax-checkpoint): the model's arrays (memory bank and soft weights, both
banks of SoftPatch+, PaDiM's Gaussians, FYD's trained variables), the resolved config and a
reference to the backbone (name, taps, weights file and its hash).

A save writes a complete new checkpoint beside the old one (orbax itself commits atomically), then
swaps folders by renames; `load_model` falls back on the previous one if a save died mid-swap.
So an interrupted save never leaves a checkpoint that loads wrong: the old or the new one loads.
"""
import os
import shutil
from typing import Dict, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from softpatch_jax.backbones import convert


def checkpoint_dir(workdir: str, category: str) -> str:
    return os.path.abspath(os.path.join(workdir, "checkpoints", category))


def save_model(path: str, arrays: Dict[str, np.ndarray], config: dict,
               grid: Tuple[int, int]) -> None:
    """Saves one category's fitted model (the arrays of `methods.fit`) to `path`, replacing an
    older one."""
    weights = config["model"]["weights"]
    meta = {"config": config, "grid": list(grid),
            "weights_sha256": convert.file_sha256(weights) if weights not in ("", "random")
            else weights}
    path = os.path.abspath(path)
    tmp, old = f"{path}.tmp-{os.getpid()}", f"{path}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    try:
        ckptr.save(tmp, args=ocp.args.Composite(
            bank=ocp.args.StandardSave(jax.tree.map(np.asarray, arrays)),
            meta=ocp.args.JsonSave(meta)))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.isdir(path):
        shutil.rmtree(old, ignore_errors=True)
        os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def load_model(path: str) -> Tuple[Dict[str, np.ndarray], dict]:
    """-> (the fitted arrays, metadata with 'config' and 'grid')."""
    path = os.path.abspath(path)
    if not os.path.isdir(path) and os.path.isdir(f"{path}.old"):
        path = f"{path}.old"  # a save died between its two renames
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no fitted model at {path!r}; run the fit first "
                                "(python -m softpatch_jax.main --config ... --workdir DIR)")
    ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    restored = ckptr.restore(path, args=ocp.args.Composite(
        bank=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    meta = restored["meta"]
    weights = meta["config"]["model"]["weights"]
    if weights not in ("", "random") and os.path.isfile(weights):
        if convert.file_sha256(weights) != meta["weights_sha256"]:
            raise ValueError(f"backbone weights {weights!r} changed since the model was fitted; "
                             "refit, or restore the original weights file")
    return jax.tree.map(np.asarray, restored["bank"]), meta
