"""Serving latency and throughput: `skin serve` on each engine vs a naive FastAPI app.

    python benchmarks/serve_latency.py                      # EfficientNet-Lite0 bench run
    python benchmarks/serve_latency.py --run runs/train     # a trained run (same timing)
    python benchmarks/serve_latency.py --arch tiny --requests 100   # quick check

1. Offline, per engine: the model's batch throughput (Predictor on preprocessed batches, no
   HTTP), in a child process, before and after the servers (the better one is the reference).
2. `skin serve` (app factory, micro-batching) with the LiteRT engine, then with the TensorFlow
   engine, each in a Uvicorn subprocess on 127.0.0.1.
3. A naive baseline: FastAPI calling Keras `model.predict` per request (same run, same
   preprocessing) in a Uvicorn subprocess on 127.0.0.1.

For each server, a separate load process sends N requests at concurrency 1, 4 and 16 (bounded
by --requests and --max-seconds per level; loopback only). Printed: p50/p95/p99 latency and
images/s side by side, the ratios (LiteRT p50 / TF p50 at c=1, c=16 throughput / offline
LiteRT batch throughput, LiteRT / naive at c=16), where a c=1 request's time goes (the
server's own inference histogram vs the request time), and everything as JSON. The servers
and the load generator share this machine's cores, as they would on a single host.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# FastAPI at module level: it resolves the baseline endpoint's annotations from here.
import numpy as np  # noqa: E402
from benchrun import make_bench_run, make_payload  # noqa: E402  (this folder)
from fastapi import FastAPI, File, UploadFile  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HOST = "127.0.0.1"  # loopback only
ENGINES = ("litert", "tf")


# --- the naive baseline app (imported by its own Uvicorn process) --------------------------------

def baseline_app() -> Any:
    """FastAPI calling keras `model.predict` per request: what a first version usually does."""
    from skincli.calibration import softmax
    from skincli.predictor import Predictor

    predictor = Predictor.from_run(os.environ["BENCH_RUN"], os.environ.get("BENCH_RUNS_DIR",
                                                                           "runs"), engine="tf")
    model = predictor.model
    model.predict(np.zeros((1, predictor.input_size, predictor.input_size, 3), np.float32),
                  verbose=0)
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/predict")
    def predict(file: UploadFile = File(...)) -> dict[str, Any]:
        x = predictor.preprocess(file.file.read())[None]
        probs = softmax(model.predict(x, verbose=0), predictor.temperature)[0]
        i = int(np.argmax(probs))
        return {"label": predictor.classes[i], "probability": float(probs[i]),
                "probabilities": dict(zip(predictor.classes, map(float, probs)))}

    return app


# --- helpers -----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def pick_run(args: argparse.Namespace, workdir: Path) -> tuple[Path, str]:
    """The run to serve: --run, else a trained efficientnet run in runs/, else a bench run."""
    from skincli.runs import finished_runs, load_run_info, resolve_run

    if args.run:
        return resolve_run(args.run, args.runs_dir), "given"
    if args.arch == "efficientnet":
        for run in reversed(finished_runs(REPO / "runs")):
            if load_run_info(run).arch in ("efficientnet", "efficientnet_lite0"):
                return run, "trained run found in runs/"
    arch = "efficientnet_lite0" if args.arch == "efficientnet" else args.arch
    return (make_bench_run(workdir, arch),
            "untrained head on the ImageNet backbone (timing does not depend on weights)")


def offline_throughput(run_dir: Path, batch: int, seconds: float, payload: bytes,
                       engine: str = "litert") -> dict[str, float]:
    """Images/s of the Predictor on ready batches, and one-image latency, without HTTP."""
    from skincli.predictor import Predictor

    predictor = Predictor.from_run(run_dir, engine=engine)
    x = np.stack([predictor.preprocess(payload)] * batch)
    predictor.probabilities(x, batch_size=batch)
    predictor.probabilities(x[:1], batch_size=1)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 3 * batch:
        predictor.probabilities(x, batch_size=batch)
        n += batch
    per_s = n / (time.perf_counter() - start)
    singles = []
    for _ in range(20):
        t = time.perf_counter()
        predictor.probabilities(x[:1], batch_size=1)
        singles.append(time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(20):
        predictor.preprocess(payload)
    decode_ms = (time.perf_counter() - t) / 20 * 1000
    body = {"label": "x", "probabilities": {c: 0.1 for c in predictor.classes}}
    t = time.perf_counter()
    for _ in range(200):
        json.dumps(body)
    json_ms = (time.perf_counter() - t) / 200 * 1000
    return {"images_per_s": per_s, "batch": batch, "single_image_ms": float(
        np.median(singles) * 1000), "decode_resize_ms": decode_ms, "json_ms": json_ms,
        "input_size": predictor.input_size, "engine": predictor.engine_name}


class Server:
    """A Uvicorn subprocess on a free loopback port."""

    def __init__(self, target: list[str], env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "uvicorn", *target, "--host", HOST, "--port",
               str(self.port), "--log-level", "warning", "--no-access-log"]
        self.proc = subprocess.Popen(cmd, env={**os.environ, **env}, cwd=REPO,
                                     stdout=subprocess.DEVNULL, stderr=log.open("w"))

    def wait(self, timeout: float = 180) -> None:
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited; see {self.log}:\n{self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise SystemExit(f"server did not start in {timeout:.0f} s; see {self.log}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _load_worker(url: str, payload: bytes, concurrency: int, n: int, max_s: float,
                 out: Any) -> None:
    """Runs in its own process: n requests, `concurrency` in flight, bounded by max_s."""
    import asyncio

    import httpx

    async def main() -> tuple[list[float], int, float]:
        latencies: list[float] = []
        errors = 0
        todo = iter(range(n))
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=120) as client:
            start = time.perf_counter()
            deadline = start + max_s

            async def worker() -> None:
                nonlocal errors
                for _ in todo:
                    if time.perf_counter() > deadline:
                        return
                    t = time.perf_counter()
                    try:
                        r = await client.post(url + "/v1/predict",
                                              files={"file": ("x.jpg", payload, "image/jpeg")})
                        ok = r.status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    if ok:
                        latencies.append(time.perf_counter() - t)
                    else:
                        errors += 1

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return latencies, errors, time.perf_counter() - start

    out.put(asyncio.run(main()))


def measure(url: str, payload: bytes, concurrency: int, n: int, max_s: float) -> dict[str, Any]:
    """Send the load from a separate process; return latency percentiles and throughput."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_load_worker, args=(url, payload, concurrency, n, max_s, out))
    proc.start()
    latencies, errors, wall = out.get(timeout=max_s + 180)
    proc.join(30)
    lat = np.array(latencies) * 1000
    pct = (lambda q: float(np.percentile(lat, q))) if len(lat) else (lambda q: float("nan"))
    return {"concurrency": concurrency, "requests": len(latencies) + errors,
            "ok": len(latencies), "errors": errors, "p50_ms": pct(50), "p95_ms": pct(95),
            "p99_ms": pct(99), "images_per_s": len(latencies) / wall if wall > 0 else 0.0,
            "seconds": wall}


