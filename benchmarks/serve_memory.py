"""Memory of `skin serve` under an upload attack: tiny files that decode to huge images.

    python benchmarks/serve_memory.py                       # this checkout
    python benchmarks/serve_memory.py --code /tmp/old       # another checkout, same attack

The attack: one POST /v1/predict/batch with 16 PNGs of 7000 x 7000 1-bit pixels (49 Mpx each,
about 30 KB each on the wire), then 8 concurrent POST /v1/predict of the same file. The server
runs in its own process on 127.0.0.1 with its default options (a tiny 224-px model, prediction
log off) and the script reads the process's resident memory (VmRSS, and the kernel's peak
VmHWM) from /proc before, during and after. It prints one table row per phase.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))  # the tiny run builder and the server starter
from serve_proc import Served, ServeStartError, serve_process  # noqa: E402


def bomb_png(side: int = 7000) -> bytes:
    """A 1-bit PNG of side x side pixels: a few KB that decode to side^2 pixels."""
    from PIL import Image, ImageDraw

    img = Image.new("1", (side, side), 0)
    ImageDraw.Draw(img).ellipse((side // 7, side // 7, side * 6 // 7, side * 6 // 7), fill=1)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


def make_run(root: Path, input_size: int = 224) -> Path:
    """A tiny untrained run with a 224-px input (what the attack is sized against)."""
    from helpers_run import make_run as make

    return make(root, input_size=input_size, name="mem", runs_dir=root / "runs").parent


def serve(runs: Path, code: Path, extra: list[str]) -> AbstractContextManager[Served]:
    """`skin serve` from checkout `code` with its defaults (log off) on a free port, ready."""
    return serve_process(runs, *extra, cwd=runs.parent, env={"PYTHONPATH": str(code)},
                         ready_s=120)


def attack(url: str, pid: int, data: bytes, files: int = 16, singles: int = 8,
           timeout: float = 120) -> dict[str, Any]:
    """Run the attack; return RSS before/peak/after and the response statuses."""
    import httpx

    before, _ = rss_mb(pid)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                peak[0] = max(peak[0], rss_mb(pid)[0])
            except OSError:
                return
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    statuses: list[str] = []
    try:
        batch = [("files", (f"{i}.png", data, "image/png")) for i in range(files)]
        r = httpx.post(url + "/v1/predict/batch", files=batch, timeout=timeout)
        items = r.json().get("results", []) if r.status_code == 200 else []
        statuses.append(f"batch {r.status_code}: " + ", ".join(
            f"{sum(1 for it in items if (it.get('error') or {}).get('error') == code)} {code}"
            for code in ("overloaded", "too_many_pixels")) +
            f", {sum(1 for it in items if it.get('prediction'))} predicted")
        after_batch, _ = rss_mb(pid)

        results: list[int] = []

        def one() -> None:
            try:
                results.append(httpx.post(url + "/v1/predict", files={
                    "file": ("a.png", data, "image/png")}, timeout=timeout).status_code)
            except httpx.HTTPError:
                results.append(0)

        threads = [threading.Thread(target=one) for _ in range(singles)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout)
        statuses.append("singles " + ",".join(str(s) for s in sorted(results)))
    finally:
        done.set()
        sampler.join(5)
    time.sleep(1.0)
    after, hwm = rss_mb(pid)
    return {"before_mb": before, "after_batch_mb": after_batch, "peak_mb": max(peak[0], hwm),
            "after_mb": after, "statuses": statuses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=REPO,
                        help="checkout whose skincli serves (default: this one)")
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--singles", type=int, default=8)
    parser.add_argument("--side", type=int, default=7000)
    parser.add_argument("serve_args", nargs="*", help="extra `skin serve` options (after --)")
    args = parser.parse_args()
    data = bomb_png(args.side)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runs = make_run(root)
        try:
            with serve(runs, args.code.resolve(), args.serve_args) as server:
                out = attack(server.url, server.proc.pid, data, args.files, args.singles)
        except ServeStartError as exc:
            raise SystemExit(str(exc)) from None
    print(f"code: {args.code}  attack: {args.files} x {args.side}x{args.side} 1-bit PNG "
          f"({len(data) / 1024:.0f} KB each) in one batch, then {args.singles} singles")
    print(f"{'RSS before':>12} {'after batch':>12} {'peak':>10} {'after':>10}  (MB)")
    print(f"{out['before_mb']:12.0f} {out['after_batch_mb']:12.0f} {out['peak_mb']:10.0f} "
          f"{out['after_mb']:10.0f}")
    for line in out["statuses"]:
        print("  " + line)


if __name__ == "__main__":
    main()
