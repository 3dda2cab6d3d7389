"""Keras callbacks of the phase loop; they talk to each other through `logs`.

Keras passes one `logs` dict to every callback's on_epoch_end in list order, so each callback
reads what the ones before it added. The trainer's order, and what each adds:

    Clock           train_seconds (the epoch's batches, before anything below runs)
    MovingAverage   (with --ema) swaps the averaged weights in
    Validation      val_loss, val_macro_f1, val_balanced_accuracy, val_accuracy,
                    val_per_class_f1, lr, seconds
    RunLog          run_epoch; appends the history row to the checkpoint state
    BestModel       best, best_f1, stopping (keeps the best weights; early stop)
    MovingAverage.restore   swaps the raw weights back so training goes on from them
    SaveCheckpoint  skipped (writes ckpt/ after checking every class is still readable)
    Progress        sends "epoch" (and "epoch_start", "batch") to the progress function
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from skincli.metrics import classification_metrics
from skincli.train.checkpoint import Checkpoint, State
from skincli.train.data import SplitData, check_readable_classes

Logs = dict[str, Any]


def _float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return float(np.asarray(value))


def history_row(logs: Logs, phase: str) -> dict[str, Any]:
    """One epoch as history.csv and the "epoch" event show it."""
    return {"epoch": logs["run_epoch"], "phase": phase,
            "loss": _float(logs.get("loss")), "accuracy": _float(logs.get("accuracy")),
            "lr": logs["lr"], "val_loss": logs["val_loss"], "val_macro_f1": logs["val_macro_f1"],
            "val_balanced_accuracy": logs["val_balanced_accuracy"],
            "val_accuracy": logs["val_accuracy"], "seconds": logs["seconds"]}


class Clock(keras.callbacks.Callback):
    """logs["train_seconds"]: the time fit() spent on this epoch's batches."""

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        if logs is not None:
            logs["train_seconds"] = time.perf_counter() - self.t0


class MovingAverage(keras.callbacks.Callback):
    """An exponential moving average of the trainable weights, updated after every step.

    At the end of an epoch the averages are swapped in, so validation, model selection and the
    saved model use them; `restore`, placed after model selection, swaps the raw weights back
    so training continues from them. One instance per phase: the average restarts each phase.
    """

    def __init__(self, decay: float, strategy: Any) -> None:
        super().__init__()
        self.decay = float(decay)
        self.strategy = strategy
        self.shadow: list[Any] = []
        self._update: Any = None
        self.restore = _SwapBack(self)

    def on_train_begin(self, logs: Logs | None = None) -> None:
        import tensorflow as tf

        variables = list(self.model.trainable_variables)
        with self.strategy.scope():
            self.shadow = [tf.Variable(v.value, trainable=False) for v in variables]
        decay = self.decay

        @tf.function
        def update() -> None:
            for avg, var in zip(self.shadow, variables):
                avg.assign(decay * avg + (1.0 - decay) * var.value)

        self._update = update

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        self._update()

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        self.swap()

    def swap(self) -> None:
        """Exchange the trainable weights and their moving averages."""
        for avg, var in zip(self.shadow, self.model.trainable_variables):
            raw = var.numpy()
            var.assign(avg.numpy())
            avg.assign(raw)


class _SwapBack(keras.callbacks.Callback):
    def __init__(self, average: MovingAverage) -> None:
        super().__init__()
        self.average = average

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        self.average.swap()


