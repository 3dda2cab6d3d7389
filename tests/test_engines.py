"""Inference engines: LiteRT and TensorFlow give the same answers; bad model files fall back.

Parity is measured, not assumed: top-1 identical and max |delta probability| <= 1e-4 between
the engines on a run trained here (and, in slow tests, on real ISIC images and on every
registry architecture).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers_run import make_run
from imagegen import make_image
from test_train import FAST, make_split_files

from skincli.engines.convert import PROB_TOLERANCE, TFLITE_FILE
from skincli.errors import SkinError
from skincli.runs import load_run_info, update_run_info

ISIC = Path("/work/shared/data/isic9")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SKIN_ENGINE", raising=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny run trained by `train` (so it has model.tflite), and its split file."""
    from skincli.train import train

    root = tmp_path_factory.mktemp("trained")
    split = make_split_files(root)
    run = train({**FAST, "split": str(split), "runs_dir": str(root / "runs")},
                progress=lambda e, i: None)
    return run, split


def _val_batch(run: Path, split: Path) -> np.ndarray:
    from skincli.imageio import read_images

    info = load_run_info(run)
    rows = [line.split(",") for line in split.read_text().splitlines()[1:]]
    paths = [split.parent.parent / "data" / r[0] for r in rows]
    return np.stack(read_images(paths, info.input_size)).astype(np.float32)


def assert_parity(a: Any, b: Any, batch: np.ndarray) -> dict[str, float]:
    """Both predictors on the same batch: top-1 identical, probabilities within 1e-4."""
    pa, ea = a.probabilities_and_embeddings(batch)
    pb, eb = b.probabilities_and_embeddings(batch)
    assert (pa.argmax(1) == pb.argmax(1)).all()
    dp = float(np.abs(pa - pb).max())
    assert dp <= PROB_TOLERANCE
    assert ea is not None and eb is not None and ea.shape == eb.shape
    de = float(np.abs(ea - eb).max() / max(np.abs(eb).max(), 1e-6))
    assert de <= 1e-3
    return {"max_abs_prob": dp, "max_rel_embedding": de}


def test_train_writes_a_verified_tflite_and_the_engines_agree(trained: tuple[Path, Path]
                                                               ) -> None:
    from skincli.engines.convert import sha256_file
    from skincli.predictor import Predictor

    run, split = trained
    record = load_run_info(run).extra["tflite"]
    assert record["ok"] is True and (run / TFLITE_FILE).is_file()
    assert record["sha256"] == sha256_file(run / TFLITE_FILE)
    assert record["keras_sha256"] == sha256_file(run / "model.keras")
    assert record["parity"]["ok"] and "validation images" in record["parity"]["images"]
    assert not list(run.glob(".*.tmp"))
    lite = Predictor.from_run(run)
    tf = Predictor.from_run(run, engine="tf")
    assert lite.engine_name == "litert" and lite.engine.source == "run"
    assert tf.engine_name == "tf"
    assert_parity(lite, tf, _val_batch(run, split))
    # The Keras model (Grad-CAM) is loaded only when asked for.
    assert lite._model is None
    assert lite.model is not None and lite._model is not None


def test_every_batch_size_gives_the_same_rows(trained: tuple[Path, Path]) -> None:
    from skincli.predictor import Predictor

    run, split = trained
    lite = Predictor.from_run(run)
    batch = _val_batch(run, split)
    whole, emb = lite.logits_and_embeddings(batch, batch_size=len(batch))
    for size in (1, 3, 7):
        again, emb2 = lite.logits_and_embeddings(batch, batch_size=size)
        np.testing.assert_allclose(again, whole, atol=1e-5)
        np.testing.assert_allclose(emb2, emb, atol=1e-5)


