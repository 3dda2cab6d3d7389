"""Prediction logging off the request path: a bounded queue, a writer thread, a store thread,
and a local journal so that a locked, slow or absent store loses nothing silently.

- A request only appends to the queue (never blocks: when it is full the row is dropped,
  logged and counted as lost).
- The writer thread completes rows (image statistics, embedding summary) and hands a batch to
  the store thread, which writes it with retries and backoff. While the store thread is busy
  (a locked SQLite file waits up to 30 s), later batches go to the journal instead of waiting.
- A batch the store refuses after its retries goes to the journal, `runs/predictions.journal.
  jsonl` (one JSON row a line, appended and fsynced). When the store works again, and at the
  next start (and in `skin monitor`), the journal is replayed into the store, skipping rows the
  store already has (same request id and image hash).
- At shutdown the logger waits `flush_s` for the store, then journals whatever is still queued
  or in flight. A row that can be neither stored nor journaled (disk full, journal at its size
  bound) is logged and counted in skin_prediction_log_lost_total.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from skincli.monitor.imagestats import image_stats, summarize_embedding

log = logging.getLogger("skincli.serve")

_FLUSH_ROWS = 256
_FLUSH_S = 0.5
_REOPEN_S = 10.0
_BACKOFF_S = (0.2, 0.5, 1.0, 2.0)  # waits between the store write attempts of one batch
_REPLAY_CHUNK = 500
JOURNAL_NAME = "predictions.journal.jsonl"


class _Counter(Protocol):
    def inc(self, amount: float = 1.0) -> None: ...


class LogCounters(Protocol):
    """The counters the logger keeps (the server exposes them as Prometheus metrics)."""

    logged: _Counter
    log_dropped: _Counter
    log_errors: _Counter
    log_spooled: _Counter
    log_replayed: _Counter
    log_lost: _Counter


def journal_path(runs_dir: str | os.PathLike[str]) -> Path:
    """Where the server spools rows the store could not take."""
    return Path(runs_dir) / JOURNAL_NAME


@dataclass
class _Item:
    row: dict[str, Any]
    image: np.ndarray | None  # model-input image, uint8 (S, S, 3)
    embedding: np.ndarray | None


@dataclass
class _Batch:
    rows: list[dict[str, Any]]
    done: threading.Event = field(default_factory=threading.Event)
    abandoned: bool = False  # spooled at shutdown while the store still had it


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value).__name__)


@contextlib.contextmanager
def _process_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path`.lock across processes: replicas that share a runs folder
    share its journal, and one's replay (rename, read, write, unlink) must not interleave with
    another's replay or append. Without fcntl (Windows) only the thread lock applies."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class Journal:
    """An append-only JSON-lines file of rows, bounded in size, safe across threads and across
    the processes that share it."""

    def __init__(self, path: Path, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append rows durably (fsync); raise OSError when it cannot (or is full)."""
        if not rows:
            return
        text = "".join(json.dumps(r, default=_json_default) + "\n" for r in rows).encode()
        with self._lock, _process_lock(self.path):
            size = self.path.stat().st_size if self.path.exists() else 0
            if size + len(text) > self.max_bytes:
                raise OSError(f"journal {self.path} would exceed its bound of "
                              f"{self.max_bytes / 1024 / 1024:.0f} MB")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())

    def pending(self) -> bool:
        """True when there are rows to replay."""
        return self.path.exists() or self._replaying().exists()

    def _replaying(self) -> Path:
        return self.path.with_name(self.path.name + ".replaying")

    def replay(self, store: Any) -> int:
        """Write the journal's rows to the store (skipping rows it has); return rows written.

        The file is renamed first, so appends during the replay go to a fresh journal; if the
        store fails midway the renamed file stays and is retried next time. The whole replay
        holds the cross-process lock, so two replicas never replay the same rows at once."""
        with self._lock, _process_lock(self.path):
            return self._replay(store)

    def _replay(self, store: Any) -> int:
        work = self._replaying()
        if self.path.exists():
            if work.exists():  # an earlier replay was interrupted: keep both
                with open(work, "ab") as out, open(self.path, "rb") as src:
                    out.write(src.read())
                self.path.unlink()
            else:
                os.replace(self.path, work)
        if not work.exists():
            return 0
        rows = []
        for line in work.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a line cut short by a crash
                log.warning("prediction journal: skipped an unreadable line")
                continue
            if isinstance(row, dict):
                rows.append(row)
        fresh = _not_in_store(store, rows)
        for start in range(0, len(fresh), _REPLAY_CHUNK):
            store.log(fresh[start:start + _REPLAY_CHUNK])
        work.unlink()
        return len(fresh)


