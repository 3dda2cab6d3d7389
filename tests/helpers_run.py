"""Build a tiny finished run folder for tests (model.keras + run.json + split), in seconds.

The model has the same shape as the registry's: input float32 RGB 0..255, a rescaling layer,
a nested functional "backbone" ending in GlobalAveragePooling, "head_dropout", Dense "logits".
Other test modules may import `make_run`, `build_model` and `make_split`; keep them stable.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_CLASSES = ("melanoma", "nevus", "vascular lesion")


def build_model(n_classes: int, input_size: int = 32, width: int = 8, seed: int = 0) -> Any:
    """A small Keras model with the registry's structure (logits output)."""
    import keras

    keras.utils.set_random_seed(seed)
    b_in = keras.Input((input_size, input_size, 3), name="backbone_input")
    x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name="conv1")(b_in)
    x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    backbone = keras.Model(b_in, x, name="backbone")
    inp = keras.Input((input_size, input_size, 3), name="image", dtype="float32")
    y = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalise")(inp)
    y = backbone(y)
    y = keras.layers.Dropout(0.1, name="head_dropout")(y)
    out = keras.layers.Dense(n_classes, name="logits")(y)
    return keras.Model(inp, out, name="tiny")


def make_split(run_dir: Path, files: dict[str, dict[str, Sequence[Path]]],
               root: str | Path | None = None) -> Path:
    """Write run_dir/split.csv + split.json (`skin split` format) from {split: {label: paths}}.

    Paths are stored relative to `root` (default: the files' common folder).
    """
    import hashlib

    from skincli.data.split import SplitResult
    from skincli.data.splitfile import write_split

    flat = [(part, label, Path(p).resolve()) for part, by_label in files.items()
            for label, paths in by_label.items() for p in paths]
    base = Path(root).resolve() if root is not None else Path(
        os.path.commonpath([str(p.parent) for _, _, p in flat]))
    rows = [{"path": p.relative_to(base).as_posix(), "label": label, "split": part,
             "given_split": "", "group": "", "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
            for part, label, p in flat]
    frame = pd.DataFrame(rows, columns=["path", "label", "split", "given_split", "group", "sha256"])
    meta = {"root": str(base), "classes": sorted(frame["label"].unique().tolist())}
    return write_split(SplitResult(frame=frame, meta=meta), Path(run_dir) / "split.csv")


def make_run(tmp_path: str | Path, classes: Sequence[str] = DEFAULT_CLASSES,
             input_size: int = 32, name: str = "tiny", model: Any = None,
             temperature: float = 1.0, uncertain_threshold: float | None = None,
             split_files: dict[str, dict[str, Sequence[Path]]] | None = None,
             created: str = "2026-01-01T00:00:00", seed: int = 0,
             runs_dir: str | Path | None = None, **info: Any) -> Path:
    """Create `<runs_dir or tmp_path/runs>/<name>/` holding a finished run; return its path."""
    from skincli.runs import MODEL_FILE, RunInfo, save_run_info

    root = Path(runs_dir) if runs_dir is not None else Path(tmp_path) / "runs"
    run_dir = root / name
    run_dir.mkdir(parents=True, exist_ok=True)
    if model is None:
        model = build_model(len(classes), input_size, seed=seed)
    model.save(run_dir / MODEL_FILE)
    if split_files is not None:
        make_split(run_dir, split_files)
    save_run_info(run_dir, RunInfo(
        name=name, arch="tiny", classes=list(classes), input_size=input_size,
        preprocessing={"resize": "bilinear", "normalisation": "x/127.5-1 inside the model"},
        temperature=temperature, uncertain_threshold=uncertain_threshold, created=created,
        **info))
    return run_dir


def train_quadrant_model(input_size: int = 32, n: int = 240, epochs: int = 12,
                         seed: int = 0) -> tuple[Any, np.ndarray, np.ndarray]:
    """Train the tiny model to tell 'patch in the top-left quadrant' (1) from 'no patch' (0).

    Returns (model, images float32 0..255, labels). A few seconds on one CPU core.
    """
    import keras

    images, labels = quadrant_images(n, input_size, seed)
    model = build_model(2, input_size, width=8, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images, labels, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    return model, images, labels


def quadrant_images(n: int, input_size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy skin-like images; label 1 carries a bright patch somewhere in the top-left quadrant."""
    rng = np.random.default_rng(seed)
    s = input_size
    base = np.array([180.0, 120.0, 100.0])
    images = base + rng.normal(0, 18, size=(n, s, s, 3))
    labels = (np.arange(n) % 2).astype(np.int64)
    k = max(3, s // 4)
    for i in np.flatnonzero(labels):
        y0, x0 = rng.integers(0, s // 2 - k + 1, size=2)
        images[i, y0:y0 + k, x0:x0 + k] = [250.0, 250.0, 90.0]
    return np.clip(images, 0, 255).astype(np.float32), labels


def write_split_lines(split: Path, data_root: Path, lines: Sequence[str]) -> Path:
    """Write CSV `lines` (header first) as `split` plus the split.json sidecar load_split needs."""
    import hashlib
    import json

    text = "\n".join(lines) + "\n"
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text(text, encoding="utf-8")
    split.with_suffix(".json").write_text(json.dumps({
        "root": str(Path(data_root).resolve()),
        "csv_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}), encoding="utf-8")
    return split
