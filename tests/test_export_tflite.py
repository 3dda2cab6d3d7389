"""`skin export --format tflite|tflite-int8`: a model an app can embed, with its metadata and
its measured agreement with the float model; an int8 model beyond the tolerance is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers_run import build_model, make_run
from imagegen import make_image

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("melanoma", "nevus", "vascular lesion")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/tiny with a split of real files (train, val and test parts)."""
    root = tmp_path_factory.mktemp("export_tflite")
    colours = {"melanoma": (60, 40, 30), "nevus": (150, 100, 80), "vascular lesion": (200, 60, 70)}
    files: dict[str, dict[str, list[Path]]] = {"train": {}, "val": {}, "test": {}}
    for c, rgb in colours.items():
        for part, n in (("train", 2), ("val", 4), ("test", 6)):
            files[part][c] = [make_image(root / "data" / c / f"{part}{i}.png", rgb,
                                         size=(40, 40), seed=i + 10 * n) for i in range(n)]
    # Width 64: weight tensors big enough for the converter to quantise them.
    make_run(root, classes=CLASSES, split_files=files, temperature=1.3, uncertain_threshold=0.5,
             model=build_model(len(CLASSES), 32, width=64))
    return root / "runs"


def test_float_export_writes_the_model_and_everything_an_app_needs(runs: Path,
                                                                   tmp_path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from skincli.engines.convert import sha256_file
    from skincli.export import export_tflite
    from skincli.predictor import Predictor

    meta = export_tflite("tiny", tmp_path / "out", runs, fmt="tflite")
    path = Path(meta["path"])
    assert path == tmp_path / "out" / "tiny.tflite" and path.is_file()
    on_disk = json.loads(path.with_suffix(".json").read_text())
    assert on_disk["classes"] == list(CLASSES) and on_disk["temperature"] == 1.3
    assert on_disk["input"]["shape"] == [1, 32, 32, 3] and on_disk["sha256"] == sha256_file(path)
    q = on_disk["measured_against_float_model"]
    assert q["images"] == "18 test images of the run's split" and q["top1_agreement"] == 1.0
    assert q["max_abs_prob"] <= 1e-4 and q["macro_f1_change"] == 0.0
    # One batch-1 output: the calibrated probabilities (the temperature is inside the graph).
    predictor = Predictor.from_run("tiny", runs, engine="tf")
    image = predictor.preprocess(np.random.default_rng(0).integers(0, 255, (50, 40, 3),
                                                                    dtype=np.uint8))
    it = Interpreter(model_path=str(path))
    assert [d["shape"].tolist() for d in it.get_input_details()] == [[1, 32, 32, 3]]
    assert len(it.get_output_details()) == 1
    out = it.get_signature_runner()(image=image[None])
    (probs,) = out.values()
    np.testing.assert_allclose(probs[0], predictor.probabilities(image[None])[0], atol=1e-5)


@pytest.mark.parametrize("mode", ["full", "dynamic"])
def test_int8_export_measures_and_writes_within_tolerance(runs: Path, tmp_path: Path,
                                                          mode: str) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from skincli.export import export_tflite

    meta = export_tflite("tiny", tmp_path, runs, fmt="tflite-int8", int8_mode=mode,
                         tolerance=1.0)
    float_size = export_tflite("tiny", tmp_path, runs, fmt="tflite")["bytes"]
    assert Path(meta["path"]).name == "tiny-int8.tflite" and meta["quantization"] == mode
    assert meta["bytes"] < 0.5 * float_size  # int8 weights
    it = Interpreter(model_path=meta["path"])
    int8 = [t for t in it.get_tensor_details() if t["dtype"] == np.int8]
    assert len(int8) >= (8 if mode == "full" else 2)  # full: the activations too
    assert [d["shape"].tolist() for d in it.get_output_details()] == [[1, len(CLASSES)]]
    assert 0.0 <= meta["measured_against_float_model"]["top1_agreement"] <= 1.0


def test_int8_beyond_tolerance_is_refused_unless_forced(runs: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import skincli.export.mobile as export
    from skincli.errors import SkinError

    real = export.measure

    def worse(*args: Any) -> dict[str, Any]:
        return real(*args) | {"top1_agreement": 0.9, "macro_f1_change": -0.05}

    monkeypatch.setattr(export, "measure", worse)
    with pytest.raises(SkinError, match=r"changes 10\.0% of top-1 answers.*nothing written"):
        export.export_tflite("tiny", tmp_path, runs, fmt="tflite-int8", int8_mode="dynamic")
    assert not list(tmp_path.iterdir())
    meta = export.export_tflite("tiny", tmp_path, runs, fmt="tflite-int8", int8_mode="dynamic",
                                force=True)
    assert Path(meta["path"]).is_file()


def test_export_cli_lines(runs: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def skin(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "skincli", "export", "tiny", "--runs-dir",
                               str(runs), "--out", str(tmp_path), *args], env=env,
                              capture_output=True, text=True, timeout=300)

    ok = skin("--format", "tflite")
    assert ok.returncode == 0, ok.stderr
    assert "top-1 agreement 100.0%" in ok.stdout and (tmp_path / "tiny.json").is_file()
    # A tolerance of -1 cannot be met: one line, exit 1 (checked before any conversion).
    bad = skin("--format", "tflite-int8", "--tolerance", "-1")
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    unknown = skin("--format", "onnx")
    assert unknown.returncode == 1 and "Unknown --format 'onnx'" in unknown.stderr


def test_the_web_runtime_is_vendored_whole_and_packaged() -> None:
    """What `--format web` copies is in the package data (so a wheel carries it), and the
    files are the ones VERSION names (scripts/refresh_web_runtime.sh writes both)."""
    import fnmatch
    import hashlib

    from skincli.export import web

    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")

    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    globs = data["tool"]["setuptools"]["package-data"]["skincli"]
    files = [f"export/web_runtime/{n}" for n in web.RUNTIME_FILES] + \
        [f"export/web_app/{n}" for n in web.APP_FILES]
    for name in files:
        assert (REPO / "skincli" / name).is_file(), name
        assert any(fnmatch.fnmatch(name, g) and name.count("/") == g.count("/")
                   for g in globs), name
    version = (web.RUNTIME_DIR / "VERSION").read_text().splitlines()
    sums = dict(reversed(line.removeprefix("sha256=").split()) for line in version
                if line.startswith("sha256="))
    assert set(sums) == {n for n in web.RUNTIME_FILES if n not in ("LICENSE", "VERSION")}
    for name, digest in sums.items():
        assert hashlib.sha256((web.RUNTIME_DIR / name).read_bytes()).hexdigest() == digest
    assert web.runtime_version().startswith("@mediapipe/tasks-vision@")
