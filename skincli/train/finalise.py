"""The end of a run: the selected model, its validation pass, calibration and the run folder.

One pass of the saved model over the validation images gives the final validation metrics
and, through the same code as `skin evaluate --calibrate` (skincli.calibration and
predictor.build_reference): the temperature (unless calibrate is off), the "uncertain"
threshold and the out-of-distribution reference, all stored in run.json, so `skin predict`
gives calibrated probabilities and warnings right after training.

run.json is written last (its presence marks a finished run); then `runs/.<name>.tmp/` is
renamed to `runs/<name>/`.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from skincli.data.split import provenance
from skincli.errors import SkinError
from skincli.fsutil import atomic_path, write_json, write_text
from skincli.metrics import classification_metrics
from skincli.runs import MODEL_FILE, RunInfo, save_run_info
from skincli.train.checkpoint import Checkpoint, write_history
from skincli.train.config import TrainConfig
from skincli.train.data import SplitData
from skincli.train.model import RunModel, clean_copy, metadata_head
from skincli.train.runtime import disk_guard, package_versions

if TYPE_CHECKING:  # annotations only: the Predictor is loaded when a run is finalised
    from skincli.predictor import Predictor

# progress(event, info): the trainer's progress function (see skincli.train.trainer).
Progress = Callable[[str, dict[str, Any]], None]


def write_static_files(tmp_dir: Path, cfg: TrainConfig, split: SplitData) -> None:
    """Files known before training: config.yaml, the split copies, versions.json."""
    with disk_guard("the run folder"):
        write_text(tmp_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        shutil.copyfile(split.path, tmp_dir / "split.csv")
        # The sidecar (data root, seed, counts, dropped files): load_split needs it beside the CSV.
        shutil.copyfile(split.path.with_suffix(".json"), tmp_dir / "split.json")
        write_json(tmp_dir / "versions.json", package_versions())


def finish(cfg: TrainConfig, split: SplitData, run_model: RunModel, ckpt: Checkpoint, *,
           final_dir: Path, val_ds: Any, skipped: Any, progress: Progress, interrupted: bool,
           started: float) -> Path:
    """Best weights -> validation pass -> calibration -> every file -> rename into place.

    One pass of the saved model over the validation images gives the logits (metrics,
    temperature, uncertain threshold) and the embeddings and colour statistics (the
    out-of-distribution reference), computed by the Predictor as `skin evaluate` does.
    `started` is the time.perf_counter() at which the run (or its resume) began.
    """
    from skincli.calibration import softmax
    from skincli.clinical.triage import fit_for_training
    from skincli.engines.convert import write_run_tflite_from
    from skincli.predictor import Predictor

    state, tmp_dir, resume_name = ckpt.state, ckpt.run_dir, ckpt.resume_name()
    progress("saving", {"run": final_dir.name, "interrupted": interrupted})
    if ckpt.best_weights is not None:
        run_model.model.set_weights(ckpt.best_weights)
    clean = clean_copy(cfg, run_model, len(split.classes), state.input_size)
    info = RunInfo(name=final_dir.name, arch=cfg.arch, classes=list(split.classes),
                   input_size=state.input_size, preprocessing=dict(state.preprocessing))
    head_record = _metadata_head_record(run_model, split)
    info.extra = dict(head_record)  # the validation pass below applies the term
    val = validation_outputs(Predictor(tmp_dir, info, clean.model), val_ds)
    metrics = classification_metrics(val.labels, softmax(val.logits), split.classes)
    metrics["best_epoch"] = state.best_epoch
    cal = calibrate_validation(val, cfg.calibrate, cfg.uncertain_accuracy)
    metrics["calibration"] = cal["val_metrics"]
    for message in cal["warnings"]:
        progress("warning", {"message": message})
    with disk_guard("the model", resume_name):
        tmp_model = tmp_dir / ".model-tmp.keras"
        clean.model.save(tmp_model)
        os.replace(tmp_model, tmp_dir / MODEL_FILE)
    with disk_guard("model.tflite", resume_name):
        tflite = write_run_tflite_from(tmp_dir, clean.model, val_ds, cal["temperature"],
                                       lambda m: progress("warning", {"message": m}))
    state.skipped = dict(skipped.reasons)
    write_history(tmp_dir, state.history)
    with disk_guard("the history plot", resume_name):
        plot_history(state.history, tmp_dir / "history.png")
    images_per_s = state.images_seen / state.train_seconds if state.train_seconds else 0.0
    info.temperature = cal["temperature"]
    info.uncertain_threshold = cal["uncertain_threshold"]
    info.created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    info.split_sha256 = split.sha256
    info.config = cfg.to_dict()
    info.val_metrics = metrics
    info.extra = {
        "interrupted": interrupted,
        **cal["extra"],
        "triage": fit_for_training(softmax(val.logits, cal["temperature"]), val.labels,
                                   split.classes, cfg),
        "skipped_images": len(state.skipped),
        "skipped_files": sorted(state.skipped)[:100],
        "epochs_run": len(state.history),
        "stopped_early": list(state.stopped_early),
        "train_seconds": round(state.train_seconds, 2),
        "wall_seconds": round(time.perf_counter() - started, 2),
        "images_per_second": round(images_per_s, 2),
        "n_train": len(split.train_paths),
        "n_val": len(split.val_paths),
        "data": provenance(split.frame.attrs.get("meta", {})),
        "tflite": tflite,
        **head_record,
    }
    with disk_guard("run.json", resume_name):
        if interrupted:
            ckpt.save_state()
        save_run_info(tmp_dir, info)  # last file: its presence marks a finished run
    if not interrupted:
        ckpt.discard()
    if final_dir.exists():
        raise SkinError(f"{final_dir} appeared while training; the finished run is in "
                        f"{tmp_dir}", hint="Rename one of them")
    os.replace(tmp_dir, final_dir)
    return final_dir


def _metadata_head_record(run_model: RunModel, split: SplitData) -> dict[str, Any]:
    """run.json's {"metadata_head": ...} of a --use-metadata run ({} otherwise)."""
    head = metadata_head(run_model)
    if head is None:
        return {}
    return {"metadata_head": {
        **head.to_dict(split.classes),
        "coverage": {"train": head.encoder.coverage(split.train_meta or []),
                     "n_train": len(split.train_paths)}}}


