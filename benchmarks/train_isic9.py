"""Train with the defaults on isic9 and measure the model on the split's held-out test part.

    python benchmarks/train_isic9.py                      # default settings
    python benchmarks/train_isic9.py --preset fast
    python benchmarks/train_isic9.py --set input_size=260 --set mixup=0.2 --tta

Steps: `skin split ../shared/data/isic9` (leakage-free: grouped by content hash and
near-duplicate links, label conflicts dropped) into a work folder; `skincli.train.train` with
the defaults (plus --preset/--set); then the finished run is loaded with
`skincli.predictor.Predictor` - exactly as `skin predict` does - and scored on the test rows.
Prints a table (macro F1, balanced accuracy, per-class F1, training wall time, images/s) and
writes the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from skincli import ui  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "isic9"


def parse_sets(items: list[str]) -> dict[str, Any]:
    """--set key=value (value parsed as YAML: 260, 0.2, true, top:40)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"error: --set {item!r} must look like key=value")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


def make_split(data: Path, work: Path, seed: int) -> Path:
    """Run `skin split` exactly as a user would."""
    split = work / "splits" / "split.csv"
    cmd = [sys.executable, "-m", "skincli", "split", str(data), "--out", str(split),
           "--seed", str(seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: `skin split` failed: {(proc.stderr or proc.stdout).strip()}")
    return split


def evaluate_test(run_dir: Path, split: Path, tta: bool) -> dict[str, Any]:
    """Scores of the saved run on the split's test rows (the Predictor's own preprocessing)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    from skincli.data.splitfile import load_split
    from skincli.predictor import Predictor

    predictor = Predictor.from_run(run_dir)
    frame = load_split(split)
    test = frame[frame["split"] == "test"]
    classes = predictor.classes
    y = np.array([classes.index(c) for c in test["label"]])
    t0 = time.perf_counter()
    batch = np.stack([predictor.preprocess(p) for p in test["filepath"]])
    pred = predictor.probabilities(batch, tta=tta).argmax(axis=1)
    seconds = time.perf_counter() - t0
    support = np.bincount(y, minlength=len(classes))
    # A class without test images has no F1; averaging a 0 for it would misstate the others.
    present = [i for i, n in enumerate(support) if n > 0]
    per = f1_score(y, pred, labels=present, average=None, zero_division=0)
    per_class: dict[str, float | None] = {c: None for c in classes}
    per_class.update({classes[i]: float(f) for i, f in zip(present, per)})
    return {
        "n_test": int(len(y)),
        "tta": tta,
        "macro_f1": float(np.mean(per)),
        "macro_f1_over": [classes[i] for i in present],
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "accuracy": float(accuracy_score(y, pred)),
        "per_class_f1": per_class,
        "support": {c: int(n) for c, n in zip(classes, support)},
        "predict_seconds": round(seconds, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="isic9 folder")
    parser.add_argument("--preset", default=None, help="training preset (fast, thorough)")
    parser.add_argument("--set", dest="sets", action="append", default=[],
                        help="training option override key=value (repeatable)")
    parser.add_argument("--split-seed", type=int, default=42, help="seed of `skin split`")
    parser.add_argument("--work", type=Path, default=None,
                        help="work folder for the split and the run (default: a new temp dir)")
    parser.add_argument("--json", type=Path, default=None,
                        help="result file (default: WORK/train_isic9.json)")
    parser.add_argument("--tta", action="store_true", help="also score with 8-view TTA")
    parser.add_argument("--run", type=Path, default=None,
                        help="score an existing run folder on its own split copy (no training)")
    args = parser.parse_args(argv)

    if not args.data.is_dir():
        ui.error(f"data folder {args.data} not found; put isic9 there or pass --data FOLDER")
        return 2
    overrides = parse_sets(args.sets)
    work = args.work or (args.run.parent if args.run else
                         Path(tempfile.mkdtemp(prefix="train-isic9-")))
    work.mkdir(parents=True, exist_ok=True)

    from skincli.cli.train import TrainProgress
    from skincli.errors import SkinError
    from skincli.runs import load_run_info
    from skincli.train import resolve, train

    ui.console.print(f"work folder: {work}")
    t0 = time.perf_counter()
    try:
        if args.run:
            run_dir, split = args.run, args.run / "split.csv"
            info = load_run_info(run_dir)
            split_seconds, wall = 0.0, float(info.extra.get("wall_seconds", 0.0))
        else:
            split = make_split(args.data, work, args.split_seed)
            split_seconds = time.perf_counter() - t0
            cfg = resolve({**overrides, "split": str(split), "runs_dir": str(work / "runs")},
                          preset=args.preset)
            t1 = time.perf_counter()
            with TrainProgress() as view:
                run_dir = train(cfg, progress=view)
            wall = time.perf_counter() - t1
            info = load_run_info(run_dir)
        scores = {"plain": evaluate_test(run_dir, split, tta=False)}
        if args.tta:
            scores["tta"] = evaluate_test(run_dir, split, tta=True)
    except SkinError as exc:
        ui.error(str(exc))
        return 1

    x = info.extra
    result = {
        "data": str(args.data), "split": str(split), "split_seconds": round(split_seconds, 1),
        "run": str(run_dir), "preset": args.preset, "overrides": overrides,
        "config": info.config, "train_wall_seconds": round(wall, 1),
        "train_seconds": x.get("train_seconds"), "images_per_second": x.get("images_per_second"),
        "epochs_run": x.get("epochs_run"), "best_epoch": info.val_metrics.get("best_epoch"),
        "n_train": x.get("n_train"), "n_val": x.get("n_val"),
        "val": {k: info.val_metrics.get(k) for k in ("macro_f1", "balanced_accuracy",
                                                      "per_class_f1")},
        "test": scores,
    }
    out = args.json or work / "train_isic9.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    columns = ["metric"] + [f"test ({k})" for k in scores] + ["val"]
    rows: list[list[Any]] = []
    for key, label in (("macro_f1", "macro F1"), ("balanced_accuracy", "balanced accuracy"),
                       ("accuracy", "accuracy")):
        rows.append([f"{label} (classes with test images)" if key == "macro_f1" else label]
                    + [s[key] for s in scores.values()]
                    + [info.val_metrics.get(key, float("nan"))])
    def show(value: float | None) -> float | str:
        return "n/a" if value is None else value

    for cls in info.classes:
        rows.append([f"F1 {cls} (n={scores['plain']['support'][cls]})"]
                    + [show(s["per_class_f1"][cls]) for s in scores.values()]
                    + [show(info.val_metrics["per_class_f1"].get(cls))])
    ui.console.print(ui.table(f"isic9: {info.arch} at {info.input_size} px, "
                              f"{x.get('epochs_run')} epochs (best {result['best_epoch']})",
                              columns, rows))
    ui.console.print(ui.table("time", ["", "value"], [
        ["training wall time", f"{wall:.0f} s ({wall / 60:.1f} min)"],
        ["training images/s (excl. validation)", f"{x.get('images_per_second', 0):.1f}"],
        ["train / val / test images", f"{x.get('n_train')} / {x.get('n_val')} / "
                                      f"{scores['plain']['n_test']}"],
        ["split time", f"{split_seconds:.1f} s"],
    ]))
    ui.console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
