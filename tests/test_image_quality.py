"""Blank, uniform, tiny and near-constant images: flagged and uncertain in predict and the API."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_serve_support import image_bytes, make_runs, serving, upload

from skincli.image_quality import blank_reason, is_flagged, quality_warnings


def _png(arr_or_img: np.ndarray | Image.Image, fmt: str = "PNG") -> bytes:
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


BLANKS = {
    "uniform colour": Image.new("RGB", (200, 100), (200, 100, 50)),
    "grey": Image.new("RGB", (120, 120), (128, 128, 128)),
    "white": Image.new("RGB", (64, 64), (255, 255, 255)),
    "one pixel": Image.new("RGB", (1, 1), (180, 120, 100)),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_runs(tmp_path_factory.mktemp("quality"))


def test_statistics_flag_blank_and_pass_textured_images() -> None:
    assert blank_reason(np.full((32, 32, 3), 128.0)) is not None
    rng = np.random.default_rng(0)
    near = 128 + rng.normal(0, 1.0, (32, 32, 3))  # a JPEG of a flat field
    assert "nearly uniform" in (blank_reason(near) or "")
    assert blank_reason(np.zeros((32, 32, 3)), original_size=(3, 200)) is not None
    textured = np.asarray(Image.open(io.BytesIO(image_bytes((64, 64)))), np.float32)
    assert blank_reason(textured) is None
    warns = quality_warnings(np.stack([np.full((64, 64, 3), 9.0), textured]))
    assert is_flagged(warns[0]) and warns[1] == []


@pytest.mark.parametrize("name", list(BLANKS))
def test_predictor_marks_blank_images_uncertain(runs: Path, name: str) -> None:
    from skincli.predictor import Predictor

    predictor = Predictor.from_run("alpha", runs)
    pred = predictor.predict([_png(BLANKS[name])])[0]
    assert pred.uncertain is True
    assert any("does not look like a dermoscopic image" in w for w in pred.warnings)
    ok = predictor.predict([image_bytes((64, 64), seed=2)])[0]
    assert not is_flagged(ok.warnings)


def test_api_marks_blank_tiny_and_jpeg_flat_images(runs: Path) -> None:
    cases = {**{k: _png(v) for k, v in BLANKS.items()},
             "flat jpeg": _png(Image.new("RGB", (300, 200), (90, 60, 40)), "JPEG"),
             "tiny noise": _png((np.random.default_rng(1).random((4, 5, 3)) * 255)
                                .astype(np.uint8))}
    with serving(runs) as c:
        for name, data in cases.items():
            r = c.post("/v1/predict", files=upload(data))
            assert r.status_code == 200, (name, r.text)
            pred = r.json()["prediction"]
            assert pred["uncertain"] is True, name
            assert any("no lesion to classify" in w for w in pred["warnings"]), (name, pred)
        r = c.post("/v1/predict", files=upload(image_bytes((64, 64), seed=4)))
        assert not any("no lesion" in w for w in r.json()["prediction"]["warnings"])


def test_skin_predict_shows_the_warning(runs: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from skincli.cli import app

    path = tmp_path / "blank.png"
    BLANKS["grey"].save(path)
    result = CliRunner().invoke(app, ["predict", str(path), "--run", "alpha", "--runs-dir",
                                      str(runs), "--json"])
    assert result.exit_code == 0, result.output
    assert "no lesion to classify" in result.output and '"uncertain": true' in result.output
