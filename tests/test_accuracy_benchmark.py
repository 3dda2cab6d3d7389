"""The accuracy benchmark's summary and --report mode (no training: saved result files)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("accuracy_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(config: str, fold: int, f1: float) -> dict[str, Any]:
    per = {"a": f1 - 0.1, "b": f1 + 0.1}
    return {"config": config, "fold": fold, "minutes": 1.0,
            "plain": {"macro_f1": f1, "balanced_accuracy": f1, "per_class_f1": per}}


def test_paired_difference_uses_only_shared_splits() -> None:
    bench = _bench()
    runs = [_run("default", 0, 0.70), _run("default", 1, 0.60), _run("default", 2, 0.80),
            _run("lever", 0, 0.75), _run("lever", 1, 0.62)]
    rows = {r["config"]: r for r in bench.summarise(runs)}
    assert rows["lever"]["paired_diff_mean"] == pytest.approx(0.035)  # (+0.05 +0.02) / 2
    assert rows["lever"]["paired_folds"] == 2
    assert rows["default"]["paired_diff_mean"] is None
    assert rows["default"]["macro_f1_mean"] == pytest.approx(0.70)
    assert rows["lever"]["worst_class"] == "a"


def test_report_merges_files_and_rejects_a_foreign_file(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    bench = _bench()
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"runs": [_run("default", 0, 0.70)]}))
    second.write_text(json.dumps({"runs": [_run("lever", 0, 0.66)]}))
    assert bench.main(["--report", str(first), str(second)]) == 0
    out = capsys.readouterr().out
    assert "lever" in out and "-0.040 (1)" in out
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert bench.main(["--report", str(bad)]) == 2
    assert "not a result file" in capsys.readouterr().err


def test_markdown_report_describes_configs(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench()
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"runs": [_run("default", 0, 0.70), _run("default", 1, 0.60),
                                         _run("ema", 0, 0.66)]}))
    assert bench.main(["--report", str(path), "--markdown"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| configuration |") and len(lines) == 4
    assert "0.650 ± 0.050" in lines[2]
    assert lines[3].startswith("| moving average of the weights") and "| −0.040 |" in lines[3]


def test_every_config_has_a_description() -> None:
    bench = _bench()
    assert set(bench.CONFIGS) <= set(bench.DESCRIPTIONS)
