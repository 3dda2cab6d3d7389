"""The run folder: everything later commands need, written by `skin train`.

Layout of `runs/<name>/` (nothing machine-specific in it):

- `model.keras`    Keras model. Input: float32 (N, S, S, 3) RGB in 0..255 (normalisation is inside
                   the model). Output: logits (N, C) in the order of `run.json: classes`.
- `run.json`       RunInfo below: classes, architecture, preprocessing, calibration, metrics.
- `config.yaml`    the resolved training options.
- `history.csv`, `history.png`   per-epoch training history.
- `split.csv`, `split.json`      the split the model was trained on (its hash is in run.json).
- `versions.json`  package versions.

A folder without `run.json` is not a finished run: `run.json` is written last.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skincli.errors import SkinError, did_you_mean
from skincli.fsutil import write_json, write_text

DEFAULT_RUNS_DIR = Path("runs")
RUN_FILE = "run.json"
MODEL_FILE = "model.keras"
CURRENT_FILE = "CURRENT"  # names the run that `serve`/`predict` use by default once promoted


@dataclass
class RunInfo:
    """The self-description of a trained model."""

    name: str
    arch: str
    classes: list[str]
    input_size: int
    preprocessing: dict[str, Any] = field(default_factory=dict)
    temperature: float = 1.0  # fitted by calibration; probabilities = softmax(logits / T)
    uncertain_threshold: float | None = None  # top probability below this = "uncertain"
    created: str = ""
    split_sha256: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    val_metrics: dict[str, Any] = field(default_factory=dict)
    test_metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        """A short model version string: run name plus creation date."""
        return f"{self.name}@{self.created[:19]}" if self.created else self.name

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunInfo:
        """Build from a dict, keeping unknown keys in `extra` (forward compatible)."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in names}
        unknown = {k: v for k, v in data.items() if k not in names}
        info = cls(**known)
        info.extra.update(unknown)
        return info


def save_run_info(run_dir: str | Path, info: RunInfo) -> Path:
    """Write run.json atomically."""
    return write_json(Path(run_dir) / RUN_FILE, info.to_dict())


def load_run_info(run_dir: str | Path) -> RunInfo:
    """Read run.json of a finished run, with a clear error if it is not one."""
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        if not Path(run_dir).exists():
            raise SkinError(f"Run folder {run_dir} does not exist",
                            hint="Train one with `skin train` or pass an existing runs/<name>")
        raise SkinError(f"{run_dir} is not a finished run (no {RUN_FILE})",
                        hint="Pick another run or train again with `skin train`")
    try:
        return RunInfo.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as exc:
        raise SkinError(f"{path} is damaged ({exc})", hint="Train the run again") from exc


def check_model_file(run_dir: str | Path) -> Path:
    """Return the run's model.keras if it looks like a Keras archive; cheap (no TensorFlow),
    so a damaged copy is one clear line before anything slow starts."""
    import zipfile

    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise SkinError(f"Run {run_dir} has no {MODEL_FILE}",
                        hint="Train the run again, or copy the whole run folder")
    try:
        with zipfile.ZipFile(path) as archive:
            complete = "config.json" in archive.namelist()
    except (zipfile.BadZipFile, OSError):
        complete = False
    if not complete:
        raise SkinError(f"{path} is damaged (not a complete Keras .keras archive)",
                        hint="Copy the run folder again, or train the run again")
    return path


def model_load_error(run_dir: str | Path, exc: BaseException) -> SkinError:
    """The one-line error for a model file Keras could not load (damaged or foreign)."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return SkinError(f"Cannot load the model of run {run_dir}: {type(exc).__name__}: {first}",
                     hint="Check the run folder or train it again")


def update_run_info(run_dir: str | Path, **changes: Any) -> RunInfo:
    """Change fields of run.json (e.g. temperature, test_metrics) atomically."""
    info = load_run_info(run_dir)
    for key, value in changes.items():
        if not hasattr(info, key):
            raise KeyError(key)
        setattr(info, key, value)
    save_run_info(run_dir, info)
    return info


def finished_runs(runs_dir: str | Path = DEFAULT_RUNS_DIR) -> list[Path]:
    """Finished run folders, oldest first (by creation time in run.json)."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
            and (p / RUN_FILE).exists()]

    def created(p: Path) -> tuple[str, float]:
        try:
            return (json.loads((p / RUN_FILE).read_text()).get("created", ""),
                    p.stat().st_mtime)
        except (OSError, json.JSONDecodeError):
            return ("", p.stat().st_mtime)

    return sorted(runs, key=created)


def resolve_run(run: str | Path | None = None, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> Path:
    """Find a run folder: an explicit path, a name under runs_dir, or the current/latest one."""
    root = Path(runs_dir)
    if run is not None:
        for candidate in (Path(run), root / str(run)):
            if (candidate / RUN_FILE).exists():
                return candidate
        if not Path(run).exists() and not (root / str(run)).exists():
            names = [p.name for p in finished_runs(root)]
            if not names:
                raise SkinError(f"No run {str(run)!r}: {root}/ holds no trained run",
                                hint="Train one with `skin train`, or pass --runs-dir")
            close = did_you_mean(str(run), names).strip()
            raise SkinError(f"No run {str(run)!r} in {root}/",
                            hint=close or f"Runs there: {', '.join(names[-10:])}")
        load_run_info(root / str(run) if (root / str(run)).exists() else run)
    current = root / CURRENT_FILE
    if current.exists():
        name = current.read_text(encoding="utf-8").strip()
        if name and (root / name / RUN_FILE).exists():
            return root / name
    runs = finished_runs(root)
    if not runs:
        raise SkinError(f"No trained run in {root}/",
                        hint="Train one with `skin train` or pass a run folder")
    return runs[-1]


def set_current(run_dir: str | Path, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> None:
    """Atomically make `run_dir` the run that serve/predict use by default."""
    write_text(Path(runs_dir) / CURRENT_FILE, Path(run_dir).name + "\n")


# A run name is a folder name and a command-line argument: no "..", no leading "-" or ".".
RUN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_run_name(name: str) -> str:
    """Return `name` if it can be a run folder name, else raise SkinError saying why."""
    if not RUN_NAME_RE.fullmatch(str(name)):
        raise SkinError(f"Run name {str(name)!r} is not valid: use letters, digits, '.', '_' "
                        "and '-', starting with a letter or digit",
                        hint="e.g. --name effnet-224")
    return str(name)


def next_run_dir(name: str = "train", runs_dir: str | Path = DEFAULT_RUNS_DIR) -> Path:
    """Auto-increment: runs/train, runs/train2, runs/train3 ... (first free name)."""
    check_run_name(name)
    root = Path(runs_dir)
    candidate = root / name
    i = 2
    while candidate.exists() or (root / f".{candidate.name}.tmp").exists():
        candidate = root / f"{name}{i}"
        i += 1
    return candidate
