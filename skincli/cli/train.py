"""`skin train`: a thin wrapper over `skincli.train.train` with Rich progress and a summary."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from skincli import ui
from skincli.cli.common import handle_errors
from skincli.train.config import DEFAULTS, PRESETS

HELP = ("Train a classifier on a split: the head on a frozen backbone, then fine-tuning; "
        "selects the epoch with the best validation macro F1 and writes runs/<name>/.")


def _d(key: str) -> str:
    """'[default: x]' for the help text, taken from the one table of defaults."""
    value = DEFAULTS[key]
    shown = {True: "on", False: "off", None: "the arch's own"}.get(value, value)  # type: ignore[call-overload]
    return f" (default: {shown})"


def _opt(*names: str, help: str, key: str | None = None, **kw: Any) -> Any:
    return typer.Option(*names, help=help + (_d(key) if key else ""), show_default=False, **kw)


@handle_errors
def command(
    split: Annotated[Path | None, _opt("--split", help="Split CSV written by `skin split`.",
                                       key="split", dir_okay=False)] = None,
    arch: Annotated[str | None, _opt("--arch", "-a", help="Architecture (see --list-archs).",
                                     key="arch")] = None,
    weights: Annotated[str | None, _opt("--weights", help="imagenet, none, or a .weights.h5/"
                                        ".keras file to start from.", key="weights")] = None,
    input_size: Annotated[int | None, _opt("--input-size", help="Input side in pixels.",
                                           key="input_size")] = None,
    epochs: Annotated[int | None, _opt("--epochs", "-e", help="Head epochs (frozen backbone).",
                                       key="epochs")] = None,
    fine_tune: Annotated[str | None, _opt("--fine-tune", help="What to fine-tune after the "
                                          "head: all, top:N (last N backbone layers) or none.",
                                          key="fine_tune")] = None,
    fine_tune_epochs: Annotated[int | None, _opt("--fine-tune-epochs", help="Fine-tuning "
                                                 "epochs.", key="fine_tune_epochs")] = None,
    batch_size: Annotated[int | None, _opt("--batch-size", "-b", help="Images per step.",
                                           key="batch_size")] = None,
    lr: Annotated[float | None, _opt("--lr", help="Peak learning rate of the head phase.",
                                     key="lr")] = None,
    fine_tune_lr: Annotated[float | None, _opt("--fine-tune-lr", help="Peak learning rate of "
                                               "fine-tuning.", key="fine_tune_lr")] = None,
    weight_decay: Annotated[float | None, _opt("--weight-decay", help="AdamW weight decay.",
                                               key="weight_decay")] = None,
    warmup_epochs: Annotated[float | None, _opt("--warmup-epochs", help="Linear warm-up "
                                                "before the cosine decay.",
                                                key="warmup_epochs")] = None,
    oversample: Annotated[bool | None, _opt("--oversample/--no-oversample", help="Balanced "
                                            "classes in every batch (sampling, not copies).",
                                            key="oversample")] = None,
    oversample_strength: Annotated[float | None, _opt(
        "--oversample-strength", help="How balanced the sampling is: class c drawn with "
        "weight n_c^(1-s); 1 balanced, 0.5 square root, 0 the data's mix.",
        key="oversample_strength")] = None,
    class_weights: Annotated[bool | None, _opt("--class-weights/--no-class-weights",
                                               help="Weight the loss by inverse class "
                                               "frequency.", key="class_weights")] = None,
    loss: Annotated[str | None, _opt("--loss", help="ce or focal.", key="loss")] = None,
    focal_gamma: Annotated[float | None, _opt("--focal-gamma", help="Focal loss gamma.",
                                              key="focal_gamma")] = None,
    label_smoothing: Annotated[float | None, _opt("--label-smoothing", help="Label smoothing.",
                                                  key="label_smoothing")] = None,
    augment: Annotated[float | None, _opt("--augment", help="Augmentation strength: 0 off, 1 "
                                          "default, up to 2.", key="augment")] = None,
    mixup: Annotated[float | None, _opt("--mixup", help="Mixup Beta parameter (0 = off).",
                                        key="mixup")] = None,
    cutmix: Annotated[float | None, _opt("--cutmix", help="CutMix Beta parameter (0 = off).",
                                         key="cutmix")] = None,
    dropout: Annotated[float | None, _opt("--dropout", help="Dropout before the logits.",
                                          key="dropout")] = None,
    use_metadata: Annotated[bool | None, _opt(
        "--use-metadata/--no-use-metadata", help="Add a term of the patient's age, sex and "
        "site to the logits, trained with the network (needs a split made with --metadata; "
        "predictions without metadata equal the image model's).",
        key="use_metadata")] = None,
    head_units: Annotated[int | None, _opt("--head-units", help="Hidden units between the "
                                           "pooled features and the logits (0 = linear head).",
                                           key="head_units")] = None,
    colour_constancy: Annotated[str | None, _opt(
        "--colour-constancy", help="shades-of-gray: normalise each image's illuminant inside "
        "the model (Shades of Gray, p = 6), trained with a colour-shift augmentation; none: "
        "off.", key="colour_constancy")] = None,
    ema: Annotated[float | None, _opt("--ema", help="Moving average of the weights (e.g. "
                                      "0.99) used for validation and the saved model; 0 off.",
                                      key="ema")] = None,
    patience: Annotated[int | None, _opt("--patience", help="Stop a phase after this many "
                                         "epochs without a better val macro F1.",
                                         key="patience")] = None,
    seed: Annotated[int | None, _opt("--seed", help="Random seed (same seed, same run).",
                                     key="seed")] = None,
    deterministic: Annotated[bool | None, _opt("--deterministic/--no-deterministic",
                                               help="Deterministic TensorFlow ops.",
                                               key="deterministic")] = None,
    name: Annotated[str | None, _opt("--name", "-n", help="Run folder name; the default name "
                                     "auto-increments, any other must be free.",
                                     key="name")] = None,
    runs_dir: Annotated[Path | None, _opt("--runs-dir", help="Where run folders go.",
                                          key="runs_dir", file_okay=False)] = None,
    resume: Annotated[str | None, _opt("--resume", help="Continue an interrupted or crashed "
                                       "run (name or folder) from its checkpoint.")] = None,
    strategy: Annotated[str | None, _opt("--strategy", help="tf.distribute strategy: default, "
                                         "mirrored or multiworker (TF_CONFIG).",
                                         key="strategy")] = None,
    threads: Annotated[int | None, _opt("--threads", help="CPU threads (0 = all cores).",
                                        key="threads")] = None,
    cache: Annotated[str | None, _opt("--cache", help="memory (decode images once) or none.",
                                      key="cache")] = None,
    jit_compile: Annotated[bool | None, _opt("--jit-compile/--no-jit-compile",
                                             help="XLA-compile the training step.",
                                             key="jit_compile")] = None,
    calibrate: Annotated[bool | None, _opt("--calibrate/--no-calibrate", help="At the end, "
                                           "fit temperature scaling on the validation images "
                                           "(off: temperature 1.0; the uncertain threshold "
                                           "and the out-of-distribution reference are made "
                                           "either way).",
                                           key="calibrate")] = None,
    triage_sensitivity: Annotated[float | None, _opt(
        "--triage-sensitivity", help="Fit the referral threshold on the malignancy score for "
        "this sensitivity on the validation images (stored in run.json).",
        key="triage_sensitivity")] = None,
    triage_fit: Annotated[str | None, _opt(
        "--triage-fit", help="How the referral threshold is fitted: lower-bound (default; the "
        "one-sided 95% Clopper-Pearson bound of validation sensitivity reaches the target, so "
        "it holds on unseen lesions at the cost of more referrals) or point (the estimate "
        "reaches it).", key="triage_fit")] = None,
    preset: Annotated[str | None, _opt("--preset", help=f"Named defaults: "
                                       f"{', '.join(PRESETS)} (explicit options win).")] = None,
    list_archs: Annotated[bool, typer.Option("--list-archs", help="List the architectures "
                                             "and exit.")] = False,
) -> None:
    """Train a model; see HELP."""
    if list_archs:
        _print_archs()
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    options = {k: v for k, v in locals().items()
               if k in DEFAULTS and v is not None}
    if isinstance(options.get("split"), Path) or isinstance(options.get("runs_dir"), Path):
        options = {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()}

    from skincli.runs import load_run_info
    from skincli.train import resolve, trainer

    view = TrainProgress()
    if resume:
        ignored = sorted(k for k in options if k != "runs_dir")
        if ignored or preset:
            ui.warn("resuming uses the run's own config.yaml; ignoring "
                    + ", ".join("--" + k.replace("_", "-") for k in ignored + (["preset"]
                                                                               if preset else [])))
        with view:
            run_dir = trainer.resume(resume, runs_dir=options.get("runs_dir",
                                                                  DEFAULTS["runs_dir"]),
                                     progress=view)
    else:
        cfg = resolve(options, preset=preset)
        with view:
            run_dir = trainer.train(cfg, progress=view)
    info = load_run_info(run_dir)
    _print_summary(run_dir, info)
    if info.extra.get("interrupted"):
        ui.warn(f"interrupted: the best model so far is saved in {run_dir}; continue with "
                f"`skin train --resume {run_dir.name}`")
        raise typer.Exit(code=130)


class TrainProgress:
    """Receives trainer events: a progress bar per epoch and one line per finished epoch."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(),
                            TimeRemainingColumn(), console=ui.console, transient=True,
                            # off the terminal it would show nothing but a blank line
                            disable=not ui.console.is_terminal)
        self.task: Any = None

    def __enter__(self) -> TrainProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.stop()

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        c = self.bar.console
        if event == "start":
            counts = ", ".join(f"{k} {n}" for k, n in zip(info["classes"], info["train_counts"]))
            verb = "Resuming" if info.get("resumed") else "Training"
            c.print(f"{verb} [bold]{info['arch']}[/] at {info['input_size']} px on "
                    f"{info['n_train']} images ({counts}); validating on {info['n_val']} "
                    f"-> run [bold]{info['run']}[/]", highlight=False)
        elif event == "phase":
            c.rule(f"{info['phase']}: {info['epochs']} epochs x {info['steps']} steps, peak lr "
                   f"{info['lr']:g}, {info['trainable_params']:,} trainable parameters")
        elif event == "epoch_start":
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.task = self.bar.add_task(f"{info['phase']} {info['epoch']}/{info['epochs']}",
                                          total=info["steps"], loss="-")
        elif event == "batch" and self.task is not None:
            loss = "-" if info["loss"] is None else f"{info['loss']:.4f}"
            self.bar.update(self.task, completed=info["step"], loss=loss)
        elif event == "epoch":
            if self.task is not None:
                self.bar.remove_task(self.task)
                self.task = None
            mark = " [green]best[/]" if info["best"] else ""
            skipped = f"  [yellow]{info['skipped']} unreadable skipped[/]" if info[
                "skipped"] else ""
            stop = "  [dim]early stop[/]" if info["stopping"] else ""
            c.print(f"{info['phase']:>9} {info['epoch_in_phase']:>2}/{info['epochs']:<2} "
                    f"loss {info['loss']:.4f}  val loss {info['val_loss']:.4f}  "
                    f"val macro F1 [bold]{info['val_macro_f1']:.3f}[/]  "
                    f"bal acc {info['val_balanced_accuracy']:.3f}  {info['seconds']:.0f}s"
                    f"{mark}{skipped}{stop}", highlight=False)
        elif event == "warning":
            ui.warn(info["message"])
        elif event == "saving":
            c.print(f"Saving run {info['run']} ...", highlight=False)


