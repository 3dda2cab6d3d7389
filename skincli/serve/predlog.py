"""Prediction logging off the request path: a bounded queue and one writer thread.

A request only appends to the queue (never blocks: when it is full the row is dropped and
counted). The writer computes the image statistics and the embedding summary, then writes
rows in batches to the store. A broken or slow store costs rows, never a request.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from skincli.serve.metrics import Metrics

log = logging.getLogger("skincli.serve")

_FLUSH_ROWS = 256
_FLUSH_S = 0.5
_REOPEN_S = 10.0


@dataclass
class _Item:
    row: dict[str, Any]
    image: np.ndarray | None  # model-input image, uint8 (S, S, 3)
    embedding: np.ndarray | None


class PredictionLogger:
    """Queue rows for the prediction store and write them from a background thread."""

    def __init__(self, url: str | None, metrics: Metrics, queue_size: int = 1000,
                 enabled: bool = True) -> None:
        self.url = url
        self.metrics = metrics
        self.enabled = enabled
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=max(1, queue_size))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="skin-predlog", daemon=True)
        self._store: Any = None
        self._next_open = 0.0
        self.last_error: str | None = None

    def start(self) -> None:
        """Start the writer thread (no-op when logging is off)."""
        if self.enabled and not self._thread.is_alive():
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Flush what is queued (bounded by timeout) and close the store."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, row: dict[str, Any], image: np.ndarray | None = None,
               embedding: np.ndarray | None = None) -> None:
        """Queue one row; never raises, never blocks."""
        if not self.enabled or self._stop.is_set():
            return
        try:
            self._queue.put_nowait(_Item(row, image, embedding))
        except queue.Full:
            self.metrics.log_dropped.inc()

    def pending(self) -> int:
        """Rows waiting to be written."""
        return self._queue.qsize()

    # -- writer thread -----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            items = self._take()
            if items:
                self._write(items)
            elif self._stop.is_set():
                break
        self._close()

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

    def _write(self, items: list[_Item]) -> None:
        rows = [self._complete(item) for item in items]
        store = self._open()
        if store is None:
            self.metrics.log_errors.inc(len(rows))
            return
        try:
            store.log(rows)
            self.metrics.logged.inc(len(rows))
        except Exception as exc:
            self.metrics.log_errors.inc(len(rows))
            self._fail(exc)

    def _complete(self, item: _Item) -> dict[str, Any]:
        """Add image statistics and the embedding summary (best effort)."""
        row = dict(item.row)
        try:
            from skincli.monitor.store import image_stats, summarize_embedding

            if item.image is not None:
                row["image_stats"] = image_stats(item.image)
            row["embedding"] = (summarize_embedding(item.embedding)
                                if item.embedding is not None else None)
        except Exception as exc:  # statistics are extras: the row is still worth keeping
            log.debug("image statistics failed: %s", exc)
        return row

    def _open(self) -> Any:
        if self._store is not None:
            return self._store
        if time.monotonic() < self._next_open:
            return None
        try:
            from skincli.monitor.store import open_store

            self._store = open_store(self.url)
        except Exception as exc:
            self._fail(exc)
        return self._store

    def _fail(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if text != self.last_error:
            log.warning("prediction log: %s (rows are being dropped)", text)
        self.last_error = text
        self._close()
        self._next_open = time.monotonic() + _REOPEN_S

    def _close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            try:
                store.close()
            except Exception:
                pass
