"""A prediction row and the store interface, shared by the SQLite and the SQLAlchemy stores:
the row `skin predict` and `skin serve` record for each answered image (built in one place, so
the monitoring reports read the same fields from both), the columns, how a logged dict becomes
a stored row and back, the schema migrations."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from skincli.errors import SkinError

SCHEMA_VERSION = 2
COLUMNS = ["time", "request_id", "model_version", "image_sha256", "predicted", "probabilities",
           "top_probability", "uncertain", "latency_ms", "source", "image_stats", "embedding",
           "label"]


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


def _float(value: Any, default: float = float("nan")) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out


def _float_dict(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    return {str(k): round(_float(v), 6) for k, v in value.items()}


def normalise_row(row: dict[str, Any], now: float) -> tuple[Any, ...]:
    """One input dict -> a tuple in column order; unknown keys ignored, missing ones filled."""
    if not isinstance(row, dict):
        raise SkinError(f"A prediction log row must be a dict, got {type(row).__name__}")
    probs = _float_dict(row.get("probabilities"))
    predicted = row.get("predicted")
    if predicted is None and probs:
        predicted = max(probs, key=lambda k: probs[k])
    top = row.get("top_probability")
    if top is None:
        top = max(probs.values()) if probs else float("nan")
    embedding = row.get("embedding")
    if embedding is not None:
        embedding = [round(_float(v), 6) for v in np.asarray(embedding, dtype=np.float64).ravel()]
    source = str(row.get("source") or "cli")
    return (
        _float(row.get("time"), now) if row.get("time") is not None else now,
        str(row.get("request_id") or ""),
        str(row.get("model_version") or ""),
        str(row.get("image_sha256") or ""),
        "" if predicted is None else str(predicted),
        json.dumps(probs, sort_keys=True),
        _float(top),
        int(bool(row.get("uncertain", False))),
        _float(row.get("latency_ms")),
        source,
        json.dumps(_float_dict(row.get("image_stats")), sort_keys=True),
        None if embedding is None else json.dumps(embedding),
        str(row.get("row_key") or uuid.uuid4().hex),
    )


def rows_frame(records: Iterable[tuple[Any, ...]]) -> pd.DataFrame:
    """Stored tuples (column order + label) -> DataFrame with parsed JSON columns."""
    rows = []
    for r in records:
        rows.append({
            "time": float(r[0]),
            "request_id": r[1],
            "model_version": r[2],
            "image_sha256": r[3],
            "predicted": r[4],
            "probabilities": json.loads(r[5]) if r[5] else {},
            "top_probability": _nan_if_none(r[6]),
            "uncertain": bool(r[7]),
            "latency_ms": _nan_if_none(r[8]),
            "source": r[9],
            "image_stats": json.loads(r[10]) if r[10] else {},
            "embedding": json.loads(r[11]) if r[11] else None,
            "label": r[12] if r[12] else None,
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def _nan_if_none(value: Any) -> float:
    return float("nan") if value is None else float(value)


# Migrations: version -> statements taking the store from version - 1 to version. Plain SQL
# that SQLite and PostgreSQL both run; each migration runs in one transaction with the version
# row, under the store's write lock, so concurrent openers apply it exactly once.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, "
        "applied REAL NOT NULL)",
        "ALTER TABLE predictions ADD COLUMN row_key TEXT",
        # NULLs are distinct in a unique index: rows from version 1 need no key
        "CREATE UNIQUE INDEX IF NOT EXISTS predictions_row_key ON predictions (row_key)",
        "CREATE INDEX IF NOT EXISTS predictions_request ON predictions (request_id)",
    ),
}


def newer_store_error(where: str, version: int) -> SkinError:
    """The refusal to open a store written by a newer skincli."""
    return SkinError(f"The prediction store {where} has schema version {version}; this skincli "
                     f"knows versions up to {SCHEMA_VERSION}",
                     hint="Upgrade skincli (pip install -U skincli) to read it")


class PredictionStore:
    """Append predictions, attach labels, read them back. Safe across threads and processes."""

    url: str

    def log(self, rows: list[dict[str, Any]]) -> None:
        """Append prediction rows (see the module docstring for the keys)."""
        raise NotImplementedError

    def add_labels(self, mapping: dict[str, str]) -> int:
        """Attach confirmed diagnoses (image_sha256 -> label).

        Labels are kept even for hashes not seen yet (a later prediction of the same image
        picks them up); the return value is how many of the given hashes match at least one
        logged prediction.
        """
        raise NotImplementedError

    def predictions(self, since: float | None = None, until: float | None = None,
                    model_version: str | None = None) -> pd.DataFrame:
        """Logged predictions (oldest first) with a `label` column (missing when unlabelled)."""
        raise NotImplementedError

    def labels(self) -> dict[str, str]:
        """All attached labels (image_sha256 -> label)."""
        raise NotImplementedError

    def schema_version(self) -> int:
        """The schema version of the store (creating or migrating it first if needed)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections (the store reopens on next use)."""

    def __enter__(self) -> PredictionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
