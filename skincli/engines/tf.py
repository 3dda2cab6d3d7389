"""The TensorFlow engine: the Keras model behind fixed-signature `tf.function`s.

A fixed input signature means no per-call `model.predict` overhead and no retracing. The
[logits, embedding] function is built on first use (training's validation pass needs it, a
logits-only caller does not).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from skincli.models.graph import embedding_model


class TFEngine:
    """Run a Keras model (input float32 (N, S, S, 3) 0..255, output logits) with TensorFlow."""

    name = "tf"

    def __init__(self, model: Any, input_size: int, note: str = "") -> None:
        import tensorflow as tf

        self.model = model
        self.note = note  # why this engine was chosen, when it was a fallback
        self._spec = tf.TensorSpec([None, int(input_size), int(input_size), 3], tf.float32)
        self._fn = tf.function(lambda x: model(x, training=False), input_signature=[self._spec])
        self._embed_fn: Any = None  # False once known that the model has no embedding
        self._lock = threading.Lock()

    def _embedding_fn(self) -> Any:
        if self._embed_fn is None:
            with self._lock:
                if self._embed_fn is None:
                    import tensorflow as tf

                    both = embedding_model(self.model)
                    self._embed_fn = False if both is None else tf.function(
                        lambda x: both(x, training=False), input_signature=[self._spec])
        return self._embed_fn

    @property
    def has_embeddings(self) -> bool:
        return self._embedding_fn() is not False

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._fn(batch))

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        fn = self._embedding_fn()
        if fn is False:
            return self.logits(batch), None
        out = fn(batch)
        return np.asarray(out[0]), np.asarray(out[1])

    def describe(self) -> dict[str, Any]:
        import tensorflow as tf

        return {"engine": self.name, "runtime": f"tensorflow {tf.__version__}",
                **({"fallback": self.note} if self.note else {})}
