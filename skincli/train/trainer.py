"""Train a classifier on a split and write a self-describing run folder.

Phases: (1) the new head on a frozen backbone, (2) fine-tuning the top of the backbone (or all
of it) at a lower learning rate. BatchNorm layers stay frozen in phase 2: in Keras 3 a
BatchNormalization layer whose `trainable` is False runs in inference mode, so its ImageNet
statistics are neither used as batch statistics nor overwritten by a small, imbalanced batch
(the fine-tuning recipe of the Keras transfer-learning guide). Each phase uses AdamW with a
linear warm-up and a cosine decay. After every epoch the validation macro F1 is computed; the
best weights are kept, and a phase stops early after `patience` epochs without improvement.

At the end, one pass of the selected model over the validation images gives the final
validation metrics and, through the same code as `skin evaluate --calibrate`
(skincli.calibration and predictor.build_reference): the temperature (unless calibrate is off),
the "uncertain" threshold and the out-of-distribution reference, all stored in run.json, so
`skin predict` gives calibrated probabilities and warnings right after training.

The run is built in `runs/.<name>.tmp/` and renamed to `runs/<name>/` when complete, so a
crashed run never looks finished. A checkpoint (last weights, optimizer state, progress) is
written to `ckpt/` after every epoch: `resume()` continues from it. Ctrl-C saves the best model
so far as a usable run marked `extra.interrupted = true` (its `ckpt/` stays for resuming).

`progress(event, info)` receives, in order: "start", then per phase "phase", per epoch
"epoch_start", "batch" (each step) and "epoch" (with validation metrics), and finally "saving";
"warning" may come at any time (also after "saving"). It may raise KeyboardInterrupt to stop
like Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import errno
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from skincli.data.split import provenance
from skincli.errors import SkinError
from skincli.fsutil import atomic_path, write_json, write_text
from skincli.metahead import FIELD_DROPOUT, LR_SCALE
from skincli.runs import MODEL_FILE, RunInfo, next_run_dir, save_run_info
from skincli.train.config import DEFAULTS, TrainConfig, fine_tune_layers, resolve

Progress = Callable[[str, dict[str, Any]], None]

CKPT_DIR = "ckpt"
STATE_FILE = "state.json"
HISTORY_COLUMNS = ("epoch", "phase", "loss", "accuracy", "lr", "val_loss", "val_macro_f1",
                   "val_balanced_accuracy", "val_accuracy", "seconds")


# --- small helpers ------------------------------------------------------------------------------

def _no_progress(event: str, info: dict[str, Any]) -> None:
    return None


def configure_threads(threads: int = 0) -> int:
    """Use `threads` CPU threads for TensorFlow ops (0 = every core this process may use).

    One inter-op thread: the model's ops run one after another anyway and tf.data has its own
    pool, so more would only oversubscribe a small machine.
    """
    import tensorflow as tf

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    n = int(threads) or cores
    with contextlib.suppress(RuntimeError):  # TF already initialised in this process
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    return n


def _is_disk_full(exc: BaseException) -> bool:
    text = str(exc)
    return (getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in text
            or "errno = 28" in text)


@contextlib.contextmanager
def disk_guard(what: str, resume_name: str | None = None) -> Iterator[None]:
    """Turn 'disk full' (and other OS errors) while writing `what` into one clear line."""
    try:
        yield
    except SkinError as exc:
        if _is_disk_full(exc):
            raise _disk_full_error(what, resume_name) from None
        raise
    except OSError as exc:
        if _is_disk_full(exc):
            raise _disk_full_error(what, resume_name) from None
        raise SkinError(f"Could not write {what}: {exc.strerror or exc}",
                        hint="Check the runs folder is writable") from None


def _disk_full_error(what: str, resume_name: str | None) -> SkinError:
    hint = "Free some space"
    if resume_name:
        hint += f", then continue with `skin train --resume {resume_name}`"
    return SkinError(f"No space left on the disk while writing {what}", hint=hint)


def package_versions() -> dict[str, str]:
    """Versions of the packages a run depends on (no host names or paths)."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("skincli", "tensorflow", "tensorflow-cpu", "keras", "numpy", "scikit-learn",
                 "pandas", "pillow"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return versions


# --- data ---------------------------------------------------------------------------------------

@dataclass
class SplitData:
    """The parts of a split the trainer uses."""

    path: Path
    sha256: str
    classes: list[str]
    train_paths: list[str]
    train_labels: list[int]
    val_paths: list[str]
    val_labels: list[int]
    frame: Any = field(repr=False, default=None)
    # Per image {sex, age_band, site} (skincli.metahead) when the split carries metadata.
    train_meta: list[dict[str, str]] | None = field(repr=False, default=None)
    val_meta: list[dict[str, str]] | None = field(repr=False, default=None)


