"""Answer or defer on a tiny trained run: evaluate fits it; predict, the API, FHIR and the card
say answered / deferred to a dermatologist; a run without an operating point behaves as before."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from helpers_run import build_model, make_run
from imagegen import PALETTE, make_image
from PIL import Image
from typer.testing import CliRunner

from skincli.cli import app
from skincli.runs import load_run_info

runner = CliRunner()
CLASSES = ["melanoma", "nevus", "vascular lesion"]


def _images(root: Path, n_pure: int, n_mixed: int, seed: int) -> dict[str, list[Path]]:
    """Per class: pure-colour images, and images half-way to the next class's colour (hard:
    low confidence, often wrong) labelled with this class."""
    out: dict[str, list[Path]] = {}
    k = seed * 1000
    for i, c in enumerate(CLASSES):
        mine, nxt = np.array(PALETTE[i]), np.array(PALETTE[(i + 1) % len(CLASSES)])
        files = []
        for j in range(n_pure + n_mixed):
            colour = mine if j < n_pure else (mine + nxt) / 2
            files.append(make_image(root / c / f"{j:03d}.png", tuple(int(v) for v in colour),
                                    seed=k))
            k += 1
        out[c] = files
    return out


def _train(files: dict[str, list[Path]]) -> Any:
    import keras

    x = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32)
                  for c in CLASSES for p in files[c]])
    y = np.array([i for i, c in enumerate(CLASSES) for _ in files[c]])
    model = build_model(len(CLASSES), 32, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=40, batch_size=16, verbose=0)
    return model


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("defer")
    parts = {"train": _images(root / "train", 10, 0, 0), "val": _images(root / "val", 8, 4, 1),
             "test": _images(root / "test", 8, 4, 2)}
    model = _train(parts["train"])
    make_run(root, classes=CLASSES, name="alpha", model=model, split_files=parts)
    # The same model with every validation label wrong: no operating point can exist.
    wrong = {**parts, "val": {c: parts["val"][CLASSES[(i + 1) % 3]]
                              for i, c in enumerate(CLASSES)}}
    make_run(root, classes=CLASSES, name="wrong", model=model, split_files=wrong)
    return root


@pytest.fixture()
def runs(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKIN_STORE", str(tmp_path / "store.db"))
    shutil.copytree(base / "runs", tmp_path / "runs")
    return tmp_path / "runs"


def _evaluate(runs: Path, *args: str) -> Any:
    return runner.invoke(app, ["evaluate", "--runs-dir", str(runs), "--bootstrap", "100",
                               "--engine", "tf", *args])


def _fitted(runs: Path) -> dict[str, Any]:
    res = _evaluate(runs, "alpha", "--defer-target", "0.95")
    assert res.exit_code == 0, res.output
    rec = load_run_info(runs / "alpha").extra["defer"]
    assert rec["feasible"]
    return {"output": res.output, "record": rec}


def test_evaluate_fits_on_validation_prints_it_first_and_stores_it(runs: Path) -> None:
    fitted = _fitted(runs)
    out, rec = " ".join(fitted["output"].split()), fitted["record"]
    # The operating point (validation) comes before the first test figure.
    assert out.index("Answer or defer, target 0.95") < out.index("Overall")
    for text in ("Risk-coverage on validation", "Risk-coverage on test", "AURC", "E-AURC",
                 "AUGRC", "oracle", "random", "gap to validation", "Target 0.95"):
        assert text in out, text
    assert set(rec["thresholds"]) == set(CLASSES)
    assert rec["validation"]["balanced_accuracy"] >= 0.95
    assert rec["validation"]["coverage"] < 1.0  # the hard images are deferred
    assert "test" in rec and isinstance(rec["test"]["met"], bool)
    report = Path("reports/evaluate/alpha")
    assert (report / "risk_coverage.png").is_file()
    section = json.loads((report / "metrics.json").read_text())["defer"]
    assert [r["target_coverage"] for r in section["curves"]["test"]["levels"]][-1] == 0.1


def test_infeasible_target_stores_nothing(runs: Path) -> None:
    before = (runs / "wrong" / "run.json").read_text()
    res = _evaluate(runs, "wrong", "--defer-target", "0.85")
    assert res.exit_code == 0, res.output
    assert "infeasible" in res.output and "Nothing stored" in " ".join(res.output.split())
    assert "defer" not in load_run_info(runs / "wrong").extra
    assert json.loads(before)["extra"].get("defer") is None


@pytest.mark.parametrize("bad", ["1.5", "0"])
def test_bad_defer_target_is_one_line(runs: Path, bad: str) -> None:
    before = (runs / "alpha" / "run.json").read_bytes()
    res = _evaluate(runs, "alpha", "--defer-target", bad)
    assert res.exit_code == 1
    assert "between 0 and 1" in res.output and "Traceback" not in res.output
    assert (runs / "alpha" / "run.json").read_bytes() == before


def _predict(runs: Path, *paths: Path) -> dict[str, Any]:
    res = runner.invoke(app, ["predict", *map(str, paths), "--runs-dir", str(runs), "--run",
                              "alpha", "--json", "--no-log", "--engine", "tf"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def _probe_images(folder: Path) -> list[Path]:
    """Two clear images and two half-way ones."""
    pure = [make_image(folder / f"pure{i}.png", PALETTE[i], seed=900 + i) for i in range(2)]
    mid = [make_image(folder / f"mid{i}.png", tuple(int(v) for v in (np.array(PALETTE[i])
                      + np.array(PALETTE[i + 1])) / 2), seed=950 + i) for i in range(2)]
    return pure + mid


def test_without_an_operating_point_predict_is_as_before(runs: Path, tmp_path: Path) -> None:
    doc = _predict(runs, *_probe_images(tmp_path / "img"))
    assert all("deferral" not in p for p in doc["predictions"])
    assert "operating_point" not in doc


def test_predict_fhir_api_and_card_say_answered_or_deferred(runs: Path, tmp_path: Path) -> None:
    rec = _fitted(runs)["record"]
    images = _probe_images(tmp_path / "img")
    doc = _predict(runs, *images)
    assert doc["operating_point"]["thresholds"] == rec["thresholds"]
    status = {Path(p["file"]).name: p["deferral"] for p in doc["predictions"]}
    assert status["pure0.png"]["text"] == "answered"
    for d in status.values():  # the rule, checked against the stored thresholds
        t = rec["thresholds"][d["predicted"]]
        assert d["deferred"] == (t is None or d["confidence"] < t)
        assert d["text"] == ("deferred to a dermatologist" if d["deferred"] else "answered")
    assert any(d["deferred"] for d in status.values())
    # The table says it too.
    table = runner.invoke(app, ["predict", *map(str, images), "--runs-dir", str(runs),
                                "--run", "alpha", "--no-log", "--engine", "tf"])
    flat = " ".join(table.output.split())
    assert "deferred" in flat and "Answer or defer: the model answers" in flat
    # FHIR: a component and the report's conclusion.
    fhir = tmp_path / "b.json"
    res = runner.invoke(app, ["predict", str(images[-1]), "--runs-dir", str(runs), "--run",
                              "alpha", "--no-log", "--engine", "tf", "--fhir", str(fhir)])
    assert res.exit_code == 0, res.output
    text = fhir.read_text()
    assert "answer-or-defer" in text
    assert status[images[-1].name]["text"] in text
    # The model card.
    res = runner.invoke(app, ["card", "alpha", "--runs-dir", str(runs)])
    assert res.exit_code == 0, res.output
    card = (runs / "alpha" / "MODEL_CARD.md")
    md = card.read_text() if card.is_file() else "".join(
        p.read_text() for p in (runs / "alpha").glob("*.md"))
    assert "### Answer or defer" in md and "deferred to a dermatologist" in md
    # The API.
    from test_serve_support import serving, upload

    with serving(runs, run="alpha") as client:
        r = client.post("/v1/predict", files=upload(images[0].read_bytes(), "a.png"))
        assert r.status_code == 200, r.text
        body = r.json()["prediction"]
        assert body["deferral"]["text"] in ("answered", "deferred to a dermatologist")
        assert body["deferral"]["threshold"] == pytest.approx(
            rec["thresholds"][body["deferral"]["predicted"]], abs=1e-6)


def test_run_without_validation_images_is_one_line(runs: Path, tmp_path: Path) -> None:
    (runs / "alpha" / "split.csv").unlink()
    (runs / "alpha" / "split.json").unlink()
    data = tmp_path / "data"
    for i, c in enumerate(CLASSES):
        make_image(data / c / "a.png", PALETTE[i], seed=i)
    before = (runs / "alpha" / "run.json").read_bytes()
    res = _evaluate(runs, "alpha", "--data", str(data), "--defer-target", "0.85")
    assert res.exit_code == 1
    assert "split" in res.output and "Traceback" not in res.output
    assert (runs / "alpha" / "run.json").read_bytes() == before
