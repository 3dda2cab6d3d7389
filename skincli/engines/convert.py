"""Keras -> LiteRT conversion, the parity check that decides whether it may be used, and the
cache for runs trained before `skin train` wrote `model.tflite`.

The converted model has one input (float32 (N, S, S, 3), RGB 0..255, as the Keras model) and
two outputs from one pass: `output_0` = logits (N, C), `output_1` = the pooled embedding
(N, D) that monitoring and the out-of-distribution check use. Only TFLite builtin ops are
allowed (the LiteRT wheel has no TensorFlow ops), so what converts runs anywhere LiteRT runs.

Parity (on real validation images where the run has them): the top-1 class identical on every
image and max |delta probability| <= 1e-4 (at temperature 1 and at the run's temperature), and
the embeddings equal to 1e-3 of their scale. A model that fails stays on TensorFlow: never a
wrong answer.

Where the converted model lives:

- `run/model.tflite`, written by `skin train` with the rest of the run; run.json
  `extra["tflite"]` records its sha256 and size, the sha256 of the model.keras it came from
  and the parity measured.
- otherwise `<cache dir>/tflite/<sha256 of model.keras>-v1.tflite` (+ `.json` with the same
  record), converted on first use; a failed conversion is cached too, so it is tried once.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from skincli._quiet import silenced_stderr_fd
from skincli.calibration import softmax
from skincli.engines.base import EngineUnavailable
from skincli.engines.litert import LiteRTEngine
from skincli.engines.tf import TFEngine
from skincli.fsutil import atomic_path, cache_dir, sha256_file, write_json
from skincli.models.colour import load_keras_model
from skincli.models.graph import embedding_model
from skincli.runs import MODEL_FILE, RunInfo

TFLITE_FILE = "model.tflite"
RECORD_KEY = "tflite"  # run.json extra[RECORD_KEY]
CONVERT_VERSION = 1  # bump when the conversion changes: cached models are then rebuilt
PROB_TOLERANCE = 1e-4
EMBEDDING_TOLERANCE = 1e-3  # relative to the largest |embedding| value
PARITY_IMAGES = 32
CACHE_KEEP = 32  # cached conversions kept (newest first)

Warn = Callable[[str], None]


class ConversionFailed(Exception):
    """The model cannot be converted, or the converted model does not match it."""


# --- conversion and parity (these need TensorFlow) ---------------------------------------------

def convert_model(model: Any, quantize: str | None = None,
                  calibration: np.ndarray | None = None) -> bytes:
    """A Keras run model -> the two-output .tflite flatbuffer (bytes).

    quantize: None (float32), "dynamic" (int8 weights, float activations) or "int8" (integer
    weights and activations, calibrated on `calibration` images; float input and outputs).
    """
    both = embedding_model(model)
    if both is None:
        raise ConversionFailed("the model has no pooled embedding layer before its logits")
    return convert_keras(both, quantize, calibration)


def convert_keras(model: Any, quantize: str | None = None,
                  calibration: np.ndarray | None = None) -> bytes:
    """Any Keras model -> .tflite bytes with TFLite builtin ops only (what every runtime has).

    quantize as in `convert_model`; a failure is a ConversionFailed naming the cause.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize in ("dynamic", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "int8":
        if calibration is None or len(calibration) == 0:
            raise ConversionFailed("full-integer quantisation needs calibration images")
        images = np.asarray(calibration, dtype=np.float32)

        def representative() -> Any:
            for i in range(len(images)):
                yield [images[i:i + 1]]

        converter.representative_dataset = representative
    # Keras' exporter prints the traced signatures on stdout and TensorFlow logs on fd 2: keep
    # both off the user's terminal (and out of `--json` output).
    try:
        with contextlib.redirect_stdout(io.StringIO()), silenced_stderr_fd(), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Statistics for quantized inputs..."
            return bytes(converter.convert())
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConversionFailed(f"{type(exc).__name__}: {first[:200]}") from exc


def compare_outputs(ref_logits: np.ndarray, ref_emb: np.ndarray | None,
                    logits: np.ndarray, emb: np.ndarray | None,
                    temperature: float = 1.0) -> dict[str, Any]:
    """How far one engine's outputs are from the reference's on the same images."""
    ref_logits, logits = np.asarray(ref_logits, np.float64), np.asarray(logits, np.float64)
    dprob = 0.0
    for t in {1.0, float(temperature or 1.0)}:
        dprob = max(dprob, float(np.abs(softmax(logits, t) - softmax(ref_logits, t)).max()))
    top1 = float((logits.argmax(1) == ref_logits.argmax(1)).mean())
    out: dict[str, Any] = {
        "n": int(len(logits)), "top1_agreement": top1, "max_abs_prob": dprob,
        "max_abs_logit": float(np.abs(logits - ref_logits).max()),
    }
    if ref_emb is not None and emb is not None:
        scale = max(float(np.abs(ref_emb).max()), 1e-6)
        out["max_rel_embedding"] = float(np.abs(np.asarray(emb) - ref_emb).max() / scale)
    elif ref_emb is not None:
        out["max_rel_embedding"] = float("inf")  # the embedding went missing
    out["ok"] = bool(top1 == 1.0 and dprob <= PROB_TOLERANCE
                     and out.get("max_rel_embedding", 0.0) <= EMBEDDING_TOLERANCE)
    return out


def parity(model: Any, tflite_path: Path, images: np.ndarray, n_classes: int,
           input_size: int, temperature: float = 1.0) -> dict[str, Any]:
    """Run the Keras model (TF engine) and the .tflite (LiteRT) on the same images; compare."""
    ref_logits, ref_emb = TFEngine(model, input_size).forward(images)
    try:
        lite = LiteRTEngine(tflite_path, n_classes, input_size, num_threads=1)
    except EngineUnavailable as exc:
        raise ConversionFailed(str(exc)) from exc
    logits, emb = lite.forward(images)
    return compare_outputs(ref_logits, ref_emb, logits, emb, temperature)


def synthetic_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Deterministic test images (smooth colour blobs plus noise) when a run has no images."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    out = np.empty((n, size, size, 3), np.float32)
    for i in range(n):
        cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.4)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
        skin, lesion = rng.uniform(150, 230, 3), rng.uniform(30, 140, 3)
        img = skin * (1 - blob) + lesion * blob + rng.normal(0, 8, (size, size, 3))
        out[i] = np.clip(np.round(img), 0, 255)
    return out


