"""Memory under an upload attack: tiny PNGs that decode to 49 Mpx each (a real server process).

The attack of benchmarks/serve_memory.py, bounded: one batch of 16 x 7000x7000 1-bit PNGs, then
8 concurrent single predicts. Without a decode budget the server's RSS grew by ~8.5 GB here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

if not sys.platform.startswith("linux"):  # pragma: no cover
    pytest.skip("reads /proc/<pid>/status", allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent


def _bench() -> object:
    spec = importlib.util.spec_from_file_location("serve_memory",
                                                  REPO / "benchmarks" / "serve_memory.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The bound docs/serving.md states for the default --decode-mpx 64: growth of the server's peak RSS.
PEAK_GROWTH_MB = 600
RETAINED_MB = 200


def test_decompression_attack_keeps_memory_bounded(tmp_path: Path) -> None:
    bench = _bench()
    runs = bench.make_run(tmp_path)
    with bench.serve(runs, REPO, []) as server:
        out = bench.attack(server.url, server.proc.pid, bench.bomb_png(7000),
                           files=16, singles=8, timeout=90)
    growth = out["peak_mb"] - out["before_mb"]
    assert growth < PEAK_GROWTH_MB, out
    assert out["after_mb"] - out["before_mb"] < RETAINED_MB, out
    # Every image was answered (decoded small) or refused as busy: never a 5xx for the request.
    assert out["statuses"][0].startswith("batch 200"), out
    assert all(code in ("200", "503") for code in out["statuses"][1].split()[1].split(",")), out
