"""The decode budget: images decoded to the model's scale, and a global bound on pixels being
decoded at once (a short wait, then 503 + Retry-After)."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from PIL import Image
from test_serve_support import make_runs, serving, upload

from skincli.imageio import DecodeBudget, ImageError, open_image


def _encoded(size: tuple[int, int], fmt: str, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 90 if mode in ("L", "1") else (200, 120, 90)).save(buf, fmt)
    return buf.getvalue()


def test_jpeg_is_decoded_at_the_dct_scale_and_png_reduced() -> None:
    jpeg = open_image(_encoded((3000, 2000), "JPEG"), target=100)
    assert jpeg.info["original_size"] == (3000, 2000)
    assert 200 <= min(jpeg.size) < 500  # 1/8 scale: still >= 2 x target a side
    png = open_image(_encoded((4000, 4000), "PNG", "1"), target=100)
    assert 200 <= min(png.size) < 400 and png.mode == "RGB"
    small = open_image(_encoded((180, 180), "JPEG"), target=224)
    assert small.size == (180, 180)  # never enlarged, nothing changed for normal images


def test_budget_waits_then_refuses_with_overloaded() -> None:
    budget = DecodeBudget(1_000_000, wait_s=0.2)
    data = _encoded((1000, 1000), "PNG")
    with budget.hold(1_000_000):
        with pytest.raises(ImageError) as err:
            open_image(data, budget=budget)
    assert err.value.code == "overloaded"
    # Room comes back within the wait: the decode goes ahead.
    release = threading.Event()

    def holder() -> None:
        with budget.hold(1_000_000):
            release.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    threading.Timer(0.05, release.set).start()
    assert open_image(data, budget=DecodeBudget(1_000_000, 2.0)).size == (1000, 1000)
    t.join(5)
    assert budget.in_use == 0


def test_api_answers_503_with_retry_after_when_decoding_is_full(tmp_path: Path) -> None:
    runs = make_runs(tmp_path)
    with serving(runs, decode_mpx=1, decode_wait_s=0.1) as c:
        budget = c.app.state.skin.decode_budget
        with budget.hold(budget.capacity):
            r = c.post("/v1/predict", files=upload(_encoded((600, 600), "PNG")))
        assert r.status_code == 503 and r.json()["error"] == "overloaded"
        assert r.headers["retry-after"] == "1"
        assert "skin_decode_pixels 0" in c.get("/metrics").text
        assert c.post("/v1/predict", files=upload(_encoded((600, 600), "PNG"))).status_code \
            == 200
