"""The prediction-log row: what `skin predict` and `skin serve` record for each answered image,
built in one place so the monitoring reports read the same fields from both."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any


def prediction_row(*, request_id: str, model_version: str, image_sha256: str, predicted: str,
                   probabilities: Mapping[str, float], top_probability: float,
                   uncertain: bool, latency_ms: float | None, source: str,
                   row_key: str | None = None, image_stats: dict[str, float] | None = None,
                   embedding: list[float] | None = None, when: float | None = None
                   ) -> dict[str, Any]:
    """One row for the monitoring store (`skincli.monitor.store`).

    probabilities: the calibrated ones, before any decision rule (label-shift estimation needs
    them). row_key: one key per answered image, so a row written twice (a retry, a replayed
    journal) is stored once; the store makes one up when it is None.
    """
    return {"time": time.time() if when is None else when, "request_id": request_id,
            "row_key": row_key, "model_version": model_version, "image_sha256": image_sha256,
            "predicted": predicted, "probabilities": dict(probabilities),
            "top_probability": top_probability, "uncertain": uncertain,
            "latency_ms": latency_ms, "source": source, "image_stats": image_stats,
            "embedding": embedding}
