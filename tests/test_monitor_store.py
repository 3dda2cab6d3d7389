"""The prediction store: round trip, labels, filters, concurrency, schema versions, and the
logged statistics. Every store test runs on SQLite and on a real PostgreSQL server (a
throw-away cluster on loopback, see tests/pg.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skincli.errors import SkinError
from skincli.monitor.store import (
    SCHEMA_VERSION,
    STAT_NAMES,
    default_store_url,
    image_stats,
    open_store,
    summarize_embedding,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on the embedded SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/sub/p.db"
    return request.getfixturevalue("pg_url")


def _row(i: int, **kw: object) -> dict:
    row = {"time": 1000.0 + i, "request_id": f"r{i}", "model_version": "m1",
           "image_sha256": f"{i:064x}", "predicted": "nevus",
           "probabilities": {"nevus": 0.8, "melanoma": 0.2}, "top_probability": 0.8,
           "uncertain": False, "latency_ms": 12.5, "source": "api",
           "image_stats": {"brightness": 100.0}, "embedding": [0.1, 0.2]}
    row.update(kw)
    return row


def test_round_trip_fills_missing_and_ignores_unknown(store_url: str) -> None:
    store = open_store(store_url)
    store.log([_row(0, unknown_key="x"),
               {"probabilities": {"a": 0.3, "b": 0.7}, "image_sha256": "ff" * 32}])
    df = store.predictions()
    assert len(df) == 2
    assert df.loc[0, "probabilities"] == {"nevus": 0.8, "melanoma": 0.2}
    assert df.loc[0, "embedding"] == [0.1, 0.2]
    assert "unknown_key" not in df.columns
    # the second row had only probabilities: predicted/top_probability derived, time = now
    assert df.loc[1, "predicted"] == "b"
    assert df.loc[1, "top_probability"] == pytest.approx(0.7)
    assert df.loc[1, "embedding"] is None
    assert df.loc[1, "time"] > 1e9
    assert df.loc[1, "source"] == "cli"
    store.close()
    # reopening sees the same rows
    assert len(open_store(store_url).predictions()) == 2


def test_sqlite_bare_path_is_the_same_file(tmp_path: Path) -> None:
    open_store(f"sqlite:///{tmp_path}/p.db").log([_row(0)])
    assert len(open_store(tmp_path / "p.db").predictions()) == 1


def test_labels_attach_and_count_matches(store_url: str) -> None:
    store = open_store(store_url)
    store.log([_row(i) for i in range(5)])
    matched = store.add_labels({f"{1:064x}": "melanoma", f"{2:064x}": "nevus",
                                "ab" * 32: "nevus"})
    assert matched == 2
    df = store.predictions()
    assert df.set_index("request_id").loc["r1", "label"] == "melanoma"
    assert pd.isna(df.set_index("request_id").loc["r0", "label"])
    # a label that arrives again replaces the first one
    store.add_labels({f"{1:064x}": "nevus"})
    assert store.predictions().set_index("request_id").loc["r1", "label"] == "nevus"
    # a label stored before its prediction is picked up later
    store.log([_row(9, image_sha256="ab" * 32)])
    assert store.predictions().set_index("request_id").loc["r9", "label"] == "nevus"


def test_filters(store_url: str) -> None:
    store = open_store(store_url)
    store.log([_row(i, model_version="m1" if i < 6 else "m2") for i in range(10)])
    assert len(store.predictions(since=1003)) == 7
    assert len(store.predictions(since=1003, until=1005)) == 2
    assert set(store.predictions(model_version="m2")["request_id"]) == {"r6", "r7", "r8", "r9"}


_WRITER = """
import sys
from skincli.monitor.store import open_store
store = open_store(sys.argv[1])
tag = sys.argv[2]
for i in range(int(sys.argv[3])):
    store.log([{"request_id": f"{tag}-{i}", "probabilities": {"a": 1.0}}])
