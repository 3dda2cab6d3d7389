"""`skin export RUN`: a TensorFlow SavedModel, a TFLite model for apps, or a web folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from skincli import ui
from skincli.cli.common import handle_errors
from skincli.errors import SkinError

HELP = ("Export a run for other runtimes: --format savedmodel (TensorFlow Serving, "
        "<out>/<run>/<version>/), tflite or tflite-int8 (MediaPipe Tasks-ready, for Android/iOS "
        "apps: <out>/<run>.tflite with metadata, labels and the referral threshold inside, + "
        "the same JSON beside it) or web (a static folder that classifies in the browser), "
        "with the measured agreement with the float model.")


@handle_errors
def command(
    run: Annotated[str | None, typer.Argument(
        help="Run name or folder (default: runs/CURRENT, else the latest run).")] = None,
    fmt: Annotated[str, typer.Option(
        "--format", help="savedmodel (TensorFlow Serving), tflite (float32, MediaPipe Tasks-"
        "ready for Android/iOS), tflite-int8 (quantised; refused beyond --tolerance unless "
        "--force) or web (a static folder that classifies in the browser).")] = "savedmodel",
    out: Annotated[Path, typer.Option(
        help="Folder for exported models; savedmodel writes <out>/<run name>/<version>/, "
        "tflite <out>/<run name>[-int8].tflite + .json, web the folder itself (new or empty).",
        file_okay=False)] = Path("exported"),
    version: Annotated[int | None, typer.Option(
        help="SavedModel version number (default: one more than the largest there).")] = None,
    int8: Annotated[str, typer.Option(
        "--int8", help="tflite-int8 only: full (integer weights and activations, calibrated "
        "on the run's validation images) or dynamic (int8 weights).")] = "full",
    tolerance: Annotated[float, typer.Option(
        help="tflite-int8 only: the largest share of test images whose top-1 may change "
        "(and the largest macro-F1 drop).")] = 0.02,
    force: Annotated[bool, typer.Option(
        "--force", help="Write a tflite-int8 model even beyond --tolerance.")] = False,
    runs_dir: Annotated[str, typer.Option(help="Folder of runs.")] = "runs",
    decision: Annotated[str, typer.Option(
        help="Decision rule built into the probabilities: balanced, prevalence, macro-f1.")
    ] = "balanced",
    prevalence: Annotated[Path | None, typer.Option(
        help="With --decision prevalence: the class prior (YAML or CSV).", dir_okay=False)
    ] = None,
) -> None:
    """Write the SavedModel, the TFLite model or the web folder and say how to use it."""
    from skincli.decision import check_rule
    from skincli.export import FORMATS, export_saved_model, export_tflite, export_web

    fmt = fmt.strip().lower()
    if fmt not in FORMATS:
        from skincli.errors import did_you_mean

        raise SkinError(f"Unknown --format {fmt!r}.{did_you_mean(fmt, list(FORMATS))}",
                        hint=f"Use {', '.join(FORMATS)}")
    rule = check_rule(decision)
    if fmt == "savedmodel":
        with ui.err_console.status("Exporting SavedModel..."):
            target = export_saved_model(run, out, runs_dir, version, decision=rule,
                                        prevalence=prevalence)
        _show_saved_model(target, rule)
        return
    with ui.err_console.status("Converting and measuring against the float model..."):
        if fmt == "web":
            meta = export_web(run, out, runs_dir, decision=rule, prevalence=prevalence)
        else:
            meta = export_tflite(run, out, runs_dir, fmt=fmt, int8_mode=int8.strip().lower(),
                                 tolerance=tolerance, force=force, decision=rule,
                                 prevalence=prevalence)
    _show_tflite(meta, fmt, tolerance)


def _show_saved_model(target: Path, rule: str) -> None:
    """Where the SavedModel went and how TensorFlow Serving serves it."""
    ui.console.print(f"Decision rule: {rule}", highlight=False)
    base = target.parent.resolve()
    ui.console.print(f"Wrote {target}", highlight=False)
    ui.console.print(
        f"Serve it with TensorFlow Serving:\n  docker run -p 8501:8501 -v {base}:/models/"
        f"{base.name} -e MODEL_NAME={base.name} tensorflow/serving\n"
        f"  curl -d '{{\"signature_name\": \"serving_default\", \"instances\": [{{\"b64\": "
        f"\"<base64 JPEG>\"}}]}}' localhost:8501/v1/models/{base.name}:predict",
        highlight=False, soft_wrap=True)


def _show_tflite(meta: dict[str, Any], fmt: str, tolerance: float) -> None:
    """Where the .tflite (or web folder) went and how closely it agrees with the float model."""
    q = meta["measured_against_float_model"]
    if fmt == "web":
        ui.console.print(f"Wrote {meta['path']}/ (model {meta['bytes'] / 1e6:.1f} MB, runtime "
                         f"{meta['runtime']}). Serve it with any static server, e.g.\n"
                         f"  python -m http.server -d {meta['path']} 8000", highlight=False,
                         soft_wrap=True)
    else:
        ui.console.print(f"Wrote {meta['path']} ({meta['bytes'] / 1e6:.1f} MB, "
                         f"{meta['quantization']}) and {meta['metadata_path']}", highlight=False)
    ui.console.print(f"Decision rule: {meta['decision']['rule']}", highlight=False)
    ui.console.print(
        f"Against the float model on {q['images']}: top-1 agreement "
        f"{q['top1_agreement']:.1%}, macro-F1 {q['macro_f1_float']:.3f} -> {q['macro_f1']:.3f} "
        f"({q['macro_f1_change']:+.3f}), max |delta p| {q['max_abs_prob']:.2g}",
        highlight=False, soft_wrap=True)
    if fmt == "tflite-int8" and (1 - q["top1_agreement"] > tolerance
                                 or -q["macro_f1_change"] > tolerance):
        ui.warn(f"beyond the tolerance {tolerance:g}; written because of --force")
