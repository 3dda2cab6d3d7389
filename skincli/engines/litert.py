"""The LiteRT engine: a two-output `.tflite` model (logits, pooled embedding) run by the
`ai-edge-litert` interpreter with XNNPACK, without importing TensorFlow.

The input tensor is resized to each call's size; re-planning for a new size costs microseconds,
so one interpreter serves every size. A batch is fed in chunks of at most `MAX_CHUNK` images:
measured on 2 cores with EfficientNet-Lite0 at 224 px, XNNPACK's time per image is lowest at
2-4 images per call and 15-20% higher at 16-32 (the activations of a big batch no longer fit
the caches), so bigger calls buy nothing (docs/performance.md).
The interpreter is not thread-safe: calls are serialised by a lock (the server runs inference
on one thread anyway, and XNNPACK uses `num_threads` cores inside each call).
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from skincli._quiet import silenced_stderr_fd
from skincli.engines.base import EngineUnavailable

SIGNATURE = "serving_default"
LOGITS_OUTPUT, EMBEDDING_OUTPUT = "output_0", "output_1"  # the Keras model's output order
MAX_CHUNK = 4


class LiteRTEngine:
    """Run a converted run model with the LiteRT interpreter (XNNPACK on CPU)."""

    name = "litert"

    def __init__(self, path: str | Path, n_classes: int, input_size: int, num_threads: int,
                 source: str = "", max_chunk: int = MAX_CHUNK) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise EngineUnavailable("the LiteRT runtime is not installed "
                                    "(pip install ai-edge-litert)") from exc
        self.path = Path(path)
        self.source = source  # "run" (model.tflite in the run folder) or "cache"
        self.num_threads = int(num_threads)
        self.input_size = int(input_size)
        self.max_chunk = max(1, int(max_chunk))
        try:
            self._interp = Interpreter(model_path=str(self.path), num_threads=self.num_threads)
            runner = self._interp.get_signature_runner(SIGNATURE)
            inputs = runner.get_input_details()
            outputs = runner.get_output_details()
        except Exception as exc:  # a truncated or foreign flatbuffer
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise EngineUnavailable(f"{self.path} is damaged ({first})") from exc
        if len(inputs) != 1 or LOGITS_OUTPUT not in outputs:
            raise EngineUnavailable(f"{self.path} is not a skin model (signature {SIGNATURE} "
                                    f"has inputs {list(inputs)}, outputs {list(outputs)})")
        self._input_name = next(iter(inputs))
        shape = list(inputs[self._input_name]["shape_signature"])
        if shape[1:] != [self.input_size, self.input_size, 3]:
            raise EngineUnavailable(f"{self.path} takes input {shape}, the run needs "
                                    f"[N, {self.input_size}, {self.input_size}, 3]")
        width = int(outputs[LOGITS_OUTPUT]["shape"][-1])
        if width != int(n_classes):
            raise EngineUnavailable(f"{self.path} answers {width} classes, the run has "
                                    f"{n_classes}")
        self._has_embedding = EMBEDDING_OUTPUT in outputs
        self._runner = runner
        self._lock = threading.Lock()
        # LiteRT announces its XNNPACK delegate on fd 2 at the first call: make that call here,
        # with fd 2 silenced, so it stays off the user's terminal and out of parsed output.
        quiet = os.environ.get("SKIN_TF_VERBOSE") != "1"
        with silenced_stderr_fd() if quiet else contextlib.nullcontext():
            self.forward(np.zeros((1, self.input_size, self.input_size, 3), np.float32))

    @property
    def has_embeddings(self) -> bool:
        return self._has_embedding

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if len(x) == 0:
            return np.zeros((0, 0), np.float32), None
        logits, embs = [], []
        with self._lock:
            for start in range(0, len(x), self.max_chunk):
                out = self._runner(**{self._input_name: x[start:start + self.max_chunk]})
                logits.append(out[LOGITS_OUTPUT])
                embs.append(out.get(EMBEDDING_OUTPUT))
        if len(logits) == 1:
            return logits[0], embs[0]
        emb = None if embs[0] is None else np.concatenate(embs)
        return np.concatenate(logits), emb

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.forward(batch)[0]

    def describe(self) -> dict[str, Any]:
        try:
            from ai_edge_litert import __version__ as version
        except ImportError:  # older wheels without a version attribute
            version = "?"
        return {"engine": self.name, "runtime": f"ai-edge-litert {version} (XNNPACK)",
                "threads": self.num_threads, "model_file": self.source}
