"""The architecture registry and `build_model`: shapes, names, saving, weights files, offline."""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from skincli.errors import SkinError
from skincli.models import build_model, get_arch, gradcam_model, list_archs
from skincli.models.registry import arch_table, fold_bgr_into_first_conv

EXPECTED = {"tiny", "efficientnet", "efficientnet_lite0", "efficientnet_lite1",
            "efficientnet_lite2", "efficientnetb0", "efficientnetb1", "efficientnetb2",
            "efficientnetb3", "resnet50", "vgg16", "mobilenetv2", "densenet121"}


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def test_registry_lists_every_arch_with_table_data() -> None:
    archs = list_archs()
    assert {a.name for a in archs} == EXPECTED
    for a in archs:
        assert a.input_size >= 32
        assert a.params_millions > 0
        assert a.family in {"efficientnet_lite", "keras_applications", "tiny"}
        assert a.weights_source
    assert get_arch("efficientnet").input_size == 224
    assert get_arch("efficientnet_lite1").input_size == 240
    assert get_arch("EfficientNet-Lite2").input_size == 260
    assert get_arch("tiny").weights_available()
    assert get_arch("efficientnet").weights_available()  # the lite0 package is a dependency
    rows = arch_table()
    assert [r["name"] for r in rows] == [a.name for a in archs]


def test_unknown_arch_suggests_closest_and_list_command() -> None:
    with pytest.raises(SkinError) as info:
        get_arch("efficentnet_lite1")
    msg = str(info.value)
    assert "efficentnet_lite1" in msg and "efficientnet_lite1" in msg
    assert "skin train --list-archs" in msg
    assert "\n" not in msg