def test_an_old_run_is_converted_once_into_the_cache(tmp_path: Path) -> None:
    from skincli.predictor import Predictor

    run = make_run(tmp_path)
    warnings: list[str] = []
    first = Predictor.from_run(run, on_warning=warnings.append)
    assert first.engine_name == "litert" and first.engine.source == "cache" and not warnings
    cached = list((tmp_path / "cache" / "tflite").glob("*.tflite"))
    meta = json.loads(cached[0].with_suffix(".json").read_text())
    assert len(cached) == 1 and meta["ok"] and meta["parity"]["images"] == "16 synthetic images"
    stamp = cached[0].stat().st_mtime_ns
    again = Predictor.from_run(run)
    assert again.engine.source == "cache" and cached[0].stat().st_mtime_ns == stamp
    x = np.random.default_rng(1).uniform(0, 255, (6, 32, 32, 3)).astype(np.float32)
    assert_parity(again, Predictor.from_run(run, engine="tf"), x)


def _copy_run(run: Path, dest: Path) -> Path:
    import shutil

    target = dest / "runs" / run.name
    shutil.copytree(run, target)
    return target


@pytest.mark.parametrize("damage, expected", [
    ("truncate", "is truncated or damaged"),
    ("flip", "does not match run.json"),
    ("unrecorded", "is not recorded in run.json"),
    ("keras", "was converted from another model.keras"),
])
def test_an_untrustworthy_tflite_falls_back_to_tensorflow_with_one_line(
        trained: tuple[Path, Path], tmp_path: Path, damage: str, expected: str) -> None:
    from skincli.predictor import Predictor

    run = _copy_run(trained[0], tmp_path)
    path = run / TFLITE_FILE
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    elif damage == "unrecorded":
        extra = load_run_info(run).extra
        extra.pop("tflite")
        update_run_info(run, extra=extra)
    else:
        extra = load_run_info(run).extra
        extra["tflite"]["keras_sha256"] = "0" * 64
        update_run_info(run, extra=extra)
    warnings: list[str] = []
    p = Predictor.from_run(run, on_warning=warnings.append)
    assert p.engine_name == "tf"
    assert len(warnings) == 1 and expected in warnings[0] and "using TensorFlow" in warnings[0]
    assert "\n" not in warnings[0]
    assert p.predict([np.zeros((8, 8, 3), np.uint8)])[0].label in p.classes


def test_a_model_that_does_not_convert_stays_on_tensorflow_and_is_remembered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import skincli.engines.convert as convert
    from skincli.predictor import Predictor

    run = make_run(tmp_path)
    calls = []

    def broken(model: Any, **kw: Any) -> bytes:
        calls.append(1)
        raise convert.ConversionFailed("op FancyOp is not a TFLite builtin")

    monkeypatch.setattr(convert, "convert_model", broken)
    warnings: list[str] = []
    p = Predictor.from_run(run, on_warning=warnings.append)
    assert p.engine_name == "tf" and "FancyOp" in warnings[0] and len(warnings) == 1
    Predictor.from_run(run, on_warning=warnings.append)
    assert len(calls) == 1 and "remembered" in warnings[1]  # not converted again


