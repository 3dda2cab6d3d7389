"""`skin export --format web` in a real headless Chromium, served by a loopback static server:
the page classifies generated images as `skin predict` does, rejects a non-image with a
readable message, and fetches nothing from outside the server's origin.

Needs Debian's `chromium` and `chromium-driver`, `selenium` and the `export` extra (mediapipe);
skips with the reason when they are missing.
"""

from __future__ import annotations

import base64
import functools
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from apprun import CLASSES, generated_images, make_trained_run
from serve_proc import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="no headless browser: apt-get install -y chromium chromium-driver")
pytest.importorskip("mediapipe", reason="pip install 'skincli[export]'")

CLASSIFY = """
const [b64, type, done] = arguments;
const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
window.skinClassifier.classify(new Blob([bytes], {type}))
  .then((r) => done(r), (e) => done({error: String(e && e.message)}));
"""


class StaticServer:
    """A plain static file server (what `python -m http.server` is) on loopback."""

    def __init__(self, folder: Path) -> None:
        class Quiet(SimpleHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()),
                                         functools.partial(Quiet, directory=str(folder)))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> StaticServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(30)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(runs folder, the exported web folder)."""
    from skincli.export import export_web

    root = tmp_path_factory.mktemp("export_web")
    runs = make_trained_run(root)
    meta = export_web("tiny", root / "site", runs)
    return runs, Path(meta["path"])


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1000,1200", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    except Exception as exc:  # e.g. a driver that does not match the browser version
        pytest.skip(f"cannot start headless chromium: {str(exc).splitlines()[0]}")
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def _ready(driver: Any) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 60).until(
        lambda d: not d.find_element(By.ID, "status").text.startswith("Loading"))
    return driver.find_element(By.ID, "status").text


def test_the_folder_holds_one_runtime_and_no_node_modules(site: tuple[Path, Path]) -> None:
    _, folder = site
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert names == ["demo.css", "demo.js", "index.html", "model.json", "model.tflite",
                     "runtime/LICENSE", "runtime/VERSION", "runtime/vision_bundle.js",
                     "runtime/wasm/vision_wasm_internal.js",
                     "runtime/wasm/vision_wasm_internal.wasm", "skin-classifier.js"]
    assert "Apache License" in (folder / "runtime" / "LICENSE").read_text()
    assert "package=@mediapipe/tasks-vision" in (folder / "runtime" / "VERSION").read_text()


def test_browser_classifies_like_skin_predict_without_leaving_the_origin(
        site: tuple[Path, Path], browser: Any) -> None:
    from skincli.evaluate import ensure_triage as ensure
    from skincli.predictor import Predictor

    runs, folder = site
    paths = generated_images(runs.parent / "generated")
    predictor = Predictor.from_run("tiny", runs, engine="tf")
    ensure(predictor)
    predictions = predictor.predict_paths(paths)
    assert {p.label for p in predictions} == set(CLASSES)
    with StaticServer(folder) as server:
        browser.get(f"{server.origin}/index.html")
        assert _ready(browser) == "Ready."
        for path, want in zip(paths, predictions):
            got = browser.execute_async_script(
                CLASSIFY, base64.b64encode(path.read_bytes()).decode(), "image/png")
            assert "error" not in got, got
            assert got["label"] == want.label
            worst = max(abs(got["probabilities"][c] - want.probabilities[c]) for c in CLASSES)
            assert worst <= 0.02, (path.name, got, want.probabilities)
            assert got["uncertain"] == want.uncertain
            assert got["triage"]["refer"] == want.triage["refer"]
            assert abs(got["triage"]["score"] - want.triage["malignancy_score"]) <= 0.02
            assert got["disclaimer"] == want.disclaimer
        bad = browser.execute_async_script(CLASSIFY, base64.b64encode(b"not a photo").decode(),
                                           "image/png")
        assert bad == {"error": "Not an image: the file could not be decoded; give a JPEG or "
                                "PNG photo"}
        text = browser.execute_async_script(CLASSIFY, base64.b64encode(b"hi").decode(),
                                            "text/plain")
        assert text["error"].startswith("Not an image: the file's type is text/plain")
        fetched = browser.execute_script(
            "return performance.getEntriesByType('resource').map((e) => e.name)")
        assert any(u.endswith("/runtime/wasm/vision_wasm_internal.wasm") for u in fetched)
        assert any(u.endswith("/model.tflite") for u in fetched)
        assert all(u.startswith(server.origin + "/") or u.startswith(("data:", "blob:"))
                   for u in fetched), fetched
        log = browser.get_log("browser")
        assert not [e for e in log if "Content Security Policy" in e.get("message", "")], log
        # A request that failed (blocked, refused, 404) is logged as a network error.
        assert not [e for e in log if e.get("source") == "network"], log


def test_demo_page_classifies_a_chosen_file(site: tuple[Path, Path], browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    runs, folder = site
    image = generated_images(runs.parent / "page", n=2)[1]  # one with the patch
    with StaticServer(folder) as server:
        browser.get(f"{server.origin}/index.html")
        _ready(browser)
        browser.find_element(By.ID, "file").send_keys(str(image))
        WebDriverWait(browser, 30).until(
            lambda d: d.find_element(By.ID, "result").is_displayed())
        assert browser.find_element(By.ID, "label").text.startswith("melanoma")
        assert "malignancy score" in browser.find_element(By.ID, "triage").text
        assert "clinician must confirm" in browser.find_element(By.ID, "disclaimer").text
        camera = browser.find_element(By.ID, "camera")
        assert camera.get_attribute("capture") == "environment"
