"""`skin export --format tflite | tflite-int8`: a task-ready model for Android, iOS and web apps.

`<out>/<run name>[-int8].tflite` loads unchanged in MediaPipe Tasks' ImageClassifier:

- input `image`: float32 [1, S, S, 3], RGB 0..255 (the model normalises inside, so the metadata
  says mean 0, std 1: the pixels go in as they are);
- one output `probabilities` [1, C] = softmax(logits / T) with the run's temperature inside
  the graph; with `--decision` the rule's re-weighted probabilities (docs/decisions.md);
- TFLite Model Metadata: name, version, description (with the disclaimer), the input image's
  properties and NormalizationOptions, the labels as a `TENSOR_AXIS_LABELS` file, and
  `skin.json`: the triage threshold and classes, uncertain threshold, decision rule, released
  metrics, the measured agreement with the float model and the disclaimer.

The same JSON is written beside the model as `<same name>.json`, plus the file's sha256 and size.
The run folder's own model.tflite (two outputs, for the LiteRT engine) is not this file.
int8 is either dynamic-range (int8 weights) or full-integer (weights and activations, calibrated
on the run's validation images); one that changes more top-1 answers (or macro-F1) than the
tolerance is refused unless forced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from skincli.engines.convert import ConversionFailed, convert_keras
from skincli.errors import SkinError
from skincli.export.tasks_metadata import (
    INSTALL_HINT,
    ClassifierMetadata,
    schemas,
    with_metadata,
)
from skincli.fsutil import atomic_path, check_writable, write_json
from skincli.runs import (
    DEFAULT_RUNS_DIR,
    RUN_FILE,
    check_model_file,
    load_run_info,
    resolve_run,
)

TFLITE_FORMATS = ("tflite", "tflite-int8")
INT8_MODES = ("full", "dynamic")
DEFAULT_TOLERANCE = 0.02  # share of test images whose top-1 may change; macro-F1 drop too
APP_JSON = "skin.json"  # the associated file's name inside the model
AUTHOR = "skincli"


def export_tflite(run: str | Path | None = None, out: str | Path = "exported",
                  runs_dir: str | Path = DEFAULT_RUNS_DIR, fmt: str = "tflite",
                  int8_mode: str = "full", tolerance: float = DEFAULT_TOLERANCE,
                  force: bool = False, decision: str = "balanced",
                  prevalence: str | Path | None = None) -> dict[str, Any]:
    """Write `<out>/<run>[-int8].tflite` + `.json`; return the JSON (with "path").

    The agreement with the float model is measured on the run's test split (its validation
    split when it has no test images). An int8 model beyond `tolerance` raises SkinError
    (nothing written) unless `force`.
    """
    if fmt not in TFLITE_FORMATS:
        raise SkinError(f"Unknown export format {fmt!r}",
                        hint="Use savedmodel, tflite, tflite-int8 or web")
    if int8_mode not in INT8_MODES:
        raise SkinError(f"Unknown int8 mode {int8_mode!r}", hint="Use full or dynamic")
    if not 0.0 <= float(tolerance) <= 1.0:
        raise SkinError(f"--tolerance {tolerance} must be between 0 and 1",
                        hint="e.g. 0.02 = at most 2% of test answers may change")
    from skincli.decision import check_rule

    check_rule(decision)
    quant = int8_mode if fmt == "tflite-int8" else None
    run_dir = resolve_run(run, runs_dir)
    info = load_run_info(run_dir)
    check_model_file(run_dir)
    stem = info.name + ("-int8" if quant else "")
    target = Path(out) / f"{stem}.tflite"
    with new_folders_removed_on_failure(target):
        check_writable(target)  # before the slow part
        built = build_app_model(run_dir, fmt, quant, tolerance, force, decision, prevalence)
        doc = built.doc | {"bytes": len(built.data),
                           "sha256": hashlib.sha256(built.data).hexdigest()}
        with atomic_path(target) as tmp:
            tmp.write_bytes(built.data)
        meta_path = write_json(target.with_suffix(".json"), doc)
    return doc | {"path": str(target), "metadata_path": str(meta_path)}


@contextlib.contextmanager
def new_folders_removed_on_failure(target: Path) -> Iterator[None]:
    """Folders above `target` that the export creates are removed again if it fails, so a
    failed export leaves nothing behind."""
    created = [folder for folder in Path(target).parents if not folder.exists()]
    try:
        yield
    except BaseException:
        for folder in created:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


class AppModel:
    """A finished app model: the .tflite bytes (metadata inside) and its JSON."""

    def __init__(self, data: bytes, doc: dict[str, Any]) -> None:
        self.data, self.doc = data, doc


def build_app_model(run_dir: Path, fmt: str, quant: str | None, tolerance: float,
                    force: bool, decision: str = "balanced",
                    prevalence: str | Path | None = None) -> AppModel:
    """Convert, measure, check and annotate the app model of a run (nothing written)."""
    schemas()  # the export extra is there, before the slow part
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from skincli.decision import check_rule
    from skincli.engines import load_keras_model
    from skincli.evaluate import ensure_triage, resolve_decision
    from skincli.predictor import Predictor

    rule = check_rule(decision)
    as_trained = _raw_run_json(run_dir)  # as trained: fitting triage below rewrites run.json
    info = load_run_info(run_dir)
    model = load_keras_model(run_dir)
    predictor = Predictor(run_dir, info, model)
    chosen = resolve_decision(predictor, rule, prevalence)
    triage = ensure_triage(predictor)  # fitted now (and stored) for a run trained before triage
    info = predictor.info
    temperature = float(info.temperature or 1.0)
    weights = [float(w) for w in chosen.weights]
    test_x, test_y, test_note = labelled_images(run_dir, info)
    calibration = None
    if quant == "full":
        from skincli.engines.convert import run_images

        calibration, _ = run_images(run_dir, info, subset="val", limit=200)
    raw = convert_app_model(model, int(info.input_size), temperature, weights, quant,
                            calibration)
    quality = measure(model, raw, test_x, test_y, temperature, weights)
    quality["images"] = test_note
    changed = 1.0 - quality["top1_agreement"]
    drop = -quality["macro_f1_change"]
    if quant and not force and (changed > tolerance or drop > tolerance):
        raise SkinError(
            f"The int8 model changes {changed:.1%} of top-1 answers and macro-F1 by "
            f"{quality['macro_f1_change']:+.3f} on {test_note} (tolerance "
            f"{tolerance:g}); nothing written",
            hint="Try --int8 dynamic, export --format tflite, or pass --force to keep it")
    doc = app_json(as_trained, info, fmt, quant, chosen, triage, quality)
    from skincli import DISCLAIMER

    data = with_metadata(raw, ClassifierMetadata(
        name=info.name, version=info.version,
        description=(f"Dermoscopic skin-lesion classifier ({info.arch}, {len(info.classes)} "
                     f"classes); output: {doc['output']['computed']}. {DISCLAIMER}"),
        author=AUTHOR, labels=list(info.classes),
        input_description=doc["input"]["pixels"],
        output_description=doc["output"]["computed"],
        files={APP_JSON: (json.dumps(doc, indent=2, default=str) + "\n").encode("utf-8")},
        file_descriptions={APP_JSON: "Classes, triage threshold and rule, uncertain "
                           "threshold, decision rule, released metrics, disclaimer."}))
    check_runs_in_tasks(data, int(info.input_size), info.arch)
    return AppModel(data, doc)


def app_keras_model(model: Any, size: int, temperature: float,
                    weights: list[float] | None = None) -> Any:
    """Batch-1 Keras model: image -> softmax(logits / T + log w) (= the rule's probabilities:
    p(c) w(c) / sum_k p(k) w(k))."""
    import keras
    import numpy as np

    inv_t = 1.0 / max(float(temperature), 1e-6)
    bias = np.log(np.asarray(weights if weights else [1.0], np.float32)).astype(np.float32)
    plain = not np.any(bias)
    inp = keras.Input((size, size, 3), batch_size=1, name="image", dtype="float32")
    logits = keras.ops.cast(model(inp, training=False), "float32")

    def probabilities(z: Any) -> Any:
        z = z * inv_t
        return keras.ops.softmax(z if plain else z + bias, axis=-1)

    out = keras.layers.Lambda(probabilities, name="probabilities")(logits)
    return keras.Model(inp, out, name="app")


def convert_app_model(model: Any, size: int, temperature: float, weights: list[float] | None,
                      quant: str | None, calibration: Any = None) -> bytes:
    """The app model as .tflite bytes (TFLite builtin ops only: what every runtime has)."""
    if quant == "full" and (calibration is None or len(calibration) == 0):
        raise SkinError("Full-integer quantisation needs the run's validation images",
                        hint="Use --int8 dynamic")
    try:
        return convert_keras(app_keras_model(model, size, temperature, weights),
                             {"full": "int8"}.get(quant or "", quant), calibration)
    except ConversionFailed as exc:
        raise SkinError(f"The run's model does not convert to TFLite builtin ops ({exc})",
                        hint="Export --format savedmodel instead") from None


def run_app_model(data: bytes, images: Any) -> Any:
    """Probabilities (N, C) from the .tflite bytes, one image at a time (batch-1 input)."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from skincli._quiet import silenced_stderr_fd

    with silenced_stderr_fd():  # LiteRT announces its XNNPACK delegate on fd 2
        it = Interpreter(model_content=data, num_threads=1)
        it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    rows = []
    for image in np.asarray(images, np.float32):
        it.set_tensor(inp["index"], image[None])
        it.invoke()
        rows.append(np.array(it.get_tensor(out["index"])[0], np.float64))
    return np.stack(rows)