def load_split_data(path: str | Path) -> SplitData:
    """Read the split CSV and check it can train a model (every class has training images)."""
    from skincli.data.split import load_split, split_file_sha256
    from skincli.metahead import records_from_frame

    path = Path(path)
    df = load_split(path)
    classes = [str(c) for c in (df.attrs.get("classes") or sorted(df["label"].astype(str)
                                                                    .unique()))]
    if len(classes) < 2:
        raise SkinError(f"{path} has {len(classes)} class; a classifier needs at least 2",
                        hint="Add image folders for more classes and run `skin split` again")
    index = {c: i for i, c in enumerate(classes)}
    parts, meta = {}, {}
    for part in ("train", "val"):
        sub = df[df["split"].astype(str) == part]
        parts[part] = ([str(p) for p in sub["filepath"]],
                       [index[str(lab)] for lab in sub["label"]])
        meta[part] = records_from_frame(sub)
    counts = np.bincount(parts["train"][1], minlength=len(classes))
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        raise SkinError(f"Class {empty[0]!r} has no training images in {path}"
                        + (f" (nor do {', '.join(map(repr, empty[1:]))})" if len(empty) > 1
                           else ""),
                        hint="Add images for it or remove its folder, then run `skin split` "
                             "again")
    if not parts["val"][0]:
        raise SkinError(f"{path} has no validation images; model selection needs them",
                        hint="Run `skin split` with a validation fraction above 0")
    return SplitData(path=path, sha256=str(split_file_sha256(path)), classes=classes,
                     train_paths=parts["train"][0], train_labels=parts["train"][1],
                     val_paths=parts["val"][0], val_labels=parts["val"][1], frame=df,
                     train_meta=meta["train"], val_meta=meta["val"])


# --- metrics ------------------------------------------------------------------------------------

def classification_metrics(labels: np.ndarray, probs: np.ndarray,
                           classes: list[str]) -> dict[str, Any]:
    """Macro F1 and balanced accuracy over the classes present in `labels`, plus per-class F1.

    A class without validation images has no F1 (None) and is left out of the averages.
    """
    import warnings

    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
    labels = np.asarray(labels, np.int64)
    pred = np.asarray(probs).argmax(axis=1)
    present = sorted(set(labels.tolist()))
    f1 = f1_score(labels, pred, labels=present, average=None, zero_division=0)
    per_class: dict[str, float | None] = {c: None for c in classes}
    for cls_index, value in zip(present, f1):
        per_class[classes[cls_index]] = float(value)
    eps = 1e-7
    onehot = np.eye(len(classes))[labels]
    loss = float(-np.mean(np.sum(onehot * np.log(np.clip(probs, eps, 1.0)), axis=1)))
    return {
        "macro_f1": float(np.mean(f1)) if len(f1) else 0.0,
        "balanced_accuracy": float(balanced_accuracy_score(labels, pred)) if len(labels) else 0.0,
        "accuracy": float(accuracy_score(labels, pred)) if len(labels) else 0.0,
        "loss": loss,
        "per_class_f1": per_class,
        "n": int(len(labels)),
    }


# --- model --------------------------------------------------------------------------------------

def set_phase_trainable(built: Any, phase: str, fine_tune: str) -> None:
    """Freeze what the phase must not change; BatchNorm always stays frozen (inference mode)."""
    import keras

    backbone = built.backbone
    if phase == "head":
        backbone.trainable = False
        return
    backbone.trainable = True
    for layer in _all_layers(backbone):  # Keras skips sublayers if the flag did not change
        layer.trainable = True
    top = fine_tune_layers(fine_tune)
    layers = list(backbone.layers)
    if top is not None:
        for layer in layers[: max(0, len(layers) - top)]:
            layer.trainable = False
    for layer in _all_layers(backbone):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def _all_layers(model: Any) -> list[Any]:
    out = []
    for layer in model.layers:
        out.append(layer)
        if hasattr(layer, "layers"):
            out.extend(_all_layers(layer))
    return out


def make_schedule(peak_lr: float, steps_per_epoch: int, epochs: int, warmup_epochs: float,
                  min_lr_ratio: float) -> Any:
    """Linear warm-up to `peak_lr`, then cosine decay to `peak_lr * min_lr_ratio`."""
    import keras

    total = max(1, steps_per_epoch * epochs)
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), total - 1)
    if warmup <= 0:
        return keras.optimizers.schedules.CosineDecay(peak_lr, decay_steps=total,
                                                      alpha=min_lr_ratio)
    return keras.optimizers.schedules.CosineDecay(
        peak_lr / (warmup + 1), decay_steps=max(1, total - warmup), alpha=min_lr_ratio,
        warmup_target=peak_lr, warmup_steps=warmup)


