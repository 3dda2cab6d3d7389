"""What every inference engine offers the Predictor, and how one is chosen.

An engine answers one question: for a preprocessed float32 batch (N, S, S, 3) in 0..255, what
are the logits (N, C) and the pooled embedding (N, D)? Everything else (chunking, softmax,
temperature, TTA, warnings) stays in the Predictor, so every engine gives the same answers.
"""

from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

import numpy as np

from skincli.errors import SkinError, did_you_mean

ENGINES = ("litert", "tf")
DEFAULT_ENGINE = "litert"
ENGINE_ENV = "SKIN_ENGINE"
THREADS_ENV = "SKIN_THREADS"


@runtime_checkable
class Engine(Protocol):
    """A loaded model that answers logits and embeddings for a batch."""

    name: str

    @property
    def has_embeddings(self) -> bool:
        """True when `forward` returns an embedding."""
        ...

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits (N, C) and embedding (N, D) or None, from one pass over one chunk."""
        ...

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Logits only (N, C) (an engine may skip the embedding)."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able facts about the engine (name, threads, model file...)."""
        ...


class EngineUnavailable(Exception):
    """This engine cannot serve this run; the message is the one line a user sees."""


def resolve_engine_name(name: str | None = None) -> str:
    """The engine to use: `name`, else $SKIN_ENGINE, else litert. Unknown -> SkinError."""
    explicit = name if name not in (None, "") else os.environ.get(ENGINE_ENV, "")
    chosen = str(explicit or DEFAULT_ENGINE).strip().lower()
    if chosen == "tensorflow":
        chosen = "tf"
    if chosen not in ENGINES:
        where = "--engine" if name not in (None, "") else ENGINE_ENV
        raise SkinError(f"Unknown engine {explicit!r} ({where}).{did_you_mean(chosen, ENGINES)}",
                        hint=f"Use one of: {', '.join(ENGINES)}")
    return chosen


def default_threads() -> int:
    """Inference threads: $SKIN_THREADS, else the cores this process may run on."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if raw:
        try:
            return max(1, int(raw))
        except ValueError:
            raise SkinError(f"{THREADS_ENV}={raw!r} is not a whole number",
                            hint=f"e.g. {THREADS_ENV}=2, or unset it to use every core"
                            ) from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
