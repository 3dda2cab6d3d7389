"""`skin evaluate`: metrics, report folder, calibration, TTA, other data, comparisons, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers_run import make_run
from imagegen import PALETTE, make_class_folders, make_image, make_truncated_jpeg
from typer.testing import CliRunner

from skincli import DISCLAIMER
from skincli.cli import app
from skincli.runs import load_run_info

runner = CliRunner()
CLASSES = ["melanoma", "nevus", "vascular lesion"]
REPORT_FILES = {"metrics.json", "confusion_matrix.csv", "confusion_matrix.png", "roc.png",
                "pr.png", "reliability.png", "per_class.csv", "predictions.csv"}


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def split_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, list[Path]]]:
    root = tmp_path_factory.mktemp("data")
    return {part: make_class_folders(root / part, {c: n for c in CLASSES}, seed=seed)
            for part, n, seed in (("train", 3, 0), ("val", 12, 1), ("test", 8, 2))}


@pytest.fixture()
def runs(tmp_path: Path, split_files: dict, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKIN_STORE", str(tmp_path / "store.db"))
    make_run(tmp_path, classes=CLASSES, name="alpha", split_files=split_files, seed=0,
             created="2026-01-01T00:00:00")
    make_run(tmp_path, classes=CLASSES, name="beta", split_files=split_files, seed=1,
             created="2026-01-02T00:00:00")
    return tmp_path / "runs"


def _evaluate(*args: str) -> object:
    return runner.invoke(app, ["evaluate", "--bootstrap", "200", *args])


def test_default_run_and_split_writes_report_and_test_metrics(runs: Path) -> None:
    result = _evaluate("--runs-dir", str(runs))
    assert result.exit_code == 0, result.output
    out = _flat(result.output)
    assert "beta" in out and "24 images" in out  # latest run, its own test split
    for text in ("macro F1", "balanced accuracy", "Cohen's kappa", "95% CI", "Per class",
                 DISCLAIMER):
        assert text in out
    folder = Path("reports/evaluate/beta")
    assert REPORT_FILES <= {p.name for p in folder.iterdir()}
    metrics = json.loads((folder / "metrics.json").read_text())
    m = metrics["metrics"]
    assert m["n"] == 24 and len(m["per_class"]) == 3
    assert m["ci95"]["macro_f1"][0] <= m["macro_f1"] <= m["ci95"]["macro_f1"][1]
    assert metrics["disclaimer"] == DISCLAIMER
    stored = load_run_info(runs / "beta").test_metrics
    assert stored["macro_f1"] == pytest.approx(m["macro_f1"])
    assert stored["n"] == 24
    assert load_run_info(runs / "alpha").test_metrics == {}
    preds = pd.read_csv(folder / "predictions.csv")
    assert len(preds) == 24 and {"p_melanoma", "p_nevus"} <= set(preds.columns)
    assert not list(Path("reports/evaluate").glob(".*"))  # no temporary folders left behind


def test_calibrate_stores_temperature_threshold_and_reference(runs: Path, tmp_path: Path) -> None:
    result = _evaluate("alpha", "--runs-dir", str(runs), "--calibrate", "--out",
                       str(tmp_path / "rep"))
    assert result.exit_code == 0, result.output
    out = _flat(result.output)
    assert "Calibration" in out and "validation NLL" in out and "test ECE" in out
    info = load_run_info(runs / "alpha")
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    cal = metrics["calibration"]
    assert info.temperature == pytest.approx(cal["temperature"]) and info.temperature > 0
    assert cal["val_nll_after"] <= cal["val_nll_before"] + 1e-9
    assert cal["n_val"] == 36
    assert info.uncertain_threshold == pytest.approx(cal["uncertain"]["threshold"])
    assert info.extra["calibration"]["temperature"] == pytest.approx(info.temperature)
    assert info.extra["reference"]["n"] == 36
    assert info.test_metrics["temperature"] == pytest.approx(info.temperature)


def test_calibrate_reads_the_validation_images_once(runs: Path, tmp_path: Path,
                                                   split_files: dict,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Calibration, the triage threshold and the decision rules are all refitted on the
    validation split, from one pass over its images."""
    import skincli.data.evalset as evalset

    reads: list[str] = []
    real = evalset.read_images

    def counting(paths: list, *args: object, **kwargs: object) -> list:
        reads.extend(str(p) for p in paths)
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(evalset, "read_images", counting)
    before = load_run_info(runs / "alpha").extra
    assert "triage" not in before and "decisions" not in before  # all three need fitting
    # TensorFlow engine: LiteRT would first convert the model, checking it on validation images
    result = _evaluate("alpha", "--runs-dir", str(runs), "--calibrate", "--engine", "tf",
                       "--out", str(tmp_path / "rep"))
    assert result.exit_code == 0, result.output
    extra = load_run_info(runs / "alpha").extra
    assert extra["calibration"]["n_val"] == 36
    assert extra["triage"]["n_val"] == 36
    assert {f["rule"] for f in extra["decisions"]["fits"]} == {"prevalence", "macro-f1"}
    val = {str(p) for files in split_files["val"].values() for p in files}
    assert len(val) == 36
    assert sorted(r for r in reads if r in val) == sorted(val)  # every one, once