def compile_for_phase(model: Any, cfg: TrainConfig, peak_lr: float, steps: int,
                      epochs: int) -> None:
    """A fresh AdamW + schedule and the configured loss (must be called after freezing)."""
    import keras

    optimizer = keras.optimizers.AdamW(
        learning_rate=make_schedule(peak_lr, steps, epochs, cfg.warmup_epochs, cfg.min_lr_ratio),
        weight_decay=cfg.weight_decay)
    # Decaying biases and BatchNorm/normalisation parameters only hurts.
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    if cfg.loss == "focal":
        loss = keras.losses.CategoricalFocalCrossentropy(
            alpha=1.0, gamma=cfg.focal_gamma, from_logits=True,
            label_smoothing=cfg.label_smoothing)
    else:
        loss = keras.losses.CategoricalCrossentropy(from_logits=True,
                                                    label_smoothing=cfg.label_smoothing)
    model.compile(optimizer=optimizer, loss=loss,
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
                  jit_compile=bool(cfg.jit_compile))


def make_strategy(name: str) -> Any:
    """The tf.distribute strategy for `--strategy` (default: the single-device one)."""
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":  # the cluster comes from TF_CONFIG (one worker without it)
        from skincli.train.multiworker import make_strategy as make_multiworker
        return make_multiworker()
    return tf.distribute.get_strategy()


def _is_chief(strategy: Any) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker"
                                             and int(resolver.task_id or 0) == 0)


# --- the session --------------------------------------------------------------------------------

def metadata_encoder(cfg: TrainConfig, split: SplitData) -> Any:
    """The metadata encoder of a `--use-metadata` run (None otherwise); checks the split has it."""
    if not cfg.use_metadata:
        return None
    from skincli.metahead import MetadataEncoder

    records = split.train_meta or []
    encoder = MetadataEncoder.fit(records)
    if not any(encoder.coverage(records).values()):
        raise SkinError(f"--use-metadata needs age, sex or site for the training images, and "
                        f"{split.path} has none",
                        hint="Make the split with `skin split DATA --metadata FILE`, or train "
                             "without --use-metadata")
    return encoder


@dataclass
class _State:
    """What a checkpoint remembers besides the weights."""

    phase_index: int = 0
    epoch_in_phase: int = 0  # epochs completed in the current phase
    best_f1: float = -1.0
    best_epoch: int = 0
    wait: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    train_seconds: float = 0.0
    images_seen: int = 0
    preprocessing: dict[str, Any] = field(default_factory=dict)
    input_size: int = 0
    stopped_early: list[str] = field(default_factory=list)