store.close()
"""


def test_concurrent_processes_and_threads_lose_no_rows(store_url: str) -> None:
    # every writer opens the store fresh at the same moment: the schema is created once
    db = store_url
    per_proc, n_procs, per_thread, n_threads = 150, 3, 100, 6
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(db), f"p{k}", str(per_proc)])
             for k in range(n_procs)]
    store = open_store(db)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(per_thread):
                # a mix of single rows and small batches, like the CLI and the API
                if i % 10 == 0:
                    store.log([{"request_id": f"t{k}-{i}-{j}", "probabilities": {"a": 1.0}}
                               for j in range(3)])
                else:
                    store.log([{"request_id": f"t{k}-{i}", "probabilities": {"a": 1.0}}])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        assert p.wait(timeout=120) == 0
    assert not errors
    ids = store.predictions()["request_id"]
    expected = n_procs * per_proc + n_threads * (per_thread + 2 * (per_thread // 10))
    assert len(ids) == expected
    assert ids.is_unique


def test_server_url_without_sqlalchemy_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)  # import fails as if not installed
    with pytest.raises(SkinError, match="pip install sqlalchemy psycopg") as info:
        open_store("postgresql://user:secret@db.example/skin")
    assert "secret" not in str(info.value)


def test_bad_sqlite_urls(tmp_path: Path) -> None:
    with pytest.raises(SkinError, match="no file path"):
        open_store("sqlite://")
    (tmp_path / "notadb.db").write_text("this is not a database" * 100)
    with pytest.raises(SkinError, match="prediction store"):
        open_store(tmp_path / "notadb.db").log([{"probabilities": {"a": 1.0}}])


def test_default_url_follows_environment(monkeypatch) -> None:
    monkeypatch.delenv("SKIN_STORE", raising=False)
    assert default_store_url() == "sqlite:///runs/predictions.db"
    monkeypatch.setenv("SKIN_STORE", "postgresql://h/db")
    assert default_store_url() == "postgresql://h/db"


def test_image_stats_react_to_the_shifts_they_are_meant_to_catch() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(40, 200, size=(64, 64, 3), dtype=np.uint8)
    base = image_stats(img)
    assert set(base) == set(STAT_NAMES)
    brighter = image_stats(np.clip(img.astype(int) + 40, 0, 255).astype(np.uint8))
    assert brighter["brightness"] > base["brightness"] + 30
    cast = img.copy()
    cast[..., 2] = np.clip(cast[..., 2].astype(int) + 50, 0, 255)
    assert image_stats(cast)["mean_b"] > base["mean_b"] + 40
    blurred = ((img[:-1, :-1].astype(int) + img[1:, 1:] + img[:-1, 1:] + img[1:, :-1]) // 4)
    assert image_stats(blurred.astype(np.uint8))["sharpness"] < base["sharpness"] / 2
    flat = np.full((32, 32, 3), 77, np.uint8)
    s = image_stats(flat)
    assert s["std_r"] == 0 and s["sharpness"] == 0 and s["saturation"] == 0
    # float input in 0..255 (what the predictor's preprocess returns) gives the same numbers
    assert image_stats(img.astype(np.float32)) == pytest.approx(base)
    with pytest.raises(SkinError, match="shape"):
        image_stats(np.zeros((10, 10)))


def test_embedding_summary_is_deterministic_and_keeps_distances() -> None:
    rng = np.random.default_rng(1)
    vecs = rng.standard_normal((20, 1280))
    a = np.array([summarize_embedding(v) for v in vecs])
    b = np.array([summarize_embedding(v) for v in vecs])
    assert a.shape == (20, 32)
    assert np.array_equal(a, b)
    d_full = np.linalg.norm(vecs[:10] - vecs[10:], axis=1)
    d_proj = np.linalg.norm(a[:10] - a[10:], axis=1)
    ratio = d_proj / d_full
    assert 0.5 < ratio.min() and ratio.max() < 1.6


@pytest.mark.parametrize("backend", ["sqlite+pysqlite", "postgresql"])
def test_sqlalchemy_backend_behaves_like_the_sqlite_one(tmp_path: Path, backend: str,
                                                        request: pytest.FixtureRequest) -> None:
    pytest.importorskip("sqlalchemy")
    url = (request.getfixturevalue("pg_url") if backend == "postgresql"
           else f"sqlite+pysqlite:///{tmp_path}/sa.db")
    store = open_store(url)
    assert type(store).__name__ == "SqlAlchemyStore"
    store.log([_row(i) for i in range(4)] + [{"probabilities": {"a": 1.0}}])
    assert store.add_labels({f"{1:064x}": "melanoma", "ab" * 32: "nevus"}) == 1
    assert store.add_labels({f"{1:064x}": "nevus"}) == 1  # replaced, not duplicated
    df = store.predictions(since=1001, until=1003)
    assert list(df["request_id"]) == ["r1", "r2"]
    assert df.loc[0, "label"] == "nevus"
    assert df.loc[0, "probabilities"] == {"nevus": 0.8, "melanoma": 0.2}
    assert len(store.predictions(model_version="m1")) == 4
    assert store.labels()[f"{1:064x}"] == "nevus"
    store.close()


# --- schema versions ---------------------------------------------------------------------------

_V1_SQLITE = """
CREATE TABLE predictions (id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL,
    request_id TEXT NOT NULL, model_version TEXT NOT NULL, image_sha256 TEXT NOT NULL,
    predicted TEXT NOT NULL, probabilities TEXT NOT NULL, top_probability REAL,
    uncertain INTEGER NOT NULL, latency_ms REAL, source TEXT NOT NULL, image_stats TEXT NOT NULL,
    embedding TEXT);
