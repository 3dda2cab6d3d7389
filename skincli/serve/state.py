"""Everything one server process holds: settings, model, batcher, metrics, logger, keys."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from skincli.errors import SkinError
from skincli.imageio import DecodeBudget
from skincli.monitor.predlog import PredictionLogger, journal_path
from skincli.serve.auth import KeyChecker, load_keys
from skincli.serve.batching import Arrival, Expired, MicroBatcher, Overloaded
from skincli.serve.errors import ApiError
from skincli.serve.metrics import Metrics
from skincli.serve.model import LoadedModel, ModelHolder, Row, load_model
from skincli.serve.settings import Settings

log = logging.getLogger("skincli.serve")


class ServerState:
    """The process-wide state behind the app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.holder = ModelHolder()
        self.keys = KeyChecker(load_keys(settings.api_key, settings.api_keys_file))
        self.batcher, self.predlog = self._workers()
        self.metrics.queue_depth.read = lambda: self.batcher.qsize()
        # Pixels being decoded at once, across every request (the memory bound for uploads).
        self.decode_budget = DecodeBudget(int(settings.decode_mpx * 1_000_000),
                                          settings.decode_wait_s)
        self.metrics.decoding.read = lambda: self.decode_budget.in_use
        self._reload_lock = asyncio.Lock()
        self.ready = False
        self._preloaded: LoadedModel | None = None

    def preload(self) -> None:
        """Load and warm the model now, so a broken run fails before a port is opened."""
        self._preloaded = load_model(self.settings)

    def _workers(self) -> tuple[MicroBatcher, PredictionLogger]:
        settings = self.settings
        batcher = MicroBatcher(self._run_batch, max_batch=settings.max_batch,
                               window_s=settings.batch_window_ms / 1000.0,
                               queue_size=settings.queue_size, on_batch=self._on_batch)
        predlog = PredictionLogger(settings.store, self.metrics,
                                   queue_size=settings.log_queue_size,
                                   enabled=not settings.no_log,
                                   journal=Path(settings.journal) if settings.journal
                                   else journal_path(settings.runs_dir),
                                   flush_s=settings.log_flush_s,
                                   journal_bytes=int(settings.journal_mb * 1024 * 1024))
        return batcher, predlog

    # -- the inference thread's work --------------------------------------------------------
    @staticmethod
    def _run_batch(owner: LoadedModel, batch: np.ndarray, extras: list[Any]) -> list[Row]:
        # extras: per image the request's patient metadata, or None.
        if all(e is None for e in extras):
            return owner.forward(batch)
        return owner.forward(batch, metadata=extras)

    def _on_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.inference.observe(seconds)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Load and warm the model, then start the threads (blocking; call off the loop)."""
        model, self._preloaded = self._preloaded or load_model(self.settings), None
        self._install(model)
        if self.batcher.stopped:  # the app is started again after a shutdown (tests, embedding)
            self.batcher, self.predlog = self._workers()
        self.batcher.start()
        self.predlog.start()
        self.ready = True
        self.metrics.ready.set(1)
        log.info("serving %s (%s, %d classes) loaded in %.1fs", model.version, model.arch,
                 len(model.classes), model.load_seconds)

    def stop(self) -> None:
        """Finish queued inference, flush the prediction log."""
        self.ready = False
        self.metrics.ready.set(0)
        self.batcher.stop(timeout=self.settings.timeout_s + 5)
        self.predlog.stop()

    def _install(self, model: LoadedModel) -> LoadedModel | None:
        previous = self.holder.swap(model)
        self.metrics.model_info.clear()
        self.metrics.model_info.set(1, name=model.name, version=model.version, arch=model.arch)
        return previous

    def model(self) -> LoadedModel:
        """The current model, or 503 not_ready."""
        current = self.holder.current
        if current is None or not self.ready:
            raise ApiError("not_ready", "The model is still loading; retry shortly",
                           headers={"Retry-After": "2"})
        return current

    # -- reload ------------------------------------------------------------------------------
    async def reload(self, run: str | None = None) -> tuple[LoadedModel | None, LoadedModel]:
        """Load `run` (default: as at start-up) fully, warm it, then swap the reference."""
        if self._reload_lock.locked():
            raise ApiError("reload_in_progress", "A reload is already running; wait for it")
        async with self._reload_lock:
            try:
                # Loading runs in a worker thread: the event loop keeps serving on the old model.
                new = await run_in_threadpool(load_model, self.settings, run)
            except SkinError as exc:
                self.metrics.reloads.inc(result="failed")
                raise ApiError("invalid_run", f"Reload failed, still serving the previous "
                               f"model: {exc}") from None
            except Exception as exc:
                self.metrics.reloads.inc(result="failed")
                log.exception("reload failed")
                raise ApiError("invalid_run", "Reload failed, still serving the previous model: "
                               f"{type(exc).__name__}") from None
            previous = self._install(new)
            self.metrics.reloads.inc(result="ok")
            log.info("reloaded: now serving %s (was %s)", new.version,
                     previous.version if previous else "nothing")
            return previous, new

    async def reload_from_signal(self) -> None:
        """SIGHUP: reload the configured run (or runs/CURRENT), logging the outcome."""
        try:
            await self.reload()
        except ApiError as exc:
            log.error("SIGHUP reload: %s", exc.message)

    # -- inference from a request -----------------------------------------------------------
    async def infer(self, model: LoadedModel, arrays: list[np.ndarray], deadline: float,
                    arrival: Arrival | None = None,
                    metadata: dict[str, str] | None = None) -> list[Row]:
        """Queue images for the micro-batcher and wait for their rows (503/504 on failure).

        metadata: the patient's {sex, age_band, site} for every image (models trained with it).
        """
        futures = []
        try:
            for arr in arrays:
                futures.append(self.batcher.submit(model, arr, deadline, extra=metadata))
            if arrival is not None:
                arrival.arrived()  # queued: the batcher need not wait for this request any more
        except Overloaded as exc:
            for fut in futures:
                fut.cancel()
            self.metrics.rejected.inc(len(arrays), reason="overloaded")
            raise ApiError("overloaded", f"Too busy: {exc}; retry shortly",
                           headers={"Retry-After": "1"}) from None
        return await self._wait([asyncio.wrap_future(f) for f in futures], deadline)

    async def call(self, fn: Any, deadline: float) -> Any:
        """Run fn() on the inference thread (queue order), with the same limits."""
        try:
            fut = self.batcher.submit_call(fn, deadline)
        except Overloaded as exc:
            self.metrics.rejected.inc(reason="overloaded")
            raise ApiError("overloaded", f"Too busy: {exc}; retry shortly",
                           headers={"Retry-After": "1"}) from None
        return (await self._wait([asyncio.wrap_future(fut)], deadline))[0]

    async def _wait(self, waits: list[asyncio.Future], deadline: float) -> list[Any]:
        remaining = deadline - time.perf_counter()
        try:
            if remaining <= 0:
                raise TimeoutError
            return list(await asyncio.wait_for(asyncio.gather(*waits), remaining))
        except (TimeoutError, asyncio.TimeoutError, Expired):
            for w in waits:
                w.cancel()
            self.metrics.rejected.inc(len(waits), reason="timeout")
            raise ApiError("timeout", f"No answer within {self.settings.timeout_s:g} s; the "
                           "server is overloaded, retry later") from None
