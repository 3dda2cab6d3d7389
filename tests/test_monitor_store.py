"""The prediction store: round trip, labels, filters, concurrency, and the logged statistics."""

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
    STAT_NAMES,
    default_store_url,
    image_stats,
    open_store,
    summarize_embedding,
)


def _row(i: int, **kw: object) -> dict:
    row = {"time": 1000.0 + i, "request_id": f"r{i}", "model_version": "m1",
           "image_sha256": f"{i:064x}", "predicted": "nevus",
           "probabilities": {"nevus": 0.8, "melanoma": 0.2}, "top_probability": 0.8,
           "uncertain": False, "latency_ms": 12.5, "source": "api",
           "image_stats": {"brightness": 100.0}, "embedding": [0.1, 0.2]}
    row.update(kw)
    return row


def test_round_trip_fills_missing_and_ignores_unknown(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/sub/p.db")
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
    assert len(open_store(tmp_path / "sub" / "p.db").predictions()) == 2


def test_labels_attach_and_count_matches(tmp_path: Path) -> None:
    store = open_store(tmp_path / "p.db")
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


def test_filters(tmp_path: Path) -> None:
    store = open_store(tmp_path / "p.db")
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


def test_concurrent_processes_and_threads_lose_no_rows(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
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


def test_sqlalchemy_backend_behaves_like_the_sqlite_one(tmp_path: Path) -> None:
    pytest.importorskip("sqlalchemy")
    # sqlite through SQLAlchemy exercises the server-database code path without a server
    store = open_store(f"sqlite+pysqlite:///{tmp_path}/sa.db")
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