def run_images(run_dir: Path, info: RunInfo, subset: str = "val",
               limit: int = PARITY_IMAGES) -> tuple[np.ndarray, str]:
    """Up to `limit` model-input images of the run's split part, else synthetic ones."""
    # Imported here: reading a split needs pandas, which loading a converted run does not.
    from skincli.data.evalset import load_eval_set, read_labelled

    try:
        eval_set = load_eval_set(run_dir, info.classes, subset=subset)
        images, _ = read_labelled(eval_set, info.classes, int(info.input_size), limit=limit)
        if len(images) >= 4:
            return images, f"{len(images)} {subset} images"
    except Exception:  # no split, moved images...: synthetic images still catch a bad model
        pass
    n = min(limit, 16)
    return synthetic_images(n, int(info.input_size)), f"{n} synthetic images"


def convert_checked(model: Any, target: Path, images: np.ndarray, n_classes: int,
                    input_size: int, temperature: float = 1.0, images_note: str = ""
                    ) -> dict[str, Any]:
    """Convert, write `target` atomically only if parity holds; return the record.

    Raises ConversionFailed (nothing written) when the model does not convert or differs.
    """
    import tensorflow as tf

    data = convert_model(model)
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
        report = parity(model, tmp, images, n_classes, input_size, temperature)
        if not report["ok"]:
            raise ConversionFailed(
                f"the converted model differs on {images_note or 'the parity images'}: top-1 "
                f"agreement {report['top1_agreement']:.1%}, max |delta p| "
                f"{report['max_abs_prob']:.2g} (limit {PROB_TOLERANCE:g})")
    return {"ok": True, "file": target.name, "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data), "parity": report | {"images": images_note},
            "converter": f"tensorflow {tf.__version__}", "version": CONVERT_VERSION}


def write_run_tflite(run_dir: str | Path, model: Any, images: np.ndarray,
                     temperature: float = 1.0, images_note: str = "",
                     warn: Warn | None = None) -> dict[str, Any]:
    """`skin train`: write run_dir/model.tflite (after model.keras); return run.json's record.

    Never raises: a model that does not convert gets {"ok": False, "reason": ...}, one warning,
    and the run simply uses TensorFlow.
    """
    run_dir = Path(run_dir)
    n_classes = int(model.outputs[0].shape[-1])
    size = int(model.inputs[0].shape[1])
    try:
        record = convert_checked(model, run_dir / TFLITE_FILE, images, n_classes, size,
                                 temperature, images_note)
    except ConversionFailed as exc:
        if warn is not None:
            warn(f"no {TFLITE_FILE}: {exc}; the run will use the TensorFlow engine")
        return {"ok": False, "reason": str(exc), "version": CONVERT_VERSION}
    return record | {"keras_sha256": sha256_file(run_dir / MODEL_FILE)}