def test_keras_weights_available_reads_the_keras_cache(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    spec = get_arch("resnet50")
    assert not spec.weights_available()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5").write_bytes(b"x")
    assert spec.weights_available()


def test_tiny_model_contract() -> None:
    built = build_model("tiny", num_classes=3, weights="none")
    model = built.model
    assert built.input_size == 64
    assert tuple(model.input_shape) == (None, 64, 64, 3)
    assert tuple(model.output_shape) == (None, 3)
    assert model.get_layer("backbone") is built.backbone
    assert model.get_layer("head_dropout").rate == pytest.approx(0.2)
    logits_layer = model.get_layer("logits")
    assert logits_layer.activation.__name__ == "linear"
    assert 1_000 < model.count_params() < 20_000
    out = model.predict(_images(4, 64), verbose=0)
    assert out.shape == (4, 3)
    # logits, not probabilities: rows need not sum to 1
    assert not np.allclose(out.sum(axis=1), 1.0)
    assert built.preprocessing["input"].startswith("RGB")


def test_seed_makes_initial_weights_reproducible() -> None:
    a = build_model("tiny", 2, weights="none", seed=7).model.get_weights()
    b = build_model("tiny", 2, weights="none", seed=7).model.get_weights()
    c = build_model("tiny", 2, weights="none", seed=8).model.get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("arch,size", [("tiny", 64), ("efficientnet", 64)])
def test_save_and_load_without_custom_objects(arch: str, size: int, tmp_path: Path) -> None:
    import keras

    built = build_model(arch, 4, weights="none", input_size=size)
    x = _images(2, size)
    before = built.model.predict(x, verbose=0)
    path = tmp_path / "m.keras"
    built.model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects, safe_mode on
    np.testing.assert_allclose(loaded.predict(x, verbose=0), before, rtol=1e-5, atol=1e-5)
    assert loaded.get_layer("backbone").count_params() == built.backbone.count_params()


def test_lite_at_260_and_lite2_native_size() -> None:
    built = build_model("efficientnet", 2, weights="none", input_size=260)
    assert built.model(_images(1, 260)).shape == (1, 2)
    lite2 = build_model("efficientnet_lite2", 2, weights="none")
    assert lite2.input_size == 260
    assert lite2.model(_images(1, 260)).shape == (1, 2)


def test_imagenet_lite_backbone_differs_from_random(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIN_CACHE_DIR", str(tmp_path))
    pre = build_model("efficientnet", 2, weights="imagenet", input_size=64)
    rnd = build_model("efficientnet", 2, weights="none", input_size=64)
    a = pre.backbone.get_layer("stem_conv").get_weights()[0]
    b = rnd.backbone.get_layer("stem_conv").get_weights()[0]
    assert a.shape == b.shape == (3, 3, 3, 32)
    assert not np.allclose(a, b)
    assert pre.preprocessing["weights"] == "imagenet"


def test_weights_file_whole_model_then_backbone_only(tmp_path: Path) -> None:
    src = build_model("tiny", 3, weights="none", seed=1)
    whole = tmp_path / "w.weights.h5"
    src.model.save_weights(whole)
    same = build_model("tiny", 3, weights=str(whole), seed=2)
    assert same.preprocessing["weights_loaded_into"] == "model"
    for x, y in zip(src.model.get_weights(), same.model.get_weights()):
        np.testing.assert_array_equal(x, y)
    # Different class count: only the backbone can be reused; the new head stays fresh.
    other = build_model("tiny", 5, weights=str(whole), seed=2)
    assert other.preprocessing["weights_loaded_into"] == "backbone"
    for x, y in zip(src.backbone.get_weights(), other.backbone.get_weights()):
        np.testing.assert_array_equal(x, y)
    # A .keras file works the same way.
    keras_file = tmp_path / "m.keras"
    src.model.save(keras_file)
    again = build_model("tiny", 5, weights=str(keras_file))
    assert again.preprocessing["weights_loaded_into"] == "backbone"
    np.testing.assert_array_equal(src.backbone.get_weights()[0], again.backbone.get_weights()[0])


def test_weights_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SkinError, match="does not exist"):
        build_model("tiny", 2, weights=str(tmp_path / "nope.weights.h5"))
    wrong = tmp_path / "lite.weights.h5"
    build_model("efficientnet", 2, weights="none", input_size=64).model.save_weights(wrong)
    with pytest.raises(SkinError, match="do not fit tiny"):
        build_model("tiny", 2, weights=str(wrong))
    bad = tmp_path / "x.bin"
    bad.write_bytes(b"\0")
    with pytest.raises(SkinError, match="Unsupported weights file"):
        build_model("tiny", 2, weights=str(bad))
    text = tmp_path / "notes.keras"
    text.write_text("not a model")
    # Keras itself calls such a file "not found", which sends people looking for the wrong thing.
    with pytest.raises(SkinError, match="is not a Keras model file"):
        build_model("tiny", 2, weights=str(text))


def test_bad_arguments_are_clear() -> None:
    with pytest.raises(SkinError, match="num_classes"):
        build_model("tiny", 1, weights="none")
    with pytest.raises(SkinError, match="too small"):
        build_model("tiny", 2, weights="none", input_size=8)
    with pytest.raises(SkinError, match="Dropout"):
        build_model("tiny", 2, weights="none", dropout=1.5)


def test_offline_keras_download_is_one_clear_error(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import keras.src.backend.config as kconfig
    import keras.src.utils.file_utils as file_utils

    # An empty Keras cache and a network that refuses every download.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(kconfig, "_KERAS_DIR", str(tmp_path))

    def no_network(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "urlretrieve", no_network)
    assert not get_arch("vgg16").weights_available(32)
    with pytest.raises(SkinError) as info:
        build_model("vgg16", 2, weights="imagenet", input_size=32)
    msg = str(info.value)
    assert "vgg16" in msg
    for alt in ("efficientnet", "efficientnet_lite1", "efficientnet_lite2", "--weights none"):
        assert alt in msg
    assert "\n" not in msg


@pytest.mark.parametrize("arch,mode", [("mobilenetv2", "tf"), ("densenet121", "torch")])
def test_preprocessing_matches_keras(arch: str, mode: str) -> None:
    import keras

    from skincli.models.registry import _preprocess_layers

    layers, _ = _preprocess_layers(mode)
    x = _images(2, 8)
    ours = np.asarray(layers[0](x))
    module = keras.applications.mobilenet_v2 if arch == "mobilenetv2" else \
        keras.applications.densenet
    ref = np.asarray(module.preprocess_input(x.copy()))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("arch,ctor", [("vgg16", "VGG16"), ("resnet50", "ResNet50")])
def test_caffe_bgr_fold_matches_keras_preprocess_input(arch: str, ctor: str) -> None:
    """Mean subtraction in RGB + flipped first conv == keras' BGR preprocess_input + original."""
    import keras

    built = build_model(arch, 2, weights="none", input_size=32)
    ref = getattr(keras.applications, ctor)(include_top=False, weights=None,
                                            input_shape=(32, 32, 3), pooling="avg")
    ref.set_weights(built.backbone.get_weights())  # the "checkpoint" (expects BGR)
    fold_bgr_into_first_conv(built.backbone, ctor)  # what build_model does after loading it
    x = _images(2, 32)
    pre = built.model.get_layer("preprocess")
    ours = np.asarray(built.backbone(pre(x)))
    module = keras.applications.vgg16 if arch == "vgg16" else keras.applications.resnet50
    theirs = np.asarray(ref(module.preprocess_input(x.copy())))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-3)


def test_gradcam_model_from_built_and_reloaded(tmp_path: Path) -> None:
    import keras

    built = build_model("tiny", 3, weights="none")
    cam = gradcam_model(built.model)
    x = _images(2, 64)
    fmap, logits = cam(x)
    assert fmap.shape == (2, 8, 8, 32)
    np.testing.assert_allclose(np.asarray(logits), built.model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)
    path = tmp_path / "m.keras"
    built.model.save(path)
    fmap2, _ = gradcam_model(keras.models.load_model(path))(x)
    np.testing.assert_allclose(np.asarray(fmap2), np.asarray(fmap), rtol=1e-5, atol=1e-5)
