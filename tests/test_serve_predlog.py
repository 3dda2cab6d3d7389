"""The prediction log under a locked store: every answered prediction is stored or journaled at
shutdown, the journal is replayed on the next start without duplicates, nothing is lost
silently."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from test_serve_support import image_bytes, make_runs, serving, upload


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_runs(tmp_path_factory.mktemp("predlog"))


def _rows(db: Path) -> list[str]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return [r[0] for r in conn.execute("SELECT request_id FROM predictions")]
    finally:
        conn.close()


def test_locked_store_at_shutdown_spools_every_row_and_replays_once(runs: Path,
                                                                     tmp_path: Path) -> None:
    from skincli.monitor.store import open_store

    db = tmp_path / "log.db"
    url = f"sqlite:///{db}"
    journal = tmp_path / "predictions.journal.jsonl"
    with open_store(url) as store:
        store.log([{"time": 1.0, "request_id": "seed", "image_sha256": "0" * 64,
                    "predicted": "nevus", "probabilities": {"nevus": 1.0}}])
    # Another process holds the write lock for longer than the shutdown bound.
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    answered = []
    try:
        with serving(runs, no_log=False, store=url, journal=str(journal),
                     log_flush_s=1.0) as c:
            for i in range(40):
                r = c.post("/v1/predict", files=upload(image_bytes(seed=i)),
                           headers={"X-Request-ID": f"r{i}"})
                assert r.status_code == 200
                answered.append(f"r{i}")
            predlog: Any = c.app.state.skin.predlog
            metrics = c.app.state.skin.metrics
        # Shutdown is over: every answered row is durably somewhere, none is lost.
        spooled = journal.read_text().splitlines()
        assert len(spooled) == len(answered)
        assert metrics.log_lost.value() == 0
        assert metrics.log_spooled.value() == len(answered)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    # The store thread that was waiting on the lock may still write its batch now.
    predlog._store_thread.join(40)
    # The next start replays the journal, skipping what the store already has.
    with serving(runs, no_log=False, store=url, journal=str(journal), log_flush_s=10) as c:
        metrics = c.app.state.skin.metrics
    stored = [r for r in _rows(db) if r != "seed"]
    assert sorted(stored) == sorted(answered)  # all of them, each once
    assert not journal.exists()


def test_journal_bound_counts_lost_rows(runs: Path, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    url = f"sqlite:///{blocker / 'no' / 'log.db'}"  # a store that cannot open
    journal = tmp_path / "j.jsonl"
    with serving(runs, no_log=False, store=url, journal=str(journal), journal_mb=0.0001,
                 log_flush_s=0.5) as c:
        for i in range(3):
            assert c.post("/v1/predict", files=upload(image_bytes(seed=i))).status_code == 200
        metrics = c.app.state.skin.metrics
    # 100 bytes of journal hold no row: each is counted lost and logged, never silent.
    assert metrics.log_lost.value() == 3 and metrics.log_spooled.value() == 0
    assert "rows lost" in caplog.text


def test_two_replicas_sharing_a_journal_lose_and_repeat_no_row(tmp_path: Path) -> None:
    """Replicas on one runs folder share its journal: concurrent appends and replays by two
    processes' journals (two Journal objects, two file descriptors) keep every row once."""
    import threading

    from skincli.monitor.predlog import Journal

    path = tmp_path / "predictions.journal.jsonl"
    a, b = Journal(path), Journal(path)
    written: list[dict] = []

    class Store:
        def log(self, rows: list[dict]) -> None:
            written.extend(rows)

    errors: list[BaseException] = []
    appended = threading.Event()

    def append() -> None:
        try:
            for i in range(200):
                a.append([{"request_id": f"r{i}-{k}", "image_sha256": "x"} for k in range(3)])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            appended.set()

    def replay(journal: Journal) -> None:
        try:
            while not appended.is_set():
                journal.replay(Store())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=append), threading.Thread(target=replay, args=(a,)),
               threading.Thread(target=replay, args=(b,))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    b.replay(Store())  # whatever the last append left
    assert errors == []
    ids = [r["request_id"] for r in written]
    assert len(ids) == 600 and len(set(ids)) == 600
    assert not a.pending()


def test_the_store_is_opened_at_start_before_any_prediction(tmp_path: Path) -> None:
    """Opening a store (driver import, connection, schema) happens at start, not on the first
    prediction, so the first batches do not go to the journal while it is slow."""
    from skincli.monitor.predlog import PredictionLogger
    from skincli.serve.metrics import Metrics

    db = tmp_path / "log.db"
    logger = PredictionLogger(f"sqlite:///{db}", Metrics(),
                              journal=tmp_path / "journal.jsonl")
    assert not db.exists()
    logger.start()
    try:
        warm = logger._inflight
        assert warm is not None and warm.done.wait(30)
        assert db.exists() and logger._store is not None  # opened, with no row yet
        assert _rows(db) == []
    finally:
        logger.stop()
    assert not (tmp_path / "journal.jsonl").exists()
