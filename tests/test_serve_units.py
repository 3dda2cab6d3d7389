"""Server building blocks without HTTP: settings, metrics, keys, the micro-batcher, the CLI."""

from __future__ import annotations

import threading
import time
from concurrent.futures import wait
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from skincli.errors import SkinError
from skincli.serve.auth import KeyChecker, load_keys
from skincli.serve.batching import Expired, MicroBatcher, Overloaded
from skincli.serve.metrics import Counter, Histogram, Metrics
from skincli.serve.settings import Settings, describe

# --- settings -----------------------------------------------------------------------------------


def test_settings_defaults_env_and_overrides() -> None:
    s = Settings.from_env({})
    assert (s.host, s.port, s.max_batch, s.batch_window_ms, s.cors_origins) == (
        "127.0.0.1", 8000, 16, 5.0, [])
    env = {"SKIN_PORT": "9001", "SKIN_MAX_BATCH": "4", "SKIN_NO_LOG": "true",
           "SKIN_CORS_ORIGINS": "https://a.example, https://b.example", "SKIN_TTA": "0",
           "SKIN_BATCH_WINDOW_MS": "2.5"}
    s = Settings.from_env(env)
    assert (s.port, s.max_batch, s.no_log, s.tta, s.batch_window_ms) == (9001, 4, True, False,
                                                                          2.5)
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    s = Settings.from_env(env, port=7000, max_batch=None)  # None = not given on the CLI
    assert (s.port, s.max_batch) == (7000, 4)
    # to_env round-trips (how the CLI hands settings to worker processes).
    again = Settings.from_env(s.to_env())
    assert again == s


@pytest.mark.parametrize("env, needle", [
    ({"SKIN_PORT": "eighty"}, "SKIN_PORT"),
    ({"SKIN_NO_LOG": "maybe"}, "SKIN_NO_LOG"),
    ({"SKIN_MAX_BATCH": "0"}, "--max-batch"),
    ({"SKIN_TIMEOUT_S": "0"}, "--timeout-s"),
    ({"SKIN_LOG_QUEUE_SIZE": "0"}, "SKIN_LOG_QUEUE_SIZE"),
    ({"SKIN_API_KEYS_FILE": "/nonexistent/keys"}, "keys"),
])
def test_settings_errors_name_the_setting(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SkinError, match=needle):
        Settings.from_env(env)


def test_describe_lists_every_env_var() -> None:
    names = [row[0] for row in describe()]
    assert "SKIN_API_KEY" in names and "SKIN_BATCH_WINDOW_MS" in names


def test_error_labels_name_the_serve_option_where_there_is_one() -> None:
    """The settings named as `--option (SKIN_X)` in errors are exactly serve's own options."""
    import dataclasses
    import inspect

    from skincli.cli.serve import command
    from skincli.serve import settings as settings_module

    params = set(inspect.signature(command).parameters)
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert settings_module._CLI_OPTIONS == (params & fields) - {"run"}  # run is an argument


# --- metrics ------------------------------------------------------------------------------------


def test_histogram_is_cumulative_and_counter_labels() -> None:
    h = Histogram("lat", "latency", ("route",), buckets=(0.1, 1.0))
    for v in (0.05, 0.5, 0.5, 3.0):
        h.observe(v, route="/x")
    text = "\n".join(h.render())
    assert 'lat_bucket{route="/x",le="0.1"} 1' in text
    assert 'lat_bucket{route="/x",le="1"} 3' in text
    assert 'lat_bucket{route="/x",le="+Inf"} 4' in text
    assert 'lat_count{route="/x"} 4' in text and 'lat_sum{route="/x"} 4.05' in text
    c = Counter("req", "requests", ("status",))
    c.inc(status="200")
    c.inc(2, status="200")
    assert c.value(status="200") == 3
    with pytest.raises(ValueError):
        c.inc(route="/x")
    assert Metrics().render().count("# TYPE") >= 10


def test_label_values_are_escaped() -> None:
    c = Counter("x", "x", ("label",))
    c.inc(label='a "quoted"\nname')
    assert 'x{label="a \\"quoted\\"\\nname"} 1' in "\n".join(c.render())


# --- API keys -----------------------------------------------------------------------------------


