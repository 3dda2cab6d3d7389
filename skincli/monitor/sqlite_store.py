"""The embedded default prediction store: one SQLite file in WAL mode."""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from skincli.errors import SkinError
from skincli.monitor.rows import (
    MIGRATIONS,
    SCHEMA_VERSION,
    PredictionStore,
    newer_store_error,
    normalise_row,
    rows_frame,
)

# How long a writer keeps retrying when another process holds the write lock. Writes are tiny
# (one short transaction per batch), so this is only reached when something is badly wrong.
_LOCK_TIMEOUT_S = 30.0

T = TypeVar("T")

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
                raise newer_store_error(str(self.path), version)
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for stmt in MIGRATIONS[v]:
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
        values = [normalise_row(r, now) for r in rows]
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
        return rows_frame(records)

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
