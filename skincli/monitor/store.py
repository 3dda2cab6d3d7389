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

import json
import math
import os
import random
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from skincli.errors import SkinError

DEFAULT_STORE_URL = os.environ.get("SKIN_STORE") or "sqlite:///runs/predictions.db"
SCHEMA_VERSION = 2
EMBEDDING_DIMS = 32
STAT_NAMES = ("mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "brightness",
              "saturation", "sharpness")
COLUMNS = ["time", "request_id", "model_version", "image_sha256", "predicted", "probabilities",
           "top_probability", "uncertain", "latency_ms", "source", "image_stats", "embedding",
           "label"]

# How long a writer keeps retrying when another process holds the write lock. Writes are tiny
# (one short transaction per batch), so this is only reached when something is badly wrong.
_LOCK_TIMEOUT_S = 30.0
# A server store: how long one write keeps retrying a lost connection (the server restarting,
# a fail-over), and how many rows wait in memory meanwhile (the oldest go first beyond that).
RETRY_S = 30.0
MAX_PENDING = 10_000

T = TypeVar("T")


def default_store_url() -> str:
    """The store URL in effect now: $SKIN_STORE if set, else the SQLite file under runs/."""
    return os.environ.get("SKIN_STORE") or "sqlite:///runs/predictions.db"


# ---------------------------------------------------------------------------------------------
# Row normalisation (shared by both back ends)
# ---------------------------------------------------------------------------------------------

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


def _normalise(row: dict[str, Any], now: float) -> tuple[Any, ...]:
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


def _frame(records: Iterable[tuple[Any, ...]]) -> pd.DataFrame:
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


# ---------------------------------------------------------------------------------------------
# Store
# ---------------------------------------------------------------------------------------------

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


