"""Train a classifier on a split and write a self-describing run folder.

The trainer holds the phase loop and the entry points; each other job has its own module:
data (the split and its streams), model (build, freeze, schedule, compile), callbacks (what
happens after each step and epoch), checkpoint (what --resume continues), finalise (the
validation pass, calibration and the finished folder), runtime (threads, seeds, strategy,
disk errors).

A run is (1) the new head on a frozen backbone, then (2) fine-tuning the backbone at a lower
learning rate (skincli.train.model). After every epoch the validation macro F1 is computed;
the best weights are kept, and a phase stops early after `patience` epochs without
improvement (skincli.train.callbacks).

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

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from skincli.errors import SkinError
from skincli.runs import next_run_dir
from skincli.train.checkpoint import CKPT_DIR, STATE_FILE, Checkpoint, State
from skincli.train.config import DEFAULTS, TrainConfig, resolve
from skincli.train.data import (
    SplitData,
    load_split_data,
    metadata_encoder,
    phase_dataset,
    validation_dataset,
)
from skincli.train.finalise import Progress, finish, write_static_files
from skincli.train.model import (
    RunModel,
    build_run_model,
    compile_for_phase,
    inference_fn,
    set_phase_trainable,
    trainable_count,
)
from skincli.train.runtime import (
    configure_threads,
    disk_guard,
    is_chief,
    make_strategy,
    seed_everything,
)


def _no_progress(event: str, info: dict[str, Any]) -> None:
    return None


class Session:
    """One training run from data to finished folder (new or resumed)."""

    def __init__(self, cfg: TrainConfig, ckpt: Checkpoint, final_dir: Path, split: SplitData,
                 progress: Progress, strategy: Any) -> None:
        self.cfg = cfg
        self.ckpt = ckpt
        self.final_dir = final_dir
        self.split = split
        self.progress = progress
        self.strategy = strategy
        self.encoder = metadata_encoder(cfg, split)
        self.started = time.perf_counter()

    def phases(self) -> list[tuple[str, int, float]]:
        """(phase, epochs, peak learning rate) for each phase the config asks for."""
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

    def run(self) -> Path:
        """Every phase not yet done (all of them unless resuming), then the finished folder."""
        from skincli.train.pipeline import SkippedImages

        cfg, split, ckpt, state = self.cfg, self.split, self.ckpt, self.ckpt.state
        resuming = ckpt.exists()
        with self.strategy.scope():
            run_model = build_run_model(cfg, len(split.classes), self.encoder,
                                        "none" if resuming else cfg.weights, cfg.input_size)
        if not resuming:
            state.preprocessing = dict(run_model.built.preprocessing)
            state.input_size = int(run_model.built.input_size)
        size = state.input_size
        skipped = SkippedImages(dict(state.skipped))
        val_ds = validation_dataset(cfg, split, self.encoder, size, skipped,
                                    cache=cfg.cache == "memory")
        infer = inference_fn(run_model.model, size,
                             self.encoder.dim if self.encoder is not None else 0)
        if resuming:
            ckpt.restore_weights(run_model.model)
        self._announce(size, resuming)
        first_phase = True
        for phase_index, (phase, epochs, peak_lr) in enumerate(self.phases()):
            if phase_index < state.phase_index:
                continue
            start_epoch = state.epoch_in_phase if phase_index == state.phase_index else 0
            if phase_index != state.phase_index:
                state.phase_index, state.epoch_in_phase, state.wait = phase_index, 0, 0
            if start_epoch >= epochs or phase in state.stopped_early:
                continue
            # A different random stream per phase (and per resumed start) so batches differ.
            data = phase_dataset(cfg, split, self.encoder, size, skipped,
                                 seed=cfg.seed + 101 * phase_index + 7 * start_epoch)
            with self.strategy.scope():
                set_phase_trainable(run_model.built, phase, cfg.fine_tune)
                compile_for_phase(run_model.model, cfg, peak_lr, data.steps_per_epoch, epochs)
                if resuming and first_phase and start_epoch > 0:
                    ckpt.restore_optimizer(run_model.model)
            first_phase = False
            self.progress("phase", {"phase": phase, "epochs": epochs, "start_epoch": start_epoch,
                                    "steps": data.steps_per_epoch, "lr": peak_lr,
                                    "trainable_params": trainable_count(run_model.model)})
            run_model.model.fit(
                data.dataset, epochs=epochs, initial_epoch=start_epoch,
                steps_per_epoch=data.steps_per_epoch, verbose=0,
                shuffle=False,  # the pipeline shuffles
                callbacks=self._callbacks(phase, epochs, data.steps_per_epoch, val_ds, infer,
                                          skipped))
            state.phase_index, state.epoch_in_phase = phase_index + 1, 0
            state.wait = 0
        return self._finish(run_model, val_ds, skipped, interrupted=False)

    def _announce(self, size: int, resuming: bool) -> None:
        """The "start" event, and a warning for each class validation cannot measure."""
        split, num_classes = self.split, len(self.split.classes)
        self.progress("start", {"classes": split.classes, "n_train": len(split.train_paths),
                                "n_val": len(split.val_paths), "input_size": size,
                                "arch": self.cfg.arch, "run": self.final_dir.name,
                                "resumed": resuming,
                                "train_counts": np.bincount(split.train_labels,
                                                            minlength=num_classes).tolist()})
        val_counts = np.bincount(split.val_labels, minlength=num_classes)
        for cls, n in zip(split.classes, val_counts):
            if n == 0:
                self.progress("warning", {"message": f"class {cls!r} has no validation images: "
                                                     "its F1 cannot be measured"})

    def _callbacks(self, phase: str, epochs: int, steps: int, val_ds: Any, infer: Any,
                   skipped: Any) -> list[Any]:
        """The epoch's callbacks in the order they pass `logs` on (see skincli.train.callbacks)."""
        from skincli.train import callbacks as cb

        cfg, ckpt = self.cfg, self.ckpt
        average = cb.MovingAverage(cfg.ema, self.strategy) if cfg.ema > 0 else None
        return [cb.Clock(),
                *([average] if average else []),
                cb.Validation(infer, val_ds, self.split.classes),
                cb.RunLog(ckpt.state, phase, steps * cfg.batch_size),
                cb.BestModel(ckpt, phase, epochs, cfg.patience),
                *([average.restore] if average else []),
                cb.SaveCheckpoint(ckpt, self.split, skipped),
                cb.Progress(self.progress, phase, epochs, steps)]

    def _finish(self, run_model: RunModel, val_ds: Any, skipped: Any, interrupted: bool) -> Path:
        return finish(self.cfg, self.split, run_model, self.ckpt, final_dir=self.final_dir,
                      val_ds=val_ds, skipped=skipped, progress=self.progress,
                      interrupted=interrupted, started=self.started)

    def save_interrupted(self) -> Path:
        """Ctrl-C: turn the best epoch so far into a usable run (or clean up if there is none)."""
        if not self.ckpt.has_best():
            shutil.rmtree(self.ckpt.run_dir, ignore_errors=True)
            raise KeyboardInterrupt
        from skincli.train.pipeline import SkippedImages

        state = self.ckpt.state
        run_model = build_run_model(self.cfg, len(self.split.classes), self.encoder, "none",
                                    state.input_size)
        self.ckpt.load_best(run_model.model)
        skipped = SkippedImages(dict(state.skipped))
        val_ds = validation_dataset(self.cfg, self.split, self.encoder, state.input_size,
                                    skipped, cache=False)
        return self._finish(run_model, val_ds, skipped, interrupted=True)


