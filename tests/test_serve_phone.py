"""The clinician page on a phone: headless Chromium emulating a 360x800 screen with a fake camera.

Needs Debian's `chromium` and `chromium-driver` and the `selenium` package (skips otherwise).
`SKIN_SCREENSHOTS=DIR` also saves the page with a result into DIR (docs/img/phone.png is one).
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_serve_browser import CHROMIUM, CLASSES, DRIVER, LiveServer, _app, _wait

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="no headless browser: apt-get install -y chromium chromium-driver")

WIDTH, HEIGHT = 360, 800


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers_run import make_run

    root = tmp_path_factory.mktemp("phone")
    make_run(root, classes=CLASSES, input_size=32, name="phone")
    return root / "runs"


@pytest.fixture(scope="module")
def phone() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-first-run", "--disable-extensions",
                # A camera that shows Chromium's test pattern, allowed without asking.
                "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"):
        options.add_argument(arg)
    options.add_experimental_option("mobileEmulation", {
        "deviceMetrics": {"width": WIDTH, "height": HEIGHT, "pixelRatio": 2.0, "touch": True,
                          "mobile": True},
        "userAgent": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 "
                     "(KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36"})
    try:
        driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    except Exception as exc:  # e.g. a driver that does not match the browser version
        pytest.skip(f"cannot start headless chromium: {str(exc).splitlines()[0]}")
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _no_horizontal_overflow(driver: Any) -> None:
    width, inner = driver.execute_script(
        "return [document.documentElement.scrollWidth, window.innerWidth]")
    assert inner == WIDTH
    assert width <= inner, f"the page is {width} px wide on a {inner} px screen"


def _photo(path: Path, size: tuple[int, int]) -> Path:
    """A large phone-sized JPEG of a smooth blob on skin-coloured noise."""
    w, h = size
    rng = np.random.default_rng(7)
    small = (rng.random((6, 8, 3)) * 60 + [170, 120, 100]).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    path.write_bytes(buf.getvalue())
    return path


def test_phone_camera_capture_and_downscaled_photo_without_horizontal_scroll(
        runs: Path, phone: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    with LiveServer(_app(runs)) as server:
        phone.get(server.url + "/")
        _wait(phone, lambda d: "phone@" in d.find_element(By.ID, "model-line").text)
        _no_horizontal_overflow(phone)
        take = phone.find_element(By.ID, "photo-input")
        assert take.get_attribute("accept") == "image/*"
        assert take.get_attribute("capture") == "environment"
        assert phone.find_element(By.ID, "photo-button").is_displayed()

        # The live camera (the fake device): open it, wait for frames, capture, get a result.
        start = phone.find_element(By.ID, "camera-start")
        assert start.is_displayed()
        start.click()
        _wait(phone, lambda d: d.execute_script(
            "const v = document.getElementById('camera-view');"
            "return v.videoWidth > 0 && v.readyState >= 2"))
        _no_horizontal_overflow(phone)
        phone.find_element(By.ID, "camera-shoot").click()
        label = _wait(phone, lambda d: d.find_element(By.ID, "label").text or None)
        assert label in CLASSES
        assert not phone.find_element(By.ID, "camera").is_displayed()  # the camera is closed
        assert phone.execute_script(
            "return document.getElementById('camera-view').srcObject") is None
        # Drawn at the upload size already (the fake camera gives 1920x1080): not re-encoded.
        assert "downscaled" not in phone.find_element(By.ID, "meta").text
        _wait(phone, lambda d: d.find_element(By.CSS_SELECTOR, "#heatmap[data-ready='true']"))
        _no_horizontal_overflow(phone)

        # A 12-megapixel photo is downscaled on the device, keeping a 1024-px shorter side.
        big = _photo(tmp_path / "IMG_0001.jpg", (4000, 3000))
        take.send_keys(str(big))
        meta = _wait(phone, lambda d: d.find_element(By.ID, "meta").text
                     if "from 4000" in d.find_element(By.ID, "meta").text else None)
        assert "sent 1365\u00d71024 px, downscaled on this device from 4000\u00d73000" in meta
        assert phone.find_element(By.ID, "label").text in CLASSES
        preview = phone.find_element(By.ID, "preview")
        _wait(phone, lambda d: d.execute_script("return arguments[0].naturalWidth", preview))
        assert phone.execute_script("return arguments[0].naturalWidth", preview) == 1365
        _wait(phone, lambda d: d.find_element(By.CSS_SELECTOR, "#heatmap[data-ready='true']"))
        _no_horizontal_overflow(phone)
        phone.execute_script("window.scrollTo(0, 0)")
        shot = tmp_path / "phone.png"
        phone.save_screenshot(str(shot))
        assert Image.open(shot).size[0] == WIDTH * 2  # device pixels at pixel ratio 2
        if os.environ.get("SKIN_SCREENSHOTS"):
            shutil.copy(shot, Path(os.environ["SKIN_SCREENSHOTS"]) / "phone.png")

        # A small image is sent as it is (no note, no re-encoding).
        small = _photo(tmp_path / "small.jpg", (800, 600))
        take.send_keys(str(small))
        _wait(phone, lambda d: "small" not in d.find_element(By.ID, "status").text
              and d.find_element(By.ID, "result").is_displayed()
              and d.execute_script("return arguments[0].naturalWidth",
                                   d.find_element(By.ID, "preview")) == 800)
        assert "downscaled" not in phone.find_element(By.ID, "meta").text
        blocked = [e for e in phone.get_log("browser")
                   if "Content Security Policy" in e.get("message", "")]
        assert not blocked, blocked
