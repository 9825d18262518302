"""Checkpoints: save/load round trip, predictions from the loaded bank, atomic replacement."""
import numpy as np
import pytest

from softpatch_jax.io import checkpoint
from softpatch_jax import softpatch


def _bank(seed):
    rng = np.random.default_rng(seed)
    return {"features": rng.normal(size=(20, 8)).astype(np.float32),
            "weights": rng.random(20).astype(np.float32) + 1}


CONFIG = {"model": {"weights": "random", "backbone": "resnet18"}, "seed": 0}


def test_round_trip_and_same_predictions(tmp_path):
    bank = _bank(0)
    checkpoint.save_model(str(tmp_path / "m"), bank, CONFIG, (2, 2))
    loaded, meta = checkpoint.load_model(str(tmp_path / "m"))
    assert set(loaded) == {"features", "weights"}
    for k in bank:
        np.testing.assert_array_equal(loaded[k], bank[k])
    assert meta["config"] == CONFIG and meta["grid"] == [2, 2]
    test = np.random.default_rng(1).normal(size=(3, 4, 8)).astype(np.float32)
    as_bank = lambda a: softpatch.MemoryBank(a["features"], a["weights"])  # noqa: E731
    np.testing.assert_array_equal(softpatch.predict(test, as_bank(loaded)),
                                  softpatch.predict(test, as_bank(bank)))


def test_interrupted_save_keeps_the_previous_model(tmp_path):
    path = str(tmp_path / "m")
    checkpoint.save_model(path, _bank(0), CONFIG, (2, 2))
    bad = dict(CONFIG, broken=object())  # not JSON: the save fails part-way
    with pytest.raises(Exception):
        checkpoint.save_model(path, _bank(1), bad, (2, 2))
    loaded, _ = checkpoint.load_model(path)
    np.testing.assert_array_equal(loaded["features"], _bank(0)["features"])


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no fitted model"):
        checkpoint.load_model(str(tmp_path / "nothing"))


def test_death_between_the_renames_still_loads(tmp_path):
    path = str(tmp_path / "m")
    checkpoint.save_model(path, _bank(0), CONFIG, (2, 2))
    import os
    os.rename(path, path + ".old")  # the state a save leaves if killed mid-swap
    loaded, _ = checkpoint.load_model(path)
    np.testing.assert_array_equal(loaded["features"], _bank(0)["features"])
    checkpoint.save_model(path, _bank(2), CONFIG, (2, 2))
    loaded, _ = checkpoint.load_model(path)
    np.testing.assert_array_equal(loaded["features"], _bank(2)["features"])
    assert not os.path.exists(path + ".old")