class _Session:
    """One training run from data to finished folder (new or resumed)."""

    def __init__(self, cfg: TrainConfig, tmp_dir: Path, final_dir: Path, split: SplitData,
                 progress: Progress, strategy: Any, state: _State | None = None) -> None:
        self.cfg = cfg
        self.strategy = strategy
        self.tmp_dir = tmp_dir
        self.final_dir = final_dir
        self.split = split
        self.progress = progress
        self.state = state or _State()
        self.ckpt = tmp_dir / CKPT_DIR
        self.best_weights: list[np.ndarray] | None = None
        self.wall_start = time.perf_counter()
        self.meta_encoder = metadata_encoder(cfg, split)
        self.fit_model: Any = None  # what fit() trains: the model, or model + metadata term

    def meta_rows(self, part: str) -> np.ndarray | None:
        """Encoded metadata of the train or val images (None without --use-metadata)."""
        if self.meta_encoder is None:
            return None
        records = self.split.train_meta if part == "train" else self.split.val_meta
        return self.meta_encoder.encode(records or [])

    def training_model(self, built: Any) -> Any:
        """The model fit() trains: the image model, plus the metadata term when asked.

        logits = image model(image) + centred one-hot metadata @ W (skincli.metahead); W
        starts at zero, so training starts from the image model alone.
        """
        if self.meta_encoder is None:
            self.fit_model = built.model
            return built.model
        import keras

        size = int(built.input_size)
        image = keras.Input((size, size, 3), name="image")
        meta = keras.Input((self.meta_encoder.dim,), name="metadata")
        term = keras.layers.Dense(len(self.split.classes), use_bias=False,
                                  kernel_initializer="zeros", name="metadata_logits")(meta)
        # W = LR_SCALE x kernel: with Adam the term then learns LR_SCALE times faster.
        term = keras.layers.Rescaling(LR_SCALE, name="metadata_scale")(term)
        logits = keras.layers.Add(name="fused_logits")([built.model(image), term])
        self.fit_model = keras.Model([image, meta], logits, name="with_metadata")
        return self.fit_model

    def metadata_head(self) -> Any:
        """The trained metadata term (skincli.metahead.MetadataHead) or None."""
        if self.meta_encoder is None or self.fit_model is None:
            return None
        from skincli.metahead import MetadataHead

        kernel = self.fit_model.get_layer("metadata_logits").get_weights()[0]
        return MetadataHead(self.meta_encoder, np.asarray(kernel, np.float32) * LR_SCALE)

    # phases ----------------------------------------------------------------------------------
    def phases(self) -> list[tuple[str, int, float]]:
        cfg = self.cfg
        out = []
        if cfg.epochs > 0:
            out.append(("head", cfg.epochs, cfg.lr))
        if cfg.fine_tune != "none" and cfg.fine_tune_epochs > 0:
            out.append(("fine-tune", cfg.fine_tune_epochs, cfg.fine_tune_lr))
        if not out:
            raise SkinError("Nothing to train: --epochs is 0 and fine-tuning is off",
                            hint="Set --epochs or --fine-tune-epochs above 0")
        return out

    # checkpoint ------------------------------------------------------------------------------
    def resume_name(self) -> str | None:
        """The name to pass to --resume, if a checkpoint exists to resume from."""
        return self.final_dir.name if (self.ckpt / STATE_FILE).exists() else None

    def _save_weights(self, model: Any, name: str) -> None:
        """ckpt/<name>.weights.h5 written atomically (Keras needs the .weights.h5 suffix, so
        fsutil.atomic_path's .tmp name does not fit)."""
        self.ckpt.mkdir(exist_ok=True)
        tmp = self.ckpt / f".{name}-tmp.weights.h5"
        model.save_weights(tmp)
        os.replace(tmp, self.ckpt / f"{name}.weights.h5")

    def save_best(self, model: Any) -> None:
        """The weights selected so far (what Ctrl-C and the finished run use)."""
        with disk_guard("the checkpoint", self.resume_name()):
            self._save_weights(model, "best")

    def save_checkpoint(self, model: Any) -> None:
        """The last epoch's weights, optimizer state and progress (what --resume continues)."""
        with disk_guard("the checkpoint", self.resume_name()):
            self._save_weights(model, "last")
            values = {f"v{i:04d}": np.asarray(v.numpy())
                      for i, v in enumerate(model.optimizer.variables)}
            tmp_npz = self.ckpt / ".optimizer-tmp.npz"
            with open(tmp_npz, "wb") as fh:
                np.savez(fh, **values)
            os.replace(tmp_npz, self.ckpt / "optimizer.npz")
            write_json(self.ckpt / STATE_FILE, dataclasses.asdict(self.state))
            self.write_history()

    def restore_optimizer(self, model: Any) -> None:
        path = self.ckpt / "optimizer.npz"
        if not path.exists():
            return
        with np.load(path) as data:
            values = [data[k] for k in sorted(data.files)]
        model.optimizer.build(model.trainable_variables)
        variables = list(model.optimizer.variables)
        if len(variables) != len(values) or any(
                tuple(v.shape) != tuple(a.shape) for v, a in zip(variables, values)):
            raise SkinError(f"The checkpoint in {self.ckpt} does not match the model",
                            hint="It was written by a different configuration; train anew")
        for var, value in zip(variables, values):
            var.assign(value)

    def build(self, weights: str, input_size: int | None) -> Any:
        """The run's model as the config describes it (one place for every build option)."""
        from skincli.models.registry import build_model

        cfg = self.cfg
        return build_model(cfg.arch, len(self.split.classes), weights=weights,
                           input_size=input_size, dropout=cfg.dropout, seed=cfg.seed,
                           head_units=cfg.head_units, colour_constancy=cfg.colour_constancy)

    def write_history(self) -> None:
        rows = self.state.history
        lines = [",".join(HISTORY_COLUMNS)]
        for row in rows:
            lines.append(",".join(_fmt(row.get(c)) for c in HISTORY_COLUMNS))
        write_text(self.tmp_dir / "history.csv", "\n".join(lines) + "\n")

    # the run ---------------------------------------------------------------------------------
    def run(self) -> Path:
        from skincli.train.pipeline import (
            SkippedImages,
            balanced_class_weights,
            eval_dataset,
            train_dataset,
        )

        cfg, split, state = self.cfg, self.split, self.state
        num_classes = len(split.classes)
        strategy = self.strategy
        resuming = (self.ckpt / STATE_FILE).exists()
        with strategy.scope():
            built = self.build("none" if resuming else cfg.weights, cfg.input_size)
            model = self.training_model(built)
        if not resuming:
            state.preprocessing = dict(built.preprocessing)
            state.input_size = int(built.input_size)
        size = state.input_size
        skipped = SkippedImages(dict(state.skipped))
        weights = (balanced_class_weights(split.train_labels, num_classes)
                   if cfg.class_weights else None)
        cache = cfg.cache == "memory"
        val_ds = eval_dataset(split.val_paths, split.val_labels, size=size,
                              batch_size=max(cfg.batch_size, 32), skipped=skipped, cache=cache,
                              meta=self.meta_rows("val"))
        infer = _inference_fn(model, size,
                              self.meta_encoder.dim if self.meta_encoder is not None else 0)

        if resuming:
            model.load_weights(self.ckpt / "best.weights.h5")
            self.best_weights = model.get_weights()
            model.load_weights(self.ckpt / "last.weights.h5")

        self.progress("start", {"classes": split.classes, "n_train": len(split.train_paths),
                                "n_val": len(split.val_paths), "input_size": size,
                                "arch": cfg.arch, "run": self.final_dir.name,
                                "resumed": resuming,
                                "train_counts": np.bincount(split.train_labels,
                                                            minlength=num_classes).tolist()})
        val_counts = np.bincount(split.val_labels, minlength=num_classes)
        for cls, n in zip(split.classes, val_counts):
            if n == 0:
                self.progress("warning", {"message": f"class {cls!r} has no validation images: "
                                                     "its F1 cannot be measured"})
        phases = self.phases()
        first_phase = True
        for phase_index, (phase, epochs, peak_lr) in enumerate(phases):
            if phase_index < state.phase_index:
                continue
            start_epoch = state.epoch_in_phase if phase_index == state.phase_index else 0
            if phase_index != state.phase_index:
                state.phase_index, state.epoch_in_phase, state.wait = phase_index, 0, 0
            if start_epoch >= epochs or phase in state.stopped_early:
                continue
            # A different random stream per phase (and per resumed start) so batches differ.
            data = train_dataset(
                split.train_paths, split.train_labels, num_classes=num_classes, size=size,
                batch_size=cfg.batch_size, skipped=skipped, oversample=cfg.oversample,
                oversample_strength=cfg.oversample_strength,
                augment=cfg.augment, mixup=cfg.mixup, cutmix=cfg.cutmix,
                seed=cfg.seed + 101 * phase_index + 7 * start_epoch, class_weights=weights,
                cache=cache, meta=self.meta_rows("train"),
                meta_blocks=None if self.meta_encoder is None else self.meta_encoder.blocks(),
                meta_dropout=FIELD_DROPOUT,
                colour_shift=1.0 if cfg.colour_constancy != "none" else 0.0)
            with strategy.scope():
                set_phase_trainable(built, phase, cfg.fine_tune)
                compile_for_phase(model, cfg, peak_lr, data.steps_per_epoch, epochs)
                if resuming and first_phase and start_epoch > 0:
                    self.restore_optimizer(model)
            first_phase = False
            self.progress("phase", {"phase": phase, "epochs": epochs, "start_epoch": start_epoch,
                                    "steps": data.steps_per_epoch, "lr": peak_lr,
                                    "trainable_params": int(sum(
                                        int(np.prod(v.shape)) for v in model.trainable_weights))})
            callback = _EpochCallback(self, phase, epochs, data.steps_per_epoch, val_ds, infer,
                                      skipped, split)
            model.fit(data.dataset, epochs=epochs, initial_epoch=start_epoch,
                      steps_per_epoch=data.steps_per_epoch, callbacks=[callback], verbose=0,
                      shuffle=False)  # the pipeline shuffles
            state.phase_index, state.epoch_in_phase = phase_index + 1, 0
            state.wait = 0
        return self.finish(built, val_ds, skipped, interrupted=False)

    def finish(self, built: Any, val_ds: Any, skipped: Any, interrupted: bool) -> Path:
        """Best weights -> validation pass -> calibration -> every file -> rename into place.

        One pass of the saved model over the validation images gives the logits (metrics,
        temperature, uncertain threshold) and the embeddings and colour statistics (the
        out-of-distribution reference), computed by the Predictor as `skin evaluate` does.
        """
        from skincli.clinical.triage import fit_for_training
        from skincli.engines.convert import write_run_tflite_from
        from skincli.predictor import Predictor, softmax

        cfg, split, state = self.cfg, self.split, self.state
        self.progress("saving", {"run": self.final_dir.name, "interrupted": interrupted})
        if self.fit_model is None:
            self.training_model(built)
        if self.best_weights is not None:
            self.fit_model.set_weights(self.best_weights)
        # Save a fresh, uncompiled copy: model.keras then holds no optimizer state.
        clean = self.build("none", state.input_size)
        clean.model.set_weights(built.model.get_weights())
        name = self.final_dir.name
        info = RunInfo(name=name, arch=cfg.arch, classes=list(split.classes),
                       input_size=state.input_size, preprocessing=dict(state.preprocessing))
        head = self.metadata_head()
        head_record = ({"metadata_head": {
            **head.to_dict(split.classes),
            "coverage": {"train": head.encoder.coverage(split.train_meta or []),
                         "n_train": len(split.train_paths)}}} if head is not None else {})
        info.extra = dict(head_record)  # the validation pass below applies the term
        val = validation_outputs(Predictor(self.tmp_dir, info, clean.model), val_ds)
        metrics = classification_metrics(val.labels, softmax(val.logits), split.classes)
        metrics["best_epoch"] = state.best_epoch
        cal = calibrate_validation(val, cfg.calibrate, cfg.uncertain_accuracy)
        metrics["calibration"] = cal["val_metrics"]
        for message in cal["warnings"]:
            self.progress("warning", {"message": message})
        with disk_guard("the model", self.resume_name()):
            tmp_model = self.tmp_dir / ".model-tmp.keras"
            clean.model.save(tmp_model)
            os.replace(tmp_model, self.tmp_dir / MODEL_FILE)
        with disk_guard("model.tflite", self.resume_name()):
            tflite = write_run_tflite_from(self.tmp_dir, clean.model, val_ds, cal["temperature"],
                                           lambda m: self.progress("warning", {"message": m}))
        state.skipped = dict(skipped.reasons)
        self.write_history()
        with disk_guard("the history plot", self.resume_name()):
            plot_history(state.history, self.tmp_dir / "history.png")
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
            "wall_seconds": round(time.perf_counter() - self.wall_start, 2),
            "images_per_second": round(images_per_s, 2),
            "n_train": len(split.train_paths),
            "n_val": len(split.val_paths),
            "data": provenance(split.frame.attrs.get("meta", {})),
            "tflite": tflite,
            **head_record,
        }
        with disk_guard("run.json", self.resume_name()):
            if interrupted:
                write_json(self.ckpt / STATE_FILE, dataclasses.asdict(state))
            save_run_info(self.tmp_dir, info)  # last file: its presence marks a finished run
        if not interrupted:
            shutil.rmtree(self.ckpt, ignore_errors=True)
        if self.final_dir.exists():
            raise SkinError(f"{self.final_dir} appeared while training; the finished run is in "
                            f"{self.tmp_dir}", hint="Rename one of them")
        os.replace(self.tmp_dir, self.final_dir)
        return self.final_dir


