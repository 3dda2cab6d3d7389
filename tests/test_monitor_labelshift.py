"""Label shift from traffic: EM (Saerens et al. 2002) on generated streams with a known prior,
its CI and alert, non-convergence, and `skin monitor --suggest-prevalence`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers_run import make_run
from imagegen import make_class_folders
from test_decision import gaussian_stream
from typer.testing import CliRunner

from skincli.cli import app
from skincli.decision import read_prior
from skincli.monitor.labelshift import em_prior, estimate_label_shift, suggested_prior

runner = CliRunner()
CLASSES = ["melanoma", "nevus", "vascular lesion"]
UNIFORM = np.full(3, 1 / 3)
TRAIN = {"melanoma": 6, "nevus": 12, "vascular lesion": 6}  # training prior 25/50/25 %
TRAIN_PRIOR = {"melanoma": 0.25, "nevus": 0.5, "vascular lesion": 0.25}


def _rows(probs: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"probabilities": [dict(zip(CLASSES, p.round(6).tolist()))
                                           for p in probs]})


@pytest.mark.parametrize("true", [[0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.05, 0.9, 0.05]])
def test_em_recovers_a_shifted_prior_within_its_ci(true: list[float]) -> None:
    """Over 10 generated streams per prior, the 95% CI holds the true prior (nearly always:
    it is a 95% interval), the estimate is unbiased and beats the naive average posterior."""
    covered, ests = [], []
    for seed in range(10):
        probs, _ = gaussian_stream(np.array(true), 2000, seed=100 + seed)
        res = estimate_label_shift(_rows(probs), CLASSES, UNIFORM,
                                   {"training prior": TRAIN_PRIOR}, "training prior",
                                   n_boot=100, seed=seed)
        assert res["converged"] and res["status"] == "shift" and res["alert"]
        assert "->" in res["detail"]
        est = np.array([res["estimate"][c] for c in CLASSES])
        naive = probs.mean(axis=0)  # the average posterior is pulled towards the model prior
        assert np.abs(est - true).max() < np.abs(naive - true).max()
        for c, t in zip(CLASSES, true):
            lo, hi = res["ci95"][c]
            assert hi - lo < 0.12  # informative, not an interval that holds everything
            covered.append(lo <= t <= hi)
        ests.append(est)
    assert np.mean(covered) >= 0.85, np.mean(covered)
    assert np.mean(ests, axis=0) == pytest.approx(true, abs=0.01)


def test_unshifted_stream_raises_no_alert() -> None:
    for seed in (21, 22, 23):
        probs, _ = gaussian_stream(np.array([0.25, 0.5, 0.25]), 2000, seed=seed)
        res = estimate_label_shift(_rows(probs), CLASSES, UNIFORM,
                                   {"training prior": TRAIN_PRIOR}, "training prior",
                                   n_boot=100, seed=0)
        assert res["converged"] and not res["alert"] and res["status"] == "ok"
        assert res["max_change"] < 0.05


def test_not_converged_and_too_few_report_without_alert() -> None:
    probs, _ = gaussian_stream(np.array([0.8, 0.1, 0.1]), 500, seed=5)
    res = estimate_label_shift(_rows(probs), CLASSES, UNIFORM, {"training prior": TRAIN_PRIOR},
                               "training prior", max_iter=2)
    assert res["converged"] is False and res["status"] == "not_converged"
    assert not res["alert"] and "did not converge" in res["detail"]
    assert suggested_prior(res) is None
    few = estimate_label_shift(_rows(probs[:10]), CLASSES, UNIFORM, {}, None, min_samples=50)
    assert few["status"] == "too_few" and few["estimate"] is None and not few["alert"]
    # rows without every class are skipped and counted, never crash
    odd = pd.DataFrame({"probabilities": [{"melanoma": 1.0}, {}, None]})
    assert estimate_label_shift(odd, CLASSES, UNIFORM, {}, None)["n_skipped"] == 3


def test_em_fixed_point_is_the_prior_for_exact_posteriors() -> None:
    probs, y = gaussian_stream(np.array([0.5, 0.3, 0.2]), 20000, seed=8)
    est, ok, iters = em_prior(probs, UNIFORM)
    assert ok and 1 < iters < 1000
    assert est == pytest.approx(np.bincount(y, minlength=3) / len(y), abs=0.02)


# --- skin monitor ----------------------------------------------------------------------------

@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKIN_STORE", str(tmp_path / "store.db"))
    root = tmp_path / "data"
    files = {"train": make_class_folders(root / "train", TRAIN, seed=0),
             "val": make_class_folders(root / "val", {c: 4 for c in CLASSES}, seed=1),
             "test": make_class_folders(root / "test", {c: 4 for c in CLASSES}, seed=2)}
    make_run(tmp_path, classes=CLASSES, name="m1", split_files=files)
    return tmp_path


def _log(env: Path, prior: list[float], n: int, seed: int) -> None:
    from skincli.monitor.store import open_store
    from skincli.runs import load_run_info

    version = load_run_info(env / "runs" / "m1").version
    probs, _ = gaussian_stream(np.array(prior), n, seed=seed)
    now = time.time()
    rows = [{"time": now - 60 - i, "request_id": f"r{i}", "model_version": version,
             "image_sha256": f"{seed}-{i}", "probabilities": dict(zip(CLASSES, p.tolist())),
             "latency_ms": 10.0, "source": "api"} for i, p in enumerate(probs)]
    with open_store(str(env / "store.db")) as store:
        store.log(rows)


def test_monitor_alerts_on_shift_and_suggests_a_prevalence_file(env: Path) -> None:
    _log(env, [0.7, 0.2, 0.1], 1500, seed=31)
    res = runner.invoke(app, ["monitor", "--run", "m1", "--check", "--no-plots",
                              "--suggest-prevalence", "clinic.yaml"])
    assert res.exit_code == 2, res.output
    assert "ALERT label_shift" in res.output
    report = json.loads(Path("reports/monitor/report.json").read_text())
    shift = report["label_shift"]
    assert shift["alert_against"] == "training prior"
    assert shift["references"]["training prior"] == TRAIN_PRIOR
    prior, warnings = read_prior("clinic.yaml", CLASSES)
    assert warnings == []
    for c, t in zip(CLASSES, [0.7, 0.2, 0.1]):
        lo, hi = shift["ci95"][c]
        assert lo <= t <= hi and prior[c] == pytest.approx(shift["estimate"][c], abs=2e-3)
    # the suggested file is what predict and serve accept; against it, the stream is unshifted
    again = runner.invoke(app, ["monitor", "--run", "m1", "--no-plots", "--prevalence",
                                "clinic.yaml"])
    assert again.exit_code == 0, again.output
    text = " ".join(again.output.split())
    assert "Class prevalence of the last day" in text and "prior in force" in text
    report = json.loads(Path("reports/monitor/report.json").read_text())
    assert report["label_shift"]["alert_against"] == "prior in force"
    assert not report["label_shift"]["alert"]
    assert not any(a.startswith("label_shift") for a in report["alerts"])


def test_monitor_unshifted_traffic_and_bad_inputs(env: Path) -> None:
    _log(env, [0.25, 0.5, 0.25], 1500, seed=41)
    res = runner.invoke(app, ["monitor", "--run", "m1", "--no-plots"])
    assert res.exit_code == 0, res.output
    report = json.loads(Path("reports/monitor/report.json").read_text())
    assert report["label_shift"]["status"] == "ok"
    assert not any(a.startswith("label_shift") for a in report["alerts"])
    bad = env / "bad.yaml"
    bad.write_text("melanoma: 1\nnevus: -1\nvascular lesion: 1\n")
    res = runner.invoke(app, ["monitor", "--run", "m1", "--no-plots", "--prevalence", str(bad)])
    assert res.exit_code == 1 and "must be a positive number" in " ".join(res.output.split())
    assert "Traceback" not in res.output
    few = runner.invoke(app, ["monitor", "--run", "m1", "--no-plots", "--min-samples", "5000",
                              "--suggest-prevalence", "s.yaml"])
    assert few.exit_code == 1 and "No prevalence suggested" in " ".join(few.output.split())
    assert not Path("s.yaml").exists()


def test_drift_compares_the_calibrated_argmax_whichever_rule_answered() -> None:
    from skincli.monitor.drift import calibrated_view

    rows = pd.DataFrame({
        "probabilities": [{"melanoma": 0.5, "nevus": 0.4, "vascular lesion": 0.1}, {}],
        "predicted": ["nevus", "melanoma"],  # row 0 answered by the prevalence rule
        "top_probability": [0.7, 0.9]})
    labels, top = calibrated_view(rows)
    assert labels == ["melanoma", "melanoma"] and top.tolist() == [0.5, 0.9]
