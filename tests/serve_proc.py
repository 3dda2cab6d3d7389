"""Start `skin serve` as a real process on 127.0.0.1, wait for `/ready`, always stop it.

Used by the process tests and by benchmarks/serve_memory.py (which puts tests/ on sys.path), so
it needs nothing but httpx: no pytest, no skincli import in this process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

HOST = "127.0.0.1"


class ServeStartError(RuntimeError):
    """The server exited or did not answer `/ready` in time."""


@dataclass
class Served:
    """A running `skin serve`: its process, port and base URL."""

    proc: subprocess.Popen
    port: int
    url: str


def free_port() -> int:
    """A port that is free on 127.0.0.1 now (chosen at run time, never fixed)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _stderr_text(proc: subprocess.Popen, log: Path | None) -> str:
    if log is not None:
        return log.read_text()
    return proc.stderr.read() if proc.stderr else ""


@contextmanager
def serve_process(runs: Path, *args: str, cwd: Path, port: int | None = None,
                  env: dict[str, str] | None = None, log: Path | None = None,
                  ready_s: float = 90.0, stop_s: float = 30.0) -> Iterator[Served]:
    """`python -m skincli serve --runs-dir RUNS --port PORT --no-log ARGS...`, ready to answer.

    The environment is this process's plus `TF_CPP_MIN_LOG_LEVEL=2` and `env`. Standard error
    goes to `log` if given, else to a text pipe (`served.proc.stderr`, readable after the block);
    standard output is discarded. On leaving the block, however it is left, a server still
    running gets SIGTERM and `stop_s` seconds to drain (`stop_s=0`: SIGKILL at once), then
    SIGKILL; it is always reaped.
    """
    port = free_port() if port is None else port
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    cmd = [sys.executable, "-m", "skincli", "serve", "--runs-dir", str(runs), "--port",
           str(port), "--no-log", *args]
    if log is not None:
        with open(log, "w") as err:  # the child keeps its own descriptor
            proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.DEVNULL,
                                    stderr=err)
    else:
        proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.time() + ready_s
        while True:
            if proc.poll() is not None:
                raise ServeStartError(f"server exited with status {proc.returncode}: "
                                      f"{_stderr_text(proc, log)}")
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() >= deadline:
                raise ServeStartError(f"server not ready in {ready_s:g} s")
            time.sleep(0.2)
        yield Served(proc, port, url)
    finally:
        if proc.poll() is None and stop_s > 0:
            proc.terminate()
            try:
                proc.wait(stop_s)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