def test_keys_file_and_checker(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text("alpha # first\n# comment only\n\n  beta  \n")
    keys = load_keys("gamma", str(f))
    assert keys == ["gamma", "alpha", "beta"]
    checker = KeyChecker(keys)
    assert checker.enabled
    assert checker.valid("beta") and checker.valid("gamma")
    assert not checker.valid("alph") and not checker.valid("") and not checker.valid(None)
    assert not KeyChecker([]).enabled
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    with pytest.raises(SkinError, match="no keys"):
        load_keys(None, str(empty))


# --- the micro-batcher --------------------------------------------------------------------------


def _echo_batcher(sizes: list[int], **kwargs: object) -> MicroBatcher:
    def run(owner: object, batch: np.ndarray, extras: list[object]) -> list[tuple[object, float]]:
        sizes.append(len(batch))
        return [(owner, float(x.sum())) for x in batch]

    return MicroBatcher(run, **kwargs)  # type: ignore[arg-type]


def test_queued_jobs_run_as_one_batch_per_owner() -> None:
    sizes: list[int] = []
    b = _echo_batcher(sizes, max_batch=8, window_s=0.0, queue_size=32)
    a_owner, b_owner = object(), object()
    deadline = time.perf_counter() + 10
    # Queue everything before the thread starts: it must batch what is waiting.
    futs = [b.submit(a_owner if i % 2 else b_owner, np.full((2, 2), i, np.float32), deadline)
            for i in range(6)]
    b.start()
    wait(futs, 10)
    b.stop()
    assert sorted(sizes) == [3, 3]  # one pass per owner, never mixed
    for i, f in enumerate(futs):
        owner, total = f.result()
        assert owner is (a_owner if i % 2 else b_owner) and total == 4 * i


def test_max_batch_is_respected_and_stop_drains() -> None:
    sizes: list[int] = []
    b = _echo_batcher(sizes, max_batch=4, window_s=0.0, queue_size=100)
    owner = object()
    futs = [b.submit(owner, np.zeros(1, np.float32), time.perf_counter() + 10)
            for _ in range(10)]
    b.start()
    b.stop(timeout=10)  # stop right away: queued work still finishes
    assert all(f.done() and not f.exception() for f in futs)
    assert sum(sizes) == 10 and max(sizes) <= 4
    with pytest.raises(Overloaded, match="shutting down"):
        b.submit(owner, np.zeros(1, np.float32), time.perf_counter() + 10)


def test_window_waits_only_while_requests_are_arriving() -> None:
    sizes: list[int] = []
    b = _echo_batcher(sizes, max_batch=8, window_s=0.5, queue_size=8)
    b.start()
    owner = object()
    # Nobody else is on the way: a lone job does not wait for the window.
    t0 = time.perf_counter()
    b.submit(owner, np.zeros(1), time.perf_counter() + 10).result(5)
    lone = time.perf_counter() - t0
    # Two requests announce themselves; the batch waits for the second.
    results = []
    both_arriving = threading.Barrier(2)

    def client(delay: float) -> None:
        with b.arriving():
            both_arriving.wait(5)
            time.sleep(delay)
            fut = b.submit(owner, np.zeros(1), time.perf_counter() + 10)
        results.append(fut.result(5))

    threads = [threading.Thread(target=client, args=(d,)) for d in (0.0, 0.1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    b.stop()
    assert sizes == [1, 2]
    assert lone < 0.5  # did not sit out the window (loose bound: not a speed test)


def test_full_queue_expired_and_cancelled_jobs() -> None:
    sizes: list[int] = []
    b = _echo_batcher(sizes, max_batch=1, window_s=0.0, queue_size=3)
    owner = object()
    expired = b.submit(owner, np.zeros(1), time.perf_counter() - 1)  # already too late
    gave_up = b.submit(owner, np.zeros(1), time.perf_counter() + 10)
    ok = b.submit(owner, np.ones(1), time.perf_counter() + 10)
    with pytest.raises(Overloaded, match="full"):
        b.submit(owner, np.zeros(1), time.perf_counter() + 10)
    assert gave_up.cancel()  # its request timed out: the model must not spend time on it
    b.start()
    with pytest.raises(Expired):
        expired.result(5)
    assert ok.result(5)[1] == 1.0
    b.stop()
    assert sizes == [1]


def test_a_failing_batch_fails_its_requests_not_the_thread() -> None:
    calls = []

    def run(owner: object, batch: np.ndarray, extras: list[object]) -> list[int]:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return list(range(len(batch)))

    b = MicroBatcher(run, max_batch=4, window_s=0.0, queue_size=4)
    b.start()
    first = b.submit(object(), np.zeros(1), time.perf_counter() + 10)
    with pytest.raises(RuntimeError, match="boom"):
        first.result(5)
    assert b.submit(object(), np.zeros(1), time.perf_counter() + 10).result(5) == 0
    assert b.alive
    b.stop()


def test_submit_call_runs_on_the_inference_thread() -> None:
    b = MicroBatcher(lambda o, x, e: list(x), max_batch=2, window_s=0.0, queue_size=4)
    b.start()
    name = b.submit_call(lambda: threading.current_thread().name,
                         time.perf_counter() + 10).result(5)
    b.stop()
    assert name == "skin-inference"


# --- the CLI ------------------------------------------------------------------------------------


def test_cli_serve_help_and_clear_errors(tmp_path: Path) -> None:
    from skincli.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--port", "--workers", "--max-batch", "--batch-window-ms", "--max-upload-mb",
                   "--max-pixels", "--timeout-s", "--queue-size", "--cors-origin",
                   "--api-keys-file", "--store", "--no-log", "--runs-dir"):
        assert option in result.output, option
    result = runner.invoke(app, ["serve", "nope", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "nope" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["serve", "--runs-dir", str(tmp_path)], env={"SKIN_PORT": "x"})
    assert result.exit_code == 1 and "SKIN_PORT" in result.output
    result = runner.invoke(app, ["export", "--help"])
    assert result.exit_code == 0 and "SavedModel" in result.output


def test_cli_serve_busy_port_bad_host_and_damaged_model(tmp_path: Path) -> None:
    """Each is one line before any model loads (no Uvicorn log, no exit code 3)."""
    import socket

    from helpers_run import make_run

    from skincli.cli import app

    runner = CliRunner()
    make_run(tmp_path, classes=["a", "b"], name="m1")
    runs = str(tmp_path / "runs")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["serve", "m1", "--runs-dir", runs, "--port", str(port)])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"error: Port {port} on 127.0.0.1 is already in use")
    assert "--port" in result.output and len(result.output.strip().splitlines()) == 1
    host = "no-such-host.invalid"
    result = runner.invoke(app, ["serve", "m1", "--runs-dir", runs, "--host", host])
    assert result.exit_code == 1 and f"Cannot listen on --host {host}" in result.output
    result = runner.invoke(app, ["serve", "m1", "--runs-dir", runs, "--port", "70000"])
    assert result.exit_code == 1 and "--port (SKIN_PORT) 70000 is out of range" in result.output
    (tmp_path / "runs" / "m1" / "model.keras").write_bytes(b"PK\x03\x04 cut short")
    result = runner.invoke(app, ["serve", "m1", "--runs-dir", runs])
    assert result.exit_code == 1 and "model.keras is damaged" in result.output
    result = runner.invoke(app, ["export", "m1", "--runs-dir", runs, "--out",
                                 str(tmp_path / "exp")])
    assert result.exit_code == 1 and "model.keras is damaged" in result.output
    assert not (tmp_path / "exp").exists()


def test_cli_serve_and_export_model_that_fails_to_load(tmp_path: Path) -> None:
    """A valid archive with cut-short weights passes the quick check but cannot load:
    serve and export still say so in one line, and export leaves no folder behind."""
    import zipfile

    from helpers_run import make_run

    from skincli.cli import app

    make_run(tmp_path, classes=["a", "b"], name="m1")
    model_file = tmp_path / "runs" / "m1" / "model.keras"
    with zipfile.ZipFile(model_file) as src:
        members = {name: src.read(name) for name in src.namelist()}
    with zipfile.ZipFile(model_file, "w") as dst:
        for name, data in members.items():
            dst.writestr(name, data[: len(data) // 3] if name.endswith(".h5") else data)
    runner = CliRunner()
    runs = str(tmp_path / "runs")
    for argv in (["serve", "m1", "--runs-dir", runs, "--port", "0"],
                 ["export", "m1", "--runs-dir", runs, "--out", str(tmp_path / "exp" / "x")]):
        result = runner.invoke(app, argv)
        assert result.exit_code == 1, result.output
        assert "Cannot load the model of run" in result.output, result.output
        assert "Traceback" not in result.output and "Serving" not in result.output
    assert not (tmp_path / "exp").exists()


def test_check_listen_accepts_a_free_port() -> None:
    from skincli.cli.serve import check_listen

    check_listen("127.0.0.1", 0)  # port 0: any free port; must not raise
