"""The prediction store: one row per prediction, for monitoring. No image, nothing identifying.

Each row holds the time, a request id, the model version, the SHA-256 of the image bytes, the
predicted class, the calibrated probabilities, the latency, and a few cheap image statistics plus
a 32-number random projection of the backbone embedding (enough to detect input drift, not
enough to rebuild the image).

Where rows go (`--store`, or the `SKIN_STORE` environment variable):

- `sqlite:///runs/predictions.db` (default; relative to the working folder) or a bare path.
  One file, created on first use, WAL mode: any number of threads and processes (CLI runs, API
  workers) can append at the same time without losing rows.
- `postgresql://user:password@host/db` (or any SQLAlchemy URL) for teams running several
  replicas on several machines; needs `pip install sqlalchemy psycopg` (a bare
  `postgresql://` URL uses psycopg 3).

Schema: the `schema_version` table records each migration applied; opening a store brings it
to `SCHEMA_VERSION` in one locked transaction (files written before versioning are version 1
and are upgraded in place). A store written by a newer skincli is refused, not guessed at.

Every row carries a `row_key` (the caller's, or a random one); inserting a key twice keeps the
first row, so a write retried after a lost connection never duplicates a prediction.
"""

from __future__ import annotations

import os

from skincli.errors import SkinError
from skincli.monitor.imagestats import EMBEDDING_DIMS, STAT_NAMES, image_stats, summarize_embedding
from skincli.monitor.rows import COLUMNS, SCHEMA_VERSION, PredictionStore
from skincli.monitor.sql_store import SqlAlchemyStore
from skincli.monitor.sqlite_store import SqliteStore

__all__ = ["COLUMNS", "DEFAULT_STORE_URL", "EMBEDDING_DIMS", "SCHEMA_VERSION", "STAT_NAMES",
           "PredictionStore", "SqlAlchemyStore", "SqliteStore", "default_store_url",
           "image_stats", "open_store", "summarize_embedding"]

DEFAULT_STORE_URL = os.environ.get("SKIN_STORE") or "sqlite:///runs/predictions.db"


def default_store_url() -> str:
    """The store URL in effect now: $SKIN_STORE if set, else the SQLite file under runs/."""
    return os.environ.get("SKIN_STORE") or "sqlite:///runs/predictions.db"


def open_store(url: str | os.PathLike[str] | None = None) -> PredictionStore:
    """Open (lazily create) the prediction store at `url` (default: $SKIN_STORE or runs/)."""
    text = str(url) if url is not None else default_store_url()
    text = text.strip()
    if not text:
        raise SkinError("Empty prediction store URL",
                        hint="Use sqlite:///runs/predictions.db or postgresql://...")
    if text.startswith("sqlite:///"):
        return SqliteStore(text[len("sqlite:///"):])  # sqlite:////abs -> /abs
    if text.startswith("sqlite://"):
        raise SkinError(f"Prediction store URL {text} has no file path",
                        hint="Use sqlite:///relative/path.db or sqlite:////absolute/path.db")
    if "://" in text:
        return SqlAlchemyStore(text)
    return SqliteStore(text)