def test_a_converted_model_that_differs_is_refused(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import skincli.engines.convert as convert
    from skincli.predictor import Predictor

    run = make_run(tmp_path)
    real = convert.compare_outputs

    def off(ref_logits: Any, ref_emb: Any, logits: Any, emb: Any, temperature: float = 1.0
            ) -> dict[str, Any]:
        return real(ref_logits, ref_emb, np.asarray(logits) + 0.5 * np.arange(logits.shape[1]),
                    emb, temperature)

    monkeypatch.setattr(convert, "compare_outputs", off)
    warnings: list[str] = []
    assert Predictor.from_run(run, on_warning=warnings.append).engine_name == "tf"
    assert "differs" in warnings[0] and not list((tmp_path / "cache").rglob("*.tflite"))


def test_unknown_engine_is_one_clear_error(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from skincli.engines import resolve_engine_name

    with pytest.raises(SkinError, match="Unknown engine 'litrt'.*Did you mean: litert"):
        resolve_engine_name("litrt")
    monkeypatch.setenv("SKIN_ENGINE", "onnx")
    with pytest.raises(SkinError, match="SKIN_ENGINE"):
        resolve_engine_name(None)
    assert resolve_engine_name("TF") == "tf"


def _skin(args: list[str], cwd: Path, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "skincli", *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=300)


def test_cli_engine_flag_and_cold_start_without_tensorflow(trained: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    run = trained[0]
    img = make_image(tmp_path / "one.jpg", size=(50, 40))
    env = {"SKIN_CACHE_DIR": str(tmp_path / "cache")}
    bad = _skin(["predict", str(img), "--run", str(run), "--engine", "onnx", "--no-log"],
                tmp_path, env)
    assert bad.returncode == 1 and "Unknown engine 'onnx'" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    # Which modules a LiteRT `skin predict` imports: TensorFlow must not be one of them.
    probe = ("import sys, runpy; sys.argv = ['skin', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('skincli', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print('TF-LOADED' if 'tensorflow' in sys.modules else 'TF-ABSENT', "
             "file=sys.stderr)\n")
    for engine, marker in (("litert", "TF-ABSENT"), ("tf", "TF-LOADED")):
        out = subprocess.run([sys.executable, "-c", probe, "predict", str(img), "--run",
                              str(run), "--no-log", "--json", "--engine", engine],
                             cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO), **env},
                             capture_output=True, text=True, timeout=300)
        doc = json.loads(out.stdout)
        assert doc["model"]["engine"] == engine and doc["summary"]["predicted"] == 1
        assert marker in out.stderr, out.stderr


@pytest.mark.slow
@pytest.mark.skipif(not ISIC.is_dir(), reason="needs the isic9 images")
def test_parity_on_real_isic_images_with_a_run_trained_on_them(tmp_path: Path) -> None:
    """A tiny model trained on 8 real images per class; both engines on 90 other images."""
    from skincli.imageio import read_images
    from skincli.predictor import Predictor
    from skincli.train import train

    classes = sorted(p.name for p in (ISIC / "Train").iterdir() if p.is_dir())
    lines = ["path,label,split,sha256,group"]
    held_out = []
    for c in classes:
        files = sorted((ISIC / "Train" / c).glob("*.jpg"))
        for i, f in enumerate(files[:12]):
            part = "val" if i >= 8 else "train"
            lines.append(f"Train/{c}/{f.name},{c},{part},{i},{c}{i}")
        held_out += sorted((ISIC / "Test" / c).glob("*.jpg"))[:10]
    split = tmp_path / "split.csv"
    split.write_text("\n".join(lines) + "\n")
    split.with_suffix(".json").write_text(json.dumps({"root": str(ISIC)}))
    run = train({**FAST, "split": str(split), "runs_dir": str(tmp_path / "runs")},
                progress=lambda e, i: None)
    assert load_run_info(run).extra["tflite"]["ok"]
    lite, tf = Predictor.from_run(run), Predictor.from_run(run, engine="tf")
    assert lite.engine_name == "litert"
    batch = np.stack(read_images(held_out, lite.input_size)).astype(np.float32)
    assert len(batch) >= 50
    assert_parity(lite, tf, batch)


def _registry_cases() -> list[str]:
    from skincli.models.registry import list_archs

    seen, names = set(), []
    for spec in list_archs():
        if (spec.family, spec.builder) not in seen:
            seen.add((spec.family, spec.builder))
            names.append(spec.name)
    return names


@pytest.mark.slow
@pytest.mark.parametrize("arch", _registry_cases())
def test_every_registry_architecture_converts_with_parity(arch: str, tmp_path: Path) -> None:
    """Each architecture (untrained head; imagenet backbones where they are offline) converts
    to builtin ops only and matches TensorFlow on real images (synthetic without isic9)."""
    from skincli.engines.convert import convert_checked, synthetic_images
    from skincli.imageio import read_images
    from skincli.models.registry import build_model, get_arch

    spec = get_arch(arch)
    built = build_model(arch, 9, weights="imagenet" if spec.weights_available() else "none")
    size = built.input_size
    files = sorted(ISIC.glob("Test/*/*.jpg"))[::12][:16] if ISIC.is_dir() else []
    images = (np.stack(read_images(files, size)).astype(np.float32) if files
              else synthetic_images(16, size))
    record = convert_checked(built.model, tmp_path / "m.tflite", images, 9, size)
    assert record["parity"]["ok"] and record["parity"]["top1_agreement"] == 1.0
    assert record["parity"]["max_abs_prob"] <= PROB_TOLERANCE
