"""One predictor for `predict`, `evaluate` and the API: same preprocessing, same numbers.

The run folder is loaded once, with one inference engine chosen for it (skincli.engines): LiteRT
(the converted two-output model.tflite, run by XNNPACK, no TensorFlow import) by default, or
TensorFlow (the Keras model behind fixed-signature `tf.function`s). Every engine answers
"logits + embedding for a batch"; everything else here is shared, so the numbers do not depend
on the engine beyond the parity the conversion checks. The Keras model itself is loaded only
when something needs it (Grad-CAM).

Besides the logits, one forward pass can also return the pooled backbone embedding (the input
of the final "logits" layer): monitoring uses it for drift, and `predict` uses it, with cheap
colour statistics, to warn when an input does not look like the training images.

The out-of-distribution reference and its scores are in skincli.ood.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from skincli import DISCLAIMER, ood
from skincli.calibration import softmax
from skincli.clinical.triage import assess, record_of
from skincli.decision import Decision
from skincli.defer import assess as assess_deferral
from skincli.defer import record_of as defer_record_of
from skincli.engines import load_engine, load_keras_model
from skincli.engines.tf import TFEngine
from skincli.image_quality import is_flagged
from skincli.imageio import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    load_rgb,
    read_images,
    resize_rgb,
    to_rgb,
)
from skincli.metahead import MetadataHead, site_group
from skincli.runs import (
    DEFAULT_RUNS_DIR,
    RunInfo,
    check_model_file,
    load_run_info,
    resolve_run,
)

ImageInput = str | os.PathLike[str] | bytes | np.ndarray | Image.Image


@dataclass
class Prediction:
    """One image's result: calibrated probabilities and the verdict."""

    label: str
    probability: float
    probabilities: dict[str, float]
    top_k: list[tuple[str, float]]
    uncertain: bool
    model: str
    warnings: list[str] = field(default_factory=list)
    disclaimer: str = DISCLAIMER
    source: str | None = None  # the file it came from (predict_paths)
    embedding: np.ndarray | None = field(default=None, repr=False)  # pooled backbone features
    meta: dict[str, Any] = field(default_factory=dict, repr=False)  # e.g. latency_ms, hook output
    triage: dict[str, Any] | None = None  # malignancy score vs the run's referral threshold
    decision: str = "balanced"  # the decision rule that turned the probabilities into the answer
    # The calibrated probabilities before the decision rule (what the prediction log keeps).
    calibrated: dict[str, float] | None = field(default=None, repr=False)
    # Answered or deferred to a dermatologist at the run's operating point (skincli.defer);
    # None when the run has none. Never changes `triage`: a "refer" stays a "refer".
    deferral: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (with "file" when the prediction came from a file)."""
        head = {"file": self.source} if self.source is not None else {}
        return head | {
            "label": self.label,
            "probability": round(self.probability, 6),
            "top_k": [{"label": k, "probability": round(p, 6)} for k, p in self.top_k],
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
            "uncertain": self.uncertain,
            "model": self.model,
            "warnings": list(self.warnings),
            "disclaimer": self.disclaimer,
        } | ({"triage": self.triage} if self.triage is not None else {}) \
            | ({"deferral": self.deferral} if self.deferral is not None else {})


def tta_views(batch: np.ndarray) -> list[np.ndarray]:
    """The 8 symmetries of the square (flips and 90-degree rotations): dermoscopy has no 'up'."""
    views = []
    for k in range(4):
        rot = np.rot90(batch, k=k, axes=(1, 2))
        views.append(rot)
        views.append(rot[:, :, ::-1])
    return [np.ascontiguousarray(v) for v in views]


class Predictor:
    """A loaded run: preprocess images and return calibrated predictions."""

    def __init__(self, run_dir: str | Path, info: RunInfo, model: Any = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, engine: Any = None) -> None:
        """Wrap a run; give a Keras `model` (TensorFlow engine) or a loaded `engine`."""
        self.run_dir = Path(run_dir)
        self.info = info
        self.classes: list[str] = list(info.classes)
        self.input_size = int(info.input_size)
        self.max_pixels = max_pixels
        self._lock = threading.Lock()
        self._model = model
        if engine is None:
            if model is None:
                raise ValueError("Predictor needs a Keras model or an engine")
            engine = TFEngine(model, self.input_size)
        self.engine = engine
        self._ref_cache: tuple[int, dict[str, Any] | None] = (0, None)
        self._head_cache: tuple[int, Any] = (0, None)
        # The decision rule in force; None = balanced: the calibrated probabilities are the
        # answer, with run.json's uncertain threshold.
        self.decision: Decision | None = None

    @classmethod
    def from_run(cls, run: str | Path | None = None,
                 runs_dir: str | Path = DEFAULT_RUNS_DIR, engine: str | None = None,
                 threads: int | None = None, on_warning: Callable[[str], None] | None = None,
                 **kwargs: Any) -> Predictor:
        """Load a run folder (default: the current or latest run).

        engine: "litert" or "tf" (default: $SKIN_ENGINE, else litert); when LiteRT cannot
        serve the run, `on_warning` gets one line (default: the "skincli" logger) and the run
        uses TensorFlow. threads: LiteRT threads (default: $SKIN_THREADS, else every core).
        """
        run_dir = resolve_run(run, runs_dir)
        info = load_run_info(run_dir)
        check_model_file(run_dir)
        warn = on_warning or logging.getLogger("skincli").warning
        loaded, model = load_engine(run_dir, info, engine, threads=threads, warn=warn)
        return cls(run_dir, info, model, engine=loaded, **kwargs)

    @property
    def engine_name(self) -> str:
        """"litert" or "tf"."""
        return str(self.engine.name)

    @property
    def model(self) -> Any:
        """The Keras model (for Grad-CAM); loaded on first use when the engine is LiteRT."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = load_keras_model(self.run_dir)
        return self._model

    @model.setter
    def model(self, value: Any) -> None:
        self._model = value

    def model_summary(self) -> dict[str, Any]:
        """What every output (predict, evaluate) says about the model that produced it."""
        info = self.info
        return {"name": info.name, "version": info.version, "arch": info.arch,
                "engine": self.engine_name,
                "run_dir": str(self.run_dir), "classes": list(info.classes),
                "temperature": self.temperature,
                "uncertain_threshold": self.uncertain_threshold,
                "decision": self.decision_name}

    def set_decision(self, decision: Decision | None) -> None:
        """Answer with a decision rule (skincli.evaluate.resolve_decision); None = balanced."""
        self.decision = decision

    @property
    def decision_name(self) -> str:
        """The name of the decision rule in force."""
        return "balanced" if self.decision is None else str(self.decision.rule)

    @property
    def uncertain_threshold(self) -> float | None:
        """The uncertain threshold of the rule in force (each rule has its own)."""
        if self.decision is None:
            return self.info.uncertain_threshold
        return self.decision.uncertain_threshold

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """The decision rule's post-processing of calibrated probabilities (N, C)."""
        return probs if self.decision is None else self.decision.apply(probs)

    @property
    def temperature(self) -> float:
        """The calibration temperature in use."""
        return float(self.info.temperature or 1.0)

    def preprocess(self, image: ImageInput) -> np.ndarray:
        """Any image input -> float32 (S, S, 3) RGB 0..255, exactly as training feeds the model."""
        if isinstance(image, Image.Image):
            arr = np.asarray(to_rgb(image), dtype=np.uint8)
        elif isinstance(image, np.ndarray):
            arr = image.astype(np.uint8) if image.dtype != np.uint8 else image
        else:
            arr = load_rgb(image, max_pixels=self.max_pixels)
        return resize_rgb(arr, self.input_size).astype(np.float32)

    # --- the metadata term of a run trained with --use-metadata (skincli.metahead) ------------

    @property
    def metadata_head(self) -> Any:
        """The run's MetadataHead (age, sex, site term of the logits), or None."""
        raw = (self.info.extra or {}).get("metadata_head")
        if self._head_cache[0] != id(raw):
            try:
                head = MetadataHead.from_dict(raw)
            except (KeyError, TypeError, ValueError):
                head = None
            self._head_cache = (id(raw), head)
        return self._head_cache[1]

    @property
    def uses_metadata(self) -> bool:
        """True when the run adds a metadata term to the logits."""
        return self.metadata_head is not None

    def encode_metadata(self, records: Sequence[dict[str, Any]] | None) -> np.ndarray | None:
        """Records {sex, age_band, site} -> encoded rows for `meta=`; None if unused/absent."""
        head = self.metadata_head
        if head is None or records is None:
            return None
        return head.encoder.encode(list(records))

    def metadata_notes(self, record: dict[str, Any]) -> list[str]:
        """Warnings about one record: a site the model was not trained on, metadata ignored."""
        head = self.metadata_head
        given = [f for f in ("sex", "age_band", "site") if record.get(f)]
        if head is None:
            return (["this model does not use patient metadata; age, sex and site were "
                     "ignored"] if given else [])
        site = record.get("site")
        if site and site_group(site) not in head.encoder.sites:
            return [f"site {site!r} is not one the model was trained with; it counts as "
                    f"'other' (known: {', '.join(head.encoder.sites)})"]
        return []

    def _with_metadata(self, logits: np.ndarray, meta: np.ndarray | None) -> np.ndarray:
        head = self.metadata_head
        if head is None or meta is None:  # no metadata: exactly the image model's logits
            return logits
        return (np.asarray(logits, np.float32) + head.offsets(meta, len(logits))
                ).astype(np.float32)

    def logits(self, batch: np.ndarray, batch_size: int = 32,
               meta: np.ndarray | None = None) -> np.ndarray:
        """Raw logits for a preprocessed float32 batch (N, S, S, 3).

        meta: encoded metadata rows (`encode_metadata`) for a run trained with them.
        """
        batch = np.asarray(batch, dtype=np.float32)
        out = []
        for start in range(0, len(batch), max(1, int(batch_size))):
            out.append(np.asarray(self.engine.logits(batch[start:start + batch_size])))
        if not out:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return self._with_metadata(np.concatenate(out, axis=0), meta)

    def probabilities(self, batch: np.ndarray, tta: bool = False,
                      batch_size: int = 32, meta: np.ndarray | None = None) -> np.ndarray:
        """Calibrated probabilities (N, C); with tta, averaged over the 8 square symmetries."""
        views = tta_views(np.asarray(batch, dtype=np.float32)) if tta else [batch]
        probs = [softmax(self.logits(v, batch_size, meta), self.temperature) for v in views]
        return np.mean(probs, axis=0)

    def verdicts(self, probs: np.ndarray, top_k: int = 3) -> list[Prediction]:
        """Turn calibrated probability rows into Prediction objects under the decision rule."""
        threshold = self.uncertain_threshold
        triage_record = record_of(self.info)
        defer_record = defer_record_of(self.info)
        results = []
        k = max(1, min(top_k, len(self.classes)))
        calibrated = np.asarray(probs)
        decided = np.asarray(self.decide(calibrated))
        rule = self.decision_name
        for cal, row in zip(calibrated, decided):
            order = np.argsort(-row)
            top = [(self.classes[i], float(row[i])) for i in order[:k]]
            probabilities = {c: float(p) for c, p in zip(self.classes, row)}
            results.append(Prediction(
                label=top[0][0],
                probability=top[0][1],
                probabilities=probabilities,
                top_k=top,
                uncertain=bool(threshold is not None and top[0][1] < threshold),
                model=self.info.version,
                decision=rule,
                calibrated={c: float(p) for c, p in zip(self.classes, cal)},
                # The referral threshold was fitted on calibrated probabilities.
                triage=assess(triage_record, {c: float(p) for c, p in zip(self.classes, cal)}),
                # Thresholds fitted on calibrated probabilities under the balanced rule.
                deferral=assess_deferral(defer_record,
                                         {c: float(p) for c, p in zip(self.classes, cal)}),
            ))
        return results

    def predict(self, images: Sequence[ImageInput], top_k: int = 3,
                tta: bool = False, metadata: Sequence[dict[str, Any]] | None = None
                ) -> list[Prediction]:
        """Predict already-readable images (errors in reading raise ImageError).

        Each Prediction carries its embedding and, when run.json has a reference, a warning
        for images that look unlike the training images. metadata: one record per image
        ({sex, age_band, site}, skincli.metahead.parse_inputs) for a run trained with it.
        """
        batch = np.stack([self.preprocess(im) for im in images]) if images else np.zeros(
            (0, self.input_size, self.input_size, 3), np.float32)
        return self._predict_batch(batch, top_k, tta, metadata=metadata)

    # --- one pass for logits and the pooled embedding ----------------------------------------

    @property
    def has_embeddings(self) -> bool:
        """True when the model exposes a pooled embedding (every registry model does)."""
        return bool(self.engine.has_embeddings)

    def logits_and_embeddings(self, batch: np.ndarray, batch_size: int = 32,
                              meta: np.ndarray | None = None
                              ) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits (N, C) and pooled backbone embeddings (N, D) from one forward pass.

        The embedding is None when the model has no recognisable pooled layer. meta: encoded
        metadata rows for a run trained with them (see `logits`).
        """
        batch = np.asarray(batch, dtype=np.float32)
        logits, embs = [], []
        for start in range(0, len(batch), max(1, int(batch_size))):
            out, emb = self.engine.forward(batch[start:start + batch_size])
            logits.append(np.asarray(out))
            embs.append(emb)
        if not logits:
            return (np.zeros((0, len(self.classes)), np.float32), None)
        out = self._with_metadata(np.concatenate(logits), meta)
        if any(e is None for e in embs):
            return out, None
        return out, np.concatenate([np.asarray(e) for e in embs])

    def tta_logits(self, batch: np.ndarray, batch_size: int = 32,
                   meta: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits of all 8 TTA views (8, N, C) (view 0 = the image as is) and its embeddings."""
        views = tta_views(np.asarray(batch, dtype=np.float32))
        first, emb = self.logits_and_embeddings(views[0], batch_size, meta)
        rest = [self.logits(v, batch_size, meta) for v in views[1:]]
        return np.stack([first, *rest]), emb

    def probabilities_and_embeddings(self, batch: np.ndarray, tta: bool = False,
                                     batch_size: int = 32, meta: np.ndarray | None = None
                                     ) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated probabilities (N, C) and embeddings (N, D) of the untransformed images."""
        if tta:
            views, emb = self.tta_logits(batch, batch_size, meta)
            return np.mean([softmax(v, self.temperature) for v in views], axis=0), emb
        logits, emb = self.logits_and_embeddings(batch, batch_size, meta)
        return softmax(logits, self.temperature), emb

    # --- "does this look like the training images?" ------------------------------------------

    @property
    def reference(self) -> dict[str, Any] | None:
        """The out-of-distribution reference statistics from run.json, as arrays (or None)."""
        raw = (self.info.extra or {}).get("reference")
        if self._ref_cache[0] != id(raw):
            self._ref_cache = (id(raw), ood.parse_reference(raw))
        return self._ref_cache[1]

    def input_warnings(self, batch: np.ndarray, embeddings: np.ndarray | None = None
                       ) -> list[list[str]]:
        """Per image, warnings when it looks unlike the reference (training/validation) images."""
        return ood.input_warnings(self.reference, batch, embeddings)

    def _predict_batch(self, batch: np.ndarray, top_k: int, tta: bool,
                       batch_size: int = 32,
                       metadata: Sequence[dict[str, Any]] | None = None) -> list[Prediction]:
        meta = self.encode_metadata(metadata)
        probs, emb = self.probabilities_and_embeddings(batch, tta=tta, batch_size=batch_size,
                                                       meta=meta)
        preds = self.verdicts(probs, top_k=top_k)
        for i, (pred, warns) in enumerate(zip(preds, self.input_warnings(batch, emb))):
            if metadata is not None:
                pred.warnings.extend(self.metadata_notes(dict(metadata[i])))
            pred.warnings.extend(warns)
            pred.uncertain = pred.uncertain or is_flagged(warns)
            if emb is not None:
                pred.embedding = emb[i]
        return preds

    def read_images(self, paths: Sequence[str | os.PathLike[str]]
                    ) -> list[np.ndarray | ImageError]:
        """Read files as model-input uint8 images (S, S, 3); a bad file becomes its ImageError.

        Decoding runs in a few threads (Pillow releases the GIL while decoding).
        """
        return read_images(paths, self.input_size, self.max_pixels)

    def predict_paths(self, paths: Sequence[str | os.PathLike[str]], batch_size: int = 32,
                      tta: bool = False, top_k: int = 3,
                      progress: Callable[[int, int], None] | None = None,
                      image_hook: Callable[[np.ndarray], dict[str, Any]] | None = None,
                      metadata: Sequence[dict[str, Any]] | None = None,
                      ) -> list[Prediction | ImageError]:
        """Read and predict files in batches; a file that cannot be read becomes its ImageError.

        Results keep the order of `paths`. `progress(done, total)` is called after each batch.
        `image_hook(uint8 model-input image)` results are stored in `Prediction.meta`.
        metadata: one record per path (see `predict`).
        """
        total = len(paths)
        results: list[Prediction | ImageError] = []
        batch_size = max(1, int(batch_size))
        for start in range(0, total, batch_size):
            chunk = paths[start:start + batch_size]
            slots: list[Prediction | ImageError | None] = []
            arrays: list[np.ndarray] = []
            records: list[dict[str, Any]] = []
            for j, item in enumerate(self.read_images(chunk)):
                if isinstance(item, ImageError):
                    slots.append(item)
                else:
                    arrays.append(item)
                    slots.append(None)
                    if metadata is not None:
                        records.append(dict(metadata[start + j]))
            if arrays:
                t0 = time.perf_counter()
                batch = np.stack(arrays).astype(np.float32)
                preds = iter(self._predict_batch(batch, top_k, tta, batch_size=batch_size,
                                                 metadata=records if metadata is not None
                                                 else None))
                latency_ms = (time.perf_counter() - t0) * 1000.0 / len(arrays)
                hooks = iter(arrays)
            for p, slot in zip(chunk, slots):
                if slot is not None:
                    results.append(slot)
                    continue
                pred = next(preds)
                arr = next(hooks)
                pred.source = str(p)
                pred.meta["latency_ms"] = latency_ms
                if image_hook is not None:
                    pred.meta.update(image_hook(arr))
                results.append(pred)
            if progress is not None:
                progress(min(start + batch_size, total), total)
        return results


def load_predictor(run: str | Path | None, runs_dir: str | Path = DEFAULT_RUNS_DIR,
                   engine: str | None = None,
                   on_warning: Callable[[str], None] | None = None) -> Predictor:
    """Load a run's Predictor (a damaged model file is a one-line SkinError from from_run).

    engine: "litert" or "tf" (default $SKIN_ENGINE, else litert); a LiteRT fallback to
    TensorFlow is one line to `on_warning`.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return Predictor.from_run(run, runs_dir, engine=engine, on_warning=on_warning)
