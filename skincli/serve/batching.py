"""The micro-batcher: one dedicated inference thread fed by a bounded queue.

Requests put preprocessed images on the queue and wait on a future. The thread takes the first
waiting image, gathers more for up to `window_s` (only while more are known to be on their way)
or until `max_batch`, runs ONE forward pass for all of them and resolves their futures. Under
load the queue fills while a batch runs, so batches grow with concurrency; alone, a request pays
no window at all.

Each job carries the model (`owner`) it was preprocessed for; a batch only mixes jobs of the same
owner. A model reload therefore never feeds an image to a model it was not prepared for, and
requests already queued finish on the old model.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("skincli.serve")


class Overloaded(Exception):
    """The queue is full (or the batcher is stopping): the caller should answer 503."""


class Expired(Exception):
    """The job's deadline passed before the model got to it."""


@dataclass
class _Job:
    owner: Any
    array: np.ndarray | None
    future: Future
    deadline: float
    call: Callable[[], Any] | None = None
    enqueued: float = field(default_factory=time.perf_counter)
    extra: Any = None  # per-image input beside the array (patient metadata), passed through


# run_batch(owner, batch, extras): extras[i] is what submit() got beside image i (or None).
RunBatch = Callable[[Any, np.ndarray, list[Any]], Sequence[Any]]
OnBatch = Callable[[int, float], None]


class Arrival:
    """A request announced to the batcher; `arrived()` withdraws the announcement (once)."""

    def __init__(self, batcher: MicroBatcher) -> None:
        self._batcher = batcher
        self._done = False

    def arrived(self) -> None:
        if not self._done:
            self._done = True
            self._batcher._arrived()


class MicroBatcher:
    """Batch concurrent single-image jobs into one forward pass on a dedicated thread."""

    def __init__(self, run_batch: RunBatch, *, max_batch: int = 16, window_s: float = 0.005,
                 queue_size: int = 64, on_batch: OnBatch | None = None,
                 name: str = "skin-inference") -> None:
        self.run_batch = run_batch
        self.max_batch = max(1, int(max_batch))
        self.window_s = max(0.0, float(window_s))
        self.on_batch = on_batch
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=max(1, int(queue_size)))
        self._stopping = threading.Event()
        self._incoming = 0
        self._incoming_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the inference thread (idempotent)."""
        if not self._started:
            self._started = True
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Refuse new jobs, finish every queued one, then end the thread."""
        self._stopping.set()
        if self._started:
            self._thread.join(timeout)

    @property
    def stopped(self) -> bool:
        """True once stop() was called (a stopped batcher cannot start again)."""
        return self._stopping.is_set()

    @property
    def alive(self) -> bool:
        """True while the inference thread runs."""
        return self._thread.is_alive()

    def qsize(self) -> int:
        """Jobs waiting (approximate)."""
        return self._queue.qsize()

    # -- submitting ------------------------------------------------------------------------
    @contextmanager
    def arriving(self) -> Iterator[Arrival]:
        """Mark a request that will submit soon (e.g. while decoding) so a batch waits for it.

        Call `.arrived()` on the handle as soon as its images are queued: a request waiting
        for its own result must not make the batch wait for it.
        """
        arrival = Arrival(self)
        with self._incoming_lock:
            self._incoming += 1
        try:
            yield arrival
        finally:
            arrival.arrived()

    def _arrived(self) -> None:
        with self._incoming_lock:
            self._incoming -= 1

    def submit(self, owner: Any, array: np.ndarray, deadline: float,
               extra: Any = None) -> Future:
        """Queue one preprocessed image for `owner`; the future gets its row of results.

        `extra` (e.g. the patient's metadata) reaches run_batch in the list beside the batch.
        """
        return self._put(_Job(owner=owner, array=array, future=Future(), deadline=deadline,
                              extra=extra))

    def submit_call(self, fn: Callable[[], Any], deadline: float) -> Future:
        """Run fn() alone on the inference thread (e.g. Grad-CAM) in queue order."""
        return self._put(_Job(owner=None, array=None, future=Future(), deadline=deadline,
                              call=fn))

    def _put(self, job: _Job) -> Future:
        if self._stopping.is_set():
            raise Overloaded("the server is shutting down")
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Overloaded(f"the queue is full ({self._queue.maxsize} images waiting)") from None
        return job.future

    # -- the inference thread --------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=0.05)
            except queue.Empty:
                if self._stopping.is_set():
                    return
                continue
            if first.call is not None:
                self._run_call(first)
                continue
            batch, calls = self._gather(first)
            self._run(batch)
            for job in calls:
                self._run_call(job)

    def _gather(self, first: _Job) -> tuple[list[_Job], list[_Job]]:
        """Collect up to max_batch jobs; wait up to the window only while more are coming."""
        batch, calls = [first], []
        deadline = time.perf_counter() + self.window_s
        while len(batch) < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or self._incoming <= 0:
                    break
                try:
                    job = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if job.call is not None:
                calls.append(job)  # run after this batch, keeping their order
            else:
                batch.append(job)
        return batch, calls

    def _live(self, job: _Job, now: float) -> bool:
        """Claim a job; drop it if its request gave up or its deadline passed."""
        if not job.future.set_running_or_notify_cancel():
            return False
        if now > job.deadline:
            job.future.set_exception(Expired("the request timed out while queued"))
            return False
        return True

    def _run(self, jobs: list[_Job]) -> None:
        now = time.perf_counter()
        live = [j for j in jobs if self._live(j, now)]
        groups: dict[int, list[_Job]] = {}
        for job in live:
            groups.setdefault(id(job.owner), []).append(job)
        for group in groups.values():
            start = time.perf_counter()
            try:
                batch = np.stack([j.array for j in group])
                rows = self.run_batch(group[0].owner, batch, [j.extra for j in group])
                if len(rows) != len(group):
                    raise RuntimeError(f"model returned {len(rows)} rows for {len(group)} images")
            except BaseException as exc:  # every waiting request must get an answer
                log.exception("batch of %d failed", len(group))
                for job in group:
                    job.future.set_exception(exc)
                continue
            elapsed = time.perf_counter() - start
            for job, row in zip(group, rows):
                job.future.set_result(row)
            if self.on_batch is not None:
                try:
                    self.on_batch(len(group), elapsed)
                except Exception:  # metrics must never break inference
                    log.exception("on_batch callback failed")

    def _run_call(self, job: _Job) -> None:
        if not self._live(job, time.perf_counter()):
            return
        try:
            assert job.call is not None
            job.future.set_result(job.call())
        except BaseException as exc:
            job.future.set_exception(exc)
