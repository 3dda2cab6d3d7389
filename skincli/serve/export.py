"""`skin export`: the run's model for other runtimes.

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

`--format tflite | tflite-int8`: a LiteRT/TFLite model for Android/iOS apps,
`<out>/<run name>[-int8].tflite`, and beside it `<same name>.json` with everything an app needs
(class names in output order, input size and pixel format, temperature, uncertain threshold)
and the measured agreement with the float Keras model on the run's test split. Input: float32
[N, S, S, 3] RGB 0..255 (normalisation is inside the model); outputs `output_0` logits and
`output_1` the pooled embedding. int8 is either dynamic-range (int8 weights) or full-integer
(weights and activations, calibrated on the run's validation images); a quantised model that
changes more top-1 answers (or macro-F1) than the tolerance is refused unless forced.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from skincli.errors import SkinError
from skincli.fsutil import atomic_dir, atomic_path, check_writable, write_json
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


TFLITE_FORMATS = ("tflite", "tflite-int8")
INT8_MODES = ("full", "dynamic")
DEFAULT_TOLERANCE = 0.02  # share of test images whose top-1 may change; macro-F1 drop too


def export_tflite(run: str | Path | None = None, out: str | Path = "exported",
                  runs_dir: str | Path = DEFAULT_RUNS_DIR, fmt: str = "tflite",
                  int8_mode: str = "full", tolerance: float = DEFAULT_TOLERANCE,
                  force: bool = False) -> dict[str, Any]:
    """Write `<out>/<run>[-int8].tflite` + `.json`; return the metadata (with "path").

    The agreement with the float model is measured on the run's test split (its validation
    split when it has no test images). An int8 model beyond `tolerance` raises SkinError
    (nothing written) unless `force`.
    """
    from skincli.engines.convert import (
        ConversionFailed,
        convert_model,
        sha256_file,
    )

    if fmt not in TFLITE_FORMATS:
        raise SkinError(f"Unknown export format {fmt!r}",
                        hint="Use savedmodel, tflite or tflite-int8")
    if int8_mode not in INT8_MODES:
        raise SkinError(f"Unknown int8 mode {int8_mode!r}", hint="Use full or dynamic")
    if not 0.0 <= float(tolerance) <= 1.0:
        raise SkinError(f"--tolerance {tolerance} must be between 0 and 1",
                        hint="e.g. 0.02 = at most 2% of test answers may change")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    run_dir = resolve_run(run, runs_dir)
    info = load_run_info(run_dir)
    check_model_file(run_dir)
    quant = int8_mode if fmt == "tflite-int8" else None
    stem = info.name + ("-int8" if quant else "")
    target = Path(out) / f"{stem}.tflite"
    meta_path = target.with_suffix(".json")
    check_writable(target)  # before the slow part
    test_x, test_y, test_note = _labelled_images(run_dir, info)
    from skincli.engines import load_keras_model

    model = load_keras_model(run_dir)
    calibration = None
    if quant == "full":
        from skincli.engines.convert import run_images

        calibration, _ = run_images(run_dir, info, subset="val", limit=200)
    try:
        data = convert_model(model, quantize={"full": "int8"}.get(quant or "", quant),
                             calibration=calibration)
    except ConversionFailed as exc:
        raise SkinError(f"Run {run_dir} does not convert to TFLite: {exc}",
                        hint="Export --format savedmodel instead") from None
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
        quality = measure_against_float(model, tmp, test_x, test_y, info)
        quality["images"] = test_note
        changed = 1.0 - quality["top1_agreement"]
        drop = -quality["macro_f1_change"] if quality["macro_f1_change"] is not None else 0.0
        if quant and not force and (changed > tolerance or drop > tolerance):
            raise SkinError(
                f"The int8 model changes {changed:.1%} of top-1 answers and macro-F1 by "
                f"{quality['macro_f1_change'] or 0.0:+.3f} on {test_note} (tolerance "
                f"{tolerance:g}); nothing written",
                hint="Try --int8 dynamic, export --format tflite, or pass --force to keep it")
        meta = tflite_metadata(info, fmt, quant, quality, len(data))
        meta["sha256"] = hashlib.sha256(data).hexdigest()
    write_json(meta_path, meta)
    assert sha256_file(target) == meta["sha256"]
    return meta | {"path": str(target), "metadata_path": str(meta_path)}


def _labelled_images(run_dir: Path, info: Any) -> tuple[Any, Any, str]:
    """The run's test images (else validation images) as a batch, labels, and a description."""
    from skincli.data.evalset import load_eval_set, read_labelled

    for subset in ("test", "val"):
        try:
            eval_set = load_eval_set(run_dir, info.classes, subset=subset)
        except SkinError:
            continue
        images, labels = read_labelled(eval_set, info.classes, int(info.input_size))
        if len(images):
            return images, labels, f"{len(images)} {subset} images of the run's split"
    raise SkinError(f"Run {run_dir} has no readable test or validation images to measure the "
                    "export against", hint="Export from the machine that holds the run's images")


