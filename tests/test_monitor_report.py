"""`skin monitor` report, --check exit codes, labels and labelled performance (no TensorFlow)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from skincli.cli import app
from skincli.errors import SkinError
from skincli.fsutil import write_json
from skincli.monitor.drift import build_reference
from skincli.monitor.labels import read_label_csv
from skincli.monitor.reference import reference_path
from skincli.monitor.report import labelled_performance, parse_window
from skincli.monitor.store import STAT_NAMES, open_store
from skincli.runs import RunInfo, load_run_info, save_run_info

runner = CliRunner()
CLASSES = ["melanoma", "nevus", "keratosis"]
MIX = [0.2, 0.6, 0.2]


def _sample(rng: np.random.Generator, n: int, mix: list[float], bright: float = 0.0
            ) -> tuple[np.ndarray, list[dict], np.ndarray, np.ndarray]:
    """Probabilities, image stats, embeddings and true labels of n fake images."""
    y = rng.choice(len(CLASSES), n, p=mix)
    logits = rng.normal(0, 1, (n, len(CLASSES)))
    logits[np.arange(n), y] += 2.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    stats = [{k: float(rng.normal(120 + bright, 10)) for k in STAT_NAMES} for _ in range(n)]
    emb = rng.normal(0, 1, (n, 32)) + np.eye(len(CLASSES), 32)[y] * 2 + bright / 20
    return probs, stats, emb, y


def _make_run(tmp_path: Path, test_f1: float = 0.8) -> Path:
    run_dir = tmp_path / "runs" / "champ"
    run_dir.mkdir(parents=True)
    save_run_info(run_dir, RunInfo(name="champ", arch="tiny", classes=CLASSES, input_size=32,
                                   created="2026-01-01T00:00:00",
                                   test_metrics={"macro_f1": test_f1, "per_class": [
                                       {"class": c, "recall": test_f1} for c in CLASSES]}))
    info = load_run_info(run_dir)
    rng = np.random.default_rng(0)
    probs, stats, emb, y = _sample(rng, 300, MIX)
    ref = build_reference(CLASSES, probs, stats, emb.tolist(), [CLASSES[k] for k in y],
                          {"model_version": info.version, "split_sha256": "",
                           "source": "val split of champ", "run": "champ"})
    write_json(reference_path(run_dir), ref)
    return run_dir


def _log(db: Path, n: int, seed: int, mix: list[float] = MIX, bright: float = 0.0,
         version: str = "champ@2026-01-01T00:00:00", ago: float = 3600.0,
         accuracy: float | None = None, source: str = "api") -> list[dict]:
    rng = np.random.default_rng(seed)
    probs, stats, emb, y = _sample(rng, n, mix, bright)
    now = time.time()
    rows = []
    for i in range(n):
        pred = int(probs[i].argmax())
        rows.append({"time": now - ago + i * ago / (2 * n), "request_id": f"{seed}-{i}",
                     "model_version": version, "image_sha256": hashlib.sha256(
                         f"{seed}-{i}".encode()).hexdigest(),
                     "predicted": CLASSES[pred], "top_probability": float(probs[i].max()),
                     "probabilities": dict(zip(CLASSES, probs[i].tolist())),
                     "uncertain": bool(probs[i].max() < 0.5), "latency_ms": 20 + i % 7,
                     "source": source, "image_stats": stats[i], "embedding": emb[i].tolist(),
                     "_true": CLASSES[int(y[i])]})
    open_store(db).log(rows)
    return rows


def _monitor(run_dir: Path, db: Path, out: Path, *extra: str):
    return runner.invoke(app, ["monitor", "--run", str(run_dir), "--store", str(db),
                               "--out", str(out), "--runs-dir", str(run_dir.parent), *extra])


def test_check_passes_on_an_unshifted_stream(tmp_path: Path) -> None:
    run_dir = _make_run(tmp_path)
    db = tmp_path / "p.db"
    _log(db, 200, seed=1)
    result = _monitor(run_dir, db, tmp_path / "rep", "--check")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok:")


def test_check_alerts_on_a_shifted_stream(tmp_path: Path) -> None:
    run_dir = _make_run(tmp_path)
    db = tmp_path / "p.db"
    _log(db, 200, seed=2, mix=[0.6, 0.2, 0.2], bright=25)
    result = _monitor(run_dir, db, tmp_path / "rep", "--check")
    assert result.exit_code == 2, result.output
    alerts = [line for line in result.output.splitlines() if line.startswith("ALERT")]
    names = {line.split()[1].rstrip(":") for line in alerts}
    assert {"prediction_psi", "prediction_chi2", "input_stats_ks", "embedding_mmd"} <= names
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["status"] == "alert"
    assert len(report["alerts"]) == len(alerts)


def test_drift_per_source_names_the_shifted_clinic(tmp_path: Path) -> None:
    """Traffic that says its source is tested per source: one clinic's shift is named."""
    run_dir = _make_run(tmp_path)
    db = tmp_path / "p.db"
    _log(db, 300, seed=5, source="clinic-a")
    _log(db, 120, seed=6, bright=40, source="clinic-b")
    _log(db, 60, seed=7)  # the API channel: not a source of its own
    result = _monitor(run_dir, db, tmp_path / "rep", "--check")
    assert result.exit_code == 2, result.output
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    per_source = report["drift"]["per_source"]
    assert set(per_source) == {"clinic-a", "clinic-b"}
    assert per_source["clinic-b"]["n"] == 120
    verdict = {name: {r["name"]: r["verdict"] for r in v["results"]}
               for name, v in per_source.items()}
    assert verdict["clinic-b"]["input_stats_ks"] == "drift"
    assert "drift" not in verdict["clinic-a"].values()
    assert any("(source clinic-b)" in a for a in report["alerts"])
    assert not any("(source clinic-a)" in a for a in report["alerts"])
    shown = _monitor(run_dir, db, tmp_path / "rep2")
    assert "Drift per source" in shown.output and "clinic-b" in shown.output


