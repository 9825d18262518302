"""State-dict reading without torch, against torch.load where torch is importable."""
import collections
import json
import struct

import numpy as np
import pytest

from softpatch_jax.features.backbones import packaged_weights
from softpatch_jax.features.backbones.state_dict import load_state_dict


def test_packaged_legacy_file_reads():
    sd = load_state_dict(packaged_weights("efficientnet_lite0"))
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_blocks.10._project_conv.weight"].shape == (112, 672, 1, 1)
    assert sd["_fc.weight"].shape == (1000, 1280)
    assert all(np.isfinite(v).all() for v in sd.values() if v.dtype.kind == "f")


def test_safetensors_round_trip(tmp_path):
    tensors = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
               "b.bias": np.array([1.5, -2.0], np.float64)}
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        raw = arr.tobytes()
        header[name] = {"dtype": {"float32": "F32", "float64": "F64"}[arr.dtype.name],
                        "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode()
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    sd = load_state_dict(str(path))
    for k, v in tensors.items():
        np.testing.assert_array_equal(sd[k], v)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="backbone.weights"):
        load_state_dict(str(tmp_path / "nope.pth"))


@pytest.mark.parametrize("zipped", [True, False])
def test_matches_torch_load(tmp_path, zipped):
    torch = pytest.importorskip("torch", reason="torch not installed: no reference writer")
    g = torch.Generator().manual_seed(0)
    sd = collections.OrderedDict(
        conv=torch.randn(4, 3, 3, 3, generator=g),
        transposed=torch.randn(5, 7, generator=g).t(),  # non-contiguous view
        view=torch.randn(10, generator=g)[2:8],         # storage offset
        count=torch.tensor(7),
        half=torch.randn(3, generator=g).half())
    path = tmp_path / "w.pth"
    torch.save(sd, str(path), _use_new_zipfile_serialization=zipped)
    ours = load_state_dict(str(path))
    for k, v in sd.items():
        np.testing.assert_array_equal(ours[k], v.numpy())


def test_unreadable_weights_are_a_clear_error(tmp_path):
    bad = tmp_path / "model.pth"
    bad.write_bytes(b"\x80\x02garbage that is no pickle")
    with pytest.raises(ValueError, match="cannot read weights .*state_dict"):
        load_state_dict(str(bad))
