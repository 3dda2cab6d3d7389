"""Inference engines behind the Predictor: LiteRT (XNNPACK, default) and TensorFlow.

The engine is chosen once, when a run is loaded (`--engine`, $SKIN_ENGINE, default litert);
a run whose model cannot be converted, or whose model.tflite cannot be trusted, gets one
warning line and the TensorFlow engine. See `convert` for conversion, parity and the cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from skincli.engines.base import (
    DEFAULT_ENGINE,
    ENGINE_ENV,
    ENGINES,
    Engine,
    EngineUnavailable,
    default_threads,
    resolve_engine_name,
)
from skincli.models.colour import load_keras_model as _load_keras_file
from skincli.runs import MODEL_FILE, RunInfo, model_load_error

__all__ = ["DEFAULT_ENGINE", "ENGINES", "ENGINE_ENV", "Engine", "EngineUnavailable",
           "default_threads", "load_engine", "load_keras_model", "resolve_engine_name"]


def load_keras_model(run_dir: Path) -> Any:
    """The run's Keras model (imports TensorFlow); a damaged file is a one-line SkinError."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return _load_keras_file(Path(run_dir) / MODEL_FILE)
    except Exception as exc:  # a damaged or foreign model file: name the run, no traceback
        raise model_load_error(run_dir, exc) from exc


def load_litert(run_dir: Path, info: RunInfo, threads: int | None = None) -> Engine:
    """The LiteRT engine for a run (EngineUnavailable says why not)."""
    from skincli.engines.convert import tflite_for_run
    from skincli.engines.litert import LiteRTEngine

    path, source = tflite_for_run(Path(run_dir), info)
    return LiteRTEngine(path, len(info.classes), int(info.input_size),
                        threads or default_threads(), source=source)


def load_engine(run_dir: Path, info: RunInfo, engine: str | None = None,
                threads: int | None = None,
                warn: Callable[[str], None] | None = None) -> tuple[Engine, Any]:
    """Choose and load the engine for a run: (engine, Keras model if it was loaded, else None).

    LiteRT when asked (the default) and possible; otherwise TensorFlow, after one `warn` line
    saying why. An unknown engine name is a SkinError.
    """
    name = resolve_engine_name(engine)
    note = ""
    if name == "litert":
        try:
            return load_litert(run_dir, info, threads), None
        except EngineUnavailable as exc:
            note = f"{exc}"
            if warn is not None:
                warn(f"LiteRT engine unavailable: {note}; using TensorFlow")
    from skincli.engines.tf import TFEngine

    model = load_keras_model(run_dir)
    return TFEngine(model, int(info.input_size), note=note), model
