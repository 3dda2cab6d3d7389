"""`skin export`: a SavedModel whose signatures give the same probabilities as the API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_serve_support import CLASSES_A, image_bytes, make_runs
from typer.testing import CliRunner


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_runs(tmp_path_factory.mktemp("export"))


def test_export_matches_predictor(runs: Path, tmp_path: Path) -> None:
    import tensorflow as tf

    from skincli.export import export_saved_model
    from skincli.predictor import Predictor
    from skincli.runs import update_run_info

    update_run_info(runs / "alpha", temperature=1.7)  # calibration must travel with the model
    try:
        target = export_saved_model("alpha", tmp_path / "exported", runs)
        assert target == tmp_path / "exported" / "alpha" / "1"
        meta = json.loads((target / "assets.extra" / "skin.json").read_text())
        assert meta["run"]["classes"] == CLASSES_A
        loaded = tf.saved_model.load(str(target))
        assert {"serving_default", "predict_pixels"} <= set(loaded.signatures)
        predictor = Predictor.from_run("alpha", runs)
        # Sizes: the model's own (no resize), a shrink and an enlargement.
        images = [image_bytes((32, 32), seed=1), image_bytes((120, 90), "JPEG", seed=2),
                  image_bytes((20, 25), "BMP", seed=3)]
        out = loaded.signatures["serving_default"](image_bytes=tf.constant(images))
        pixels = np.stack([predictor.preprocess(b) for b in images])
        expected = predictor.probabilities(pixels)
        got = out["probabilities"].numpy()
        assert got.shape == (3, len(CLASSES_A))
        np.testing.assert_allclose(got, expected, atol=2e-3)
        labels = [x.decode() for x in out["label"].numpy()]
        assert labels == [CLASSES_A[i] for i in expected.argmax(axis=1)]
        # The pixel signature is the model plus calibration, exactly.
        exact = loaded.signatures["predict_pixels"](pixels=tf.constant(pixels))
        np.testing.assert_allclose(exact["probabilities"].numpy(), expected, atol=1e-5)
        np.testing.assert_allclose(exact["top_probability"].numpy(), expected.max(axis=1),
                                   atol=1e-5)
    finally:
        update_run_info(runs / "alpha", temperature=1.0)


def test_export_resizes_like_the_api(tmp_path: Path) -> None:
    """A model whose logits are the mean colour: any difference in decoding or resizing
    between the SavedModel and the API's Predictor shows up in the logits."""
    import keras
    import tensorflow as tf
    from helpers_run import make_run

    from skincli.export import export_saved_model
    from skincli.predictor import Predictor

    inp = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Conv2D(3, 1, use_bias=False, name="colour", trainable=False)(inp)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    out = keras.layers.Dense(3, name="logits")(x)
    model = keras.Model(inp, out)
    model.get_layer("colour").set_weights([np.eye(3, dtype=np.float32).reshape(1, 1, 3, 3)])
    model.get_layer("logits").set_weights([np.eye(3, dtype=np.float32), np.zeros(3, np.float32)])
    make_run(tmp_path, classes=["r", "g", "b"], name="meancolour", model=model)
    runs = tmp_path / "runs"
    target = export_saved_model("meancolour", tmp_path / "exported", runs)
    loaded = tf.saved_model.load(str(target))
    predictor = Predictor.from_run("meancolour", runs)
    images = [image_bytes((32, 32), seed=4), image_bytes((200, 150), seed=5),
              image_bytes((24, 20), "BMP", seed=6), image_bytes((64, 48), "JPEG", seed=7)]
    got = loaded.signatures["serving_default"](image_bytes=tf.constant(images))["logits"].numpy()
    expected = predictor.logits(np.stack([predictor.preprocess(b) for b in images]))
    assert expected.std() > 5  # the images really differ in colour
    np.testing.assert_allclose(got, expected, atol=1.0)  # within one grey level on average


def test_export_cli_versions_and_errors(runs: Path, tmp_path: Path) -> None:
    from skincli.cli import app

    runner = CliRunner()
    out = tmp_path / "models"
    args = ["export", "beta", "--runs-dir", str(runs), "--out", str(out)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert sorted(p.name for p in (out / "beta").iterdir()) == ["1", "2"]
    assert "tensorflow/serving" in second.output
    again = runner.invoke(app, [*args, "--version", "2"])
    assert again.exit_code == 1 and "already exists" in again.output
    missing = runner.invoke(app, ["export", "nope", "--runs-dir", str(runs), "--out", str(out)])
    assert missing.exit_code == 1 and "nope" in missing.output
    assert "Traceback" not in missing.output
    assert not [p for p in (out / "beta").iterdir() if p.name.startswith(".")]  # no leftovers
