"""Colour constancy inside the model: the layer, saving, conversion, and a trained run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from skincli.errors import SkinError
from skincli.models import build_model
from skincli.models.colour import load_keras_model, shades_of_gray_layer, shades_of_gray_np
from tests.test_train import _cfg, make_split_files


def _cast_images(n: int = 3, size: int = 64) -> np.ndarray:
    """Random images under a strong warm colour cast (red light, little blue)."""
    rng = np.random.default_rng(0)
    base = rng.uniform(20, 230, (n, size, size, 3)).astype(np.float32)
    return np.clip(base * np.array([1.0, 0.75, 0.45], np.float32), 0, 255)


def _minkowski(image: np.ndarray, p: float = 6.0) -> np.ndarray:
    return np.power(np.mean(np.power(image / 255.0, p), axis=(0, 1)), 1.0 / p)


def test_layer_matches_reference_and_removes_the_cast() -> None:
    images = _cast_images()
    out = np.asarray(shades_of_gray_layer()(images))
    ref = np.stack([shades_of_gray_np(im) for im in images])
    assert np.abs(out - ref).max() < 1e-3
    before, after = _minkowski(images[0]), _minkowski(out[0])
    # The cast: red's illuminant ~2x blue's before; after, the channels are within a few %
    # (clipping at 255 keeps them from being exactly equal).
    assert before[0] / before[2] > 1.8
    assert after.max() / after.min() < 1.1


def test_black_image_stays_finite() -> None:
    out = np.asarray(shades_of_gray_layer()(np.zeros((1, 16, 16, 3), np.float32)))
    assert np.isfinite(out).all() and out.max() == 0


def test_model_saves_and_reloads_with_the_layer(tmp_path: Path) -> None:
    built = build_model("tiny", 3, weights="none", colour_constancy="shades-of-gray")
    assert built.model.layers[1].name == "colour_constancy"
    assert "shades-of-gray" in built.preprocessing["colour_constancy"]
    path = tmp_path / "m.keras"
    built.model.save(path)
    images = _cast_images()
    again = load_keras_model(path)
    assert np.allclose(np.asarray(again(images)), np.asarray(built.model(images)), atol=1e-5)


def test_unknown_method_is_one_line() -> None:
    from skincli.train import resolve

    with pytest.raises(SkinError, match="colour-constancy"):
        resolve({"colour_constancy": "grey-world"})
    with pytest.raises(SkinError, match="Unknown colour constancy"):
        build_model("tiny", 3, weights="none", colour_constancy="retinex")


def test_litert_conversion_keeps_the_layer() -> None:
    from ai_edge_litert.interpreter import Interpreter

    from skincli.engines.convert import convert_model

    built = build_model("tiny", 3, weights="none", colour_constancy="shades-of-gray")
    flat = convert_model(built.model)
    interp = Interpreter(model_content=flat)
    inp = interp.get_input_details()[0]
    images = _cast_images(1)
    interp.resize_tensor_input(inp["index"], images.shape)
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], images)
    interp.invoke()
    outs = [interp.get_tensor(o["index"]) for o in interp.get_output_details()]
    logits = next(o for o in outs if o.shape[-1] == 3)
    assert np.allclose(logits, np.asarray(built.model(images)), atol=1e-3)


def test_trained_run_applies_it_everywhere(tmp_path: Path) -> None:
    """A run trained with it answers through the Predictor's LiteRT engine as Keras does."""
    from skincli.predictor import Predictor
    from skincli.train import resolve, train

    split = make_split_files(tmp_path)
    run = train(resolve(_cfg(split, colour_constancy="shades-of-gray", name="cc")))
    model = load_keras_model(run / "model.keras")
    assert "colour_constancy" in [la.name for la in model.layers]
    predictor = Predictor.from_run(run)
    size = predictor.input_size
    images = _cast_images(2, size)
    ref = np.asarray(model(images))
    assert predictor.engine_name == "litert"
    assert np.allclose(predictor.logits(images), ref, atol=1e-2)