def _not_in_store(store: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows the store does not hold yet (a batch can be both written and spooled when the
    store finished it just after shutdown gave up waiting)."""
    if not rows:
        return rows
    try:
        since = min(float(r.get("time") or 0.0) for r in rows) - 1.0
        have = store.predictions(since=since)
        known = set(zip(have["request_id"], have["image_sha256"])) if len(have) else set()
    except Exception as exc:  # cannot tell: keep every row (a duplicate beats a loss)
        log.debug("prediction journal: cannot check for duplicates: %s", exc)
        return rows
    return [r for r in rows if (r.get("request_id"), r.get("image_sha256")) not in known]


def replay_journal(url: str | None, path: Path) -> int:
    """Replay a journal into the store at `url` (for `skin monitor`); return rows written."""
    journal = Journal(path)
    if not journal.pending():
        return 0
    from skincli.monitor.store import open_store  # pandas: only when there is work

    store = open_store(url)
    try:
        return journal.replay(store)
    finally:
        store.close()


class PredictionLogger:
    """Queue rows for the prediction store; write them from background threads."""

    def __init__(self, url: str | None, metrics: LogCounters, queue_size: int = 1000,
                 enabled: bool = True, journal: Path | None = None, flush_s: float = 10.0,
                 journal_bytes: int = 256 * 1024 * 1024) -> None:
        self.url = url
        self.metrics = metrics
        self.enabled = enabled
        self.flush_s = flush_s
        self.journal = Journal(journal, journal_bytes) if journal is not None else None
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=max(1, queue_size))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="skin-predlog", daemon=True)
        self._store_jobs: queue.Queue[_Batch | None] = queue.Queue(maxsize=1)
        self._store_thread = threading.Thread(target=self._store_loop, name="skin-predlog-store",
                                              daemon=True)
        self._inflight: _Batch | None = None
        self._store: Any = None
        self._next_open = 0.0
        self._dropped_logged = 0.0
        self.last_error: str | None = None

    def start(self) -> None:
        """Start the threads (no-op when logging is off); open the store now, and replay a
        journal left from before."""
        if self.enabled and not self._thread.is_alive():
            self._store_thread.start()
            self._thread.start()
            # An empty batch opens the store (importing its driver, connecting, migrating the
            # schema: seconds for a server database behind another replica's lock) before the
            # first prediction, which would otherwise wait for all that while the batches
            # behind it went to the journal; it also replays a journal left from before.
            batch = _Batch([])
            self._inflight = batch
            self._store_jobs.put(batch)

    def stop(self, timeout: float | None = None) -> None:
        """Flush: wait up to `timeout` (default flush_s) for the store, then journal the rest."""
        if not self._thread.is_alive():
            return
        end = time.monotonic() + (self.flush_s if timeout is None else timeout)
        self._stop.set()
        self._thread.join(max(0.0, end - time.monotonic()))
        batch = self._inflight
        if batch is not None:
            batch.done.wait(max(0.0, end - time.monotonic()))
        leftovers: list[dict[str, Any]] = []
        batch = self._inflight
        if batch is not None and batch.rows and not batch.done.is_set():
            batch.abandoned = True
            leftovers.extend(batch.rows)
        while True:
            try:
                leftovers.append(self._complete(self._queue.get_nowait()))
            except queue.Empty:
                break
        if leftovers:
            log.warning("prediction log: the store did not take %d rows within %.0f s; "
                        "spooling them", len(leftovers), self.flush_s)
            self._spool(leftovers)
        try:
            self._store_jobs.put_nowait(None)
        except queue.Full:
            pass

    def submit(self, row: dict[str, Any], image: np.ndarray | None = None,
               embedding: np.ndarray | None = None) -> None:
        """Queue one row; never raises, never blocks."""
        if not self.enabled or self._stop.is_set():
            return
        try:
            self._queue.put_nowait(_Item(row, image, embedding))
        except queue.Full:
            self.metrics.log_dropped.inc()
            self.metrics.log_lost.inc()
            now = time.monotonic()
            if now - self._dropped_logged > 10:  # one line per 10 s, the counter has the rest
                self._dropped_logged = now
                log.error("prediction log: queue full, row for request %s lost "
                          "(skin_prediction_log_lost_total counts them all)",
                          row.get("request_id"))

    def pending(self) -> int:
        """Rows waiting to be written."""
        return self._queue.qsize()

    # -- writer thread -----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            items = self._take()
            if items:
                self._deliver([self._complete(item) for item in items])
            elif self._stop.is_set():
                break

    def _take(self) -> list[_Item]:
        items: list[_Item] = []
        end = time.monotonic() + _FLUSH_S
        while len(items) < _FLUSH_ROWS:
            timeout = end - time.monotonic()
            if timeout <= 0:
                break
            try:
                items.append(self._queue.get(timeout=min(timeout, 0.1)))
            except queue.Empty:
                if self._stop.is_set():
                    break
        return items

    def _deliver(self, rows: list[dict[str, Any]]) -> None:
        """Give rows to the store thread, or to the journal while the store is busy."""
        batch = _Batch(rows)
        if self._inflight is None or self._inflight.done.is_set():
            try:
                self._inflight = batch
                self._store_jobs.put_nowait(batch)
                return
            except queue.Full:
                self._inflight = None
        self._spool(rows)

    def _complete(self, item: _Item) -> dict[str, Any]:
        """Add image statistics and the embedding summary (best effort)."""
        row = dict(item.row)
        try:
            if item.image is not None:
                row["image_stats"] = image_stats(item.image)
            row["embedding"] = (summarize_embedding(item.embedding)
                                if item.embedding is not None else None)
        except Exception as exc:  # statistics are extras: the row is still worth keeping
            log.debug("image statistics failed: %s", exc)
        return row

    def _spool(self, rows: list[dict[str, Any]]) -> None:
        """Journal rows the store cannot take now; count and log any that cannot be kept."""
        if not rows:
            return
        try:
            if self.journal is None:
                raise OSError("no journal configured")
            self.journal.append(rows)
            self.metrics.log_spooled.inc(len(rows))
        except (OSError, TypeError, ValueError) as exc:
            self.metrics.log_lost.inc(len(rows))
            log.error("prediction log: %d rows lost (neither the store nor the journal took "
                      "them: %s); first request %s", len(rows), exc, rows[0].get("request_id"))

    # -- store thread ------------------------------------------------------------------------
    def _store_loop(self) -> None:
        while True:
            batch = self._store_jobs.get()
            if batch is None:
                break
            try:
                if not batch.rows:
                    self._replay()
                elif self._write(batch.rows) and self.journal is not None and \
                        self.journal.pending() and not self._stop.is_set():
                    self._replay()
            finally:
                # An abandoned batch was journaled by stop() meanwhile; a replay dedupes it.
                batch.done.set()
                if batch is self._inflight:
                    self._inflight = None
        self._close()

    def _write(self, rows: list[dict[str, Any]]) -> bool:
        """Write with retries and backoff; journal the rows if the store keeps refusing."""
        if not rows:
            return True
        for wait in (*_BACKOFF_S, None):
            store = self._open()
            if store is not None:
                try:
                    store.log(rows)
                    self.metrics.logged.inc(len(rows))
                    return True
                except Exception as exc:
                    self.metrics.log_errors.inc()
                    self._fail(exc, reopen_in=0.0)
            if wait is None or self._stop.is_set():
                break
            time.sleep(wait)
        self._spool(rows)
        return False

    def _replay(self) -> None:
        store = self._open()
        if store is None or self.journal is None:
            return
        try:
            n = self.journal.replay(store)
            if n:
                self.metrics.log_replayed.inc(n)
                log.info("prediction log: %d journaled rows written to the store", n)
        except Exception as exc:
            self._fail(exc, reopen_in=0.0)

    def _open(self) -> Any:
        if self._store is not None:
            return self._store
        if time.monotonic() < self._next_open:
            return None
        try:
            # Imported on first use: the store needs pandas, which the server start does not.
            from skincli.monitor.store import open_store

            store = open_store(self.url)
            try:
                store.schema_version()  # connect and migrate now, not inside the first write
            except Exception:
                store.close()
                raise
            self._store = store
        except Exception as exc:
            self._fail(exc, reopen_in=_REOPEN_S)
        return self._store

    def _fail(self, exc: Exception, reopen_in: float) -> None:
        text = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if text != self.last_error:
            log.warning("prediction log: %s (retrying, then spooling to the journal)", text)
        self.last_error = text
        self._close()
        self._next_open = time.monotonic() + reopen_in

    def _close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            try:
                store.close()
            except Exception:
                pass