@dataclass
class ValidationOutputs:
    """The saved model's outputs on the readable validation images."""

    logits: np.ndarray                # (N, C)
    labels: np.ndarray                # (N,)
    embeddings: np.ndarray | None     # (N, D) pooled backbone features, if the model has them
    colour: np.ndarray                # (N, 7) colour statistics of the model-input images


def validation_outputs(predictor: Predictor, dataset: Any) -> ValidationOutputs:
    """One pass over an evaluation dataset with `Predictor.logits_and_embeddings`."""
    from skincli.ood import colour_features

    logits, labels, embs, colours = [], [], [], []
    for x, y in dataset:
        meta = None
        if isinstance(x, (tuple, list)):  # (image, encoded metadata)
            x, meta = x[0], np.asarray(x[1], dtype=np.float32)
        batch = np.asarray(x, dtype=np.float32)
        out, emb = predictor.logits_and_embeddings(batch, batch_size=max(1, len(batch)),
                                                   meta=meta)
        logits.append(out)
        labels.append(np.asarray(y))
        colours.append(colour_features(batch))
        if emb is not None:
            embs.append(emb)
    c = len(predictor.classes)
    if not logits:
        return ValidationOutputs(np.zeros((0, c), np.float32), np.zeros((0,), np.int64), None,
                                 np.zeros((0, 7)))
    return ValidationOutputs(
        logits=np.concatenate(logits), labels=np.concatenate(labels).astype(np.int64),
        embeddings=np.concatenate(embs) if len(embs) == len(logits) else None,
        colour=np.concatenate(colours))


