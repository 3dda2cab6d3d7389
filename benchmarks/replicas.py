"""Two `skin serve` replicas behind nginx, one PostgreSQL store, a bounded load, a replica
stopped and restarted, and a rolling reload to a new run: does any request fail?

    python benchmarks/replicas.py [--clients 16] [--seconds 30] [--store postgresql://...]

Everything listens on 127.0.0.1 on free ports. Without --store a throw-away PostgreSQL cluster
is started (tests/pg.py) and removed at the end. nginx runs with deploy/nginx.conf, only its
addresses, port and file paths rewritten. The load is `clients` threads, each sending one
image at a time to /v1/predict through nginx, for `seconds` seconds. Timeline: replica A gets
SIGTERM at 25% of the time and is started again at once; at 60% the new run is made current
and each replica in turn is told to reload it (POST /v1/model/reload). Once the load ends, the
fleet is probed: requests through nginx and to each replica directly, all sent after both
reloads returned, must be answered by the new run. At the end the replicas stop (SIGTERM: they
flush their prediction logs) and the store is checked: every answered request id exactly once.
Prints a table; exits 1 if any request failed, a row is missing or a probe got the old run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tiny run builder and the PostgreSQL cluster
API_KEY = "replica-test-key"


def _http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None
          = None, timeout: float = 40.0) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def _multipart(data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class Replica:
    """One `skin serve` process on its own port (follows runs/CURRENT)."""

    def __init__(self, name: str, port: int, runs: Path, store: str, workdir: Path) -> None:
        self.name, self.port, self.runs, self.store, self.workdir = name, port, runs, store, \
            workdir
        self.proc: subprocess.Popen | None = None
        self.log = workdir / f"{name}.log"

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2",
                   SKIN_API_KEY=API_KEY)
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "skincli", "serve", "--host", "127.0.0.1", "--port",
                 str(self.port), "--workers", "1", "--runs-dir", str(self.runs), "--store",
                 self.store], cwd=self.workdir, env=env, stdout=fh, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica {self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                if _http("GET", f"http://127.0.0.1:{self.port}/ready", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"replica {self.name} not ready after {timeout:g} s")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait: it finishes accepted requests and flushes the prediction log."""
        if self.proc is None or self.proc.poll() is not None:
            return 0 if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def version(self) -> str:
        return json.loads(_http("GET", f"http://127.0.0.1:{self.port}/v1/model",
                                headers={"X-API-Key": API_KEY})[2]).get("version", "")

    def reload(self, run: str) -> int:
        return _http("POST", f"http://127.0.0.1:{self.port}/v1/model/reload?run={run}",
                     headers={"X-API-Key": API_KEY}, timeout=120)[0]


