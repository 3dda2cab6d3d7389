"""Grad-CAM: it points at the informative region, and works for every registry architecture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers_run import build_model, make_run, quadrant_images, train_quadrant_model
from PIL import Image

from skincli.explain import GradCamExplainer, explain, overlay, save_overlay
from skincli.predictor import Predictor


@pytest.fixture(scope="module")
def quadrant_predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    model, _, _ = train_quadrant_model(input_size=32, n=240, epochs=12, seed=0)
    run = make_run(tmp_path_factory.mktemp("q"), classes=["plain", "patch"], model=model)
    return Predictor.from_run(run)  # explained after a save/load round trip, as in real use


def test_heatmap_peaks_in_the_quadrant_holding_the_signal(quadrant_predictor: Predictor) -> None:
    images, labels = quadrant_images(40, 32, seed=123)  # fresh images, not the training ones
    probs = quadrant_predictor.probabilities(images)
    assert (probs.argmax(1) == labels).mean() > 0.9  # the model did learn the task
    patch = images[labels == 1]
    cams = explain(quadrant_predictor, patch, class_index=1)
    in_quadrant = 0
    for cam in cams:
        y, x = np.unravel_index(np.argmax(cam.heatmap), cam.heatmap.shape)
        in_quadrant += int(y < 16 and x < 16)
        assert cam.heatmap.shape == (32, 32) and cam.class_name == "patch"
        # Most of the heat sits in the top-left quadrant, not just the maximum.
        assert cam.heatmap[:16, :16].sum() > cam.heatmap[16:, 16:].sum()
    assert in_quadrant >= 0.9 * len(cams)


def test_top_class_is_explained_by_default(quadrant_predictor: Predictor) -> None:
    images, _ = quadrant_images(6, 32, seed=7)
    cams = explain(quadrant_predictor, images)
    top = quadrant_predictor.probabilities(images).argmax(1)
    assert [c.class_index for c in cams] == list(top)
    assert all(0.0 <= c.heatmap.min() and c.heatmap.max() <= 1.0 for c in cams)


def test_overlay_and_png(tmp_path: Path) -> None:
    img = np.zeros((20, 30, 3), np.uint8) + 128
    heat = np.zeros((5, 5), np.float32)
    heat[0, 0] = 1.0
    out = overlay(img, heat)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert (out[0, 0] != img[0, 0]).any()  # coloured where the map is hot
    assert (out[-1, -1] == img[-1, -1]).all()  # the image itself where it is cold

    from skincli.explain import GradCam

    path = save_overlay(tmp_path / "x" / "cam.png", img,
                        GradCam(heat, 0, "a", 0.9, "conv"))
    with Image.open(path) as saved:
        assert saved.size == (64, 20)  # original | gap | overlay


def test_flat_model_without_backbone() -> None:
    import keras

    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(2, name="logits")(x))
    cams, logits = GradCamExplainer(model)(np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)))
    assert cams.shape == (2, 16, 16) and logits.shape == (2, 2)


# One architecture per family and preprocessing style runs in the fast suite; the larger
# keras.applications backbones (5-7 s each to build) run with the slow tests.
FAST_ARCHS = {"tiny", "efficientnet_lite0", "mobilenetv2", "resnet50", "vgg16"}


def _registry_archs() -> list[object]:
    try:
        from skincli.models.registry import arch_names
    except ImportError:
        return []
    return [a if a in FAST_ARCHS else pytest.param(a, marks=pytest.mark.slow)
            for a in arch_names()]


@pytest.mark.parametrize("arch", _registry_archs())
def test_every_registry_architecture(arch: str, tmp_path: Path) -> None:
    import keras

    from skincli.models.registry import build_model as registry_build

    size = 32
    built = registry_build(arch, 3, weights="none", input_size=size)
    path = tmp_path / "m.keras"
    built.model.save(path)
    model = keras.models.load_model(path, compile=False)
    explainer = GradCamExplainer(model)
    batch = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    cams, logits = explainer(batch, class_index=2)
    np.testing.assert_allclose(logits, np.asarray(model(batch)), rtol=1e-3, atol=1e-3)
    assert cams.ndim == 3 and cams.shape[0] == 2 and np.isfinite(cams).all()
    assert cams.max() <= 1.0


def test_helper_model_builds() -> None:
    assert build_model(2).name == "tiny"