def calibrate_validation(val: ValidationOutputs, fit: bool, uncertain_accuracy: float
                         ) -> dict[str, Any]:
    """Temperature, uncertain threshold and OOD reference from the validation outputs.

    The same functions as `skin evaluate --calibrate` (skincli.calibration, build_reference).
    Without `fit` the temperature stays 1.0 and the threshold is chosen on the raw
    probabilities by the same rule. Returns the run.json pieces and any warnings.
    """
    from skincli.calibration import calibrate, choose_uncertain_threshold, softmax, temperature_nll
    from skincli.metrics import expected_calibration_error
    from skincli.ood import build_reference

    n = int(val.labels.size)
    warnings: list[str] = []
    if n == 0:
        warnings.append("no readable validation images: no calibration, no uncertain "
                        "threshold and no out-of-distribution reference")
        return {"temperature": 1.0, "uncertain_threshold": None, "warnings": warnings,
                "val_metrics": {"calibrated": False, "n_val": 0}, "extra": {}}
    if fit:
        result = calibrate(val.logits, val.labels, uncertain_accuracy)
        temperature, rule = float(result["temperature"]), result["uncertain"]
        scores = {k: result[k] for k in ("val_nll_before", "val_nll_after", "val_ece_before",
                                          "val_ece_after")}
    else:
        temperature = 1.0
        probs = softmax(val.logits, 1.0)
        rule = choose_uncertain_threshold(probs, val.labels, uncertain_accuracy)
        nll = temperature_nll(val.logits, val.labels, 1.0)
        ece = expected_calibration_error(probs, val.labels)["ece"]
        scores = {"val_nll_before": nll, "val_nll_after": nll, "val_ece_before": ece,
                  "val_ece_after": ece}
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    val_metrics = {"calibrated": bool(fit), "temperature": temperature, "n_val": n, **scores}
    extra: dict[str, Any] = {
        "uncertain_rule": rule["rule"],
        "uncertain_val_share": rule["uncertain_share"],
    }
    if fit:
        # The same record `skin evaluate --calibrate` writes (it replaces this one if re-run).
        extra["calibration"] = {
            "method": "temperature scaling (validation NLL)", "fitted": stamp,
            "fitted_by": "skin train", "n_val": n, "previous_temperature": 1.0,
            "temperature": temperature, **scores}
    if n >= 10:
        extra["reference"] = build_reference(
            val.colour, val.embeddings,
            source=f"validation split ({n} images), skin train")
    else:
        warnings.append(f"only {n} readable validation images: no out-of-distribution "
                        "reference (it needs 10), so `skin predict` cannot warn about "
                        "unusual images")
    return {"temperature": temperature, "uncertain_threshold": float(rule["threshold"]),
            "val_metrics": val_metrics, "extra": extra, "warnings": warnings}



def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    """Loss and validation macro F1 / balanced accuracy per epoch; phase changes dashed."""
    from skincli.plots import pyplot

    plt = pyplot()

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [r["epoch"] for r in history]
    ax1.plot(epochs, [r.get("loss") for r in history], marker="o", label="train loss")
    ax1.plot(epochs, [r.get("val_loss") for r in history], marker="o", label="val loss")
    ax1.set_xlabel("epoch")
    ax1.set_title("loss")
    ax2.plot(epochs, [r.get("val_macro_f1") for r in history], marker="o", label="val macro F1")
    ax2.plot(epochs, [r.get("val_balanced_accuracy") for r in history], marker="o",
             label="val balanced accuracy")
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("epoch")
    ax2.set_title("validation")
    for prev, row in zip(history, history[1:]):
        if row["phase"] != prev["phase"]:
            for ax in (ax1, ax2):
                ax.axvline(row["epoch"] - 0.5, color="grey", linestyle="--", linewidth=1)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