# --- the end of training: validation outputs and calibration ------------------------------------

@dataclass
class ValidationOutputs:
    """The saved model's outputs on the readable validation images."""

    logits: np.ndarray                # (N, C)
    labels: np.ndarray                # (N,)
    embeddings: np.ndarray | None     # (N, D) pooled backbone features, if the model has them
    colour: np.ndarray                # (N, 7) colour statistics of the model-input images


def validation_outputs(predictor: Any, dataset: Any) -> ValidationOutputs:
    """One pass over an evaluation dataset with `Predictor.logits_and_embeddings`."""
    from skincli.predictor import colour_features

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
    from skincli.calibration import calibrate, choose_uncertain_threshold, temperature_nll
    from skincli.metrics import expected_calibration_error
    from skincli.predictor import build_reference, softmax

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


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _inference_fn(model: Any, size: int, meta_dim: int = 0) -> Any:
    """A traced softmax(model(x)) for the per-epoch validation (x = (image, metadata) when
    meta_dim > 0).

    A named function with autograph off (as Keras's own predict step): there is no Python
    control flow to convert, and autograph would otherwise read and re-parse the source.
    """
    import tensorflow as tf

    spec = tf.TensorSpec([None, size, size, 3], tf.float32)
    if meta_dim:
        def fused(x: Any, m: Any) -> Any:
            return tf.nn.softmax(model([x, m], training=False))

        traced = tf.function(fused, input_signature=[
            spec, tf.TensorSpec([None, meta_dim], tf.float32)], autograph=False)
        return lambda pair: traced(pair[0], pair[1])

    def probabilities(x: Any) -> Any:
        return tf.nn.softmax(model(x, training=False))

    return tf.function(probabilities, input_signature=[spec], autograph=False)


