"""`skin export --format tflite|tflite-int8` as an app developer uses it: MediaPipe Tasks'
ImageClassifier (the `mediapipe` wheel, a client we did not write) loads the file unchanged
and answers as `skin predict` does; the metadata and its associated files read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from apprun import CLASSES, generated_images, make_trained_run

pytest.importorskip("mediapipe", reason="pip install 'skincli[export]'")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_trained_run(tmp_path_factory.mktemp("export_mobile"))


@pytest.fixture(scope="module")
def reference(runs: Path) -> tuple[list[Path], list[Any]]:
    """Generated images and what `skin predict` answers for them (with its referral)."""
    from skincli.evaluate import ensure_triage as ensure
    from skincli.predictor import Predictor

    paths = generated_images(runs.parent / "generated")
    predictor = Predictor.from_run("tiny", runs, engine="tf")
    ensure(predictor)  # the referral threshold, fitted as skin predict does on first need
    return paths, predictor.predict_paths(paths)


def classify_with_mediapipe(model: Path, paths: list[Path], size: int) -> list[dict[str, float]]:
    """MediaPipe's ImageClassifier on each file, resized first as the model's JSON says."""
    import mediapipe as mp
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions
    from PIL import Image

    options = vision.ImageClassifierOptions(
        base_options=BaseOptions(model_asset_path=str(model)), max_results=-1)
    out = []
    with vision.ImageClassifier.create_from_options(options) as clf:
        for path in paths:
            pixels = np.asarray(Image.open(path).convert("RGB").resize((size, size),
                                                                       Image.BILINEAR))
            result = clf.classify(mp.Image(image_format=mp.ImageFormat.SRGB,
                                           data=np.ascontiguousarray(pixels)))
            out.append({c.category_name: c.score for c in result.classifications[0].categories})
    return out


def check_agreement(answers: list[dict[str, float]], predictions: list[Any],
                    atol: float) -> float:
    """Every label is a run class, top-1 equals skin predict's, |delta p| <= atol; the max."""
    worst = 0.0
    for got, want in zip(answers, predictions, strict=True):
        assert set(got) <= set(CLASSES)
        assert max(got, key=got.get) == want.label
        worst = max(worst, max(abs(got.get(c, 0.0) - want.probabilities[c]) for c in CLASSES))
    assert worst <= atol, worst
    return worst


def test_mediapipe_image_classifier_answers_like_skin_predict(
        runs: Path, reference: tuple[list[Path], list[Any]], tmp_path: Path) -> None:
    from skincli.export import export_tflite
    from skincli.export.tasks_metadata import read_metadata
    from skincli.runs import load_run_info

    meta = export_tflite("tiny", tmp_path, runs, fmt="tflite")
    path = Path(meta["path"])
    paths, predictions = reference
    check_agreement(classify_with_mediapipe(path, paths, 32), predictions, 0.02)
    assert {p.label for p in predictions} == set(CLASSES)  # both classes are exercised

    read = read_metadata(path.read_bytes())
    info = load_run_info(runs / "tiny")
    assert read["name"] == "tiny" and read["version"] == info.version
    assert "clinician must confirm" in read["description"]
    assert read["mean"] == [0.0] and read["std"] == [1.0]  # pixels go in as 0..255
    assert read["files"]["labels.txt"].decode().splitlines() == list(CLASSES)
    inside = json.loads(read["files"]["skin.json"])
    threshold = info.extra["triage"]["threshold"]  # fitted by the export, stored in run.json
    assert inside["triage"]["threshold"] == threshold and 0 < threshold < 1
    assert inside["triage"]["malignant"] == ["melanoma"]
    assert inside["uncertain_threshold"] == 0.6 and inside["temperature"] == 1.5
    beside = json.loads(path.with_suffix(".json").read_text())
    assert {k: v for k, v in beside.items() if k not in ("bytes", "sha256")} == inside
    # The app's referral, computed as docs/mobile.md says, matches skin predict's.
    for got, want in zip(classify_with_mediapipe(path, paths, 32), predictions):
        score = sum(got.get(c, 0.0) for c in inside["triage"]["malignant"])
        assert (score >= inside["triage"]["threshold"]) == want.triage["refer"]