def _triage_text(rec: dict[str, Any]) -> str:
    if rec.get("threshold") is None:
        return f"none ({rec.get('reason', 'not fitted')})"
    val = rec.get("validation") or {}
    fit = "95% lower bound" if rec.get("fit") == "lower-bound" else "point estimate"
    text = (f"{rec['threshold']:.3f} for {rec['target_sensitivity']:.0%} sensitivity, {fit} "
            f"(validation: {val.get('sensitivity') or 0:.0%} sensitivity, "
            f"{val.get('specificity') or 0:.0%} specificity)")
    return f"{text}; {rec['fallback']}" if rec.get("fallback") else text


def _print_summary(run_dir: Path, info: Any) -> None:
    m, x = info.val_metrics, info.extra
    rows = [
        ("run", str(run_dir)),
        ("architecture", f"{info.arch} at {info.input_size} px"),
        ("best epoch", f"{m.get('best_epoch')} of {x.get('epochs_run')}"),
        ("val macro F1", f"{m.get('macro_f1', 0):.3f}"),
        ("val balanced accuracy", f"{m.get('balanced_accuracy', 0):.3f}"),
        ("val accuracy", f"{m.get('accuracy', 0):.3f}"),
        ("uncertain below", "n/a" if info.uncertain_threshold is None else
         f"{info.uncertain_threshold:.3f} ({x.get('uncertain_val_share', 0):.0%} of validation)"),
        ("calibration", _calibration_text(m.get("calibration") or {})),
        ("out-of-distribution check", "on" if x.get("reference") else "off (too few images)"),
        ("triage threshold", _triage_text(x.get("triage") or {})),
        ("training time", f"{x.get('train_seconds', 0):.0f} s "
                          f"({x.get('images_per_second', 0):.1f} images/s); "
                          f"wall {x.get('wall_seconds', 0):.0f} s"),
        ("unreadable images skipped", str(x.get("skipped_images", 0))),
    ]
    ui.console.print(ui.table("Training summary", ["", "value"], rows))
    per_class = m.get("per_class_f1") or {}
    ui.console.print(ui.table("Validation F1 per class", ["class", "F1"],
                              [(c, "n/a" if v is None else f"{v:.3f}")
                               for c, v in per_class.items()]))


def _calibration_text(cal: dict[str, Any]) -> str:
    """'T = 1.42: val ECE 0.120 -> 0.041, NLL 0.90 -> 0.81' (or why there is none)."""
    if not cal.get("calibrated"):
        return "off (temperature 1.0)" if cal.get("n_val", 1) else "none (no validation images)"
    return (f"T = {cal['temperature']:.3g}: val ECE {cal['val_ece_before']:.3f} -> "
            f"{cal['val_ece_after']:.3f}, NLL {cal['val_nll_before']:.3f} -> "
            f"{cal['val_nll_after']:.3f}")


def _print_archs() -> None:
    from skincli.models.registry import list_archs

    rows = [(a.name, a.input_size, f"{a.params_millions:.2f}", a.weights_source,
             "yes" if a.weights_available() else "no") for a in list_archs()]
    t = ui.table("Architectures (--arch)", ["name", "input", "params (M)",
                                            "ImageNet weights from", "available now"], rows)
    t.columns[0].no_wrap = True
    ui.console.print(t)
