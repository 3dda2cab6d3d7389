"""A server database (PostgreSQL, MySQL...) as the prediction store, through SQLAlchemy."""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from typing import Any

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

# A server store: how long one write keeps retrying a lost connection (the server restarting,
# a fail-over), and how many rows wait in memory meanwhile (the oldest go first beyond that).
RETRY_S = 30.0
MAX_PENDING = 10_000


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
            raise newer_store_error(_redact(self.url), version)
        for v in range(version + 1, SCHEMA_VERSION + 1):
            for stmt in MIGRATIONS[v]:
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
        values = [dict(zip(names, normalise_row(r, now))) for r in rows]
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
        return rows_frame(tuple(r) for r in rows)

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
