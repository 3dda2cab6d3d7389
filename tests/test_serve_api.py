"""The REST API on tiny runs: endpoints, errors, limits, auth, CORS, reload, batching, logging."""

from __future__ import annotations

import base64
import io
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_serve_support import CLASSES_A, CLASSES_B, image_bytes, make_runs, serving, upload


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_runs(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def client(runs: Path) -> Any:
    with serving(runs) as c:
        yield c


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    """The one error shape: status, stable code, message, the request id (also in headers)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "message", "request_id"}
    assert body["error"] == code
    assert body["message"] and "Traceback" not in body["message"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


# --- the happy paths ---------------------------------------------------------------------------

def test_health_ready_and_model(client: Any) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    info = client.get("/v1/model").json()
    assert info["classes"] == CLASSES_A and info["input_size"] == 32
    assert info["name"] == "alpha" and info["arch"] == "tiny"
    assert info["calibration"]["temperature"] == 1.0
    assert info["serving"]["max_batch"] == 16
    assert "api_key" not in str(info) and "runs" not in str(info.get("serving"))


def test_predict_matches_offline_predictor(client: Any, runs: Path) -> None:
    from skincli.predictor import Predictor

    data = image_bytes((50, 37), "JPEG", seed=3)
    r = client.post("/v1/predict", files=upload(data, "x.jpg", "image/jpeg"),
                    params={"top_k": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    pred = body["prediction"]
    offline = Predictor.from_run("alpha", runs)
    probs = offline.probabilities(offline.preprocess(data)[None])[0]
    for i, name in enumerate(CLASSES_A):
        assert pred["probabilities"][name] == pytest.approx(probs[i], abs=1e-5)
    assert pred["label"] == CLASSES_A[int(np.argmax(probs))]
    assert [t["label"] for t in pred["top_k"]] == [CLASSES_A[i] for i in np.argsort(-probs)[:2]]
    assert pred["uncertain"] in (True, False) and pred["disclaimer"]
    assert pred["image_sha256"] == __import__("hashlib").sha256(data).hexdigest()
    assert pred["filename"] == "x.jpg"
    assert body["model"] == {"name": "alpha", "version": "alpha@2026-01-01T00:00:00"}
    assert body["request_id"] == r.headers["x-request-id"]
    assert body["latency_ms"] >= 0
    assert r.headers["x-model-name"] == "alpha"
    assert r.headers["x-model-version"] == "alpha@2026-01-01T00:00:00"
    assert float(r.headers["x-latency-ms"]) >= 0


def test_raw_body_upload_and_type_from_bytes_not_header(client: Any) -> None:
    png = image_bytes()
    r = client.post("/v1/predict", content=png, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    # A PNG that claims to be text is still a PNG; text that claims to be a JPEG is not.
    assert client.post("/v1/predict", files=upload(png, "notes.txt", "text/plain")
                       ).status_code == 200
    assert_error(client.post("/v1/predict", files=upload(b"hello, not an image" * 10, "a.jpg",
                                                         "image/jpeg")), 415, "unsupported_type")


def test_request_id_is_honoured_or_replaced(client: Any) -> None:
    r = client.get("/health", headers={"X-Request-ID": "ehr-42.a_b"})
    assert r.headers["x-request-id"] == "ehr-42.a_b"
    r = client.get("/health", headers={"X-Request-ID": "bad id <script>"})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    r1, r2 = client.get("/health"), client.get("/health")
    assert r1.headers["x-request-id"] != r2.headers["x-request-id"]


def test_batch_with_one_bad_file(client: Any) -> None:
    files = [("files", ("a.png", image_bytes(seed=1), "image/png")),
             ("files", ("b.txt", b"plain text", "text/plain")),
             ("files", ("c.bmp", image_bytes(fmt="BMP", seed=2), "image/bmp"))]
    r = client.post("/v1/predict/batch", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["filename"] for x in results] == ["a.png", "b.txt", "c.bmp"]
    assert results[0]["prediction"]["label"] in CLASSES_A
    assert results[1]["prediction"] is None
    assert results[1]["error"]["error"] == "unsupported_type"
    assert results[2]["prediction"]["label"] in CLASSES_A


def test_batch_too_many_files(runs: Path) -> None:
    with serving(runs, max_files=2) as c:
        files = [("files", (f"{i}.png", image_bytes(seed=i), "image/png")) for i in range(3)]
        assert_error(c.post("/v1/predict/batch", files=files), 422, "too_many_files")


def test_explain_png_and_json(client: Any) -> None:
    data = image_bytes((60, 40), seed=5)
    r = client.post("/v1/explain", files=upload(data))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.size == (60, 40)  # the overlay has the upload's shape
    assert r.headers["x-explained-class"] in CLASSES_A
    r = client.post("/v1/explain", files=upload(data), params={"format": "json",
                                                               "target": "nevus"})
    body = r.json()
    assert r.status_code == 200 and body["target"] == "nevus"
    assert body["prediction"]["label"] in CLASSES_A
    for key in ("overlay_png_base64", "heatmap_png_base64"):
        assert Image.open(io.BytesIO(base64.b64decode(body[key]))).size == (60, 40)
    err = assert_error(client.post("/v1/explain", files=upload(data), params={"target": "nevs"}),
                       422, "invalid_request")
    assert "nevus" in err["message"]  # did-you-mean


def test_explain_draws_the_same_picture_as_skin_predict(client: Any, runs: Path,
                                                        tmp_path: Path) -> None:
    """One Grad-CAM rendering: the API's overlay (what the clinician page shows) is, pixel for
    pixel, the overlay panel of `skin predict --explain` for the same image and run."""
    import json

    from typer.testing import CliRunner

    from skincli.cli import app

    data = image_bytes((700, 500), "JPEG", seed=11)  # downscaled for display by both
    (tmp_path / "lesion.jpg").write_bytes(data)
    result = CliRunner().invoke(app, [
        "predict", str(tmp_path / "lesion.jpg"), "--run", "alpha", "--runs-dir", str(runs),
        "--engine", "tf", "--explain", "--explain-dir", str(tmp_path / "cams"), "--json",
        "--no-log", "--audit-log", str(tmp_path / "audit.jsonl")])
    assert result.exit_code == 0, result.output
    pred = json.loads(result.stdout)["predictions"][0]
    with Image.open(pred["explanation"]) as saved:
        panels = np.asarray(saved.convert("RGB"))
    r = client.post("/v1/explain", files=upload(data, "lesion.jpg", "image/jpeg"),
                    params={"target": pred["label"]})
    assert r.status_code == 200, r.text
    api = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
    assert api.shape == (320, 448, 3)
    width = api.shape[1]
    assert panels.shape == (320, 2 * width + 4, 3)  # display image | gap | overlay
    assert np.array_equal(panels[:, width + 4:], api)
    assert not np.array_equal(panels[:, :width], api)  # the overlay is not the bare image


def test_index_page_and_static_assets(client: Any) -> None:
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "default-src 'self'" in r.headers["content-security-policy"]
    html = r.text
    assert "/static/app.js" in html and "/static/style.css" in html
    assert "http://" not in html and "https://" not in html  # nothing from outside
    for asset in ("/static/app.js", "/static/style.css"):
        a = client.get(asset)
        assert a.status_code == 200
        assert "http://" not in a.text and "https://" not in a.text


def test_openapi_documents_endpoints_and_errors(client: Any) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/v1/predict", "/v1/predict/batch", "/v1/explain", "/v1/model",
                 "/v1/model/reload", "/health", "/ready", "/metrics"):
        assert path in spec["paths"], path
    predict = spec["paths"]["/v1/predict"]["post"]
    assert "multipart/form-data" in predict["requestBody"]["content"]
    assert {"413", "415", "422", "503", "504"} <= set(predict["responses"])
    assert "unsupported_type" in spec["info"]["description"]


# --- every error code ---------------------------------------------------------------------------

def test_malformed_inputs_are_4xx_json(client: Any, tmp_path: Path) -> None:
    png = image_bytes((64, 64))
    assert_error(client.post("/v1/predict", files=upload(b"")), 422, "empty")
    assert_error(client.post("/v1/predict", files=upload(png[: len(png) // 2])), 422, "corrupt")
    assert_error(client.post("/v1/predict"), 422, "missing_file")
    assert_error(client.post("/v1/predict", data={"file": "abc"},
                             files={"other": ("x", b"1")}), 422, "missing_file")
    assert_error(client.post("/v1/predict", content=b"--xx\r\nbroken",
                             headers={"Content-Type": "multipart/form-data; boundary=zz"}),
                 422, "invalid_request")
    assert_error(client.post("/v1/predict", content=b"abc",
                             headers={"Content-Type": "multipart/form-data"}),
                 422, "invalid_request")
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    assert_error(client.post("/v1/predict", files=upload(gif.getvalue(), "a.gif", "image/gif")),
                 415, "unsupported_type")
    assert_error(client.post("/v1/predict", params={"top_k": 0}, files=upload(png)),
                 422, "invalid_request")
    assert_error(client.post("/v1/predict", params={"top_k": "many"}, files=upload(png)),
                 422, "invalid_request")
    assert_error(client.post("/v1/explain", params={"format": "gif"}, files=upload(png)),
                 422, "invalid_request")
    assert_error(client.get("/v1/nothing"), 404, "not_found")
    assert_error(client.get("/v1/predict"), 405, "method_not_allowed")
    assert_error(client.post("/v1/predict", files=[("file", ("a.png", png, "image/png")),
                                                   ("file", ("b.png", png, "image/png"))]),
                 422, "invalid_request")


def test_upload_size_limit_by_header_and_by_counting(runs: Path) -> None:
    big = image_bytes((400, 400), "BMP")  # ~480 kB
    assert len(big) > 100 * 1024
    with serving(runs, max_upload_mb=0.05) as c:
        # Content-Length says it is too big: refused before reading.
        assert_error(c.post("/v1/predict", files=upload(big, "big.bmp", "image/bmp")),
                     413, "payload_too_large")
        assert_error(c.post("/v1/explain", content=big), 413, "payload_too_large")

        # No Content-Length (chunked): refused while counting the bytes.
        def chunks() -> Any:
            for i in range(0, len(big), 8192):
                yield big[i:i + 8192]

        r = c.post("/v1/predict", content=chunks(), headers={"Content-Type": "image/bmp"})
        assert "content-length" not in r.request.headers
        assert_error(r, 413, "payload_too_large")
        # Small images still pass.
        assert c.post("/v1/predict", files=upload(image_bytes())).status_code == 200


def test_too_many_pixels(runs: Path) -> None:
    with serving(runs, max_pixels=1000) as c:
        assert_error(c.post("/v1/predict", files=upload(image_bytes((40, 30)))), 413,
                     "too_many_pixels")
        assert c.post("/v1/predict", files=upload(image_bytes((30, 30)))).status_code == 200


def _block_forward(client: Any, release: threading.Event,
                   started: threading.Event | None = None) -> None:
    """Make the served model's forward pass wait for `release` (to fill the queue)."""
    model = client.app.state.skin.holder.current
    original = model.forward

    def slow(batch: np.ndarray) -> Any:
        if started is not None:
            started.set()
        release.wait(10)
        return original(batch)

    model.forward = slow


def test_overload_gives_503_with_retry_after(runs: Path) -> None:
    with serving(runs, queue_size=1, max_batch=1, batch_window_ms=0) as c:
        release, started = threading.Event(), threading.Event()
        _block_forward(c, release, started)
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(c.post, "/v1/predict", files=upload(image_bytes(seed=1)))
            assert started.wait(10)  # the model is busy with the first image
            second = pool.submit(c.post, "/v1/predict", files=upload(image_bytes(seed=2)))
            deadline = time.time() + 10
            while c.app.state.skin.batcher.qsize() < 1 and time.time() < deadline:
                time.sleep(0.01)  # the second image now fills the queue
            third = c.post("/v1/predict", files=upload(image_bytes(seed=3)))
            body = assert_error(third, 503, "overloaded")
            assert third.headers["retry-after"] == "1" and "queue" in body["message"]
            release.set()
            assert first.result().status_code == 200
            assert second.result().status_code == 200
        assert 'skin_rejected_total{reason="overloaded"} 1' in c.get("/metrics").text


def test_timeout_gives_504(runs: Path) -> None:
    with serving(runs, timeout_s=0.3) as c:
        release = threading.Event()
        _block_forward(c, release)
        try:
            assert_error(c.post("/v1/predict", files=upload(image_bytes())), 504, "timeout")
        finally:
            release.set()


def test_internal_error_is_json_500_without_details(runs: Path) -> None:
    with serving(runs) as c:
        def broken(batch: np.ndarray) -> Any:
            raise RuntimeError("secret internal detail")

        c.app.state.skin.holder.current.forward = broken
        r = c.post("/v1/predict", files=upload(image_bytes()))
        body = assert_error(r, 500, "internal_error")
        assert "secret" not in r.text and "RuntimeError" not in r.text
        assert body["request_id"] in body["message"] or "request id" in body["message"]
        # The server keeps serving afterwards.
        assert c.get("/health").status_code == 200


# --- auth and CORS ------------------------------------------------------------------------------

def test_api_keys(runs: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# clinic keys\nfile-key-2  # ward B\n\n")
    with serving(runs, api_key="env-key-1", api_keys_file=str(keys)) as c:
        png = image_bytes()
        r = c.post("/v1/predict", files=upload(png))
        assert_error(r, 401, "unauthorized")
        assert "Bearer" in r.headers["www-authenticate"]
        assert_error(c.post("/v1/predict", files=upload(png), headers={"X-API-Key": "nope"}),
                     401, "unauthorized")
        assert_error(c.get("/v1/model"), 401, "unauthorized")
        assert c.post("/v1/predict", files=upload(png),
                      headers={"X-API-Key": "env-key-1"}).status_code == 200
        assert c.post("/v1/predict", files=upload(png),
                      headers={"Authorization": "Bearer file-key-2"}).status_code == 200
        # Probes, metrics and the page stay open (the page asks for the key itself).
        for path in ("/health", "/ready", "/metrics", "/", "/static/app.js"):
            assert c.get(path).status_code == 200, path


def test_cors_off_by_default_and_configurable(runs: Path, client: Any) -> None:
    origin = {"Origin": "https://clinic.example"}
    r = client.get("/health", headers=origin)
    assert "access-control-allow-origin" not in r.headers
    pre = client.options("/v1/predict", headers={**origin,
                                                 "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in pre.headers
    with serving(runs, cors_origins=["https://clinic.example"]) as c:
        pre = c.options("/v1/predict", headers={**origin, "Access-Control-Request-Method": "POST",
                                                "Access-Control-Request-Headers": "x-api-key"})
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "https://clinic.example"
        r = c.get("/health", headers=origin)
        assert r.headers["access-control-allow-origin"] == "https://clinic.example"
        assert "X-Request-ID" in r.headers["access-control-expose-headers"]
        other = c.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


# --- reload ---------------------------------------------------------------------------------------

def test_reload_needs_keys_and_a_valid_run(runs: Path) -> None:
    with serving(runs) as c:
        assert_error(c.post("/v1/model/reload"), 403, "forbidden")
    with serving(runs, api_key="k") as c:
        assert_error(c.post("/v1/model/reload", params={"run": "beta"}), 401, "unauthorized")
        key = {"X-API-Key": "k"}
        body = assert_error(c.post("/v1/model/reload", params={"run": "gamma"}, headers=key),
                            422, "invalid_run")
        assert "gamma" in body["message"]
        assert_error(c.post("/v1/model/reload", params={"run": "../alpha"}, headers=key),
                     422, "invalid_request")
        assert c.get("/v1/model", headers=key).json()["name"] == "alpha"  # still serving
        r = c.post("/v1/model/reload", params={"run": "beta"}, headers=key)
        assert r.status_code == 200, r.text
        assert r.json()["previous"]["name"] == "alpha" and r.json()["model"]["name"] == "beta"
        info = c.get("/v1/model", headers=key).json()
        assert info["classes"] == CLASSES_B and info["input_size"] == 48
        pred = c.post("/v1/predict", files=upload(image_bytes()), headers=key).json()
        assert set(pred["prediction"]["probabilities"]) == set(CLASSES_B)
        assert 'skin_model_reloads_total{result="ok"} 1' in c.get("/metrics").text
        assert 'skin_model_info{name="beta"' in c.get("/metrics").text


def test_reload_is_atomic_under_concurrent_requests(runs: Path) -> None:
    expected = {"alpha": set(CLASSES_A), "beta": set(CLASSES_B)}
    with serving(runs, api_key="k", batch_window_ms=2) as c:
        stop = threading.Event()
        seen: list[tuple[int, str, set[str], str]] = []

        def hammer(seed: int) -> None:
            data = image_bytes(seed=seed)
            while not stop.is_set():
                r = c.post("/v1/predict", files=upload(data), headers={"X-API-Key": "k"})
                body = r.json()
                if r.status_code != 200:
                    seen.append((r.status_code, body.get("error", ""), set(), ""))
                    continue
                seen.append((200, body["model"]["name"],
                             set(body["prediction"]["probabilities"]), r.headers["x-model-name"]))

        threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        try:
            for target in ["beta", "alpha", "beta", "alpha"]:
                r = c.post("/v1/model/reload", params={"run": target}, headers={"X-API-Key": "k"})
                assert r.status_code == 200, r.text
                time.sleep(0.05)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert len(seen) >= 8
        bad = [s for s in seen if s[0] != 200]
        assert not bad, bad[:5]
        for _, name, classes, _header in seen:
            assert classes == expected[name]  # the answer is wholly one model's
        assert {s[1] for s in seen} == {"alpha", "beta"}


# --- micro-batching, metrics, logging -------------------------------------------------------------

def test_concurrent_requests_are_batched(runs: Path) -> None:
    with serving(runs, max_batch=8, batch_window_ms=300) as c:
        n = 8
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(
                lambda i: c.post("/v1/predict", files=upload(image_bytes(seed=i))), range(n)))
        assert all(r.status_code == 200 for r in results)
        hist = c.app.state.skin.metrics.batch_size.snapshot()
        warm_batches = 0  # warm-up runs outside the batcher and is not counted
        assert hist["sum"] == n  # every image went through exactly one batch
        assert hist["count"] - warm_batches < n  # ...and fewer passes than images
        text = c.get("/metrics").text
        assert "skin_batch_size_bucket" in text and "skin_queue_depth 0" in text


def test_metrics_text(client: Any) -> None:
    client.post("/v1/predict", files=upload(image_bytes(seed=9)))
    client.post("/v1/predict", files=upload(b"not an image"))
    client.get("/no/such/path/12345")
    r = client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    assert re.search(r'skin_requests_total\{route="/v1/predict",method="POST",status="200"\} '
                     r'[1-9]', text)
    assert 'status="415"' in text
    assert 'route="unmatched"' in text and "/no/such/path" not in text
    assert re.search(r'skin_predictions_total\{label="[^"]+"\} [1-9]', text)
    assert "skin_request_duration_seconds_bucket" in text and 'le="+Inf"' in text
    assert "skin_queue_depth" in text and "skin_ready 1" in text
    for line in text.splitlines():  # every sample line is "name{labels} number"
        if line and not line.startswith("#"):
            assert re.fullmatch(r'[a-z_]+(\{.*\})? [-+0-9.eInf]+', line), line


def test_predictions_are_logged_without_images(runs: Path, tmp_path: Path) -> None:
    from skincli.monitor.store import open_store

    url = f"sqlite:///{tmp_path / 'log.db'}"
    data = [image_bytes(seed=i) for i in range(3)]
    ids = []
    with serving(runs, no_log=False, store=url) as c:
        for i, d in enumerate(data):
            r = c.post("/v1/predict", files=upload(d), headers={"X-Request-ID": f"req-{i}"})
            assert r.status_code == 200
            ids.append(r.json()["request_id"])
    # Leaving the client ran the shutdown, which flushes the log.
    with open_store(url) as store:
        df = store.predictions()
    assert sorted(df["request_id"]) == ["req-0", "req-1", "req-2"]
    import hashlib

    assert set(df["image_sha256"]) == {hashlib.sha256(d).hexdigest() for d in data}
    row = df.iloc[0]
    assert row["source"] == "api" and row["model_version"] == "alpha@2026-01-01T00:00:00"
    assert row["predicted"] in CLASSES_A and row["latency_ms"] >= 0
    assert set(row["image_stats"]) >= {"mean_r", "brightness"}
    assert row["embedding"] is not None and len(row["embedding"]) == 32
    raw = (tmp_path / "log.db").read_bytes()
    assert data[0][:64] not in raw  # no image bytes in the store


def test_a_request_names_its_source_for_drift_per_source(runs: Path, tmp_path: Path) -> None:
    from skincli.monitor.store import open_store

    url = f"sqlite:///{tmp_path / 'log.db'}"
    with serving(runs, no_log=False, store=url) as c:
        r = c.post("/v1/predict?source=clinic-a", files=upload(image_bytes(seed=1)),
                   headers={"X-Request-ID": "one"})
        assert r.status_code == 200
        r = c.post("/v1/predict/batch?source=clinic.b_2",
                   files=[("files", ("x.png", image_bytes(seed=2), "image/png"))],
                   headers={"X-Request-ID": "two"})
        assert r.status_code == 200
        for bad in ("", "a b", "-x", "x" * 65, "clinic/../a"):
            r = c.post("/v1/predict", params={"source": bad}, files=upload(image_bytes(seed=3)))
            assert r.status_code == 422, bad
    with open_store(url) as store:
        df = store.predictions()
    # The refused requests logged nothing; each answered one carries its source.
    assert dict(zip(df["request_id"], df["source"])) == {"one": "clinic-a", "two": "clinic.b_2"}


def test_broken_store_never_breaks_requests_and_rows_are_spooled(runs: Path,
                                                                   tmp_path: Path) -> None:
    from skincli.monitor.predlog import replay_journal

    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    url = f"sqlite:///{blocker / 'sub' / 'log.db'}"  # cannot be created
    journal = tmp_path / "journal.jsonl"
    with serving(runs, no_log=False, store=url, journal=str(journal), log_flush_s=1) as c:
        for i in range(3):
            assert c.post("/v1/predict", files=upload(image_bytes(seed=i))).status_code == 200
        metrics = c.app.state.skin.metrics
    assert metrics.logged.value() == 0
    assert metrics.log_spooled.value() == 3 and metrics.log_lost.value() == 0
    assert len(journal.read_text().splitlines()) == 3
    # The journal goes to a store that works (what `skin monitor` and the next start do).
    good = f"sqlite:///{tmp_path / 'good.db'}"
    assert replay_journal(good, journal) == 3 and not journal.exists()
    assert replay_journal(good, journal) == 0

    class Exploding:
        def log(self, rows: list[dict[str, Any]]) -> None:
            raise RuntimeError("disk full")

        def close(self) -> None:
            pass

    journal2 = tmp_path / "journal2.jsonl"
    with serving(runs, no_log=False, store=f"sqlite:///{tmp_path / 'ok.db'}",
                 journal=str(journal2), log_flush_s=1) as c:
        predlog = c.app.state.skin.predlog
        predlog._open = lambda: Exploding()
        assert c.post("/v1/predict", files=upload(image_bytes())).status_code == 200
        metrics = c.app.state.skin.metrics
    assert metrics.log_errors.value() >= 1  # each failed attempt is counted
    assert metrics.log_spooled.value() == 1 and metrics.log_lost.value() == 0


def test_full_log_queue_drops_logs_and_counts(runs: Path, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    with serving(runs, no_log=False, store=f"sqlite:///{tmp_path / 'q.db'}",
                 journal=str(tmp_path / "j.jsonl"), log_queue_size=1) as c:
        predlog = c.app.state.skin.predlog
        gate, writing = threading.Event(), threading.Event()
        original = predlog._deliver

        def stalled(rows: Any) -> None:  # a writer thread that hangs
            writing.set()
            gate.wait(10)
            original(rows)

        predlog._deliver = stalled
        try:
            assert c.post("/v1/predict", files=upload(image_bytes())).status_code == 200
            assert writing.wait(10)  # the writer is stuck on the first row
            for i in range(6):
                assert c.post("/v1/predict", files=upload(image_bytes(seed=i))).status_code == 200
            # One row fits in the queue; the other five are dropped, counted and logged.
            metrics = c.app.state.skin.metrics
            assert metrics.log_dropped.value() == 5 and metrics.log_lost.value() == 5
        finally:
            gate.set()
    assert "queue full" in caplog.text


def test_missing_run_fails_clearly(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from skincli.errors import SkinError
    from skincli.serve.app import create_app
    from skincli.serve.settings import Settings

    app = create_app(Settings(runs_dir=str(tmp_path / "empty"), no_log=True))
    with pytest.raises(SkinError, match="No trained run"):
        with TestClient(app):
            pass


def test_explain_a_model_without_feature_map(tmp_path: Path) -> None:
    import keras
    from helpers_run import make_run

    inp = keras.Input((32, 32, 3), name="image")
    out = keras.layers.Dense(2, name="logits")(keras.layers.GlobalAveragePooling2D()(inp))
    make_run(tmp_path, classes=["a", "b"], name="flat", model=keras.Model(inp, out))
    with serving(tmp_path / "runs", run="flat") as c:
        assert c.post("/v1/predict", files=upload(image_bytes())).status_code == 200
        assert_error(c.post("/v1/explain", files=upload(image_bytes())), 422, "not_explainable")


def test_docs_page_and_its_assets_are_served_locally(client: Any) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text  # nothing from another host
    for asset in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css",
                  "/static/docs.js"):
        response = client.get(asset)
        assert response.status_code == 200 and len(response.content) > 100, asset
    assert client.get("/docs-assets/nope.js").status_code == 404