def measure(model: Any, data: bytes, images: Any, labels: Any, temperature: float,
            weights: list[float]) -> dict[str, Any]:
    """Top-1 agreement, max |delta p| and macro-F1 change of the app model against the Keras
    model's probabilities under the same temperature and rule, on labelled images."""
    import numpy as np

    from skincli.calibration import softmax
    from skincli.engines.tf import TFEngine
    from skincli.metrics import confusion_matrix, macro_f1_from_cm

    size = int(images.shape[1])
    logits = np.concatenate([np.asarray(TFEngine(model, size).forward(images[i:i + 32])[0])
                             for i in range(0, len(images), 32)])
    ref = softmax(logits, temperature) * np.asarray(weights)
    ref = ref / ref.sum(axis=1, keepdims=True)
    got = run_app_model(data, images)
    c = ref.shape[1]

    def f1(pred: Any) -> float:
        return float(macro_f1_from_cm(confusion_matrix(labels, pred, c)))

    f_ref, f_new = f1(ref.argmax(1)), f1(got.argmax(1))
    return {"n": int(len(images)), "top1_agreement": float((ref.argmax(1) == got.argmax(1)
                                                            ).mean()),
            "max_abs_prob": float(np.abs(got - ref).max()), "macro_f1_float": f_ref,
            "macro_f1": f_new, "macro_f1_change": f_new - f_ref}


