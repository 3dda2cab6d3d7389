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


def test_data_variants_keep_the_test_images_and_change_only_training(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """folder-labels: same test rows (metadata labels), train/val on folder labels without the
    conflicting copies; no-lesion-groups: a split whose lesions may straddle."""
    import pandas as pd
    from imagegen import PALETTE, make_image

    from skincli.data.dataset import load_dataset
    from skincli.data.manifest import build_manifest
    from skincli.data.split import make_split
    from skincli.data.splitfile import load_split, write_split

    monkeypatch.setenv("SKIN_CACHE_DIR", str(tmp_path / "cache"))
    data, rows = tmp_path / "data", []
    for k, name in enumerate(("melanoma", "nevus", "actinic keratosis")):
        for i in range(20):
            iid = f"ISIC_{k}{i:03d}"
            make_image(data / name / f"{iid}.jpg", PALETTE[k], seed=100 * k + i)
            rows.append({"isic_id": iid, "diagnosis": name, "lesion_id": f"L{k}{i // 2}"})
    for i in range(4):  # actinic keratoses also filed as nevus
        src = data / "actinic keratosis" / f"ISIC_2{i:03d}.jpg"
        (data / "nevus" / src.name).write_bytes(src.read_bytes())
    pd.DataFrame(rows).to_csv(tmp_path / "meta.csv", index=False)
    manifest = build_manifest(load_dataset(data, metadata=tmp_path / "meta.csv"))
    write_split(make_split(manifest, seed=0), tmp_path / "s.csv")
    frame = load_split(tmp_path / "s.csv")
    bench = _bench()
    folder = bench.variant_split("folder-labels", manifest, frame, 0).frame
    base_test = frame[frame["split"] == "test"].sort_values("path")
    var_test = folder[folder["split"] == "test"].sort_values("path")
    assert list(base_test["path"]) == list(var_test["path"])
    assert list(base_test["label"]) == list(var_test["label"])
    trained = folder[folder["split"] != "test"]
    conflicted = {f"ISIC_2{i:03d}" for i in range(4)}
    assert not any(Path(p).stem in conflicted for p in trained["path"])
    assert (trained["label"] == trained["folder_label"]).all()
    loose = bench.variant_split("no-lesion-groups", manifest, frame, 0).frame
    assert (loose["group"] == "").all() and len(loose) == len(frame)