CREATE INDEX predictions_time ON predictions (time);
CREATE INDEX predictions_sha ON predictions (image_sha256);
CREATE TABLE labels (image_sha256 TEXT PRIMARY KEY, label TEXT NOT NULL, time REAL NOT NULL);
INSERT INTO predictions (time, request_id, model_version, image_sha256, predicted, probabilities,
    top_probability, uncertain, latency_ms, source, image_stats, embedding)
    VALUES (1000.0, 'old', 'm1', 'aa', 'nevus', '{"nevus": 1.0}', 1.0, 0, 5.0, 'api', '{}', NULL);
INSERT INTO labels VALUES ('aa', 'nevus', 1000.0);
"""


def _write_v1(url: str, tmp_path: Path) -> None:
    """A store exactly as skincli wrote it before schema versions (schema version 1)."""
    if url.startswith("sqlite:///"):
        import sqlite3

        path = Path(url[len("sqlite:///"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path)
        conn.executescript(_V1_SQLITE + "PRAGMA user_version = 1;")
        conn.close()
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for stmt in _V1_SQLITE.replace("INTEGER PRIMARY KEY AUTOINCREMENT",
                                       "BIGSERIAL PRIMARY KEY").split(";"):
            if stmt.strip():
                conn.execute(stmt)


def test_a_store_from_before_versioning_is_migrated_in_place(store_url: str,
                                                             tmp_path: Path) -> None:
    _write_v1(store_url, tmp_path)
    store = open_store(store_url)
    df = store.predictions()
    assert list(df["request_id"]) == ["old"] and df.loc[0, "label"] == "nevus"
    assert store.schema_version() == SCHEMA_VERSION == 2
    store.log([_row(1), _row(2)])
    assert list(store.predictions()["request_id"]) == ["old", "r1", "r2"]
    store.close()
    # opening again applies nothing twice
    again = open_store(store_url)
    assert again.schema_version() == SCHEMA_VERSION and len(again.predictions()) == 3
    again.close()


def test_a_store_from_a_newer_skincli_is_refused(store_url: str) -> None:
    store = open_store(store_url)
    store.log([_row(0)])
    assert store.schema_version() == SCHEMA_VERSION
    store.close()
    if store_url.startswith("sqlite:///"):
        import sqlite3

        conn = sqlite3.connect(store_url[len("sqlite:///"):])
        conn.execute("INSERT INTO schema_version VALUES (99, 0)")
        conn.commit()
        conn.close()
    else:
        import psycopg

        with psycopg.connect(store_url, autocommit=True) as conn:
            conn.execute("INSERT INTO schema_version VALUES (99, 0)")
    with pytest.raises(SkinError, match="schema version 99") as info:
        open_store(store_url).predictions()
    assert "Upgrade skincli" in (info.value.hint or "")


def test_a_row_key_written_twice_is_stored_once(store_url: str) -> None:
    store = open_store(store_url)
    store.log([_row(0, row_key="k0"), _row(1, row_key="k1")])
    store.log([_row(0, row_key="k0"), _row(2)])  # a retried write: k0 is not duplicated
    assert sorted(store.predictions()["request_id"]) == ["r0", "r1", "r2"]
    store.close()


# --- a server store whose server goes away -------------------------------------------------------

_STREAMER = """
import sys, time
from skincli.monitor.store import open_store
store = open_store(sys.argv[1])
for i in range(int(sys.argv[2])):
    store.log([{"request_id": f"s-{i}", "probabilities": {"a": 1.0}}])
    time.sleep(0.005)
