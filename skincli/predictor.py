"""One predictor for `predict`, `evaluate` and the API: same preprocessing, same numbers.

The run folder is loaded once; the model is called through a `tf.function` with a fixed input
signature, so there is no per-call `model.predict` overhead and no retracing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from skincli import DISCLAIMER
from skincli.imageio import DEFAULT_MAX_PIXELS, load_rgb, resize_rgb
from skincli.runs import DEFAULT_RUNS_DIR, MODEL_FILE, RunInfo, load_run_info, resolve_run

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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "label": self.label,
            "probability": round(self.probability, 6),
            "top_k": [{"label": k, "probability": round(p, 6)} for k, p in self.top_k],
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
            "uncertain": self.uncertain,
            "model": self.model,
            "warnings": list(self.warnings),
            "disclaimer": self.disclaimer,
        }


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax of logits / temperature along the last axis."""
    z = np.asarray(logits, dtype=np.float64) / max(float(temperature), 1e-6)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


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

    def __init__(self, run_dir: str | Path, info: RunInfo, model: Any,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        import tensorflow as tf

        self.run_dir = Path(run_dir)
        self.info = info
        self.model = model
        self.classes: list[str] = list(info.classes)
        self.input_size = int(info.input_size)
        self.max_pixels = max_pixels
        self._lock = threading.Lock()
        spec = tf.TensorSpec([None, self.input_size, self.input_size, 3], tf.float32)
        self._fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])

    @classmethod
    def from_run(cls, run: str | Path | None = None,
                 runs_dir: str | Path = DEFAULT_RUNS_DIR, **kwargs: Any) -> Predictor:
        """Load a run folder (default: the current or latest run)."""
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras

        run_dir = resolve_run(run, runs_dir)
        info = load_run_info(run_dir)
        model = keras.models.load_model(run_dir / MODEL_FILE, compile=False)
        return cls(run_dir, info, model, **kwargs)

    @property
    def temperature(self) -> float:
        """The calibration temperature in use."""
        return float(self.info.temperature or 1.0)

    def preprocess(self, image: ImageInput) -> np.ndarray:
        """Any image input -> float32 (S, S, 3) RGB 0..255, exactly as training feeds the model."""
        if isinstance(image, Image.Image):
            from skincli.imageio import to_rgb

            arr = np.asarray(to_rgb(image), dtype=np.uint8)
        elif isinstance(image, np.ndarray):
            arr = image.astype(np.uint8) if image.dtype != np.uint8 else image
        else:
            arr = load_rgb(image, max_pixels=self.max_pixels)
        return resize_rgb(arr, self.input_size).astype(np.float32)

    def logits(self, batch: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Raw logits for a preprocessed float32 batch (N, S, S, 3)."""
        batch = np.asarray(batch, dtype=np.float32)
        out = []
        for start in range(0, len(batch), batch_size):
            chunk = batch[start:start + batch_size]
            out.append(np.asarray(self._fn(chunk)))
        if not out:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return np.concatenate(out, axis=0)

    def probabilities(self, batch: np.ndarray, tta: bool = False,
                      batch_size: int = 32) -> np.ndarray:
        """Calibrated probabilities (N, C); with tta, averaged over the 8 square symmetries."""
        views = tta_views(np.asarray(batch, dtype=np.float32)) if tta else [batch]
        probs = [softmax(self.logits(v, batch_size), self.temperature) for v in views]
        return np.mean(probs, axis=0)

    def verdicts(self, probs: np.ndarray, top_k: int = 3) -> list[Prediction]:
        """Turn probability rows into Prediction objects."""
        threshold = self.info.uncertain_threshold
        results = []
        k = max(1, min(top_k, len(self.classes)))
        for row in np.asarray(probs):
            order = np.argsort(-row)
            top = [(self.classes[i], float(row[i])) for i in order[:k]]
            results.append(Prediction(
                label=top[0][0],
                probability=top[0][1],
                probabilities={c: float(p) for c, p in zip(self.classes, row)},
                top_k=top,
                uncertain=bool(threshold is not None and top[0][1] < threshold),
                model=self.info.version,
            ))
        return results

    def predict(self, images: Sequence[ImageInput], top_k: int = 3,
                tta: bool = False) -> list[Prediction]:
        """Predict already-readable images (errors in reading raise ImageError)."""
        batch = np.stack([self.preprocess(im) for im in images]) if images else np.zeros(
            (0, self.input_size, self.input_size, 3), np.float32)
        return self.verdicts(self.probabilities(batch, tta=tta), top_k=top_k)