def test_calibration_does_not_change_accuracy(runs: Path, tmp_path: Path) -> None:
    before = _evaluate("alpha", "--runs-dir", str(runs), "--out", str(tmp_path / "a"))
    after = _evaluate("alpha", "--runs-dir", str(runs), "--calibrate", "--out",
                      str(tmp_path / "b"))
    assert before.exit_code == 0 and after.exit_code == 0
    ma = json.loads((tmp_path / "a" / "metrics.json").read_text())["metrics"]
    mb = json.loads((tmp_path / "b" / "metrics.json").read_text())["metrics"]
    assert ma["confusion_matrix"] == mb["confusion_matrix"]
    assert ma["accuracy"] == mb["accuracy"]


def test_tta_reports_with_without_and_gain(runs: Path, tmp_path: Path) -> None:
    result = _evaluate("beta", "--runs-dir", str(runs), "--tta", "--out", str(tmp_path / "t"))
    assert result.exit_code == 0, result.output
    assert "Test-time augmentation" in result.output
    tta = json.loads((tmp_path / "t" / "metrics.json").read_text())["tta_comparison"]
    for key in ("accuracy", "macro_f1", "ece"):
        assert tta["gain"][key] == pytest.approx(tta["with"][key] - tta["without"][key])


def test_other_labelled_folder(runs: Path, tmp_path: Path) -> None:
    make_class_folders(tmp_path / "clinic", {"nevus": 4, "melanoma": 3}, seed=9)
    make_truncated_jpeg(tmp_path / "clinic" / "nevus" / "broken.jpg")
    result = _evaluate("beta", "--runs-dir", str(runs), "--data", str(tmp_path / "clinic"),
                       "--out", str(tmp_path / "c"))
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert metrics["data"]["n_evaluated"] == 7 and metrics["data"]["n_skipped"] == 1
    assert metrics["data"]["skipped"][0]["code"] == "corrupt"
    assert "vascular lesion" in metrics["metrics"]["auc_skipped_classes"]
    assert "unreadable" in _flat(result.output) and "ROC AUC skipped" in _flat(result.output)
    assert load_run_info(runs / "beta").test_metrics == {}  # only the run's own test split


def test_unknown_labels_are_a_clear_error(runs: Path, tmp_path: Path) -> None:
    make_class_folders(tmp_path / "odd", {"nevi": 2, "melanoma": 2})
    result = _evaluate("--runs-dir", str(runs), "--data", str(tmp_path / "odd"))
    assert result.exit_code == 1
    out = _flat(result.output)
    assert "'nevi'" in out and "Did you mean: nevus" in out and "Traceback" not in out


def test_compare_two_runs_with_a_paired_test(runs: Path, tmp_path: Path) -> None:
    result = _evaluate("alpha", "beta", "--runs-dir", str(runs))
    assert result.exit_code == 0, result.output
    out = _flat(result.output)
    assert "Side by side" in out and "Verdict:" in out and "McNemar" in out
    folder = Path("reports/evaluate/alpha_vs_beta")
    doc = json.loads((folder / "metrics.json").read_text())
    cmp_ = doc["comparison"]
    assert cmp_["n_images"] == 24 and cmp_["a"] == "alpha" and cmp_["b"] == "beta"
    ma, mb = (r["metrics"]["macro_f1"] for r in doc["runs"])
    assert cmp_["macro_f1_diff"] == pytest.approx(mb - ma)
    assert 0 <= cmp_["mcnemar"]["p_value"] <= 1
    assert REPORT_FILES - {"metrics.json"} <= {p.name for p in (folder / "alpha").iterdir()}


def test_errors_are_one_clear_line(runs: Path, tmp_path: Path) -> None:
    cases = [
        (["nosuchrun", "--runs-dir", str(runs)], "Runs there: alpha, beta"),
        (["alpah", "--runs-dir", str(runs)], "No run 'alpah' in"),
        (["alpah", "--runs-dir", str(runs)], "Did you mean: alpha?"),
        (["--runs-dir", str(runs), "--subset", "tset"], "Did you mean: test"),
        (["alpha", "beta", "alpha", "--runs-dir", str(runs)], "at most two runs"),
        (["alpha", "alpha", "--runs-dir", str(runs)], "two different runs"),
        (["alpha", "--runs-dir", str(runs), "--bootstrap", "100000000"], "is too many"),
        (["--runs-dir", str(tmp_path / "empty")], "No trained run"),
        (["--runs-dir", str(runs), "--data", str(tmp_path / "nope")], "does not exist"),
    ]
    for args, expected in cases:
        result = _evaluate(*args)
        assert result.exit_code == 1, (args, result.output)
        assert expected in _flat(result.output), (args, result.output)
        assert "Traceback" not in result.output
        assert result.output.startswith("error:"), (args, result.output)  # no blank line first