# Version 1: the schema of every store written before versioning (kept verbatim: it is what
# an old file holds, and a new store is created as version 1 and then migrated).
_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    request_id TEXT NOT NULL,
    model_version TEXT NOT NULL,
    image_sha256 TEXT NOT NULL,
    predicted TEXT NOT NULL,
    probabilities TEXT NOT NULL,
    top_probability REAL,
    uncertain INTEGER NOT NULL,
    latency_ms REAL,
    source TEXT NOT NULL,
    image_stats TEXT NOT NULL,
    embedding TEXT
);
CREATE INDEX IF NOT EXISTS predictions_time ON predictions (time);
CREATE INDEX IF NOT EXISTS predictions_sha ON predictions (image_sha256);
CREATE TABLE IF NOT EXISTS labels (
    image_sha256 TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    time REAL NOT NULL
);
"""

# Migrations: version -> statements taking the store from version - 1 to version. Plain SQL
# that SQLite and PostgreSQL both run; each migration runs in one transaction with the version
# row, under the store's write lock, so concurrent openers apply it exactly once.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, "
        "applied REAL NOT NULL)",
        "ALTER TABLE predictions ADD COLUMN row_key TEXT",
        # NULLs are distinct in a unique index: rows from version 1 need no key
        "CREATE UNIQUE INDEX IF NOT EXISTS predictions_row_key ON predictions (row_key)",
        "CREATE INDEX IF NOT EXISTS predictions_request ON predictions (request_id)",
    ),
}


def _newer_store(where: str, version: int) -> SkinError:
    return SkinError(f"The prediction store {where} has schema version {version}; this skincli "
                     f"knows versions up to {SCHEMA_VERSION}",
                     hint="Upgrade skincli (pip install -U skincli) to read it")


_INSERT = ("INSERT INTO predictions (time, request_id, model_version, image_sha256, predicted, "
           "probabilities, top_probability, uncertain, latency_ms, source, image_stats, "
           "embedding, row_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
           "ON CONFLICT (row_key) DO NOTHING")
_SELECT = ("SELECT p.time, p.request_id, p.model_version, p.image_sha256, p.predicted, "
           "p.probabilities, p.top_probability, p.uncertain, p.latency_ms, p.source, "
           "p.image_stats, p.embedding, l.label FROM predictions p "
           "LEFT JOIN labels l ON l.image_sha256 = p.image_sha256")


def _is_locked(exc: Exception) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class SqliteStore(PredictionStore):
    """The embedded default: one SQLite file in WAL mode."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        # One connection per (process, thread): sqlite3 connections must not cross threads,
        # and a connection inherited through fork() must never be used by the child.
        self._local = threading.local()
        self._initialised = False
        self._init_lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            return conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SkinError(f"Cannot create the folder for the prediction store {self.path}: "
                            f"{exc.strerror}", hint="Pass a writable --store path") from exc
        try:
            conn = sqlite3.connect(str(self.path), timeout=_LOCK_TIMEOUT_S,
                                   isolation_level=None)  # explicit BEGIN/COMMIT below
            conn.execute(f"PRAGMA busy_timeout = {int(_LOCK_TIMEOUT_S * 1000)}")
            self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
            conn.execute("PRAGMA synchronous = NORMAL")  # safe with WAL; much faster commits
        except sqlite3.DatabaseError as exc:
            raise SkinError(f"Cannot open the prediction store {self.path}: {exc}",
                            hint="Check the path, or point --store / SKIN_STORE elsewhere"
                            ) from exc
        self._local.conn = conn
        self._local.pid = os.getpid()
        with self._init_lock:
            self._all.append(conn)
            if not self._initialised:
                try:
                    self._retry(lambda: self._migrate(conn))
                except sqlite3.DatabaseError as exc:
                    raise SkinError(f"Cannot open the prediction store {self.path}: {exc}",
                                    hint="Check the path, or point --store / SKIN_STORE "
                                    "elsewhere") from exc
                self._initialised = True
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Create (version 1) and migrate the file to SCHEMA_VERSION under the write lock."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            tables = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "schema_version" in tables:
                version = int(conn.execute("SELECT MAX(version) FROM schema_version")
                              .fetchone()[0] or 1)
            elif "predictions" in tables:
                version = 1  # written before versioning
            else:
                for stmt in _SQLITE_SCHEMA.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                version = 1
            if version > SCHEMA_VERSION:
                raise _newer_store(str(self.path), version)
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for stmt in _MIGRATIONS[v]:
                    conn.execute(stmt)
                conn.execute("INSERT INTO schema_version (version, applied) VALUES (?, ?)",
                             (v, time.time()))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def schema_version(self) -> int:
        conn = self._connect()
        return int(self._retry(lambda: conn.execute("SELECT MAX(version) FROM schema_version")
                               .fetchone()[0]))

    def _retry(self, fn: Callable[[], T]) -> T:
        """Run fn, retrying with jittered back-off while another writer holds the lock."""
        deadline = time.monotonic() + _LOCK_TIMEOUT_S
        delay = 0.005
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_locked(exc) or time.monotonic() > deadline:
                    raise SkinError(f"Prediction store {self.path}: {exc}",
                                    hint="Another process may hold it; try again") from exc
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.5)

    def _write(self, statements: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._connect()

        def attempt() -> T:
            # BEGIN IMMEDIATE takes the write lock up front: no deadlock between two readers
            # that both want to upgrade, and the transaction stays a few statements short.
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = statements(conn)
                conn.execute("COMMIT")
                return out
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        return self._retry(attempt)

    def log(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        now = time.time()
        values = [_normalise(r, now) for r in rows]
        self._write(lambda c: c.executemany(_INSERT, values))

    def add_labels(self, mapping: dict[str, str]) -> int:
        items = [(str(k).strip().lower(), str(v).strip()) for k, v in mapping.items()
                 if str(k).strip() and str(v).strip()]
        if not items:
            return 0
        now = time.time()

        def do(c: sqlite3.Connection) -> int:
            c.executemany("INSERT INTO labels (image_sha256, label, time) VALUES (?, ?, ?) "
                          "ON CONFLICT(image_sha256) DO UPDATE SET label = excluded.label, "
                          "time = excluded.time", [(k, v, now) for k, v in items])
            matched = 0
            for k, _ in items:
                row = c.execute("SELECT 1 FROM predictions WHERE image_sha256 = ? LIMIT 1",
                                (k,)).fetchone()
                matched += row is not None
            return matched

        return self._write(do)

    def predictions(self, since: float | None = None, until: float | None = None,
                    model_version: str | None = None) -> pd.DataFrame:
        where, args = _where(since, until, model_version, "?")
        sql = f"{_SELECT}{where} ORDER BY p.time, p.id"
        conn = self._connect()
        records = self._retry(lambda: conn.execute(sql, args).fetchall())
        return _frame(records)

    def labels(self) -> dict[str, str]:
        conn = self._connect()
        rows = self._retry(lambda: conn.execute("SELECT image_sha256, label FROM labels")
                           .fetchall())
        return {k: v for k, v in rows}

    def close(self) -> None:
        with self._init_lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.ProgrammingError:
                pass  # created in another thread; it closes when that thread ends
        self._local = threading.local()


def _where(since: float | None, until: float | None, model_version: str | None,
           mark: str) -> tuple[str, list[Any]]:
    clauses, args = [], []
    if since is not None:
        clauses.append(f"p.time >= {mark}")
        args.append(float(since))
    if until is not None:
        clauses.append(f"p.time < {mark}")
        args.append(float(until))
    if model_version is not None:
        clauses.append(f"p.model_version = {mark}")
        args.append(str(model_version))
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


class SqlAlchemyStore(PredictionStore):
    """A server database (PostgreSQL, MySQL...) through SQLAlchemy, for several replicas.

    A write that meets a lost connection (the server restarting, a fail-over) retries with
    jittered exponential back-off for up to `retry_s` seconds; its rows wait in memory (at most
    `max_pending`, the oldest dropped beyond that and counted in `dropped`). If the server is
    still away the call raises, and the rows stay pending for the next `log` or `flush`.
    """

    def __init__(self, url: str, retry_s: float = RETRY_S, max_pending: int = MAX_PENDING
                 ) -> None:
        try:
            import sqlalchemy as sa
        except ImportError as exc:
            raise SkinError(f"The prediction store {_redact(url)} needs SQLAlchemy",
                            hint="pip install sqlalchemy psycopg") from exc
        self.url = url
        self.retry_s = float(retry_s)
        self.max_pending = max(1, int(max_pending))
        self.dropped = 0
        self._sa = sa
        try:
            self._engine = sa.create_engine(_driver_url(url), pool_pre_ping=True, future=True)
        except sa.exc.NoSuchModuleError as exc:  # a scheme no database answers to
            scheme = url.split("://", 1)[0]
            raise SkinError(f"Unknown prediction store type {scheme!r} in {_redact(url)}",
                            hint="Use a file path, sqlite:///FILE.db or "
                            "postgresql://user@host/db") from exc
        except ImportError as exc:  # a known database whose driver is missing
            raise SkinError(f"Cannot use the prediction store {_redact(url)}: {exc}",
                            hint="Install its driver, e.g. pip install psycopg") from exc
        except sa.exc.ArgumentError as exc:
            raise SkinError(f"Cannot use the prediction store {_redact(url)}: {exc}",
                            hint="Check the URL, e.g. postgresql://user@host/db") from exc
        self._v1 = sa.MetaData()  # what version 1 created; later columns come by migration
        _tables(sa, self._v1, with_key=False)
        self._pred, self._labels = _tables(sa, sa.MetaData(), with_key=True)
        self._ready = False
        self._lock = threading.Lock()  # schema set-up
        self._write_lock = threading.Lock()  # one flush at a time keeps `_pending` simple
        self._pending: deque[dict[str, Any]] = deque()

    # -- schema ------------------------------------------------------------------------------
    def _migrate(self, conn: Any) -> None:
        """Create (version 1) and migrate to SCHEMA_VERSION, inside the caller's transaction."""
        sa = self._sa
        if conn.dialect.name == "postgresql":
            # Concurrent CREATE TABLE IF NOT EXISTS races in PostgreSQL; an advisory lock held
            # to the end of the transaction serialises every replica opening the store.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(742031)"))
        inspector = sa.inspect(conn)
        if inspector.has_table("schema_version"):
            version = int(conn.execute(sa.text("SELECT MAX(version) FROM schema_version"))
                          .scalar() or 1)
        elif inspector.has_table("predictions"):
            version = 1  # written before versioning
        else:
            self._v1.create_all(conn)
            version = 1
        if version > SCHEMA_VERSION:
            raise _newer_store(_redact(self.url), version)
        for v in range(version + 1, SCHEMA_VERSION + 1):
            for stmt in _MIGRATIONS[v]:
                conn.execute(sa.text(stmt))
            conn.execute(sa.text("INSERT INTO schema_version (version, applied) "
                                 "VALUES (:v, :t)"), {"v": v, "t": time.time()})

    def _engine_ready(self) -> Any:
        if not self._ready:
            with self._lock:
                if not self._ready:
                    try:
                        with self._engine.begin() as conn:
                            self._migrate(conn)
                    except self._sa.exc.SQLAlchemyError as exc:
                        raise SkinError(f"Cannot open the prediction store {_redact(self.url)}: "
                                        f"{_first_line(exc)}",
                                        hint="Check the URL, the server and the credentials"
                                        ) from exc
                    self._ready = True
        return self._engine

    def schema_version(self) -> int:
        with self._engine_ready().connect() as conn:
            return int(conn.execute(self._sa.text("SELECT MAX(version) FROM schema_version"))
                       .scalar())

    # -- writes ------------------------------------------------------------------------------
    def _insert(self, conn: Any) -> Any:
        """INSERT that skips a row whose row_key is already stored (a retried write)."""
        name = conn.dialect.name
        if name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            return self._pred.insert()  # the unique index still refuses a duplicate key
        return insert(self._pred).on_conflict_do_nothing(index_elements=["row_key"])

    def _transient(self, exc: Exception) -> bool:
        """A lost or refused connection: worth retrying. Bad data or SQL is not."""
        sa = self._sa
        if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
            return True
        return isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError))

    def log(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        now = time.time()
        names = [c.name for c in self._pred.columns if c.name != "id"]
        values = [dict(zip(names, _normalise(r, now))) for r in rows]
        with self._write_lock:
            self._pending.extend(values)
            while len(self._pending) > self.max_pending:
                self._pending.popleft()
                self.dropped += 1
            self._flush_locked(self.retry_s)

    def pending(self) -> int:
        """Rows waiting in memory for the server."""
        return len(self._pending)

    def flush(self, retry_s: float | None = None) -> None:
        """Write the rows still waiting from earlier failed calls (retrying up to retry_s)."""
        with self._write_lock:
            self._flush_locked(self.retry_s if retry_s is None else retry_s)

    def _flush_locked(self, retry_s: float) -> None:
        sa = self._sa
        if not self._pending:
            return
        batch = list(self._pending)
        deadline = time.monotonic() + retry_s
        delay = 0.05
        while True:
            try:
                with self._engine.begin() as conn:
                    if not self._ready:  # migrating twice is harmless: it is locked and checked
                        self._migrate(conn)
                    conn.execute(self._insert(conn), batch)
                self._ready = True
                self._pending.clear()
                return
            except sa.exc.SQLAlchemyError as exc:
                if not self._transient(exc):
                    self._pending.clear()  # a batch the server refuses would block all others
                    raise SkinError(f"Prediction store {_redact(self.url)} refused "
                                    f"{len(batch)} rows: {_first_line(exc)}",
                                    hint="Check the store's schema and permissions") from exc
                if time.monotonic() + delay > deadline:
                    raise SkinError(f"Prediction store {_redact(self.url)} unreachable for "
                                    f"{retry_s:g} s: {_first_line(exc)}; {len(self._pending)} "
                                    "rows wait in memory for the next write",
                                    hint="Check that the database server is up") from exc
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)

    def add_labels(self, mapping: dict[str, str]) -> int:
        sa = self._sa
        items = {str(k).strip().lower(): str(v).strip() for k, v in mapping.items()
                 if str(k).strip() and str(v).strip()}
        if not items:
            return 0
        now = time.time()
        with self._engine_ready().begin() as conn:
            # delete + insert in one transaction: portable across databases (no dialect upsert)
            conn.execute(self._labels.delete().where(self._labels.c.image_sha256.in_(list(items))))
            conn.execute(self._labels.insert(), [{"image_sha256": k, "label": v, "time": now}
                                                 for k, v in items.items()])
            seen = conn.execute(sa.select(self._pred.c.image_sha256).distinct().where(
                self._pred.c.image_sha256.in_(list(items)))).fetchall()
        return len(seen)

    # -- reads -------------------------------------------------------------------------------
    def predictions(self, since: float | None = None, until: float | None = None,
                    model_version: str | None = None) -> pd.DataFrame:
        sa = self._sa
        p, lab = self._pred, self._labels
        query = sa.select(p.c.time, p.c.request_id, p.c.model_version, p.c.image_sha256,
                          p.c.predicted, p.c.probabilities, p.c.top_probability, p.c.uncertain,
                          p.c.latency_ms, p.c.source, p.c.image_stats, p.c.embedding,
                          lab.c.label).select_from(
            p.outerjoin(lab, lab.c.image_sha256 == p.c.image_sha256))
        if since is not None:
            query = query.where(p.c.time >= float(since))
        if until is not None:
            query = query.where(p.c.time < float(until))
        if model_version is not None:
            query = query.where(p.c.model_version == model_version)
        with self._engine_ready().connect() as conn:
            rows = conn.execute(query.order_by(p.c.time, p.c.id)).fetchall()
        return _frame(tuple(r) for r in rows)

    def labels(self) -> dict[str, str]:
        sa = self._sa
        with self._engine_ready().connect() as conn:
            rows = conn.execute(sa.select(self._labels.c.image_sha256,
                                          self._labels.c.label)).fetchall()
        return {k: v for k, v in rows}

    def close(self) -> None:
        if self._pending:
            try:
                self.flush(retry_s=min(self.retry_s, 5.0))
            except SkinError:
                pass  # the rows are lost with this process; the caller logged the failure
        self._engine.dispose()


