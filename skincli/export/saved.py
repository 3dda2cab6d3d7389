"""`skin export --format savedmodel`: the run's model for TensorFlow Serving.

`--format savedmodel`: a TensorFlow SavedModel that TensorFlow Serving can serve.
Layout: `<out>/<run name>/<version>/` (TF Serving's model base path is `<out>/<run name>`).
Signatures:

- `serving_default`: `image_bytes` (string, [N]) = encoded JPEG/PNG/BMP/GIF files. Decoded to
  RGB, resized to the run's input size with antialiased bilinear filtering (as Pillow's
  BILINEAR does when shrinking), rounded to 0..255 like the uint8 images the API feeds.
- `predict_pixels`: `pixels` (float32, [N, S, S, 3], RGB 0..255) for clients that already
  resize the way `skin` does.

Both return `probabilities` (calibrated with the run's temperature, then re-weighted by the
decision rule chosen with `--decision`, see docs/decisions.md), `logits`, `label` and
`top_probability`; `assets.extra/skin.json` names the rule and its weights.
Differences to `skin serve`: EXIF orientation is not applied (send upright
images) and transparent pixels are not composited on white.

The app formats (tflite, tflite-int8, web) are in skincli.export.mobile and skincli.export.web.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from skincli.errors import SkinError
from skincli.fsutil import atomic_dir, check_writable
from skincli.models.colour import load_keras_model
from skincli.runs import (
    DEFAULT_RUNS_DIR,
    MODEL_FILE,
    check_model_file,
    load_run_info,
    model_load_error,
    resolve_run,
)

EXTRA_DIR = "assets.extra"  # TF Serving ignores it: the place for our metadata


def next_version(base: Path) -> int:
    """1 + the largest numeric version folder under base (TF Serving serves the largest)."""
    versions = [int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit()] \
        if base.is_dir() else []
    return max(versions, default=0) + 1


def export_saved_model(run: str | Path | None = None, out: str | Path = "exported",
                       runs_dir: str | Path = DEFAULT_RUNS_DIR,
                       version: int | None = None, decision: str = "balanced",
                       prevalence: str | Path | None = None) -> Path:
    """Write the SavedModel for a run; return the version folder.

    `decision`/`prevalence`: the decision rule built into the probabilities (its weights are
    fitted as `skin predict --decision` does, from run.json or the validation images).
    """
    from skincli.decision import check_rule

    rule = check_rule(decision)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    run_dir = resolve_run(run, runs_dir)
    info = load_run_info(run_dir)
    check_model_file(run_dir)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", info.name):
        raise SkinError(f"Run name {info.name!r} cannot be a TF Serving model name",
                        hint="Rename the run to letters, digits, '.', '_' and '-'")
    base = Path(out) / info.name
    if version is None:
        version = next_version(base)
    if version < 1:
        raise SkinError(f"--version {version} must be a positive integer",
                        hint="e.g. --version 1, or leave it out to take the next one")
    target = base / str(version)
    if target.exists():
        raise SkinError(f"{target} already exists",
                        hint="Pass another --version or leave it out to take the next one")
    # Folders that check_writable creates are removed again if the export fails, so a
    # failed export leaves nothing behind.
    created = [folder for folder in target.parents if not folder.exists()]
    check_writable(target)  # before the slow TensorFlow import and model load
    try:
        import tensorflow as tf

        try:
            model = load_keras_model(run_dir / MODEL_FILE)
        except Exception as exc:
            raise model_load_error(run_dir, exc) from exc
        from skincli.decision import decision_summary
        from skincli.evaluate import resolve_decision
        from skincli.predictor import Predictor

        predictor = Predictor(run_dir, info, model)
        chosen = resolve_decision(predictor, rule, prevalence)
        info = predictor.info  # run.json may now hold the fitted operating point
        archive = build_archive(model, info.classes, int(info.input_size),
                                float(info.temperature or 1.0),
                                weights=None if rule == "balanced" else chosen.weights.tolist())
        with atomic_dir(target, overwrite=False) as tmp:
            tmp.rmdir()  # ExportArchive creates the folder itself
            try:
                archive.write_out(str(tmp), verbose=False)
            except TypeError:  # older Keras without `verbose`
                archive.write_out(str(tmp))
            extra = tmp / EXTRA_DIR
            extra.mkdir(exist_ok=True)
            (extra / "skin.json").write_text(json.dumps({
                "run": info.to_dict(), "signatures": ["serving_default", "predict_pixels"],
                "inputs": {"serving_default": "image_bytes", "predict_pixels": "pixels"},
                "tensorflow": tf.__version__,
                "decision": decision_summary(info, chosen),
            }, indent=2, default=str) + "\n", encoding="utf-8")
    except BaseException:
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                pass
        raise
    return target


def build_archive(model: Any, classes: list[str], size: int, temperature: float,
                  weights: list[float] | None = None) -> Any:
    """A keras ExportArchive with the two serving signatures; `weights` (C,) re-weight the
    calibrated probabilities (a decision rule) before renormalising."""
    import keras
    import tensorflow as tf

    class_names = tf.constant(list(classes))
    temp = tf.constant(max(temperature, 1e-6), tf.float32)
    w = None if weights is None else tf.constant([float(v) for v in weights], tf.float32)

    def outputs(pixels: Any) -> dict[str, Any]:
        logits = tf.cast(model(pixels, training=False), tf.float32)
        probs = tf.nn.softmax(logits / temp, axis=-1)
        if w is not None:  # temperature first, the decision rule second
            probs = probs * w
            probs = probs / tf.reduce_sum(probs, axis=-1, keepdims=True)
        return {"probabilities": probs, "logits": logits,
                "label": tf.gather(class_names, tf.argmax(probs, axis=-1)),
                "top_probability": tf.reduce_max(probs, axis=-1)}

    def decode(data: Any) -> Any:
        # JPEG with the accurate integer DCT, as Pillow decodes it (TF's default is the fast one).
        img = tf.cond(
            tf.io.is_jpeg(data),
            lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
            lambda: tf.io.decode_image(data, channels=3, dtype=tf.uint8,
                                       expand_animations=False))
        img = tf.image.resize(tf.cast(img, tf.float32), [size, size], method="bilinear",
                              antialias=True)
        return tf.clip_by_value(tf.round(img), 0.0, 255.0)

    def serve_bytes(image_bytes: Any) -> dict[str, Any]:
        pixels = tf.map_fn(decode, image_bytes,
                           fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
        return outputs(pixels)

    def serve_pixels(pixels: Any) -> dict[str, Any]:
        return outputs(tf.cast(pixels, tf.float32))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default", fn=serve_bytes, input_signature=[
        tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.add_endpoint(name="predict_pixels", fn=serve_pixels, input_signature=[
        tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")])
    return archive