def run_server(name: str, server: Server, payload: bytes, levels: list[int], n: int,
               max_s: float) -> list[dict[str, Any]]:
    server.wait()
    measure(server.url, payload, 4, 20, 60)  # warm-up: connections, first batches
    rows = []
    for c in levels:
        before = _batch_sizes(server.url) if name.startswith("skin") else {}
        row = measure(server.url, payload, c, n, max_s)
        row["server"] = name
        if before:
            after = _batch_sizes(server.url)
            passes = after["batches"] - before["batches"]
            row["mean_batch"] = (after["images"] - before["images"]) / passes if passes else 0.0
            row["mean_inference_ms"] = ((after["inference_s"] - before["inference_s"]) / passes
                                        * 1000 if passes else float("nan"))
        rows.append(row)
        print(f"  {name:9s} c={c:<3d} p50 {row['p50_ms']:7.1f} ms  p95 {row['p95_ms']:7.1f}  "
              f"p99 {row['p99_ms']:7.1f}  {row['images_per_s']:6.1f} img/s  "
              f"({row['ok']} ok, {row['errors']} errors"
              + (f", mean batch {row['mean_batch']:.1f})" if "mean_batch" in row else ")"),
              flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="run name or folder (default: see --arch)")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--arch", default="efficientnet",
                        help="without --run: a trained run of this arch in runs/, else a "
                             "bench run built for timing (default efficientnet = Lite0)")
    parser.add_argument("--requests", type=int, default=200, help="requests per level")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--max-seconds", type=float, default=40.0, help="cap per level")
    parser.add_argument("--image-px", type=int, default=0,
                        help="side of the JPEG sent (default: the model's input size)")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--batch-window-ms", type=float, default=5.0)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--out", default="serve_latency.json", help="JSON results file")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if args.requests < 1 or not levels or min(levels) < 1 or args.max_seconds <= 0:
        raise SystemExit("--requests, --concurrency and --max-seconds must be positive")

    from skincli import ui
    from skincli.runs import load_run_info

    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        work = Path(tmp)
        run_dir, origin = pick_run(args, work)
        info = load_run_info(run_dir)
        payload = make_payload(args.image_px or info.input_size)
        print(f"run {run_dir} ({info.arch}, {info.input_size} px, {origin}); "
              f"payload {len(payload) / 1024:.1f} KB JPEG; {os.cpu_count()} CPUs", flush=True)

        load_before = os.getloadavg()[0]
        offline_runs: dict[str, list[dict[str, float]]] = {e: [] for e in ENGINES}
        for engine in ENGINES:
            offline_runs[engine].append(_offline(run_dir, args.max_batch, payload, "before",
                                                 engine))
        rows: list[dict[str, Any]] = []
        batches: dict[str, Any] = {}
        base_env = {
            "SKIN_RUN": str(run_dir.resolve()), "SKIN_RUNS_DIR": str(run_dir.parent.resolve()),
            "SKIN_NO_LOG": "1", "SKIN_MAX_BATCH": str(args.max_batch),
            "SKIN_BATCH_WINDOW_MS": str(args.batch_window_ms), "SKIN_QUEUE_SIZE": "512",
            "SKIN_TIMEOUT_S": "120"}
        for engine in ENGINES:
            name = f"skin-{engine}"
            server = Server(["--factory", "skincli.serve.app:create_app"],
                            {**base_env, "SKIN_ENGINE": engine}, work / f"{name}.log")
            try:
                rows += run_server(name, server, payload, levels, args.requests,
                                   args.max_seconds)
                batches[engine] = _batch_sizes(server.url)
            finally:
                server.stop()
        if not args.skip_baseline:
            naive = Server(["--factory", "--app-dir", str(HERE), "serve_latency:baseline_app"], {
                "BENCH_RUN": str(run_dir.resolve()),
                "BENCH_RUNS_DIR": str(run_dir.parent.resolve())}, work / "baseline.log")
            try:
                rows += run_server("naive", naive, payload, levels, args.requests,
                                   args.max_seconds)
            finally:
                naive.stop()
        # Offline again after the servers: the better of the two is the (stricter) reference,
        # so that a busy machine during one measurement does not flatter the server.
        for engine in ENGINES:
            offline_runs[engine].append(_offline(run_dir, args.max_batch, payload, "after",
                                                 engine))
        offline = {e: max(r, key=lambda o: o["images_per_s"]) for e, r in offline_runs.items()}
        load_after = os.getloadavg()[0]

    by = {(r["server"], r["concurrency"]): r for r in rows}

    def f1(x: float) -> str:
        return f"{x:.1f}"

    def ratio(a: float | None, b: float | None, fmt: str = "{:.2f}x") -> str:
        return fmt.format(a / b) if a and b else "-"

    table_rows = []
    for c in levels:
        lt, tf, nv = by[("skin-litert", c)], by[("skin-tf", c)], by.get(("naive", c))
        table_rows.append([
            str(c), f1(lt["p50_ms"]), f1(lt["p99_ms"]), f1(lt["images_per_s"]),
            f1(lt.get("mean_batch", float("nan"))), f1(tf["p50_ms"]), f1(tf["images_per_s"]),
            f1(nv["p50_ms"]) if nv else "-", f1(nv["images_per_s"]) if nv else "-",
            ratio(lt["p50_ms"], tf["p50_ms"]),
            ratio(lt["images_per_s"], offline["litert"]["images_per_s"], "{:.0%}"),
            ratio(lt["images_per_s"], nv["images_per_s"]) if nv else "-",
            str(lt["errors"] + tf["errors"] + (nv["errors"] if nv else 0))])
    from rich.console import Console

    wide = Console(width=170)
    wide.print(ui.table(
        f"Serving {info.arch} ({info.input_size} px) on {os.cpu_count()} CPUs; offline batch "
        f"{args.max_batch}: LiteRT {offline['litert']['images_per_s']:.1f} img/s, TF "
        f"{offline['tf']['images_per_s']:.1f} img/s",
        ["conc.", "litert p50 ms", "p99", "litert img/s", "batch", "tf p50 ms", "tf img/s",
         "naive p50 ms", "naive img/s", "p50 litert/tf", "litert/offline", "litert/naive",
         "errors"], table_rows))
    c1, c16 = by.get(("skin-litert", 1)), by.get(("skin-litert", 16))
    tf1, nv16 = by.get(("skin-tf", 1)), by.get(("naive", 16))
    targets = {
        "p50_c1_ms": c1["p50_ms"] if c1 else None,
        "p50_c1_litert_vs_tf": c1["p50_ms"] / tf1["p50_ms"] if c1 and tf1 else None,
        "c16_vs_offline_litert": (c16["images_per_s"] / offline["litert"]["images_per_s"]
                                  if c16 else None),
        "c16_vs_naive": c16["images_per_s"] / nv16["images_per_s"] if c16 and nv16 else None,
    }
    ui.console.print(
        f"targets: c=1 p50 LiteRT/TF {targets['p50_c1_litert_vs_tf'] or float('nan'):.2f} "
        f"(<= 0.5); c=16 {targets['c16_vs_offline_litert'] or float('nan'):.0%} of offline "
        f"LiteRT (>= 80%); c=16 {targets['c16_vs_naive'] or float('nan'):.1f}x naive (>= 10); "
        f"load average {load_before:.1f} before, {load_after:.1f} after", highlight=False)
    if c1:
        o = offline["litert"]
        infer = c1.get("mean_inference_ms", float("nan"))
        ui.console.print(
            f"where a c=1 LiteRT request's {c1['p50_ms']:.1f} ms (p50) go: model "
            f"{infer:.1f} ms (server's inference histogram), decode+resize "
            f"{o['decode_resize_ms']:.1f} ms, JSON {o['json_ms']:.2f} ms (offline), the rest "
            f"{c1['p50_ms'] - infer - o['decode_resize_ms']:.1f} ms = HTTP, multipart, "
            "threadpool hops, queue, response", highlight=False)
    result = {"run": str(run_dir), "run_origin": origin, "arch": info.arch,
              "input_size": info.input_size, "payload_bytes": len(payload),
              "cpus": os.cpu_count(), "offline": offline, "offline_runs": offline_runs,
              "load_average": {"before": load_before, "after": load_after}, "levels": rows,
              "skin_batch_sizes": batches, "targets": targets,
              "settings": {"max_batch": args.max_batch, "batch_window_ms": args.batch_window_ms,
                           "requests": args.requests, "max_seconds": args.max_seconds},
              "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    ui.console.print(f"wrote {args.out}")


def _offline(run_dir: Path, batch: int, payload: bytes, when: str, engine: str
             ) -> dict[str, float]:
    # In a child process so the parent holds no TensorFlow threads while servers run.
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        result = pool.apply(offline_throughput, (run_dir, batch, 8.0, payload, engine))
    print(f"  offline {engine:6s} ({when}) batch {batch}: {result['images_per_s']:.1f} img/s; "
          f"one image {result['single_image_ms']:.1f} ms; decode+resize "
          f"{result['decode_resize_ms']:.1f} ms",
          flush=True)
    return result


def _batch_sizes(url: str) -> dict[str, float]:
    """Mean images per forward pass, read from the server's own /metrics."""
    import httpx

    text = httpx.get(url + "/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        for key in ("skin_batch_size_sum", "skin_batch_size_count",
                    "skin_inference_seconds_sum"):
            if line.startswith(key + " "):
                values[key] = float(line.split()[1])
    count = values.get("skin_batch_size_count", 0.0)
    return {"batches": count, "images": values.get("skin_batch_size_sum", 0.0),
            "inference_s": values.get("skin_inference_seconds_sum", 0.0),
            "mean": values.get("skin_batch_size_sum", 0.0) / count if count else float("nan")}


if __name__ == "__main__":
    main()