def labelled_images(run_dir: Path, info: Any) -> tuple[Any, Any, str]:
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


def app_json(raw: dict[str, Any], info: Any, fmt: str, quant: str | None, chosen: Any,
             triage: dict[str, Any] | None, quality: dict[str, Any]) -> dict[str, Any]:
    """Everything an app needs to turn the output into the answer `skin predict` gives
    (`raw`: run.json as it was before the export touched it)."""
    from skincli import DISCLAIMER
    from skincli.decision import decision_summary

    s, c = int(info.input_size), len(info.classes)
    defaults = []
    if "temperature" not in raw:
        defaults.append("temperature 1.0: the run has no fitted temperature (uncalibrated)")
    threshold = chosen.uncertain_threshold
    if threshold is None:
        defaults.append("no uncertain threshold: the run has none, so no answer is flagged "
                        "uncertain")
    triage = dict(triage or {"threshold": None, "reason": "not fitted"})
    if triage.get("threshold") is None:
        defaults.append(f"no referral threshold ({triage.get('reason', 'not fitted')}): an app "
                        "cannot say refer / no referral suggested")
    rule = chosen.rule
    computed = "softmax(logits / temperature)" + (
        "" if rule == "balanced" else f", re-weighted by the {rule} decision rule "
        "(p(c) w(c) / sum_k p(k) w(k))")
    triage_block = {k: triage.get(k) for k in (
        "threshold", "malignant", "premalignant", "count_premalignant", "target_sensitivity",
        "reason", "source") if k in triage}
    triage_block["rule"] = ("score = the sum of the calibrated probabilities of `malignant` "
                            "(plus `premalignant` when count_premalignant); refer when "
                            "score >= threshold, else no referral suggested")
    triage_block["calibrated_from_output"] = (
        "calibrated p(c) = (q(c) / w(c)) / sum_k q(k) / w(k), q = the output, w = "
        "decision.weights (all 1 for the balanced rule: then p = q)")
    for part in ("validation", "test"):
        point = triage.get(part)
        if isinstance(point, dict):
            triage_block[part] = {k: point.get(k) for k in (
                "n", "sensitivity", "sensitivity_ci95", "specificity", "specificity_ci95",
                "referral_rate")}
    summary = decision_summary(info, chosen)
    summary.get("fitted", {}).pop("when", None)
    doc: dict[str, Any] = {
        "format": fmt, "quantization": quant or "none (float32)",
        "model": {"name": info.name, "version": info.version, "arch": info.arch,
                  "created": info.created},
        "classes": list(info.classes),
        "input": {"name": "image", "shape": [1, s, s, 3], "dtype": "float32",
                  "pixels": f"RGB image {s}x{s}, values 0..255 (normalised inside the model)",
                  "normalization": {"mean": [0.0], "std": [1.0]},
                  "resize": f"to {s}x{s} with bilinear filtering, antialiased when shrinking "
                            "(Pillow BILINEAR), no crop; EXIF orientation applied first",
                  "preprocessing": dict(info.preprocessing)},
        "output": {"name": "probabilities", "shape": [1, c], "computed": computed},
        "temperature": float(info.temperature or 1.0),
        "decision": summary,
        "uncertain_threshold": threshold,
        "uncertain_rule": "top probability below uncertain_threshold = show as uncertain",
        "triage": triage_block,
        "released_metrics": {"test": _scalars(info.test_metrics),
                             "validation": _scalars(info.val_metrics)},
        "defaults_used": defaults,
        "measured_against_float_model": quality,
        "disclaimer": DISCLAIMER,
    }
    return doc | _metadata_term(info)