def predict_probs(infer: Any, dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and labels over an evaluation dataset."""
    probs, labels = [], []
    for x, y in dataset:
        probs.append(np.asarray(infer(x)))
        labels.append(np.asarray(y))
    if not probs:
        return np.zeros((0, 0)), np.zeros((0,), np.int64)
    return np.concatenate(probs), np.concatenate(labels).astype(np.int64)


def _keras_callback_base() -> type:
    import keras

    return keras.callbacks.Callback


class _EpochCallback(_keras_callback_base()):  # type: ignore[misc]
    """Per-batch progress, then per epoch: val macro F1, best weights, checkpoint, early stop.

    With cfg.ema > 0 it also keeps an exponential moving average of the trainable weights
    (updated after every step, restarted at each phase); validation, model selection and the
    saved model then use the averaged weights, while training continues from the raw ones.
    """

    def __init__(self, session: _Session, phase: str, epochs: int, steps: int, val_ds: Any,
                 infer: Any, skipped: Any, split: SplitData) -> None:
        super().__init__()
        self.session = session
        self.phase = phase
        self.epochs = epochs
        self.steps = steps
        self.val_ds = val_ds
        self.infer = infer
        self.skipped = skipped
        self.split = split
        self.t0 = 0.0
        self.epoch = 0
        self.ema = float(session.cfg.ema)
        self.shadow: list[Any] = []
        self._ema_update: Any = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self.ema <= 0:
            return
        import tensorflow as tf

        variables = list(self.model.trainable_variables)
        with self.session.strategy.scope():
            self.shadow = [tf.Variable(v.value, trainable=False) for v in variables]
        decay = self.ema

        @tf.function
        def update() -> None:
            for avg, var in zip(self.shadow, variables):
                avg.assign(decay * avg + (1.0 - decay) * var.value)

        self._ema_update = update

    def _swap(self) -> None:
        """Exchange the trainable weights and their moving averages."""
        for avg, var in zip(self.shadow, self.model.trainable_variables):
            raw = var.numpy()
            var.assign(avg.numpy())
            avg.assign(raw)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.t0 = time.perf_counter()
        self.epoch = epoch
        self.session.progress("epoch_start", {"phase": self.phase, "epoch": epoch + 1,
                                              "epochs": self.epochs, "steps": self.steps})

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._ema_update is not None:
            self._ema_update()
        loss = (logs or {}).get("loss")
        self.session.progress("batch", {"step": batch + 1, "steps": self.steps,
                                        "loss": None if loss is None else float(loss)})

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        session, state, cfg = self.session, self.session.state, self.session.cfg
        logs = dict(logs or {})
        train_time = time.perf_counter() - self.t0
        if self.shadow:
            self._swap()  # evaluate (and maybe keep) the averaged weights
        probs, labels = predict_probs(self.infer, self.val_ds)
        metrics = classification_metrics(labels, probs, self.split.classes)
        lr = self.model.optimizer.learning_rate
        state.train_seconds += train_time
        state.images_seen += self.steps * cfg.batch_size
        state.epoch_in_phase = epoch + 1
        improved = metrics["macro_f1"] > state.best_f1 + 1e-9
        row = {"epoch": len(state.history) + 1, "phase": self.phase,
               "loss": _float(logs.get("loss")), "accuracy": _float(logs.get("accuracy")),
               "lr": _float(lr), "val_loss": metrics["loss"], "val_macro_f1": metrics["macro_f1"],
               "val_balanced_accuracy": metrics["balanced_accuracy"],
               "val_accuracy": metrics["accuracy"],
               "seconds": round(time.perf_counter() - self.t0, 2)}
        state.history.append(row)
        if improved:
            state.best_f1, state.best_epoch, state.wait = metrics["macro_f1"], row["epoch"], 0
            session.best_weights = self.model.get_weights()
            session.save_best(self.model)
        else:
            state.wait += 1
        if self.shadow:
            self._swap()  # back to the raw weights to go on training
        state.skipped = dict(self.skipped.reasons)
        self._check_classes()
        stop = state.wait >= cfg.patience and epoch + 1 < self.epochs
        if stop:
            state.stopped_early.append(self.phase)
        session.save_checkpoint(self.model)
        if stop:
            self.model.stop_training = True
        session.progress("epoch", {**row, "best": improved, "best_f1": state.best_f1,
                                   "epochs": self.epochs, "epoch_in_phase": epoch + 1,
                                   "skipped": self.skipped.count, "stopping": stop,
                                   "per_class_f1": metrics["per_class_f1"]})

    def _check_classes(self) -> None:
        if not self.skipped.count:
            return
        bad = set(self.skipped.reasons)
        for i, cls in enumerate(self.split.classes):
            files = [p for p, lab in zip(self.split.train_paths, self.split.train_labels)
                     if lab == i]
            if files and all(p in bad for p in files):
                raise SkinError(f"Class {cls!r} has no readable training images "
                                f"({len(files)} listed, all unreadable)",
                                hint="Fix or replace its images, then run `skin split` again")


def _float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return float(np.asarray(value))


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


# --- entry points -------------------------------------------------------------------------------

def _seed_everything(cfg: TrainConfig) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        with contextlib.suppress(Exception):
            tf.config.experimental.enable_op_determinism()


def _write_static_files(tmp_dir: Path, cfg: TrainConfig, split: SplitData) -> None:
    """Files known before training: config.yaml, the split copies, versions.json."""
    with disk_guard("the run folder"):
        write_text(tmp_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        shutil.copyfile(split.path, tmp_dir / "split.csv")
        # The sidecar (data root, seed, counts, dropped files): load_split needs it beside the CSV.
        shutil.copyfile(split.path.with_suffix(".json"), tmp_dir / "split.json")
        write_json(tmp_dir / "versions.json", package_versions())


def train(config: TrainConfig | dict[str, Any] | None = None,
          progress: Progress | None = None) -> Path:
    """Train a model as `config` says and return the finished run folder.

    `config` is a TrainConfig or a dict of options (missing ones take DEFAULTS; a "preset" key
    selects a preset). Raises SkinError for bad input. On Ctrl-C the best model so far is saved
    as a run with `extra.interrupted = true` and its path returned.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cfg = _as_config(config)
    progress = progress or _no_progress
    from skincli.models.registry import get_arch

    get_arch(cfg.arch)  # unknown names fail here, before any data is read
    split = load_split_data(cfg.split)
    metadata_encoder(cfg, split)  # --use-metadata without metadata: one line, nothing written
    runs_dir = Path(cfg.runs_dir)
    final_dir = _final_dir(cfg, runs_dir)
    tmp_dir = runs_dir / f".{final_dir.name}.tmp"
    configure_threads(cfg.threads)
    _seed_everything(cfg)
    strategy = make_strategy(cfg.strategy)
    if not _is_chief(strategy):  # other workers train in step but keep nothing
        from skincli.train.multiworker import worker_scratch
        tmp_dir, final_dir = worker_scratch(final_dir.name)
    if tmp_dir.exists():
        raise SkinError(f"{tmp_dir} exists: a run named {final_dir.name!r} is in progress or "
                        "crashed", hint=f"Continue it with `skin train --resume {final_dir.name}`"
                        " or remove that folder")
    with disk_guard(str(tmp_dir)):
        tmp_dir.mkdir(parents=True)
    try:
        _write_static_files(tmp_dir, cfg, split)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return _run_session(_Session(cfg, tmp_dir, final_dir, split, progress, strategy))


def resume(run: str | Path, runs_dir: str | Path = DEFAULTS["runs_dir"],
           progress: Progress | None = None) -> Path:
    """Continue an interrupted or crashed run from its last checkpoint; return the run folder."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    progress = progress or _no_progress
    run_dir = _find_resumable(run, Path(runs_dir))
    state_file = run_dir / CKPT_DIR / STATE_FILE
    try:
        raw_cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
        raw_state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, json.JSONDecodeError) as exc:
        raise SkinError(f"Cannot read the checkpoint of {run_dir}: {exc}",
                        hint="Train anew with `skin train`") from None
    cfg = TrainConfig.from_dict(raw_cfg)
    state = _State(**{k: v for k, v in raw_state.items()
                      if k in {f.name for f in dataclasses.fields(_State)}})
    if run_dir.name.startswith(".") and run_dir.name.endswith(".tmp"):
        name = run_dir.name[1:-4]
        tmp_dir = run_dir
    else:
        name = run_dir.name
        tmp_dir = run_dir.with_name(f".{name}.tmp")
        if tmp_dir.exists():
            raise SkinError(f"Both {run_dir} and {tmp_dir} exist",
                            hint="Remove the one you do not want to continue")
        os.replace(run_dir, tmp_dir)  # it is unfinished again until training ends
        (tmp_dir / "run.json").unlink(missing_ok=True)
    final_dir = tmp_dir.parent / name
    split = load_split_data(tmp_dir / "split.csv")
    configure_threads(cfg.threads)
    _seed_everything(cfg)
    strategy = make_strategy(cfg.strategy)
    return _run_session(_Session(cfg, tmp_dir, final_dir, split, progress, strategy, state))


def _run_session(session: _Session) -> Path:
    from skincli.train.multiworker import peer_failures
    try:
        with peer_failures(session.strategy):  # a lost worker: one line, not a hang
            return session.run()
    except KeyboardInterrupt:
        return _save_interrupted(session)
    except BaseException:
        if not (session.ckpt / STATE_FILE).exists():
            shutil.rmtree(session.tmp_dir, ignore_errors=True)  # nothing worth resuming
        raise


def _save_interrupted(session: _Session) -> Path:
    """Ctrl-C: turn the best epoch so far into a usable run (or clean up if there is none)."""
    best = session.ckpt / "best.weights.h5"
    if not best.exists():
        shutil.rmtree(session.tmp_dir, ignore_errors=True)
        raise KeyboardInterrupt
    from skincli.train.pipeline import SkippedImages, eval_dataset

    cfg, state = session.cfg, session.state
    built = session.build("none", state.input_size)
    session.training_model(built).load_weights(best)
    session.best_weights = None
    skipped = SkippedImages(dict(state.skipped))
    val_ds = eval_dataset(session.split.val_paths, session.split.val_labels,
                          size=state.input_size, batch_size=max(cfg.batch_size, 32),
                          skipped=skipped, cache=False, meta=session.meta_rows("val"))
    return session.finish(built, val_ds, skipped, interrupted=True)


def _as_config(config: TrainConfig | dict[str, Any] | None) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return resolve(config.to_dict())
    data = dict(config or {})
    preset = data.pop("preset", None)
    return resolve(data, preset=preset)


def _final_dir(cfg: TrainConfig, runs_dir: Path) -> Path:
    """The default name auto-increments (train, train2 ...); an explicit name must be free."""
    if cfg.name == DEFAULTS["name"]:
        return next_run_dir(cfg.name, runs_dir)
    target = runs_dir / cfg.name
    if target.exists():
        raise SkinError(f"Run folder {target} already exists",
                        hint="Choose another --name, or remove the folder")
    return target


def _find_resumable(run: str | Path, runs_dir: Path) -> Path:
    """A run folder (or its unfinished .tmp twin) that holds a checkpoint."""
    run = Path(run)
    candidates = [run, runs_dir / run, run.with_name(f".{run.name}.tmp"),
                  runs_dir / f".{run.name}.tmp"]
    for cand in candidates:
        if (cand / CKPT_DIR / STATE_FILE).exists():
            return cand
    for cand in candidates[:2]:
        if (cand / "run.json").exists():
            raise SkinError(f"Run {cand} finished normally; there is nothing to resume",
                            hint="Start a new run with `skin train`")
    raise SkinError(f"No resumable run {str(run)!r} in {runs_dir}/",
                    hint="Pass the name of an interrupted run (see `ls runs`)")


def read_history(run_dir: str | Path) -> list[dict[str, str]]:
    """The rows of a run's history.csv."""
    with open(Path(run_dir) / "history.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
