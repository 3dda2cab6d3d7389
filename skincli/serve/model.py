"""The served model: load and warm a run once, and swap it atomically on reload."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from skincli.runs import resolve_run
from skincli.serve.settings import Settings

if TYPE_CHECKING:  # loaded in load_model: importing the server stays light
    from skincli.predictor import Predictor

log = logging.getLogger("skincli.serve")


@dataclass
class Row:
    """One image's output of a batched forward pass."""

    probabilities: np.ndarray  # (C,) calibrated
    embedding: np.ndarray | None = None  # backbone features, when the predictor provides them
    warnings: list[str] = field(default_factory=list)  # e.g. "does not look like dermoscopy"


@dataclass
class Prepared:
    """A decoded upload, ready for the model."""

    array: np.ndarray  # float32 (S, S, 3), 0..255
    sha256: str
    width: int
    height: int
    display: np.ndarray | None = None  # the upload downscaled for showing (explain only)
    dicom: dict[str, Any] | None = None  # a DICOM upload's UIDs (never patient attributes)


@dataclass
class LoadedModel:
    """A Predictor plus what the API says about it. Immutable once serving."""

    predictor: Predictor
    run_dir: Path
    loaded_at: str
    load_seconds: float
    tta: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.predictor.info.name)

    @property
    def version(self) -> str:
        return str(self.predictor.info.version)

    @property
    def arch(self) -> str:
        return str(self.predictor.info.arch)

    @property
    def classes(self) -> list[str]:
        return list(self.predictor.classes)

    def ref(self) -> dict[str, str]:
        """{"name", "version"} for responses."""
        return {"name": self.name, "version": self.version}

    def prepare(self, data: bytes, display: bool = False, budget: Any = None) -> Prepared:
        """Decode, check and resize one upload (raises ImageError); runs in a worker thread.

        The decoder produces only what is needed (>= 2 x the model's side, or the overlay's
        side for explain), holding its pixels in the server's decode budget meanwhile.
        """
        from skincli.clinical import dicom
        from skincli.explain import decode_side, display_image
        from skincli.imageio import open_image

        size = self.predictor.input_size
        need = decode_side(size) if display else size
        img = open_image(data, max_pixels=self.predictor.max_pixels, target=need,
                         budget=budget)
        array = self.predictor.preprocess(img)
        ref = dicom.read_ref(data).to_dict() if dicom.is_dicom(data) else None
        width, height = img.info.get("original_size", img.size)
        return Prepared(array=array, sha256=hashlib.sha256(data).hexdigest(),
                        width=width, height=height,
                        display=display_image(img) if display else None, dicom=ref)

    def forward(self, batch: np.ndarray, metadata: list[Any] | None = None) -> list[Row]:
        """One batched forward pass: calibrated probabilities, embeddings and input warnings
        (when the predictor provides them). metadata: per image a {sex, age_band, site}
        record or None, for a run trained with metadata (ignored otherwise)."""
        predictor = self.predictor
        n = max(len(batch), 1)
        both = getattr(predictor, "probabilities_and_embeddings", None)
        if not callable(both):
            probs = predictor.probabilities(batch, tta=self.tta, batch_size=n)
            return [Row(np.asarray(p)) for p in probs]
        meta = (predictor.encode_metadata([m or {} for m in metadata])
                if metadata is not None else None)
        probs, emb = both(batch, tta=self.tta, batch_size=n, meta=meta)
        warn = getattr(predictor, "input_warnings", None)
        warnings = warn(batch, emb) if callable(warn) else [[] for _ in range(len(batch))]
        return [Row(np.asarray(probs[i]), None if emb is None else np.asarray(emb[i]),
                    list(warnings[i])) for i in range(len(batch))]

    def describe(self) -> dict[str, Any]:
        """What GET /v1/model returns (JSON-safe; no file-system paths)."""
        info = self.predictor.info
        return json_safe({
            "name": info.name, "version": info.version, "arch": info.arch,
            "classes": list(info.classes), "input_size": info.input_size,
            "created": info.created, "preprocessing": info.preprocessing,
            "calibration": {"temperature": info.temperature,
                            "uncertain_threshold": info.uncertain_threshold},
            "val_metrics": info.val_metrics, "test_metrics": info.test_metrics,
            "split_sha256": info.split_sha256, "loaded_at": self.loaded_at,
            "load_seconds": round(self.load_seconds, 3), "tta": self.tta,
            "decision": self.decision_summary(),
            "engine": _engine_facts(self.predictor),
            "metadata_inputs": _metadata_inputs(self.predictor),
        })

    def decision_summary(self) -> dict[str, Any]:
        """The decision rule in force and its parameters (see skincli.decision)."""
        from skincli.decision import decision_summary

        summary = decision_summary(self.predictor.info, getattr(self.predictor, "decision", None))
        summary.get("fitted", {}).pop("when", None)
        return summary


def _metadata_inputs(predictor: Predictor) -> dict[str, Any] | None:
    """The fields and values of the run's metadata term (None for an image-only model)."""
    head = getattr(predictor, "metadata_head", None)
    if head is None:
        return None
    values = head.encoder.values
    return {"age": "years, 0-120 (used as bands: " + ", ".join(values["age_band"]) + ")",
            "sex": values["sex"], "site": values["site"]}


def _engine_facts(predictor: Predictor) -> dict[str, Any] | None:
    """What the engine says about itself (name, runtime, threads), without file paths."""
    engine = getattr(predictor, "engine", None)
    describe = getattr(engine, "describe", None)
    return describe() if callable(describe) else None


def json_safe(value: Any) -> Any:
    """Replace NaN/inf by None and numpy scalars by Python ones, recursively."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def load_model(settings: Settings, run: str | None = None) -> LoadedModel:
    """Load a run fully and warm it (every batch size path traced) before it serves anything."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from skincli.engines.base import default_threads
    from skincli.predictor import Predictor

    start = time.perf_counter()
    run_dir = resolve_run(run if run is not None else settings.run, settings.runs_dir)
    # The inference thread of each worker gets its share of the cores.
    threads = max(1, default_threads() // max(1, settings.workers))
    predictor = Predictor.from_run(run_dir, settings.runs_dir, max_pixels=settings.max_pixels,
                                   threads=threads, on_warning=log.warning)
    if settings.decision != "balanced":
        from skincli.evaluate import resolve_decision

        decision = resolve_decision(predictor, settings.decision, settings.prevalence)
        for message in decision.warnings:
            log.warning(message)
        predictor.set_decision(decision)
    model = LoadedModel(predictor=predictor, run_dir=Path(run_dir),
                        loaded_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        load_seconds=0.0, tta=settings.tta)
    if settings.warmup:
        size = predictor.input_size
        for n in sorted({1, settings.max_batch}):
            model.forward(np.zeros((n, size, size, 3), np.float32))
    model.load_seconds = time.perf_counter() - start
    return model


class ModelHolder:
    """Holds the current LoadedModel; a reload swaps one reference, nothing else."""

    def __init__(self) -> None:
        self._current: LoadedModel | None = None
        self._swap_lock = threading.Lock()

    @property
    def current(self) -> LoadedModel | None:
        """The model new requests use (None before start-up finished)."""
        return self._current

    def swap(self, model: LoadedModel) -> LoadedModel | None:
        """Make `model` current; return the previous one. Requests holding it keep it."""
        with self._swap_lock:
            previous, self._current = self._current, model
        return previous