def _tables(sa: Any, md: Any, with_key: bool) -> tuple[Any, Any]:
    """The predictions and labels tables; `with_key=False` is version 1 (no row_key)."""
    extra = [sa.Column("row_key", sa.Text)] if with_key else []
    pred = sa.Table(
        "predictions", md,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                  primary_key=True, autoincrement=True),
        sa.Column("time", sa.Float, nullable=False, index=True),
        sa.Column("request_id", sa.Text, nullable=False),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=False, index=True),
        sa.Column("predicted", sa.Text, nullable=False),
        sa.Column("probabilities", sa.Text, nullable=False),
        sa.Column("top_probability", sa.Float),
        sa.Column("uncertain", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Float),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("image_stats", sa.Text, nullable=False),
        sa.Column("embedding", sa.Text),
        *extra,
    )
    labels = sa.Table(
        "labels", md,
        sa.Column("image_sha256", sa.String(64), primary_key=True),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("time", sa.Float, nullable=False),
    )
    return pred, labels


def _driver_url(url: str) -> str:
    """`postgresql://` means psycopg 3 here (what `pip install psycopg` gives), not psycopg2."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme):]
    return url


def _redact(url: str) -> str:
    """Hide a password in a connection URL before it appears in a message."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


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


# ---------------------------------------------------------------------------------------------
# What is logged about an image (also what the drift reference is computed from)
# ---------------------------------------------------------------------------------------------