def _raw_run_json(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((Path(run_dir) / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _scalars(metrics: dict[str, Any] | None) -> dict[str, float]:
    """The headline numbers of a metrics block (per-class tables stay in the model card)."""
    return {k: float(v) for k, v in (metrics or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _metadata_term(info: Any) -> dict[str, Any]:
    """A run trained with --use-metadata: how an app adds the patient's metadata."""
    head = (info.extra or {}).get("metadata_head")
    if not head:
        return {}
    from skincli.metahead import SITE_GROUPS

    return {"metadata_term": {
        **head,
        "site_groups": SITE_GROUPS,
        "rule": "offset = x @ weights, x = per field (sex, age_band, site) its one-hot in "
                "`values` order minus `means`, all zeros when the field is unknown; a site is "
                "first mapped through `site_groups` (lower case), and a site not there or not "
                "in `values` counts as 'other'; age_band as in `values` (<30, 30-44, 45-59, "
                "60-74, 75+). Then probabilities(c) *= exp(offset(c) / temperature) and "
                "renormalise. Without metadata the output is used as it is.",
    }}


def check_runs_in_tasks(data: bytes, size: int, arch: str) -> None:
    """Run the model once through MediaPipe's ImageClassifier; one line if it cannot."""
    import numpy as np

    try:
        import mediapipe as mp
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core.base_options import BaseOptions
    except ImportError:
        raise SkinError("The app export checks the model with mediapipe, which is not "
                        "installed", hint=INSTALL_HINT) from None
    from skincli._quiet import silenced_stderr_fd

    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    try:
        options = vision.ImageClassifierOptions(
            base_options=BaseOptions(model_asset_buffer=data), max_results=-1)
        with silenced_stderr_fd(), vision.ImageClassifier.create_from_options(options) as clf:
            result = clf.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=pixels))
        got = {c.index: c.score for c in result.classifications[0].categories}
    except Exception as exc:  # the runtime's own words, first line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise SkinError(f"MediaPipe Tasks cannot run this {arch} model: "
                        f"{first}; nothing written",
                        hint="Export --format savedmodel instead") from None
    want = run_app_model(data, pixels[None].astype(np.float32))[0]
    probs = np.array([got.get(i, 0.0) for i in range(len(want))])
    if not np.allclose(probs, want, atol=0.02):
        raise SkinError(f"MediaPipe Tasks answers differently from LiteRT "
                        f"for this {arch} model (max |delta p| "
                        f"{float(np.abs(probs - want).max()):.3f}); nothing written",
                        hint="Export --format savedmodel instead")
