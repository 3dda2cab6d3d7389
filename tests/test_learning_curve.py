"""`skin learning-curve`: shares, bad input, the analysis, and a tiny run end to end."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from helpers_run import write_split_lines
from imagegen import make_class_folders
from typer.testing import CliRunner

from skincli import learning_curve as lc
from skincli import powerlaw
from skincli.cli import app

runner = CliRunner()


def make_lc_split(root: Path, n_train: int = 12, n_val: int = 3, n_test: int = 3,
                  classes: tuple[str, ...] = ("blue", "green", "red"),
                  lesion_size: int = 1) -> Path:
    """A split with train/val/test parts; `lesion_size` images share one group."""
    total = n_train + n_val + n_test
    made = make_class_folders(root / "data", {c: total for c in classes}, size=(40, 40))
    lines = ["path,label,split,sha256,group"]
    for label, files in made.items():
        for i, p in enumerate(files):
            part = "train" if i < n_train else "val" if i < n_train + n_val else "test"
            digest = hashlib.sha256(Path(p).read_bytes()).hexdigest()
            group = f"{label}-{i // lesion_size}" if part == "train" else digest[:12]
            lines.append(f"{Path(p).relative_to(root / 'data').as_posix()},{label},{part},"
                         f"{digest},{group}")
    return write_split_lines(root / "splits" / "split.csv", root / "data", lines)


def test_shares_are_nested_grouped_and_stratified(tmp_path: Path) -> None:
    from skincli.data.splitfile import load_split

    df = load_split(make_lc_split(tmp_path, n_train=20, lesion_size=2))
    train = df[df["split"] == "train"].reset_index(drop=True)
    orders = lc.share_orders(train, seed=0)
    previous: set[int] = set()
    for share in (0.2, 0.35, 0.5, 0.7, 1.0):
        rows = lc.take(orders, share)
        flat = {r for rs in rows.values() for r in rs}
        assert previous <= flat  # nested
        previous = flat
        for rs in rows.values():
            assert len(rs) >= share * 20  # every class shrinks alike
            groups = set(train.loc[rs, "group"])
            # a lesion's images are all in or all out
            assert train[train["group"].isin(groups)].index.isin(rs).all()
    assert lc.take(lc.share_orders(train, 1), 0.2) != lc.take(orders, 0.2)  # seeds differ


def _fail(args: list[str], out: Path) -> str:
    res = runner.invoke(app, ["learning-curve", *args, "--out", str(out)])
    assert res.exit_code == 1, res.output
    assert not out.exists()  # nothing written
    return res.output


def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    split = make_lc_split(tmp_path, n_train=6)
    out = tmp_path / "lc"
    msg = _fail([str(split), "--target", "1.2"], out)
    assert "between 0 and 1" in msg and "Traceback" not in msg
    _fail([str(split), "--macro-target", "0"], out)
    # 40% of 6 images in lesions of 3: one lesion only.
    three = make_lc_split(tmp_path / "three", n_train=15, lesion_size=3)
    assert "1 lesion" in _fail([str(three), "--shares", "0.2,0.5,1"], out)
    assert "at least 3 shares" in _fail([str(split), "--shares", "0.5,1"], out)
    # A split of 2 lesions per class cannot carry a curve at all.
    few = make_lc_split(tmp_path / "few", n_train=6, lesion_size=3)
    assert "training lesion" in _fail([str(few)], out)


def test_share_leaving_a_class_with_one_image(tmp_path: Path) -> None:
    split = make_lc_split(tmp_path, n_train=12)
    out = tmp_path / "lc"
    msg = _fail([str(split), "--shares", "0.05,0.5,1"], out)
    assert "leaves" in msg and "1 training image" in msg


def _results(classes: list[str], shares: list[float], seeds: int = 2,
             params: dict[str, tuple[float, float, float]] | None = None,
             noise: float = 0.01) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    full = {c: 200 + 100 * i for i, c in enumerate(classes)}
    entries = []
    for share in shares:
        for seed in range(seeds):
            n = {c: int(round(share * full[c])) for c in classes}
            f1 = {c: float(np.clip(powerlaw.power_law(n[c], *params[c]) + rng.normal(0, noise),
                                   0, 1)) for c in classes}
            entries.append({"share": share, "seed": seed, "run": lc.run_name(share, seed),
                            "n_train": n, "n_train_total": sum(n.values()), "f1": f1,
                            "support": {c: 400 for c in classes},
                            "macro_f1": float(np.mean(list(f1.values()))),
                            "balanced_accuracy": 0.0})
    return {"classes": classes, "entries": entries, "seeds": seeds, "shares": shares,
            "train": {}, "split": "x"}


def test_analysis_and_plan_from_results(tmp_path: Path) -> None:
    params = {"easy": (0.95, 1.5, 0.5), "hard": (0.9, 4.0, 0.45), "stuck": (0.6, 2.0, 0.6)}
    res = _results(list(params), list(lc.DEFAULT_SHARES), params=params, noise=0.005)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(res))
    out = runner.invoke(app, ["learning-curve", "--from-results", str(path),
                              "--bootstrap", "40"])
    assert out.exit_code == 0, out.output
    a = json.loads((tmp_path / "analysis.json").read_text())
    assert (tmp_path / "learning_curve.png").is_file()
    by = {c["key"]: c for c in a["classes"]}
    assert by["stuck"]["required"]["status"] in ("unreachable", "no estimate")
    assert by["easy"]["required"]["status"] == "reached"
    assert by["hard"]["backtest"]["status"] in ("passed", "failed")
    assert "Collection plan" in out.output and "hard" in " ".join(a["plan"])


def test_markdown_from_results_prints_the_table_and_writes_nothing(tmp_path: Path) -> None:
    params = {"easy": (0.95, 1.5, 0.5), "hard": (0.9, 4.0, 0.45), "stuck": (0.6, 2.0, 0.6)}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_results(list(params), list(lc.DEFAULT_SHARES), params=params,
                                        noise=0.005)))
    out = runner.invoke(app, ["learning-curve", "--from-results", str(path),
                              "--bootstrap", "40", "--markdown"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    table = [line for line in lines if line.startswith("| ")]
    assert table[0].startswith("| class | images today | F1 today")
    assert {row.split(" | ")[0][2:] for row in table[1:]} == {"easy", "hard", "stuck", "macro F1"}
    assert "Collection plan:" in out.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # nothing written
    out = runner.invoke(app, ["learning-curve", str(path), "--markdown"])
    assert out.exit_code != 0 and "--from-results" in out.output


def test_failed_backtest_gives_no_estimate() -> None:
    params = {"jump": (0.9, 4.0, 0.45), "b": (0.9, 4.0, 0.45), "c": (0.9, 4.0, 0.45)}
    res = _results(list(params), list(lc.DEFAULT_SHARES), params=params, noise=0.0)
    for e in res["entries"]:
        if e["share"] == 1.0:
            e["f1"]["jump"] = min(1.0, e["f1"]["jump"] + 0.12)
    a = lc.analyse(res, n_boot=40)
    jump = next(c for c in a["classes"] if c["key"] == "jump")
    assert jump["backtest"]["status"] == "failed"
    assert jump["required"]["status"] == "no estimate" and jump["required"]["median"] is None
    assert any("failed its backtest" in line for line in a["plan"])


@pytest.mark.slow
def test_tiny_learning_curve_end_to_end_and_resumes(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    split = make_lc_split(tmp_path, n_train=12)
    out = tmp_path / "lc"
    args = ["learning-curve", str(split), "--out", str(out), "--seeds", "1",
            "--shares", "0.2,0.35,0.5,1", "--arch", "tiny", "--epochs", "1",
            "--fine-tune-epochs", "1", "--weights", "none", "--bootstrap", "20"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert len(results["entries"]) == 4
    assert [e["n_train"]["blue"] for e in results["entries"]] == [3, 5, 6, 12]
    assert (out / "analysis.json").is_file() and (out / "learning_curve.png").is_file()
    assert "Collection plan" in res.output
    # Again with the same folder: nothing is trained twice.
    import skincli.train.trainer as trainer

    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("retrained"))
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert json.loads((out / "results.json").read_text())["entries"] == results["entries"]


def test_dry_run_prints_counts_and_writes_nothing(tmp_path: Path) -> None:
    split = make_lc_split(tmp_path, n_train=20, lesion_size=2)
    out = tmp_path / "lc"
    res = runner.invoke(app, ["learning-curve", str(split), "--out", str(out), "--dry-run"])
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    assert "10 trainings" in flat and "20 (10)" in flat and "4 (2)" in flat
    assert not out.exists()


def test_interrupted_training_stops_the_curve_and_resumes(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C-saved run is not scored; the next call resumes it from its checkpoint."""
    import skincli.train.trainer as trainer
    from skincli.runs import RunInfo, save_run_info

    runs = tmp_path / "runs"
    interrupted = runs / "lc-020-s0"
    interrupted.mkdir(parents=True)
    save_run_info(interrupted, RunInfo(name="lc-020-s0", arch="tiny", classes=["a", "b"],
                                       input_size=32, preprocessing={}, temperature=1.0,
                                       uncertain_threshold=None, created="x",
                                       extra={"interrupted": True}))
    calls: list[str] = []

    def fake_resume(name: str, runs_dir: Any, progress: Any = None) -> Path:
        calls.append(name)
        save_run_info(runs_dir / name, RunInfo(
            name=name, arch="tiny", classes=["a", "b"], input_size=32, preprocessing={},
            temperature=1.0, uncertain_threshold=None, created="x", extra={}))
        return runs_dir / name

    monkeypatch.setattr(trainer, "resume", fake_resume)
    assert lc._train_one(tmp_path / "s.csv", "lc-020-s0", runs, 0, {}) == interrupted
    assert calls == ["lc-020-s0"]
    # A training that itself gets interrupted stops the curve.
    monkeypatch.setattr(trainer, "train", lambda cfg, *a, **k: interrupted)
    save_run_info(interrupted, RunInfo(name="lc-035-s0", arch="tiny", classes=["a", "b"],
                                       input_size=32, preprocessing={}, temperature=1.0,
                                       uncertain_threshold=None, created="x",
                                       extra={"interrupted": True}))
    with pytest.raises(KeyboardInterrupt):
        lc._train_one(tmp_path / "s.csv", "lc-035-s0", runs, 0, {})


def test_plan_never_says_collect_nothing_when_the_curve_runs_above_the_measurement() -> None:
    def curve(key: str, today_f1: float, half: dict[str, Any] | None,
              need: dict[str, Any]) -> dict[str, Any]:
        return {"key": key, "target": 0.75, "images_today": 84.0, "f1_today": today_f1,
                "fit": {"a": 0.7, "a_interval80": [0.6, 1.0]}, "halfway": half,
                "required": need}

    above = curve("ak", 0.62, {"status": "estimate", "median": 80.0, "target": 0.685},
                  {"status": "unreachable", "median": None})
    normal = curve("df", 0.64, {"status": "estimate", "median": 110.0, "target": 0.695},
                   {"status": "estimate", "median": 165.0})
    plan = lc.collection_plan([above, normal])
    text = " ".join(plan)
    assert "~26 more df" in text and "~81 more df in all" in text
    assert "ak: the fitted curve lies above the measured F1 0.62" in text
    assert "more ak" not in text and "~0 more" not in text