def image_stats(arr: np.ndarray) -> dict[str, float]:
    """Cheap colour/texture statistics of an RGB image (H, W, 3), uint8 (floats are rounded).

    Compute them on the model-input image (resized to the run's input size) so that they do
    not depend on the original resolution; the drift reference does exactly that.
    """
    a = np.asarray(arr)
    if a.ndim != 3 or a.shape[-1] != 3 or a.shape[0] < 3 or a.shape[1] < 3:
        raise SkinError(f"image_stats needs an RGB array of shape (H, W, 3), got {a.shape}")
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    planes = np.ascontiguousarray(np.moveaxis(a, -1, 0))  # (3, H, W): fast per-channel work
    n = planes[0].size
    # Means and standard deviations from 256-bin histograms: exact (no float32 cancellation
    # on flat images) and faster than float passes over the pixels.
    means, stds = [], []
    for c in range(3):
        hist = np.bincount(planes[c].ravel(), minlength=256).astype(np.float64)
        m = float(hist @ _LEVELS) / n
        var = float(hist @ _LEVELS_SQ) / n - m * m
        means.append(m)
        stds.append(math.sqrt(max(var, 0.0)))
    r, g, b = (planes[c].astype(np.float32) for c in range(3))
    # Rec. 601 luma: what "brightness" means for a camera; a colour cast moves it less than
    # it moves the channel means, which is why both are logged.
    gray = r * np.float32(0.299) + g * np.float32(0.587) + b * np.float32(0.114)
    hi = np.maximum(np.maximum(planes[0], planes[1]), planes[2])
    lo = np.minimum(np.minimum(planes[0], planes[1]), planes[2])
    saturation = float(np.mean((hi - lo).astype(np.float32) / np.maximum(hi, 1)))
    # Variance of the 4-neighbour Laplacian: falls when the image is blurred or out of focus.
    lap = (4.0 * gray[1:-1, 1:-1] - gray[:-2, 1:-1] - gray[2:, 1:-1]
           - gray[1:-1, :-2] - gray[1:-1, 2:])
    return {
        "mean_r": means[0], "mean_g": means[1], "mean_b": means[2],
        "std_r": stds[0], "std_g": stds[1], "std_b": stds[2],
        "brightness": 0.299 * means[0] + 0.587 * means[1] + 0.114 * means[2],
        "saturation": saturation,
        "sharpness": float(lap.var()),
    }


