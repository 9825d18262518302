"""A downloaded weights file never runs code when it is read: a `__reduce__` payload put in each
pickle of both PyTorch formats (legacy: magic number, protocol, sys info, state dict, storage-key
list; zip: data.pkl) is refused with the usual one-line error, and the payload never runs.

The legacy files are the packaged weights with one of their five pickles swapped for a payload
(the pickles are delimited with pickletools, which reads opcodes without executing anything)."""
import io
import os
import pickle
import pickletools
import zipfile

import pytest

from softpatch_jax.features.backbones import check_weights, packaged_weights
from softpatch_jax.features.backbones.state_dict import check_file, load_state_dict

LEGACY_PICKLES = ("magic number", "protocol", "sys info", "state dict", "storage keys")


class Payload:
    """Unpickling this runs `exec`, which creates the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def _payload_bytes(marker, nested: bool) -> bytes:
    obj = {"conv.weight": Payload(marker)} if nested else Payload(marker)
    return pickle.dumps(obj, protocol=2)


def _legacy_segments(data: bytes):
    """The byte ranges of the legacy file's five pickles, then the rest (raw storages)."""
    f, bounds = io.BytesIO(data), [0]
    for _ in LEGACY_PICKLES:
        for _op in pickletools.genops(f):  # stops after the STOP opcode
            pass
        bounds.append(f.tell())
    return [data[a:b] for a, b in zip(bounds, bounds[1:])], data[bounds[-1]:]


@pytest.fixture(scope="module")
def legacy_bytes():
    with open(packaged_weights("efficientnet_lite0"), "rb") as f:
        return f.read()


def _assert_refused(path, marker):
    with pytest.raises(ValueError, match="not a readable PyTorch state dict") as e:
        load_state_dict(str(path))
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert not os.path.exists(marker), "the payload ran"


def test_payload_runs_when_unpickled_plainly(tmp_path):
    """The payload is live: a bare pickle.loads runs it (what the loader must never do)."""
    marker = str(tmp_path / "ran")
    pickle.loads(_payload_bytes(marker, nested=False))
    assert os.path.exists(marker)


def test_unchanged_legacy_file_still_reads(legacy_bytes, tmp_path):
    segments, rest = _legacy_segments(legacy_bytes)
    path = tmp_path / "w.pth"
    path.write_bytes(b"".join(segments) + rest)
    assert load_state_dict(str(path))["_conv_stem.weight"].shape == (32, 3, 3, 3)


@pytest.mark.parametrize("nested", [False, True], ids=["whole", "nested"])
@pytest.mark.parametrize("index", range(len(LEGACY_PICKLES)), ids=LEGACY_PICKLES)
def test_payload_in_each_legacy_pickle_never_runs(legacy_bytes, tmp_path, index, nested):
    segments, rest = _legacy_segments(legacy_bytes)
    marker = str(tmp_path / "ran")
    segments[index] = _payload_bytes(marker, nested)
    path = tmp_path / "w.pth"
    path.write_bytes(b"".join(segments) + rest)
    _assert_refused(path, marker)
    # The cheap check that runs before any compute does not run it either.
    try:
        check_file(str(path))
    except ValueError:
        pass
    assert not os.path.exists(marker)


@pytest.mark.parametrize("nested", [False, True], ids=["whole", "nested"])
def test_payload_in_zip_data_pkl_never_runs(tmp_path, nested):
    marker = str(tmp_path / "ran")
    path = tmp_path / "w.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", _payload_bytes(marker, nested))
        zf.writestr("archive/version", "3\n")
    _assert_refused(path, marker)


def test_payload_weights_refused_through_the_config_check(tmp_path):
    """The config check (before any compute) names backbone.weights and does not run the payload."""
    marker = str(tmp_path / "ran")
    path = tmp_path / "w.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", _payload_bytes(marker, nested=False))
    try:
        check_weights("efficientnet_lite0", str(path))
    except ValueError as e:
        assert "backbone.weights" in str(e)
    assert not os.path.exists(marker)
    _assert_refused(path, marker)