def test_old_traffic_outside_the_trailing_window_is_not_tested(tmp_path: Path) -> None:
    run_dir = _make_run(tmp_path)
    db = tmp_path / "p.db"
    _log(db, 200, seed=3, bright=40, ago=3 * 86400)  # shifted, but days ago
    _log(db, 200, seed=4)                             # today: normal
    result = _monitor(run_dir, db, tmp_path / "rep", "--check")
    assert result.exit_code == 0, result.output
    result = _monitor(run_dir, db, tmp_path / "rep", "--check", "--window", "week")
    assert result.exit_code == 2


def test_full_report_tables_json_and_plots(tmp_path: Path) -> None:
    run_dir = _make_run(tmp_path)
    db = tmp_path / "p.db"
    _log(db, 120, seed=5)
    _log(db, 30, seed=6, version="other@2025")
    out = tmp_path / "rep"
    result = _monitor(run_dir, db, out, "--last", "3")
    assert result.exit_code == 0, result.output
    for text in ("Per day", "Drift", "prediction_psi", "embedding_mmd", "No threshold crossed"):
        assert text in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["n"] == 150          # operations: every model's traffic
    assert report["drift"]["current"]["n"] == 120  # drift: this run's model only
    assert len(report["windows"]) == 3
    # The traffic is from the last hour: today's window, or also yesterday's just after 00:00 UTC.
    busy = [w for w in report["windows"] if w["n"]]
    assert sum(w["n"] for w in busy) == 150
    assert busy and all(w in report["windows"][-2:] for w in busy)
    lat = busy[-1]["latency_ms"]
    assert lat["p50"] <= lat["p95"] <= lat["p99"]
    assert abs(sum(busy[-1]["class_share"].values()) - 1) < 1e-9
    for png in ("volume.png", "latency.png", "classes.png", "confidence.png"):
        assert (out / png).stat().st_size > 1000
    assert not list(tmp_path.glob(".rep.*"))  # no temporary folder left behind
    assert "report.json and PNG plots" in " ".join(result.output.split())
    result = _monitor(run_dir, db, tmp_path / "bare", "--last", "3", "--no-plots")
    assert result.exit_code == 0, result.output
    assert "PNG" not in result.output and not list((tmp_path / "bare").glob("*.png"))


def test_label_command_and_performance_alert(tmp_path: Path) -> None:
    run_dir = _make_run(tmp_path, test_f1=0.99)
    db = tmp_path / "p.db"
    rows = _log(db, 150, seed=7)
    csv = tmp_path / "labels.csv"
    # pathology disagrees with the model on every third image
    truth = [r["_true"] if i % 3 else next(c for c in CLASSES if c != r["predicted"])
             for i, r in enumerate(rows)]
    lines = ["image_sha256,diagnosis"] + [f"{r['image_sha256']},{lab}"
                                          for r, lab in zip(rows, truth)]
    lines.append(f"{'0' * 64},nevus")  # not logged (yet)
    lines.append("nothex,nevus")       # bad row: reported, skipped
    csv.write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["monitor", "label", str(csv), "--store", str(db)])
    assert result.exit_code == 0, result.output
    assert "150" in result.output and "not a SHA-256" in result.output
    assert open_store(db).predictions()["label"].notna().sum() == 150
    # about two thirds right: far below the test F1 of 0.99
    result = _monitor(run_dir, db, tmp_path / "rep", "--check")
    assert result.exit_code == 2
    assert "ALERT performance" in result.output
    result = _monitor(run_dir, db, tmp_path / "rep")
    assert "Performance on labelled feedback" in result.output
    assert (tmp_path / "rep" / "performance.png").exists()