def test_unwritable_out_stops_before_any_image_is_read(runs: Path, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    result = _evaluate("alpha", "--runs-dir", str(runs), "--out", str(tmp_path / "afile" / "r"))
    assert result.exit_code == 1
    assert result.output.startswith("error: Cannot write --out")
    assert "is a file, not a folder" in _flat(result.output)
    assert len(result.output.strip().splitlines()) == 1  # no metrics printed, then a failure


def test_damaged_model_file_is_a_clear_error(runs: Path) -> None:
    (runs / "alpha" / "model.keras").write_bytes(b"not a zip")
    result = _evaluate("alpha", "--runs-dir", str(runs))
    assert result.exit_code == 1
    out = _flat(result.output)
    assert "alpha" in out and "model.keras is damaged" in out and "Traceback" not in out


def test_evaluate_and_predict_give_the_same_numbers(runs: Path, tmp_path: Path,
                                                    split_files: dict) -> None:
    result = _evaluate("beta", "--runs-dir", str(runs), "--out", str(tmp_path / "e"))
    assert result.exit_code == 0
    preds = pd.read_csv(tmp_path / "e" / "predictions.csv")
    files = [str(p) for p in split_files["test"]["nevus"][:3]]
    pj = runner.invoke(app, ["predict", *files, "--runs-dir", str(runs), "--run", "beta",
                             "--json", "--no-log"])
    assert pj.exit_code == 0, pj.output
    doc = json.loads(pj.stdout)
    for p in doc["predictions"]:
        row = preds[preds["file"] == str(Path(p["file"]).resolve())].iloc[0]
        got = np.array([p["probabilities"][c] for c in CLASSES])
        want = row[[f"p_{c}" for c in CLASSES]].to_numpy(dtype=float)
        np.testing.assert_allclose(got, want, atol=2e-6)


ISIC = Path(__file__).resolve().parents[2] / "shared" / "data" / "isic9"


@pytest.mark.slow
@pytest.mark.skipif(not (ISIC / "Test").is_dir(), reason="needs ../shared/data/isic9")
def test_real_isic_test_folder_via_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    classes = sorted(d.name for d in (ISIC / "Train").iterdir() if d.is_dir())
    make_run(tmp_path, classes=classes, input_size=64, name="real")
    result = _evaluate("real", "--runs-dir", "runs", "--data", str(ISIC), "--subset", "test",
                       "--out", "rep")
    assert result.exit_code == 0, result.output
    doc = json.loads(Path("rep/metrics.json").read_text())
    n_files = sum(1 for p in (ISIC / "Test").rglob("*") if p.suffix.lower() == ".jpg")
    assert doc["data"]["n_images"] == n_files
    assert doc["data"]["n_evaluated"] + doc["data"]["n_skipped"] == n_files
    assert "Test part" in doc["data"]["description"]
    assert sum(r["support"] for r in doc["metrics"]["per_class"]) == doc["data"]["n_evaluated"]


def test_run_without_split_says_what_to_pass(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    make_run(tmp_path, classes=CLASSES, name="lonely")
    result = _evaluate("--runs-dir", "runs")
    assert result.exit_code == 1
    out = _flat(result.output)
    assert "holds no split.csv" in out and "--data" in out


def test_subgroups_from_metadata(runs: Path, tmp_path: Path) -> None:
    files = {c: [make_image(tmp_path / "clinic" / c / f"ISIC_{k}{i:03d}.jpg", PALETTE[k],
                            seed=40 + 20 * k + i) for i in range(12)]
             for k, c in enumerate(("nevus", "melanoma"))}
    rows = [{"isic_id": p.stem, "diagnosis": label, "sex": "female" if i % 2 else "male",
             "age_approx": "35" if i % 3 else "70", "anatom_site_general": "back"}
            for label, paths in files.items() for i, p in enumerate(paths)]
    meta = tmp_path / "meta.csv"
    pd.DataFrame(rows).to_csv(meta, index=False)
    result = _evaluate("beta", "--runs-dir", str(runs), "--data", str(tmp_path / "clinic"),
                       "--metadata", str(meta), "--out", str(tmp_path / "s"))
    assert result.exit_code == 0, result.output
    assert "Subgroups" in _flat(result.output)
    sub = json.loads((tmp_path / "s" / "metrics.json").read_text())["subgroups"]
    table = pd.read_csv(tmp_path / "s" / "subgroups.csv")
    assert set(table["attribute"]) == {"sex", "age_band", "site"}
    assert set(table["class"].dropna()) == {"nevus", "melanoma"}
    assert {r["value"] for r in sub["attributes"]["sex"]} == {"female", "male"}
    assert sum(r["n"] for r in sub["attributes"]["sex"]) == 24
    assert {r["value"] for r in sub["attributes"]["age_band"]} == {"30-44", "60-74"}
    for r in sub["attributes"]["sex"]:
        lo, hi = r["ci95"]
        assert lo <= r["macro_f1"] <= hi
        assert set(r["per_class_recall"]) == {"nevus", "melanoma"}
    result = _evaluate("beta", "--runs-dir", str(runs), "--metadata", str(meta))
    assert result.exit_code == 1 and "--metadata applies to --data" in _flat(result.output)
