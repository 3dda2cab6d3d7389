"""`skin serve` as a real process: SIGHUP reloads runs/CURRENT, SIGTERM drains in-flight work."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_proc import free_port, serve_process
from test_serve_support import image_bytes

if sys.platform == "win32":  # pragma: no cover
    pytest.skip("POSIX signals", allow_module_level=True)


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    from helpers_run import build_model, make_run

    root = tmp_path / "runs"
    # A heavier model (wide convs at 160 px) so that queued work takes a few seconds.
    make_run(tmp_path, classes=["a", "b", "c"], input_size=160, name="heavy",
             model=build_model(3, input_size=160, width=48), runs_dir=root)
    make_run(tmp_path, classes=["x", "y"], input_size=32, name="light", runs_dir=root)
    (root / "CURRENT").write_text("heavy\n")
    return root


@pytest.mark.slow
def test_sighup_reloads_and_sigterm_drains(runs: Path, tmp_path: Path) -> None:
    port = free_port()  # both servers below use it in turn
    # The TensorFlow engine: its slower passes keep work queued long enough for all four
    # requests to be accepted before SIGTERM (LiteRT can drain the first ones before the last
    # one connects).
    env = {"SKIN_QUEUE_SIZE": "256", "SKIN_ENGINE": "tf"}
    # The test signals the server itself; a server left running by a failure is killed at once.
    with serve_process(runs, "--max-batch", "8", "--timeout-s", "60", cwd=tmp_path, port=port,
                       env=env, stop_s=0) as served:
        proc, url = served.proc, served.url
        assert httpx.get(url + "/v1/model").json()["name"] == "heavy"

        # SIGTERM while several batches are queued: every accepted request still gets its answer.
        files = [("files", (f"{i}.png", image_bytes((160, 160), seed=i), "image/png"))
                 for i in range(16)]
        results: list[Any] = []

        def send() -> None:
            try:
                results.append(httpx.post(url + "/v1/predict/batch", files=files, timeout=120))
            except httpx.HTTPError as exc:
                results.append(exc)

        threads = [threading.Thread(target=send) for _ in range(4)]
        for t in threads:
            t.start()
        deadline = time.time() + 30
        depth = 0.0
        while time.time() < deadline and depth < 8:
            text = httpx.get(url + "/metrics", timeout=5).text
            depth = float(next(line.split()[1] for line in text.splitlines()
                               if line.startswith("skin_queue_depth ")))
            time.sleep(0.02)
        assert depth >= 8, "work never queued up; cannot test draining"
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        # Uvicorn re-raises SIGTERM after its graceful shutdown, hence -15 rather than 0.
        assert proc.wait(60) in (0, -signal.SIGTERM)
        assert len(results) == 4
        for r in results:
            assert isinstance(r, httpx.Response), r
            assert r.status_code == 200, r.text
            assert all(item["prediction"] for item in r.json()["results"])
    log = proc.stderr.read() if proc.stderr else ""
    assert "Traceback" not in log
    assert "Application shutdown complete" in log

    # A fresh server: SIGHUP switches to the run that runs/CURRENT now names.
    with serve_process(runs, cwd=tmp_path, port=port, env=env, stop_s=0) as served:
        proc, url = served.proc, served.url
        (runs / "CURRENT").write_text("light\n")
        proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 60
        name = "heavy"
        while time.time() < deadline and name == "heavy":
            time.sleep(0.2)
            name = httpx.get(url + "/v1/model").json()["name"]
        assert name == "light"
        r = httpx.post(url + "/v1/predict", files={"file": ("a.png", image_bytes(), "image/png")})
        assert set(r.json()["prediction"]["probabilities"]) == {"x", "y"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) in (0, -signal.SIGTERM)