_LEVELS = np.arange(256, dtype=np.float64)
_LEVELS_SQ = _LEVELS * _LEVELS
_PROJECTIONS: dict[tuple[int, int], np.ndarray] = {}
_PROJ_LOCK = threading.Lock()


def _projection(in_dims: int, dims: int) -> np.ndarray:
    key = (in_dims, dims)
    with _PROJ_LOCK:
        if key not in _PROJECTIONS:
            # Fixed seed: the same embedding always maps to the same summary, across processes
            # and machines, so the reference and the logged rows are comparable.
            rng = np.random.default_rng(20240611 + in_dims * 1009 + dims)
            _PROJECTIONS[key] = (rng.standard_normal((in_dims, dims)) / math.sqrt(dims)
                                 ).astype(np.float64)
        return _PROJECTIONS[key]


def summarize_embedding(vec: np.ndarray, dims: int = EMBEDDING_DIMS) -> list[float]:
    """A deterministic `dims`-number random projection of a backbone embedding.

    A Gaussian random projection keeps distances between embeddings approximately (Johnson-
    Lindenstrauss), which is what a two-sample test needs, while 32 numbers cannot rebuild the
    image.
    """
    v = np.asarray(vec, dtype=np.float64).ravel()
    if v.size == 0:
        raise SkinError("summarize_embedding got an empty embedding")
    out = v @ _projection(v.size, dims)
    return [round(float(x), 6) for x in out]