def measure_against_float(model: Any, tflite_path: Path, images: Any, labels: Any,
                          info: Any) -> dict[str, Any]:
    """Top-1 agreement, macro-F1 change and max |delta p| of a .tflite against the Keras
    model on labelled images."""
    import numpy as np

    from skincli.engines.convert import compare_outputs
    from skincli.engines.litert import LiteRTEngine
    from skincli.engines.tf import TFEngine
    from skincli.metrics import confusion_matrix, macro_f1_from_cm

    size, c = int(info.input_size), len(info.classes)
    ref_logits, ref_emb = _batched(TFEngine(model, size).forward, images)
    lite = LiteRTEngine(tflite_path, c, size, num_threads=1)
    logits, emb = _batched(lite.forward, images)
    report = compare_outputs(ref_logits, ref_emb, logits, emb, float(info.temperature or 1.0))

    def f1(pred: Any) -> float:
        return float(macro_f1_from_cm(confusion_matrix(labels, pred, c)))

    f_ref, f_new = f1(np.argmax(ref_logits, 1)), f1(np.argmax(logits, 1))
    return {"n": report["n"], "top1_agreement": report["top1_agreement"],
            "max_abs_prob": report["max_abs_prob"], "macro_f1_float": f_ref,
            "macro_f1": f_new, "macro_f1_change": f_new - f_ref,
            "embedding_dims": None if ref_emb is None else int(ref_emb.shape[1])}


def _batched(fn: Any, images: Any, size: int = 32) -> tuple[Any, Any]:
    import numpy as np

    logits, embs = [], []
    for start in range(0, len(images), size):
        out, emb = fn(images[start:start + size])
        logits.append(np.asarray(out))
        embs.append(None if emb is None else np.asarray(emb))
    emb_all = None if any(e is None for e in embs) else np.concatenate(embs)
    return np.concatenate(logits), emb_all


def tflite_metadata(info: Any, fmt: str, quant: str | None, quality: dict[str, Any],
                    size_bytes: int) -> dict[str, Any]:
    """Everything an app needs beside the .tflite file."""
    from skincli import DISCLAIMER

    s = int(info.input_size)
    return {
        "format": fmt, "quantization": quant or "none (float32)", "bytes": size_bytes,
        "model": {"name": info.name, "version": info.version, "arch": info.arch,
                  "created": info.created},
        "classes": list(info.classes),
        "input": {"index": 0, "shape": [-1, s, s, 3], "dtype": "float32",
                  "pixels": "RGB, 0..255 (not normalised: normalisation is inside the model)",
                  "resize": f"to {s}x{s} with bilinear filtering, antialiased when shrinking "
                            "(Pillow BILINEAR), no crop; EXIF orientation applied first",
                  "preprocessing": dict(info.preprocessing)},
        "outputs": {"output_0": {"name": "logits", "shape": [-1, len(info.classes)]},
                    "output_1": {"name": "embedding",
                                 "shape": [-1, quality.get("embedding_dims")],
                                 "note": "pooled backbone features (drift/out-of-distribution)"}},
        "probabilities": "softmax(logits / temperature)",
        "temperature": float(info.temperature or 1.0),
        "uncertain_threshold": info.uncertain_threshold,
        "uncertain_rule": "top probability below uncertain_threshold = show as uncertain",
        "measured_against_float_model": quality,
        "disclaimer": DISCLAIMER,
    } | _metadata_term(info)


def _metadata_term(info: Any) -> dict[str, Any]:
    """A run trained with --use-metadata: how an app adds the patient's metadata."""
    head = (info.extra or {}).get("metadata_head")
    if not head:
        return {}
    from skincli.metahead import SITE_GROUPS

    return {"metadata_term": {
        **head,
        "site_groups": SITE_GROUPS,
        "rule": "logits += x @ weights, x = per field (sex, age_band, site) its one-hot in "
                "`values` order minus `means`, all zeros when the field is unknown; a site is "
                "first mapped through `site_groups` (lower case), and a site not there or not "
                "in `values` counts as 'other'; age_band as in `values` (<30, 30-44, 45-59, "
                "60-74, 75+). Without metadata the model's logits are used as they are.",
    }}
