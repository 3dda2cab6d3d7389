"""`skin train --strategy multiworker`, for real: two worker processes on 127.0.0.1 with TF_CONFIG.

The two process tests are marked slow: each starts two TensorFlow processes (about 45 s for
the finished run and 40 s for the killed worker on 2 shared CPU cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pg import free_port

ROOT = Path(__file__).resolve().parents[1]
COUNTS = {"synthetic-nevus": 16, "synthetic-melanoma": 16}


@pytest.fixture(scope="module")
def split_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from skincli.data.dataset import load_dataset
    from skincli.data.manifest import build_manifest
    from skincli.data.split import make_split
    from skincli.data.splitfile import write_split
    from skincli.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("mwdata")
    make_synthetic_dataset(root / "data", COUNTS, size=32, seed=0)
    return write_split(make_split(build_manifest(load_dataset(root / "data")), val=0.2,
                                  test=0.2, seed=0), root / "splits" / "split.csv")


def _start(tmp: Path, split: Path, ports: list[int], index: int, epochs: int
           ) -> subprocess.Popen:
    """One worker: its own folder, the cluster in TF_CONFIG, the same command for all."""
    folder = tmp / f"w{index}"
    folder.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2",
               SKIN_CACHE_DIR=str(tmp / "cache"),
               TF_CONFIG=json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                     "task": {"type": "worker", "index": index}}))
    cmd = [sys.executable, "-m", "skincli", "train", "--split", str(split), "--arch", "tiny",
           "--weights", "none", "--epochs", str(epochs), "--fine-tune-epochs", "0",
           "--input-size", "32", "--batch-size", "8", "--strategy", "multiworker",
           "--name", "mw", "--threads", "1", "--no-calibrate",
           # Early stopping must not end a run before the test has stopped a worker.
           "--patience", str(epochs)]
    return subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("raw, message", [
    ("{not json", "not valid JSON"),
    ('{"cluster": {"worker": ["a:1"]}}', "needs a"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}', "not a job"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
     "outside 0..1"),
    ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}', "host:port"),
])
def test_bad_tf_config_is_one_line(monkeypatch: pytest.MonkeyPatch, raw: str,
                                   message: str) -> None:
    from skincli.errors import SkinError
    from skincli.train.multiworker import cluster_from_env

    monkeypatch.setenv("TF_CONFIG", raw)
    with pytest.raises(SkinError, match=message):
        cluster_from_env()
    monkeypatch.delenv("TF_CONFIG")
    assert cluster_from_env() is None


@pytest.mark.slow
def test_two_workers_train_one_run_that_predicts(tmp_path: Path, split_csv: Path) -> None:
    ports = [free_port(), free_port()]
    workers = [_start(tmp_path, split_csv, ports, i, epochs=2) for i in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    for i, (w, out) in enumerate(zip(workers, outputs)):
        assert w.returncode == 0, f"worker {i}:\n{out[-3000:]}"
    run = tmp_path / "w0" / "runs" / "mw"
    assert (run / "run.json").is_file() and (run / "model.keras").is_file()
    assert not (tmp_path / "w1" / "runs").exists()  # only the chief keeps a run folder
    image = next((split_csv.parent.parent / "data").rglob("*.jpg"))
    res = subprocess.run([sys.executable, "-m", "skincli", "predict", str(image), "--run",
                          str(run), "--json"], cwd=tmp_path, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT), SKIN_NO_LOG="1",
                                  SKIN_STORE=f"sqlite:///{tmp_path}/p.db"), timeout=120)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["model"]["name"] == "mw" and sorted(doc["model"]["classes"]) == sorted(COUNTS)
    assert doc["predictions"][0]["label"] in COUNTS


@pytest.mark.slow
def test_a_killed_worker_stops_the_other_with_one_line(tmp_path: Path, split_csv: Path) -> None:
    ports = [free_port(), free_port()]
    workers = [_start(tmp_path, split_csv, ports, i, epochs=400) for i in range(2)]
    chief, other = workers
    lines: list[str] = []
    deadline = time.monotonic() + 180
    while not any("epochs x" in line for line in lines):  # training has started on both
        assert time.monotonic() < deadline and chief.poll() is None, "".join(lines)
        lines.append(chief.stdout.readline())
    time.sleep(3)
    other.kill()
    other.wait()
    killed = time.monotonic()
    try:
        rest = chief.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:
        chief.kill()
        pytest.fail("the chief still waits for the dead worker after 120 s")
    waited = time.monotonic() - killed
    out = "".join(lines) + rest
    assert chief.returncode == 1, out[-3000:]
    assert "another worker is down or unreachable" in out
    assert "Traceback" not in out
    assert waited < 90, f"took {waited:.0f} s to notice"
    assert not (tmp_path / "w0" / "runs" / "mw" / "run.json").exists()
