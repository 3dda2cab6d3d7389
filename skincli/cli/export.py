"""`skin export RUN`: the run as a TensorFlow SavedModel or a TFLite model for apps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from skincli import ui
from skincli.cli.common import handle_errors
from skincli.errors import SkinError

HELP = ("Export a run for other runtimes: --format savedmodel (TensorFlow Serving, "
        "<out>/<run>/<version>/), tflite or tflite-int8 (for Android/iOS apps: "
        "<out>/<run>.tflite + a .json with classes and preprocessing), with the measured "
        "agreement with the float model.")

FORMATS = ("savedmodel", "tflite", "tflite-int8")


@handle_errors
def command(
    run: Annotated[str | None, typer.Argument(
        help="Run name or folder (default: runs/CURRENT, else the latest run).")] = None,
    fmt: Annotated[str, typer.Option(
        "--format", help="savedmodel (TensorFlow Serving), tflite (float32, for apps) or "
        "tflite-int8 (quantised; refused beyond --tolerance unless --force).")] = "savedmodel",
    out: Annotated[Path, typer.Option(
        help="Folder for exported models; savedmodel writes <out>/<run name>/<version>/, "
        "tflite <out>/<run name>[-int8].tflite + .json.", file_okay=False)] = Path("exported"),
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
    """Write the SavedModel or the TFLite model and say how to use it."""
    from skincli.decision import check_rule

    fmt = fmt.strip().lower()
    if fmt not in FORMATS:
        from skincli.errors import did_you_mean

        raise SkinError(f"Unknown --format {fmt!r}.{did_you_mean(fmt, list(FORMATS))}",
                        hint="Use savedmodel, tflite or tflite-int8")
    rule = check_rule(decision)
    if fmt != "savedmodel" and (rule != "balanced" or prevalence is not None):
        raise SkinError("--decision and --prevalence apply to --format savedmodel",
                        hint="A .tflite answers with calibrated probabilities; its JSON "
                        "names the temperature, and the app applies any prior itself")
    from skincli.serve.export import export_saved_model, export_tflite  # the export core

    if fmt == "savedmodel":
        with ui.err_console.status("Exporting SavedModel..."):
            target = export_saved_model(run, out, runs_dir, version, decision=rule,
                                        prevalence=prevalence)
        _show_saved_model(target, rule)
        return
    with ui.err_console.status("Converting and measuring against the float model..."):
        meta = export_tflite(run, out, runs_dir, fmt=fmt, int8_mode=int8.strip().lower(),
                             tolerance=tolerance, force=force)
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
    """Where the .tflite went and how closely it agrees with the float model."""
    q = meta["measured_against_float_model"]
    ui.console.print(f"Wrote {meta['path']} ({meta['bytes'] / 1e6:.1f} MB, "
                     f"{meta['quantization']}) and {meta['metadata_path']}", highlight=False)
    ui.console.print(
        f"Against the float model on {q['images']}: top-1 agreement "
        f"{q['top1_agreement']:.1%}, macro-F1 {q['macro_f1_float']:.3f} -> {q['macro_f1']:.3f} "
        f"({q['macro_f1_change']:+.3f}), max |delta p| {q['max_abs_prob']:.2g}",
        highlight=False, soft_wrap=True)
    if fmt == "tflite-int8" and (1 - q["top1_agreement"] > tolerance
                                 or -q["macro_f1_change"] > tolerance):
        ui.warn(f"beyond the tolerance {tolerance:g}; written because of --force")