def test_label_outside_the_run_classes_is_flagged(tmp_path: Path) -> None:
    run_dir = _make_run(tmp_path)
    db = tmp_path / "p.db"
    rows = _log(db, 3, seed=1)
    csv = tmp_path / "labels.csv"
    csv.write_text("image_sha256,label\n" + "".join(
        f"{r['image_sha256']},{lab}\n" for r, lab in zip(rows, ["nevus", "nevuss", "Nevus"])))
    result = runner.invoke(app, ["monitor", "--run", str(run_dir), "--runs-dir",
                                 str(run_dir.parent), "label", str(csv), "--store", str(db)])
    assert result.exit_code == 0, result.output  # stored all the same: the CSV may be right
    text = " ".join(result.output.split())
    assert "not among the classes of run champ: 'Nevus', 'nevuss'" in text
    assert "Did you mean: nevus?" in text
    assert open_store(db).predictions()["label"].notna().sum() == 3


def test_label_by_path_hashes_the_file(tmp_path: Path) -> None:
    img = tmp_path / "imgs" / "a.jpg"
    img.parent.mkdir()
    img.write_bytes(b"\xff\xd8 pretend jpeg bytes")
    sha = hashlib.sha256(img.read_bytes()).hexdigest()
    csv = tmp_path / "l.csv"
    csv.write_text("path,label\nimgs/a.jpg,melanoma\nimgs/missing.jpg,nevus\n")
    labels = read_label_csv(csv)
    assert labels.mapping == {sha: "melanoma"}
    assert labels.skipped == 1 and "cannot read" in labels.problems[0]
    bad = tmp_path / "bad.csv"
    bad.write_text("foo,bar\n1,2\n")
    with pytest.raises(SkinError, match="needs an image_sha256 or path column"):
        read_label_csv(bad)


def test_missing_store_and_bad_window_are_one_line_errors(tmp_path: Path) -> None:
    run_dir = _make_run(tmp_path)
    result = _monitor(run_dir, tmp_path / "none.db", tmp_path / "rep")
    assert result.exit_code == 1
    assert "No predictions logged yet" in result.output
    assert "Traceback" not in result.output
    open_store(tmp_path / "p.db").log([])
    result = _monitor(run_dir, tmp_path / "p.db", tmp_path / "rep", "--window", "fortnight")
    assert result.exit_code == 1 and "--window" in result.output
    (tmp_path / "afile").write_text("x")
    result = _monitor(run_dir, tmp_path / "p.db", tmp_path / "afile" / "rep")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith("error: Cannot write --out")
    result = _monitor(run_dir, "bogus://x", tmp_path / "rep")  # type: ignore[arg-type]
    assert result.exit_code == 1
    assert "Unknown prediction store type 'bogus'" in result.output
    assert "pip install" not in result.output  # installing things would not help


def test_parse_window() -> None:
    assert parse_window("day").seconds == 86400
    assert parse_window("week").seconds == 7 * 86400
    assert parse_window("6h").seconds == 6 * 3600
    w = parse_window("week")
    monday = 1767571200.0  # 2026-01-05 00:00 UTC, a Monday
    assert w.start(monday + 3 * 86400 + 5) == monday
    with pytest.raises(SkinError):
        parse_window("0d")


def test_labelled_performance_intervals_cover_the_point_estimate() -> None:
    import pandas as pd

    rng = np.random.default_rng(0)
    y = rng.choice(CLASSES, 200)
    pred = np.where(rng.random(200) < 0.7, y, rng.choice(CLASSES, 200))
    df = pd.DataFrame({"time": np.arange(200.0), "image_sha256": [f"{i}" for i in range(200)],
                       "label": y, "predicted": pred})
    perf = labelled_performance(df, CLASSES, n_boot=300)
    lo, hi = perf["macro_f1_ci"]
    assert lo < perf["macro_f1"] < hi
    for r in perf["per_class_recall"].values():
        assert r["ci"][0] <= r["recall"] <= r["ci"][1]
    # the same image predicted twice counts once
    twice = pd.concat([df, df.assign(time=df["time"] + 1000)])
    assert labelled_performance(twice, CLASSES, n_boot=10)["n"] == 200