# --- finding the .tflite for a run (no TensorFlow unless a conversion is needed) ---------------

def tflite_for_run(run_dir: Path, info: RunInfo) -> tuple[Path, str]:
    """The verified .tflite of a run and where it came from ("run" or "cache").

    Raises EngineUnavailable with the one line to show when there is none to trust.
    """
    run_dir = Path(run_dir)
    record = (info.extra or {}).get(RECORD_KEY) or {}
    path = run_dir / TFLITE_FILE
    keras_sha = sha256_file(run_dir / MODEL_FILE)
    if path.exists():
        if not record.get("sha256"):
            raise EngineUnavailable(f"{path} is not recorded in run.json (no hash to check it "
                                    "against)")
        size = path.stat().st_size
        if record.get("bytes") is not None and size != int(record["bytes"]):
            raise EngineUnavailable(f"{path} is truncated or damaged ({size:,} bytes; run.json "
                                    f"records {int(record['bytes']):,})")
        if sha256_file(path) != record["sha256"]:
            raise EngineUnavailable(f"{path} does not match run.json (sha256 differs)")
        if record.get("keras_sha256") != keras_sha:
            raise EngineUnavailable(f"{path} was converted from another {MODEL_FILE} (its hash "
                                    "in run.json differs)")
        return path, "run"
    if record.get("ok") is False and record.get("version") == CONVERT_VERSION:
        raise EngineUnavailable(f"the model did not convert to LiteRT at training time "
                                f"({record.get('reason', 'no reason recorded')})")
    return cached_tflite(run_dir, info, keras_sha), "cache"


def cache_folder() -> Path:
    """<cache dir>/tflite (skincli.fsutil.cache_dir)."""
    return cache_dir() / "tflite"


def cached_tflite(run_dir: Path, info: RunInfo, keras_sha: str) -> Path:
    """The cached conversion of this model.keras, converting (once) if there is none."""
    folder = cache_folder()
    stem = f"{keras_sha[:40]}-v{CONVERT_VERSION}"
    model_path, meta_path = folder / f"{stem}.tflite", folder / f"{stem}.json"
    meta = _read_json(meta_path)
    if meta is not None:
        if meta.get("ok") is False:
            raise EngineUnavailable(f"the model does not convert to LiteRT ({meta.get('reason')}"
                                    f"; remembered in {meta_path})")
        if model_path.is_file() and sha256_file(model_path) == meta.get("sha256"):
            return model_path
    # Convert now: TensorFlow is needed this once.

    try:
        model = load_keras_model(run_dir / MODEL_FILE)
    except Exception as exc:
        raise EngineUnavailable(f"cannot load {run_dir / MODEL_FILE} to convert it "
                                f"({type(exc).__name__})") from exc
    images, note = run_images(run_dir, info)
    try:
        record = convert_checked(model, model_path, images, len(info.classes),
                                 int(info.input_size), float(info.temperature or 1.0), note)
    except ConversionFailed as exc:
        _write_meta(meta_path, {"ok": False, "reason": str(exc), "run": str(run_dir)})
        raise EngineUnavailable(f"the model does not convert to LiteRT ({exc})") from exc
    _write_meta(meta_path, record | {"keras_sha256": keras_sha, "run": str(run_dir)})
    _prune(folder)
    return model_path


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_meta(path: Path, record: dict[str, Any]) -> None:
    try:
        write_json(path, record)
    except Exception:  # a read-only cache only costs a conversion next time
        pass


def _prune(folder: Path, keep: int = CACHE_KEEP) -> None:
    """Keep the newest `keep` cached conversions."""
    try:
        metas = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for meta in metas[keep:]:
            meta.unlink(missing_ok=True)
            meta.with_suffix(".tflite").unlink(missing_ok=True)
    except OSError:
        pass


def write_run_tflite_from(run_dir: str | Path, model: Any, dataset: Any, temperature: float,
                          warn: Warn | None = None) -> dict[str, Any]:
    """`write_run_tflite` with parity images taken from an evaluation dataset (validation)."""
    arrays, n = [], 0
    for x, _ in dataset:
        if isinstance(x, (tuple, list)):  # (image, metadata row): the .tflite is image-only
            x = x[0]
        batch = np.asarray(x, dtype=np.float32)
        arrays.append(batch[:PARITY_IMAGES - n])
        n += len(arrays[-1])
        if n >= PARITY_IMAGES:
            break
    if n >= 4:
        images, note = np.concatenate(arrays), f"{n} validation images"
    else:
        size = int(model.inputs[0].shape[1])
        images, note = synthetic_images(16, size), "16 synthetic images"
    return write_run_tflite(run_dir, model, images, temperature, note, warn)
