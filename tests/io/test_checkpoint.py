"""Checkpoints: save/load round trip, predictions from the loaded bank, atomic replacement, and
checkpoints written before the CheckpointManager (the old layout) still load."""
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from softpatch_jax.io import checkpoint
from softpatch_jax.upgrade import upgrade
from softpatch_jax.methods import patchcore
from softpatch_jax.ops import knn


def _bank(seed):
    rng = np.random.default_rng(seed)
    return {"features": rng.normal(size=(20, 8)).astype(np.float32),
            "weights": rng.random(20).astype(np.float32) + 1}


CONFIG = {"backbone": {"weights": "random", "name": "resnet18"},
          "model": {"method": "patchcore"}, "seed": 0}
CONFIG_0_2 = {"model": {"weights": "random", "backbone": "resnet18", "method": "patchcore"},
              "seed": 0}  # the same, as 0.2 stored it
# What a load gives back: the stored config in today's shape (fields added since filled in with
# what a config without them meant, e.g. no prefilter), its own values unchanged.
TODAY = upgrade(CONFIG).to_dict()
assert all(TODAY[s] == {**TODAY[s], **v} if isinstance(v, dict) else TODAY[s] == v
           for s, v in CONFIG.items())


def test_round_trip_and_same_predictions(tmp_path):
    bank = _bank(0)
    checkpoint.save_model(str(tmp_path / "m"), bank, CONFIG, (2, 2))
    loaded, meta = checkpoint.load_model(str(tmp_path / "m"))
    assert set(loaded) == {"features", "weights"}
    for k in bank:
        np.testing.assert_array_equal(loaded[k], bank[k])
    assert meta["config"] == TODAY and meta["grid"] == [2, 2]
    test = np.random.default_rng(1).normal(size=(3, 4, 8)).astype(np.float32)

    def scores(arrays):
        return patchcore.patch_scores(test, patchcore.MemoryBank.from_arrays(arrays),
                                      knn.BruteForce())

    np.testing.assert_array_equal(scores(loaded), scores(bank))


def test_interrupted_save_keeps_the_previous_model(tmp_path):
    path = str(tmp_path / "m")
    checkpoint.save_model(path, _bank(0), CONFIG, (2, 2))
    bad = dict(CONFIG, broken=object())  # not JSON: the save fails part-way
    with pytest.raises(Exception):
        checkpoint.save_model(path, _bank(1), bad, (2, 2))
    loaded, _ = checkpoint.load_model(path)
    np.testing.assert_array_equal(loaded["features"], _bank(0)["features"])
    checkpoint.save_model(path, _bank(2), CONFIG, (2, 2))  # and the next save replaces it
    loaded, _ = checkpoint.load_model(path)
    np.testing.assert_array_equal(loaded["features"], _bank(2)["features"])
    assert len([d for d in os.listdir(path) if d.isdigit()]) == 1  # only the latest is kept


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no fitted model"):
        checkpoint.load_model(str(tmp_path / "nothing"))


def _legacy_save(path, arrays, config, grid):
    """How checkpoints were written before the manager: one composite checkpoint at `path`."""
    ocp.Checkpointer(ocp.CompositeCheckpointHandler()).save(path, args=ocp.args.Composite(
        bank=ocp.args.StandardSave(arrays),
        meta=ocp.args.JsonSave({"config": config, "grid": list(grid),
                                "weights_sha256": "random"})))


def test_checkpoints_of_the_old_layout_still_load(tmp_path):
    """Written before the manager (and by 0.2: its config comes back in today's shape)."""
    path = str(tmp_path / "m")
    _legacy_save(path, _bank(0), CONFIG_0_2, (2, 2))
    loaded, meta = checkpoint.load_model(path)
    np.testing.assert_array_equal(loaded["features"], _bank(0)["features"])
    assert meta["grid"] == [2, 2] and meta["config"] == TODAY
    os.rename(path, path + ".old")  # the state an old save left if killed mid-swap
    loaded, _ = checkpoint.load_model(path)
    np.testing.assert_array_equal(loaded["features"], _bank(0)["features"])
    os.rename(path + ".old", path)
    checkpoint.save_model(path, _bank(2), CONFIG, (2, 2))  # a new save replaces the old layout
    loaded, _ = checkpoint.load_model(path)
    np.testing.assert_array_equal(loaded["features"], _bank(2)["features"])