class Nginx:
    """nginx with deploy/nginx.conf, pointed at the replicas."""

    def __init__(self, workdir: Path, port: int, upstreams: list[int]) -> None:
        self.workdir, self.port = workdir, port
        conf = (ROOT / "deploy" / "nginx.conf").read_text()
        servers = "".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;\n"
                          for p in upstreams)
        conf = re.sub(r"(    upstream skin \{\n[^\n]*\n)(?:        server [^\n]*\n)+",
                      lambda m: m.group(1) + servers, conf)
        conf = conf.replace("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{port};")
        conf = conf.replace("/run/nginx-skin.pid", str(workdir / "nginx.pid"))
        conf = conf.replace("/var/log/nginx/skin-error.log", str(workdir / "nginx-error.log"))
        temp = "".join(f"    {kind}_temp_path {workdir / kind};\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf = conf.replace("http {\n", "http {\n" + temp, 1)
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(conf)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen([binary, "-p", str(self.workdir), "-c", str(self.conf),
                                      "-g", "daemon off;"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.proc.stderr.read().decode()}")
            try:
                _http("GET", f"http://127.0.0.1:{self.port}/health", timeout=2)
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("nginx did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _ask(url: str, image: bytes, rid: str) -> tuple[int, str, str]:
    """POST one image to /v1/predict: (status, request id, the model version that answered)."""
    body, ctype = _multipart(image)
    status, headers, raw = _http("POST", url, body, {
        "Content-Type": ctype, "X-API-Key": API_KEY, "X-Request-ID": rid})
    if status == 200:
        rid = json.loads(raw)["request_id"]
    return status, rid, headers.get("x-model-version", "")


def _probe(nginx_url: str, replicas: list[Replica], image: bytes) -> list[tuple[int, str, str]]:
    """Requests sent now, one after another: two per replica through nginx, and one to each
    replica directly (so every replica is asked whatever nginx's choice)."""
    urls = [nginx_url] * (2 * len(replicas)) + [
        f"http://127.0.0.1:{r.port}/v1/predict" for r in replicas]
    return [_ask(url, image, f"probe-{i}-{uuid.uuid4().hex[:8]}") for i, url in enumerate(urls)]


def _images(n: int = 8) -> list[bytes]:
    import numpy as np
    from PIL import Image

    out = []
    rng = np.random.default_rng(0)
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


Result = tuple[float, int, str, str, float]  # start (s after t0), status, request id, model, ms


def _load(url: str, images: list[bytes], clients: int, t0: float, stop_at: float
          ) -> tuple[list[threading.Thread], list[Result]]:
    """Start `clients` threads, each sending one image at a time until `stop_at`."""
    results: list[Result] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        i = 0
        while time.monotonic() < stop_at:
            rid = f"c{k}-{i}-{uuid.uuid4().hex[:8]}"
            start = time.monotonic()
            try:
                status, rid, model = _ask(url, images[(k + i) % len(images)], rid)
            except OSError as exc:
                status, model = 0, type(exc).__name__
            with lock:
                results.append((start - t0, status, rid, model,
                                (time.monotonic() - start) * 1000))
            i += 1

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    return threads, results


def _timeline(replicas: list[Replica], runs: Path, t0: float, seconds: float
              ) -> list[tuple[float, str]]:
    """Under load: restart replica A at 25% of the time, reload both to `new` at 60%."""
    events: list[tuple[float, str]] = []
    time.sleep(max(0.0, t0 + 0.25 * seconds - time.monotonic()))
    events.append((time.monotonic() - t0, "SIGTERM replica A"))
    code = replicas[0].stop()
    events.append((time.monotonic() - t0, f"replica A exited ({code}); starting it again"))
    replicas[0].start()
    replicas[0].wait_ready()
    events.append((time.monotonic() - t0, "replica A ready again"))
    time.sleep(max(0.0, t0 + 0.6 * seconds - time.monotonic()))
    (runs / "CURRENT").write_text("new\n")  # a restart from now on serves the new run
    for r in replicas:
        status = r.reload("new")
        events.append((time.monotonic() - t0, f"replica {r.name} reloaded to new ({status})"))
    return events


def _summary(results: list[Result], probes: list[tuple[int, str, str]], rows: Any,
             elapsed: float) -> dict[str, Any]:
    """Failures, throughput, latency, and every answered request id against the store."""
    answered = [rid for _, s, rid, _, _ in results if s == 200]
    answered += [rid for s, rid, _ in probes if s == 200]
    counts = Counter(rows["request_id"])
    statuses = Counter([s for _, s, _, _, _ in results] + [s for s, _, _ in probes])
    lat = sorted(ms for _, s, _, _, ms in results if s == 200)
    return {
        "seconds": round(elapsed, 1),
        "requests": len(results) + len(probes), "probes": len(probes),
        "statuses": dict(statuses),
        "failed": len(results) + len(probes) - statuses.get(200, 0),
        "rps": round(statuses.get(200, 0) / elapsed, 1),
        "p50_ms": round(lat[len(lat) // 2], 1) if lat else None,
        "p99_ms": round(lat[int(len(lat) * 0.99)], 1) if lat else None,
        "answered": len(answered), "rows": len(rows),
        "logged_once": sum(1 for rid in answered if counts.get(rid) == 1),
        "missing": sum(1 for rid in answered if rid not in counts),
        "duplicated": sum(1 for rid in answered if counts.get(rid, 0) > 1),
        "extra_rows": len(set(counts) - set(answered)),
        "models_after_reload": dict(Counter(m for s, _, m in probes if s == 200)),
    }


def run(clients: int = 16, seconds: float = 30.0, store: str | None = None,
        workdir: Path | None = None) -> dict[str, Any]:
    """The whole scenario; returns what was measured (see the module docstring)."""
    from helpers_run import make_run
    from pg import PgCluster, find_bin_dir, free_port

    from skincli.monitor.store import open_store

    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="skin-replicas-")) if own else Path(workdir)
    cluster = None
    replicas: list[Replica] = []
    nginx = None
    try:
        if store is None:
            bin_dir = find_bin_dir()
            if bin_dir is None:
                raise RuntimeError("PostgreSQL binaries not found (install `postgresql`) "
                                   "or pass --store")
            cluster = PgCluster(bin_dir)
            cluster.start()
            store = cluster.new_database()
        runs = work / "runs"
        old = make_run(work, name="old", runs_dir=runs, created="2026-01-01T00:00:00", seed=0)
        new = make_run(work, name="new", runs_dir=runs, created="2026-02-01T00:00:00", seed=1)
        (runs / "CURRENT").write_text("old\n")
        ports = [free_port(), free_port()]
        replicas = [Replica(n, p, runs, store, work) for n, p in zip("AB", ports)]
        for r in replicas:
            r.start()
        for r in replicas:
            r.wait_ready()
        nginx = Nginx(work, free_port(), ports)
        nginx.start()

        images = _images()
        url = f"http://127.0.0.1:{nginx.port}/v1/predict"
        t0 = time.monotonic()
        threads, results = _load(url, images, clients, t0, t0 + seconds)
        events = _timeline(replicas, runs, t0, seconds)
        for t in threads:
            t.join(seconds + 60)
        elapsed = time.monotonic() - t0
        # Both reloads have returned, so every request sent from now on must get the new run,
        # whatever the load did meanwhile.
        probes = _probe(url, replicas, images[0])
        versions = [r.version() for r in replicas]
        nginx.stop()
        codes = [r.stop() for r in replicas]
        db = open_store(store)
        rows = db.predictions()
        db.close()
        return {"clients": clients, **_summary(results, probes, rows, elapsed),
                "versions_after": versions,
                "old_version": f"{old.name}@2026-01-01T00:00:00",
                "new_version": f"{new.name}@2026-02-01T00:00:00",
                "exit_codes": codes, "events": events}
    finally:
        if nginx is not None:
            nginx.stop()
        for r in replicas:
            r.stop(10)
        if cluster is not None:
            cluster.destroy()
        if own:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--store", default=None, help="a PostgreSQL URL (default: a "
                        "throw-away cluster)")
    args = parser.parse_args()
    r = run(args.clients, min(args.seconds, 600.0), args.store)
    for t, what in r["events"]:
        print(f"  t={t:5.1f} s  {what}")
    print("| clients | seconds | requests | failed | answered/s | p50 ms | p99 ms | logged "
          "once | missing | duplicated |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {r['clients']} | {r['seconds']} | {r['requests']} | {r['failed']} | {r['rps']} | "
          f"{r['p50_ms']} | {r['p99_ms']} | {r['logged_once']}/{r['answered']} | "
          f"{r['missing']} | {r['duplicated']} |")
    print(f"status codes {r['statuses']}; models answering {r['probes']} requests sent after "
          f"both reloads {r['models_after_reload']}; replicas now serve {r['versions_after']}")
    ok = (r["failed"] == 0 and r["logged_once"] == r["answered"] and r["extra_rows"] == 0
          and set(r["models_after_reload"]) == {r["new_version"]})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