def test_int8_within_the_agreement_the_export_reports(
        runs: Path, reference: tuple[list[Path], list[Any]], tmp_path: Path) -> None:
    from skincli.export import export_tflite

    meta = export_tflite("tiny", tmp_path, runs, fmt="tflite-int8", int8_mode="full")
    q = meta["measured_against_float_model"]
    assert q["top1_agreement"] == 1.0 and 0 < q["max_abs_prob"] < 0.02
    paths, predictions = reference
    # The reported figure comes from the run's test images; these are others: allow 0.02.
    check_agreement(classify_with_mediapipe(Path(meta["path"]), paths, 32), predictions,
                    max(0.02, 2 * q["max_abs_prob"]))
    with zipfile.ZipFile(meta["path"]) as zf:
        assert json.loads(zf.read("skin.json"))["quantization"] == "full"


def test_decision_rule_is_inside_the_graph(runs: Path, tmp_path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from skincli.evaluate import resolve_decision
    from skincli.export import export_tflite
    from skincli.predictor import Predictor

    prior = tmp_path / "prior.yaml"
    prior.write_text("nevus: 0.9\nmelanoma: 0.1\n")
    meta = export_tflite("tiny", tmp_path / "out", runs, fmt="tflite", decision="prevalence",
                         prevalence=prior)
    assert meta["decision"]["rule"] == "prevalence"
    predictor = Predictor.from_run("tiny", runs, engine="tf")
    predictor.set_decision(resolve_decision(predictor, "prevalence", prior))
    image = predictor.preprocess(runs.parent / "data" / "melanoma" / "test1.png")
    (probs,) = Interpreter(model_path=meta["path"]).get_signature_runner()(
        image=image[None]).values()
    want = predictor.predict([image])[0]
    np.testing.assert_allclose(probs[0], [want.probabilities[c] for c in CLASSES], atol=1e-5)
    calibrated = np.array([want.calibrated[c] for c in CLASSES])
    assert np.abs(probs[0] - calibrated).max() > 0.01  # the rule moved the answer
    # The referral stays on calibrated probabilities: the JSON's rule undoes the weights.
    w = np.array([meta["decision"]["weights"][c] for c in CLASSES])
    back = probs[0] / w / (probs[0] / w).sum()
    np.testing.assert_allclose(back, calibrated, atol=1e-4)


def test_older_run_states_the_defaults_it_used(tmp_path: Path) -> None:
    """A run without a fitted temperature, uncertain threshold or malignant class still
    exports, and the metadata says what was assumed."""
    from helpers_run import make_run
    from imagegen import make_image

    from skincli.export import export_tflite

    files = {part: {c: [make_image(tmp_path / "d" / c / f"{part}{i}.png", rgb, seed=i)
                        for i in range(3)] for c, rgb in (("a", (200, 60, 60)),
                                                          ("b", (60, 160, 70)))}
             for part in ("train", "val", "test")}
    run = make_run(tmp_path, classes=("a", "b"), split_files=files, name="old")
    doc = json.loads((run / "run.json").read_text())
    del doc["temperature"]
    (run / "run.json").write_text(json.dumps(doc))
    meta = export_tflite("old", tmp_path / "out", tmp_path / "runs", fmt="tflite")
    said = " | ".join(meta["defaults_used"])
    assert "temperature 1.0" in said and "no uncertain threshold" in said
    assert "no referral threshold" in said and meta["triage"]["threshold"] is None


def test_cli_lines(runs: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def skin(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "skincli", "export", "tiny", "--runs-dir",
                               str(runs), *args], env=env, capture_output=True, text=True,
                              timeout=300)

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    busy = skin("--format", "web", "--out", str(tmp_path / "full"))
    assert busy.returncode == 1 and len(busy.stderr.strip().splitlines()) == 1
    assert "not an empty folder" in busy.stderr
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["x"]
    bad = skin("--format", "tflite", "--decision", "nope", "--out", str(tmp_path / "o"))
    assert bad.returncode == 1 and "Unknown --decision" in bad.stderr
    assert not (tmp_path / "o").exists()


def test_a_model_the_tasks_runtime_cannot_run_is_refused(
        runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What MediaPipe says when it refuses a model becomes one line; nothing is written."""
    from mediapipe.tasks.python import vision

    from skincli.errors import SkinError
    from skincli.export import export_web

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("Unsupported op BAR\nmore detail")

    monkeypatch.setattr(vision.ImageClassifier, "create_from_options", refuse)
    with pytest.raises(SkinError, match=r"^MediaPipe Tasks cannot run this tiny model: "
                                        r"Unsupported op BAR; nothing written"):
        export_web("tiny", tmp_path / "site", runs)
    assert not (tmp_path / "site").exists()
