"""The checkpoint of an unfinished run: what `skin train --resume` continues from.

`ckpt/` in the run's `.tmp` folder holds the best weights so far (what Ctrl-C and the finished
run use), the last epoch's weights and optimizer state, and `state.json` (the progress:
phase, epoch, best score, history). It is rewritten after every epoch, each file atomically,
and removed when the run finishes normally.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skincli.errors import SkinError
from skincli.fsutil import write_json, write_text
from skincli.train.runtime import disk_guard

CKPT_DIR = "ckpt"
STATE_FILE = "state.json"
HISTORY_COLUMNS = ("epoch", "phase", "loss", "accuracy", "lr", "val_loss", "val_macro_f1",
                   "val_balanced_accuracy", "val_accuracy", "seconds")


@dataclass
class State:
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

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> State:
        """From state.json, ignoring keys this version does not know."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


class Checkpoint:
    """The checkpoint folder of the run being built in `run_dir` (finished name `name`)."""

    def __init__(self, run_dir: Path, name: str, state: State | None = None) -> None:
        self.run_dir = run_dir
        self.name = name
        self.dir = run_dir / CKPT_DIR
        self.state = state or State()
        # The selected weights in memory (None: none selected yet in this process).
        self.best_weights: list[np.ndarray] | None = None

    def exists(self) -> bool:
        return (self.dir / STATE_FILE).exists()

    def resume_name(self) -> str | None:
        """The name to pass to --resume, if a checkpoint exists to resume from."""
        return self.name if self.exists() else None

    def _save_weights(self, model: Any, name: str) -> None:
        """ckpt/<name>.weights.h5 written atomically (Keras needs the .weights.h5 suffix, so
        fsutil.atomic_path's .tmp name does not fit)."""
        self.dir.mkdir(exist_ok=True)
        tmp = self.dir / f".{name}-tmp.weights.h5"
        model.save_weights(tmp)
        os.replace(tmp, self.dir / f"{name}.weights.h5")

    def keep_best(self, model: Any) -> None:
        """Select the model's current weights (what Ctrl-C and the finished run use)."""
        self.best_weights = model.get_weights()
        with disk_guard("the checkpoint", self.resume_name()):
            self._save_weights(model, "best")

    def save(self, model: Any) -> None:
        """The last epoch's weights, optimizer state and progress (what --resume continues)."""
        with disk_guard("the checkpoint", self.resume_name()):
            self._save_weights(model, "last")
            values = {f"v{i:04d}": np.asarray(v.numpy())
                      for i, v in enumerate(model.optimizer.variables)}
            tmp_npz = self.dir / ".optimizer-tmp.npz"
            with open(tmp_npz, "wb") as fh:
                np.savez(fh, **values)
            os.replace(tmp_npz, self.dir / "optimizer.npz")
            self.save_state()
            write_history(self.run_dir, self.state.history)

    def save_state(self) -> None:
        write_json(self.dir / STATE_FILE, dataclasses.asdict(self.state))

    def restore_weights(self, model: Any) -> None:
        """Resume: the selected weights into memory, the last epoch's into the model."""
        model.load_weights(self.dir / "best.weights.h5")
        self.best_weights = model.get_weights()
        model.load_weights(self.dir / "last.weights.h5")

    def has_best(self) -> bool:
        """True once an epoch has been selected (Ctrl-C then has a model to save)."""
        return (self.dir / "best.weights.h5").exists()

    def load_best(self, model: Any) -> None:
        """Ctrl-C: the selected weights into `model`, which then holds them."""
        model.load_weights(self.dir / "best.weights.h5")
        self.best_weights = None

    def restore_optimizer(self, model: Any) -> None:
        """Resume mid-phase: the optimizer state saved with the last epoch's weights."""
        path = self.dir / "optimizer.npz"
        if not path.exists():
            return
        with np.load(path) as data:
            values = [data[k] for k in sorted(data.files)]
        model.optimizer.build(model.trainable_variables)
        variables = list(model.optimizer.variables)
        if len(variables) != len(values) or any(
                tuple(v.shape) != tuple(a.shape) for v, a in zip(variables, values)):
            raise SkinError(f"The checkpoint in {self.dir} does not match the model",
                            hint="It was written by a different configuration; train anew")
        for var, value in zip(variables, values):
            var.assign(value)

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_history(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """history.csv: one row per epoch run so far (HISTORY_COLUMNS)."""
    lines = [",".join(HISTORY_COLUMNS)]
    for row in rows:
        lines.append(",".join(_fmt(row.get(c)) for c in HISTORY_COLUMNS))
    write_text(run_dir / "history.csv", "\n".join(lines) + "\n")


def read_history(run_dir: str | Path) -> list[dict[str, str]]:
    """The rows of a run's history.csv."""
    with open(Path(run_dir) / "history.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