store.close()
print("done", flush=True)
"""


def test_postgresql_restarted_mid_stream_loses_no_row(pg_cluster, pg_url: str,
                                                      tmp_path: Path) -> None:
    import time

    n = 600
    writer = subprocess.Popen([sys.executable, "-c", _STREAMER, pg_url, str(n)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = open_store(pg_url)
    deadline = time.monotonic() + 60
    while len(store.predictions()) < 100:  # the stream is under way
        assert writer.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    store.close()
    pg_cluster.restart(down_s=1.5)  # `fast`: open connections are cut, the writer must retry
    out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    ids = open_store(pg_url).predictions()["request_id"]
    assert len(ids) == n and ids.is_unique


def test_rows_wait_bounded_in_memory_while_the_server_is_down(pg_cluster,
                                                              pg_url: str) -> None:
    from skincli.monitor.store import SqlAlchemyStore

    store = SqlAlchemyStore(pg_url, retry_s=0.3, max_pending=5)
    store.log([_row(0)])
    pg_cluster.stop()
    try:
        with pytest.raises(SkinError, match="rows wait in memory"):
            store.log([_row(1), _row(2)])
        assert store.pending() == 2
        with pytest.raises(SkinError, match="unreachable"):
            store.log([_row(i) for i in range(3, 8)])
        assert store.pending() == 5 and store.dropped == 2  # oldest beyond the bound went
    finally:
        pg_cluster.start()
    store.flush()
    assert store.pending() == 0
    assert list(store.predictions()["request_id"]) == ["r0", "r3", "r4", "r5", "r6", "r7"]
    store.close()


# --- `skin monitor` reads both stores alike -----------------------------------------------------

def test_monitor_gives_the_same_report_from_both_stores(tmp_path: Path, pg_url: str) -> None:
    import json

    from test_monitor_report import _log, _make_run, _monitor

    run_dir = _make_run(tmp_path)
    sqlite_url = f"sqlite:///{tmp_path}/p.db"
    rows = _log(sqlite_url, 150, seed=3)
    open_store(pg_url).log(rows)  # the very same rows in both
    labels = {r["image_sha256"]: r["_true"] for r in rows[:40]}
    reports = {}
    for name, url in (("sqlite", sqlite_url), ("postgresql", pg_url)):
        assert open_store(url).add_labels(labels) == 40
        res = _monitor(run_dir, url, tmp_path / f"rep-{name}", "--no-plots")
        assert res.exit_code == 0, res.output
        rep = json.loads((tmp_path / f"rep-{name}" / "report.json").read_text())
        assert rep["store"] == url and rep["drift"]["current"]["n"] == 150
        for key in ("created", "store", "period"):
            rep.pop(key)
        reports[name] = _without_clock(rep)
    assert reports["sqlite"] == reports["postgresql"]


def _without_clock(value: object) -> object:
    """The report minus window bounds, which follow the clock (the two runs differ by it)."""
    if isinstance(value, dict):
        return {k: _without_clock(v) for k, v in value.items() if k not in ("start", "end")}
    if isinstance(value, list):
        return [_without_clock(v) for v in value]
    return value
