"""`skin predict`: batches, per-file errors, JSON/CSV, Grad-CAM, monitoring log, exit codes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers_run import make_run
from imagegen import make_class_folders, make_fake_jpeg, make_image, make_truncated_jpeg
from PIL import Image
from typer.testing import CliRunner

from skincli import DISCLAIMER
from skincli.cli import app
from skincli.runs import update_run_info

runner = CliRunner()
CLASSES = ["melanoma", "nevus", "vascular lesion"]


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run in tmp/runs, a folder of 5 good + 2 bad images in tmp/images; cwd = tmp."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKIN_STORE", str(tmp_path / "store.db"))
    make_run(tmp_path, classes=CLASSES, name="m1")
    folder = tmp_path / "images"
    for i in range(5):
        make_image(folder / ("sub" if i == 4 else "") / f"good{i}.jpg", seed=i)
    make_truncated_jpeg(folder / "cut.jpg")
    make_fake_jpeg(folder / "fake.jpg")
    (folder / "notes.txt").write_text("not an image suffix: never listed\n")
    return tmp_path


def _predict(*args: str) -> object:
    return runner.invoke(app, ["predict", "--runs-dir", "runs", *args])


def test_folder_with_corrupt_files_still_predicts_the_rest(env: Path) -> None:
    result = _predict("images", "--json", "--batch-size", "3")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["disclaimer"] == DISCLAIMER
    assert doc["model"]["name"] == "m1" and doc["model"]["version"].startswith("m1@")
    assert doc["summary"] == {"images": 7, "predicted": 5, "failed": 2,
                              "uncertain": doc["summary"]["uncertain"]}
    assert {Path(p["file"]).name for p in doc["predictions"]} == {f"good{i}.jpg"
                                                                  for i in range(5)}
    codes = {Path(e["file"]).name: e["code"] for e in doc["errors"]}
    assert codes == {"cut.jpg": "corrupt", "fake.jpg": "unsupported_type"}
    for p in doc["predictions"]:
        assert p["label"] in CLASSES and len(p["top_k"]) == 3
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert p["disclaimer"] == DISCLAIMER and p["model"] == doc["model"]["version"]
    assert "could not be read" in _flat(result.stderr)
    assert "cut.jpg" in result.stderr


def test_table_output_has_model_and_disclaimer(env: Path) -> None:
    update_run_info(env / "runs" / "m1", uncertain_threshold=0.99)
    result = _predict("images/good0.jpg", "images/good1.jpg", "--top-k", "2")
    assert result.exit_code == 0, result.output
    out = _flat(result.output)
    assert DISCLAIMER in out and "m1" in out and "uncertain" in out
    assert "good0.jpg" in out


def test_no_readable_image_exits_1(env: Path) -> None:
    result = _predict("images/cut.jpg", "images/fake.jpg", "missing.png")
    assert result.exit_code == 1
    out = _flat(result.output)
    assert "None of the 3 file(s) could be read" in out and "Traceback" not in out
    assert "missing.png: file not found" in out


def test_missing_inputs_fail_at_once_without_loading_the_model(
        env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded for nothing")

    monkeypatch.setattr("skincli.predictor.load_predictor", no_model)
    for args, expected in [(["typo.jpg"], "typo.jpg does not exist"),
                           (["a.jpg", "b.png"], "None of the 2 inputs exist (a.jpg, b.png)")]:
        result = _predict(*args)
        assert result.exit_code == 1, result.output
        assert result.output.startswith(f"error: {expected}"), result.output
        assert len(result.output.strip().splitlines()) == 1


def test_one_unreadable_file_is_one_line_with_the_reason(env: Path) -> None:
    result = _predict("images/fake.jpg")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output  # no model line or disclaimer around a failure
    assert lines[0].startswith("error: Cannot predict images/fake.jpg: not an image file")


def test_unwritable_csv_is_refused_before_predicting(env: Path) -> None:
    (env / "afile").write_text("x")
    result = _predict("images", "--csv", "afile/p.csv")
    assert result.exit_code == 1
    assert result.output.startswith("error: Cannot write --csv afile/p.csv: afile is a file")
    assert len(result.output.strip().splitlines()) == 1


def test_empty_folder_is_a_clear_error(env: Path) -> None:
    (env / "empty").mkdir()
    result = _predict("empty")
    assert result.exit_code == 1
    assert "No images to predict" in _flat(result.output)


def test_unknown_run_is_a_clear_error(env: Path) -> None:
    result = _predict("images", "--run", "m2")
    assert result.exit_code == 1 and "m2" in result.output and "Traceback" not in result.output
    assert "Did you mean: m1?" in _flat(result.output)


def test_csv_and_json_files(env: Path) -> None:
    result = _predict("images", "--csv", "out/p.csv", "--json-out", "out/p.json", "--top-k", "2")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(env / "out" / "p.csv", encoding="utf-8")))
    assert len(rows) == 7
    ok = [r for r in rows if r["status"] == "ok"]
    bad = [r for r in rows if r["status"] != "ok"]
    assert len(ok) == 5 and {r["status"] for r in bad} == {"error:corrupt",
                                                           "error:unsupported_type"}
    assert all(r["disclaimer"] == DISCLAIMER and r["model"].startswith("m1@") for r in rows)
    assert all(len(r["top_k"].split("; ")) == 2 for r in ok)
    assert {f"p_{c}" for c in CLASSES} <= set(rows[0])
    doc = json.loads((env / "out" / "p.json").read_text())
    assert doc["summary"]["predicted"] == 5
    assert sorted(p.name for p in (env / "out").iterdir()) == ["p.csv", "p.json"]


def test_explain_writes_heat_maps(env: Path) -> None:
    result = _predict("images/good0.jpg", "images/sub/good4.jpg", "--explain", "--json",
                      "--explain-dir", "cams")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    for p in doc["predictions"]:
        path = Path(p["explanation"])
        assert path.parent == Path("cams") and path.exists()
        with Image.open(path) as img:
            assert img.format == "PNG" and img.width > img.height  # original | overlay


def test_predictions_are_logged_to_the_monitoring_store(env: Path) -> None:
    pytest.importorskip("skincli.monitor.store")
    from skincli.monitor.store import open_store

    assert _predict("images", "--json").exit_code == 0
    with open_store(str(env / "store.db")) as store:
        rows = store.predictions()
    assert len(rows) == 5
    row = rows.iloc[0]
    assert row["source"] == "cli" and row["model_version"].startswith("m1@")
    assert len(row["image_sha256"]) == 64 and row["image_stats"]["mean_r"] > 0
    assert row["embedding"] is not None


def test_no_log_and_broken_store(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _predict("images/good0.jpg", "--no-log").exit_code == 0
    assert not (env / "store.db").exists()
    monkeypatch.setenv("SKIN_STORE", "sqlite://")  # no path: the store refuses it
    result = _predict("images/good0.jpg", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["summary"]["predicted"] == 1
    assert "not logged" in _flat(result.stderr)


def test_out_of_distribution_warning_in_output(env: Path) -> None:
    from skincli.ood import build_reference, colour_features
    from skincli.predictor import Predictor

    make_class_folders(env / "ref", {"a": 30}, seed=3)
    p = Predictor.from_run(env / "runs" / "m1")
    arrays = p.read_images(sorted((env / "ref" / "a").iterdir()))
    import numpy as np

    batch = np.stack(arrays).astype(np.float32)
    _, emb = p.logits_and_embeddings(batch)
    update_run_info(p.run_dir, extra={"reference": build_reference(colour_features(batch), emb)})
    Image.new("RGB", (40, 40), (20, 60, 230)).save(env / "blue.png")
    result = _predict("blue.png", "ref/a/img_000.jpg", "--json")
    doc = json.loads(result.stdout)
    by_name = {Path(d["file"]).name: d for d in doc["predictions"]}
    assert "does not look like a dermoscopic image" in by_name["blue.png"]["warnings"][0]
    assert by_name["img_000.jpg"]["warnings"] == []


def test_help_mentions_main_options() -> None:
    result = runner.invoke(app, ["predict", "--help"])
    assert result.exit_code == 0
    for opt in ("--top-k", "--json", "--csv", "--tta", "--explain", "--batch-size", "--no-log"):
        assert opt in result.output
