"""The clinician page in a real headless Chromium, used the way a person uses it.

Needs Debian's `chromium` and `chromium-driver` packages and the `selenium` package; skips with
the reason when they are missing.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serve_proc import free_port
from test_serve_support import image_bytes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
CLASSES = ["melanoma", "nevus", "seborrheic keratosis", "vascular lesion"]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="no headless browser: apt-get install -y chromium chromium-driver")


class LiveServer:
    """Uvicorn on a loopback port in a thread (no signals needed for this test)."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers_run import make_run

    root = tmp_path_factory.mktemp("browser")
    # A threshold no tiny untrained model reaches: every answer carries the uncertain flag.
    make_run(root, classes=CLASSES, input_size=32, name="page", uncertain_threshold=0.95)
    return root / "runs"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,1400", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    except Exception as exc:  # e.g. a driver that does not match the browser version
        pytest.skip(f"cannot start headless chromium: {str(exc).splitlines()[0]}")
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _app(runs: Path, **settings: Any) -> Any:
    from skincli.serve.app import create_app
    from skincli.serve.settings import Settings

    return create_app(Settings(runs_dir=str(runs), no_log=True, **settings))


def _wait(driver: Any, condition: Any, timeout: float = 30) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def _choose_file(driver: Any, path: Path) -> None:
    """What a person does: click the drop zone's file chooser and pick a file."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "file-input").send_keys(str(path))


def test_upload_shows_prediction_bars_uncertain_flag_and_heatmap(
        runs: Path, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    image = tmp_path / "lesion.jpg"
    image.write_bytes(image_bytes((160, 120), "JPEG", seed=11))
    with LiveServer(_app(runs)) as server:
        browser.get(server.url + "/")
        assert browser.title == "Skin lesion classifier"
        _wait(browser, lambda d: "page@" in d.find_element(By.ID, "model-line").text)
        disclaimer = browser.find_element(By.ID, "disclaimer")
        assert disclaimer.is_displayed() and "not a diagnosis" in disclaimer.text
        assert not browser.find_element(By.ID, "result").is_displayed()
        # No keys on this server: no key box; no prediction log: the footer does not claim one.
        assert not browser.find_element(By.ID, "key-box").is_displayed()
        assert "keeps nothing" in browser.find_element(By.ID, "privacy").text

        _choose_file(browser, image)
        label = _wait(browser, lambda d: d.find_element(By.ID, "label").text or None)
        assert label in CLASSES
        assert browser.find_element(By.ID, "result").is_displayed()
        assert browser.find_element(By.ID, "probability").text.endswith("%")
        # One bar per class, the predicted class first and widest.
        bars = browser.find_elements(By.CSS_SELECTOR, "#bars li")
        assert [b.get_attribute("data-label") for b in bars][0] == label
        assert sorted(b.get_attribute("data-label") for b in bars) == sorted(CLASSES)
        widths = [b.find_element(By.CLASS_NAME, "bar-fill").size["width"] for b in bars]
        assert widths[0] > 0 and widths == sorted(widths, reverse=True)
        uncertain = browser.find_element(By.ID, "uncertain")
        assert uncertain.is_displayed() and "expert review" in uncertain.text
        assert not browser.find_element(By.ID, "warnings").is_displayed()
        # The heat map arrives second and is a real, decoded image.
        heat = _wait(browser, lambda d: d.find_element(
            By.CSS_SELECTOR, "#heatmap[data-ready='true']"))
        assert heat.is_displayed()
        assert browser.execute_script("return arguments[0].naturalWidth", heat) == 160
        assert browser.execute_script("return arguments[0].naturalHeight", heat) == 120
        preview = browser.find_element(By.ID, "preview")
        assert browser.execute_script("return arguments[0].naturalWidth", preview) == 160
        # Side by side, the two captions line up (an empty status line used to push one down).
        captions = browser.find_elements(By.CSS_SELECTOR, ".images figcaption")
        assert len({c.location["y"] for c in captions}) == 1, [c.location for c in captions]
        meta = browser.find_element(By.ID, "meta").text
        assert "request" in meta and "decision rule balanced" in meta
        shot = tmp_path / "page.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000

        # A file that is not an image: a readable error, no result.
        bad = tmp_path / "notes.jpg"
        bad.write_text("these are notes, not a picture")
        _choose_file(browser, bad)
        error = _wait(browser, lambda d: d.find_element(By.ID, "error").text or None)
        assert "not an image" in error
        assert not browser.find_element(By.ID, "result").is_displayed()


def test_page_asks_for_the_api_key(runs: Path, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    image = tmp_path / "lesion.png"
    image.write_bytes(image_bytes((64, 64), seed=12))
    with LiveServer(_app(runs, api_key="ward-7-key")) as server:
        browser.get(server.url + "/")
        _wait(browser, lambda d: "API key" in d.find_element(By.ID, "model-line").text)
        _choose_file(browser, image)
        error = _wait(browser, lambda d: d.find_element(By.ID, "error").text or None)
        assert "API key" in error
        key = browser.find_element(By.ID, "api-key")
        assert key.is_displayed()  # the key box opened by itself
        key.send_keys("ward-7-key", Keys.TAB)
        _wait(browser, lambda d: "page@" in d.find_element(By.ID, "model-line").text)
        _choose_file(browser, image)
        label = _wait(browser, lambda d: d.find_element(By.ID, "label").text or None)
        assert label in CLASSES
        assert not browser.find_element(By.ID, "error").is_displayed()


def test_docs_page_lists_the_endpoints_without_a_cdn(runs: Path, browser: Any) -> None:
    """/docs is Swagger UI from files this API serves (the browser has no internet here)."""
    from selenium.webdriver.common.by import By

    with LiveServer(_app(runs, run="page")) as server:
        browser.get(f"{server.url}/docs")
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
        paths = {e.text.replace("\u200b", "")
                 for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
        assert {"/v1/predict", "/v1/predict/batch", "/health"} <= paths, paths
        blocked = [entry for entry in browser.get_log("browser")
                   if "Content Security Policy" in entry.get("message", "")]
        assert not blocked, blocked


def test_blank_image_shows_the_out_of_distribution_warning(
        runs: Path, browser: Any, tmp_path: Path) -> None:
    from PIL import Image
    from selenium.webdriver.common.by import By

    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 150), (128, 128, 128)).save(blank)
    with LiveServer(_app(runs)) as server:
        browser.get(server.url + "/")
        _wait(browser, lambda d: "page@" in d.find_element(By.ID, "model-line").text)
        _choose_file(browser, blank)
        warnings = _wait(browser, lambda d: d.find_element(By.ID, "warnings")
                         if d.find_element(By.ID, "warnings").is_displayed() else None)
        assert "does not look like a dermoscopic image" in warnings.text
        assert "no lesion to classify" in warnings.text
        assert browser.find_element(By.ID, "uncertain").is_displayed()


def test_patient_fields_appear_for_a_metadata_model_and_reach_the_api(
        tmp_path: Path, browser: Any) -> None:
    from helpers_run import make_run
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from skincli.metahead import MetadataEncoder, MetadataHead
    from skincli.predictor import Predictor
    from skincli.runs import load_run_info, save_run_info

    run = make_run(tmp_path, classes=CLASSES, input_size=32, name="meta")
    image = tmp_path / "lesion.jpg"
    image.write_bytes(image_bytes((64, 64), "JPEG", seed=5))
    # The metadata term strongly favours, for the site "back", a class the image model alone
    # does not pick.
    own = Predictor.from_run(run).predict([image])[0].label
    favoured = next(c for c in reversed(CLASSES) if c != own)
    enc = MetadataEncoder.fit([{"sex": "male", "age_band": "45-59", "site": "back"}] * 10
                              + [{"sex": "female", "age_band": "75+", "site": "face"}] * 10)
    weights = np.zeros((enc.dim, len(CLASSES)), np.float32)
    back = len(enc.values["sex"]) + len(enc.values["age_band"]) + enc.values["site"].index("torso")
    weights[back, CLASSES.index(favoured)] = 40.0
    info = load_run_info(run)
    info.extra = {"metadata_head": MetadataHead(enc, weights).to_dict(CLASSES)}
    save_run_info(run, info)
    with LiveServer(_app(tmp_path / "runs")) as server:
        browser.get(server.url + "/")
        box = _wait(browser, lambda d: d.find_element(By.ID, "patient-box")
                    if d.find_element(By.ID, "patient-box").is_displayed() else None)
        box.click()  # open the details
        sites = [o.text for o in Select(browser.find_element(By.ID, "patient-site")).options]
        assert sites == ["not given", "head/neck", "torso", "other"]
        Select(browser.find_element(By.ID, "patient-site")).select_by_value("torso")
        browser.find_element(By.ID, "patient-age").send_keys("50")
        _choose_file(browser, image)
        label = _wait(browser, lambda d: d.find_element(By.ID, "label").text or None)
        assert label == favoured
        assert browser.find_element(By.ID, "probability").text.startswith("100")
        # The heat map explains the class shown, not the image model's own top class.
        _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#heatmap[data-ready='true']"))
        assert f"\u201c{favoured}\u201d" in browser.find_element(By.ID, "heatmap-caption").text