def predict_probs(infer: Any, dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and labels over an evaluation dataset."""
    probs, labels = [], []
    for x, y in dataset:
        probs.append(np.asarray(infer(x)))
        labels.append(np.asarray(y))
    if not probs:
        return np.zeros((0, 0)), np.zeros((0,), np.int64)
    return np.concatenate(probs), np.concatenate(labels).astype(np.int64)


class Validation(keras.callbacks.Callback):
    """The current weights' metrics on the validation images, the learning rate, the time."""

    def __init__(self, infer: Any, dataset: Any, classes: list[str]) -> None:
        super().__init__()
        self.infer = infer  # model.inference_fn of the model being trained
        self.dataset = dataset
        self.classes = classes

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        probs, labels = predict_probs(self.infer, self.dataset)
        metrics = classification_metrics(labels, probs, self.classes)
        assert logs is not None  # fit() always passes the epoch's logs
        logs.update(val_loss=metrics["loss"], val_macro_f1=metrics["macro_f1"],
                    val_balanced_accuracy=metrics["balanced_accuracy"],
                    val_accuracy=metrics["accuracy"], val_per_class_f1=metrics["per_class_f1"],
                    lr=_float(self.model.optimizer.learning_rate),
                    seconds=round(time.perf_counter() - self.t0, 2))


class RunLog(keras.callbacks.Callback):
    """Each epoch as a row of the run's history, numbered across phases and resumes."""

    def __init__(self, state: State, phase: str, images_per_epoch: int) -> None:
        super().__init__()
        self.state = state
        self.phase = phase
        self.images_per_epoch = images_per_epoch

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        assert logs is not None
        state = self.state
        state.train_seconds += logs["train_seconds"]
        state.images_seen += self.images_per_epoch
        state.epoch_in_phase = epoch + 1
        logs["run_epoch"] = len(state.history) + 1
        state.history.append(history_row(logs, self.phase))


class BestModel(keras.callbacks.Callback):
    """Keep the weights of the best validation macro F1; stop a phase after `patience` epochs
    without improvement (never on its last epoch: there is nothing left to save)."""

    def __init__(self, ckpt: Checkpoint, phase: str, epochs: int, patience: int) -> None:
        super().__init__()
        self.ckpt = ckpt
        self.phase = phase
        self.epochs = epochs
        self.patience = patience

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        assert logs is not None
        state = self.ckpt.state
        improved = logs["val_macro_f1"] > state.best_f1 + 1e-9
        if improved:
            state.best_f1, state.best_epoch, state.wait = (logs["val_macro_f1"],
                                                           logs["run_epoch"], 0)
            self.ckpt.keep_best(self.model)
        else:
            state.wait += 1
        stop = state.wait >= self.patience and epoch + 1 < self.epochs
        if stop:
            state.stopped_early.append(self.phase)
            self.model.stop_training = True
        logs.update(best=improved, best_f1=state.best_f1, stopping=stop)


class SaveCheckpoint(keras.callbacks.Callback):
    """Write ckpt/ after every epoch, once the images read so far still cover every class."""

    def __init__(self, ckpt: Checkpoint, split: SplitData, skipped: Any) -> None:
        super().__init__()
        self.ckpt = ckpt
        self.split = split
        self.skipped = skipped  # skincli.train.pipeline.SkippedImages, filled while reading

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        self.ckpt.state.skipped = dict(self.skipped.reasons)
        check_readable_classes(self.split, self.ckpt.state.skipped)
        self.ckpt.save(self.model)
        if logs is not None:
            logs["skipped"] = self.skipped.count


class Progress(keras.callbacks.Callback):
    """The trainer's progress events: "epoch_start", "batch" and "epoch" (from `logs`)."""

    def __init__(self, progress: Callable[[str, dict[str, Any]], None], phase: str, epochs: int,
                 steps: int) -> None:
        super().__init__()
        self.progress = progress
        self.phase = phase
        self.epochs = epochs
        self.steps = steps

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        self.progress("epoch_start", {"phase": self.phase, "epoch": epoch + 1,
                                      "epochs": self.epochs, "steps": self.steps})

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        loss = (logs or {}).get("loss")
        self.progress("batch", {"step": batch + 1, "steps": self.steps,
                                "loss": None if loss is None else float(loss)})

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        assert logs is not None
        self.progress("epoch", {**history_row(logs, self.phase), "best": logs["best"],
                                "best_f1": logs["best_f1"], "epochs": self.epochs,
                                "epoch_in_phase": epoch + 1, "skipped": logs["skipped"],
                                "stopping": logs["stopping"],
                                "per_class_f1": logs["val_per_class_f1"]})