# --- entry points -------------------------------------------------------------------------------

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
    seed_everything(cfg.seed, cfg.deterministic)
    strategy = make_strategy(cfg.strategy)
    if not is_chief(strategy):  # other workers train in step but keep nothing
        from skincli.train.multiworker import worker_scratch
        tmp_dir, final_dir = worker_scratch(final_dir.name)
    if tmp_dir.exists():
        raise SkinError(f"{tmp_dir} exists: a run named {final_dir.name!r} is in progress or "
                        "crashed", hint=f"Continue it with `skin train --resume {final_dir.name}`"
                        " or remove that folder")
    with disk_guard(str(tmp_dir)):
        tmp_dir.mkdir(parents=True)
    try:
        write_static_files(tmp_dir, cfg, split)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    ckpt = Checkpoint(tmp_dir, final_dir.name)
    return _run_session(Session(cfg, ckpt, final_dir, split, progress, strategy))


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
    state = State.from_dict(raw_state)
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
    seed_everything(cfg.seed, cfg.deterministic)
    strategy = make_strategy(cfg.strategy)
    ckpt = Checkpoint(tmp_dir, name, state)
    return _run_session(Session(cfg, ckpt, final_dir, split, progress, strategy))


def _run_session(session: Session) -> Path:
    from skincli.train.multiworker import peer_failures
    try:
        with peer_failures(session.strategy):  # a lost worker: one line, not a hang
            return session.run()
    except KeyboardInterrupt:
        return session.save_interrupted()
    except BaseException:
        if not session.ckpt.exists():
            shutil.rmtree(session.ckpt.run_dir, ignore_errors=True)  # nothing worth resuming
        raise


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
