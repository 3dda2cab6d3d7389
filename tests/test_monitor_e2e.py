"""End to end on SYNTHETIC data with real (tiny) training: log -> monitor --check -> retrain.

Marked slow: it trains two tiny models (about 30 s on one CPU core in all).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.slow

COUNTS = {"synthetic-nevus": 40, "synthetic-melanoma": 30, "synthetic-keratosis": 25,
          "synthetic-vascular": 20}


def _log_stream(run_dir: Path, folder: Path, db: Path, shift: float) -> int:
    from skincli.monitor.store import image_stats, open_store, summarize_embedding
    from skincli.predictor import Predictor

    pred = Predictor.from_run(run_dir)
    rows = []
    now = time.time()
    for i, p in enumerate(sorted(folder.rglob("*.jpg"))):
        raw = p.read_bytes()
        x = np.clip(pred.preprocess(raw) + shift, 0, 255)
        probs, emb = pred.probabilities_and_embeddings(x[None])
        v = pred.verdicts(probs)[0]
        rows.append({"time": now - 3600 + i, "request_id": f"r{i}",
                     "model_version": pred.info.version,
                     "image_sha256": hashlib.sha256(raw).hexdigest(), "predicted": v.label,
                     "probabilities": v.probabilities, "top_probability": v.probability,
                     "uncertain": v.uncertain, "latency_ms": 3.0, "source": "cli",
                     "image_stats": image_stats(x.astype(np.uint8)),
                     "embedding": summarize_embedding(emb[0])})
    open_store(db).log(rows)
    return len(rows)


def test_lifecycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from skincli.cli import app
    from skincli.data.dataset import load_dataset
    from skincli.data.manifest import build_manifest
    from skincli.data.split import make_split
    from skincli.data.splitfile import write_split
    from skincli.synthetic import make_synthetic_dataset
    from skincli.train import train

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKIN_CACHE_DIR", str(tmp_path / "cache"))
    make_synthetic_dataset("data", COUNTS, size=64, seed=0)
    make_synthetic_dataset("stream", COUNTS, size=64, seed=11)
    make_synthetic_dataset("new", {c: 15 for c in COUNTS}, size=64, seed=5)
    write_split(make_split(build_manifest(load_dataset("data")), val=0.2, test=0.25, seed=0),
                "splits/split.csv")
    champ = train({"split": "splits/split.csv", "arch": "tiny", "weights": "none",
                   "epochs": 3, "fine_tune_epochs": 0, "input_size": 64, "name": "champ",
                   "runs_dir": "runs"})
    runner = CliRunner()

    # an unshifted stream passes, a brightened one alerts (reference built from the run)
    _log_stream(champ, Path("stream"), Path("calm.db"), shift=0)
    res = runner.invoke(app, ["monitor", "--run", "champ", "--store", "calm.db", "--check"])
    assert res.exit_code == 0, res.output
    assert (champ / "reference.json").is_file()
    _log_stream(champ, Path("stream"), Path("bright.db"), shift=40)
    res = runner.invoke(app, ["monitor", "--run", "champ", "--store", "bright.db", "--check"])
    assert res.exit_code == 2, res.output
    assert "ALERT input_stats_ks" in res.output

    # retrain with the real trainer and evaluator
    res = runner.invoke(app, ["monitor", "retrain", "--data", "new", "--run", "champ",
                              "--margin", "0.01"])
    assert res.exit_code == 0, res.output
    steps = [json.loads(x) for x in Path("runs/retrain-log.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps][-4:] == ["train", "trained", "evaluate", "decision"]
    ev, decision = steps[-2], steps[-1]
    diff = ev["challenger"]["macro_f1"] - ev["champion"]["macro_f1"]
    assert decision["promoted"] == (diff >= 0.01)
    current = Path("runs/CURRENT")
    if decision["promoted"]:
        assert current.read_text().strip() == "champ-challenger"
    else:
        assert not current.exists()
