"""Fitted models on disk (orbax-checkpoint): the model's arrays (`fitted.to_arrays()`: memory bank
and soft weights, both banks of SoftPatch+, PaDiM's Gaussians, FYD's trained variables), the
resolved config and a reference to the backbone (name, taps, weights file and its hash).

Each category's folder is an `ocp.CheckpointManager` keeping the latest step: a save writes a new
step beside the old one and orbax commits it atomically, so an interrupted save leaves the
previous model loadable. Folders written before the manager (the checkpoint itself at the path,
or its `.old` twin from an interrupted swap) still load; a config stored by 0.2 is upgraded.
"""
import json
import os
from typing import Any, Dict, List, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from softpatch_jax.files import atomic_path, file_sha256
from softpatch_jax.upgrade import upgrade


def _manager(path: str, create: bool) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(path, item_names=("bank", "meta"),
                                 options=ocp.CheckpointManagerOptions(max_to_keep=1,
                                                                      create=create))


def save_model(path: str, arrays: Dict[str, np.ndarray], config: dict,
               grid: Tuple[int, int]) -> None:
    """Saves one category's fitted model (`fitted.to_arrays()`) to `path`, replacing an older
    one."""
    weights = config["backbone"]["weights"]
    meta = {"config": config, "grid": list(grid),
            "weights_sha256": file_sha256(weights) if weights not in ("", "random")
            else weights}
    path = os.path.abspath(path)
    if _is_legacy(path):  # a pre-manager checkpoint in the way: the new one replaces it
        import shutil

        shutil.rmtree(path)
    with _manager(path, create=True) as mngr:
        step = (mngr.latest_step() or 0) + 1
        mngr.save(step, args=ocp.args.Composite(
            bank=ocp.args.StandardSave(jax.tree.map(np.asarray, arrays)),
            meta=ocp.args.JsonSave(meta)))
        mngr.wait_until_finished()


def _is_legacy(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "bank"))


def load_model(path: str) -> Tuple[Dict[str, np.ndarray], dict]:
    """-> (the fitted arrays, metadata with 'config' and 'grid')."""
    path = os.path.abspath(path)
    args = ocp.args.Composite(bank=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
    if not os.path.isdir(path) and _is_legacy(f"{path}.old"):
        path = f"{path}.old"  # a pre-manager save died between its two renames
    step = None
    if os.path.isdir(path) and not _is_legacy(path):
        with _manager(path, create=False) as mngr:
            step = mngr.latest_step()
            if step is not None:
                restored = mngr.restore(step, args=args)
    if step is None:
        if not _is_legacy(path):
            raise FileNotFoundError(f"no fitted model at {path!r}; run the fit first "
                                    "(python -m softpatch_jax.main --config ... --workdir DIR)")
        restored = ocp.Checkpointer(ocp.CompositeCheckpointHandler()).restore(path, args=args)
    meta = dict(restored["meta"], config=upgrade(restored["meta"]["config"]).to_dict())  # 0.2's too
    weights = meta["config"]["backbone"]["weights"]
    if weights not in ("", "random") and os.path.isfile(weights):
        if file_sha256(weights) != meta["weights_sha256"]:
            raise ValueError(f"backbone weights {weights!r} changed since the model was fitted; "
                             "refit, or restore the original weights file")
    return jax.tree.map(np.asarray, restored["bank"]), meta


class TrainingCheckpoints:
    """A training run's resumable state in `folder` (FYD's and CFLOW's): orbax steps under
    `checkpoints/` (the latest two kept) and the loss log `log.json`, written after each save so
    the log never runs ahead of the state it describes."""

    def __init__(self, folder: str):
        self.log_path = os.path.join(folder, "log.json")
        self.manager = ocp.CheckpointManager(
            os.path.join(folder, "checkpoints"),
            options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))

    def resume(self, state: Any) -> Tuple[Any, List[Dict], bool]:
        """-> (the latest saved state, else `state`; the log as saved; whether it resumed).
        `state` gives the tree's structure."""
        log = json.load(open(self.log_path)) if os.path.isfile(self.log_path) else []
        step = self.manager.latest_step()
        if step is None:
            return state, log, False
        return self.manager.restore(step, args=ocp.args.StandardRestore(state)), log, True

    def save(self, step: int, state: Any, log: List[Dict]) -> None:
        self.manager.save(step, args=ocp.args.StandardSave(state))
        self.manager.wait_until_finished()
        with atomic_path(self.log_path) as tmp, open(tmp, "w") as fh:
            json.dump(log, fh, indent=1)

    def close(self) -> None:
        self.manager.close()
