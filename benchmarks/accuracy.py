"""Accuracy benchmark: split -> train -> evaluate on isic9 for named training configurations.

    python benchmarks/accuracy.py                          # default config, one fixed split
    python benchmarks/accuracy.py --configs default,res260,focal
    python benchmarks/accuracy.py --folds 5 --configs default   # confirm with 5 splits
    python benchmarks/accuracy.py --report a.json b.json         # one table from saved runs
    python benchmarks/accuracy.py --report a.json --markdown     # ... as a Markdown table

Every split is leakage-free (images grouped by content hash and near-duplicate links, label
conflicts dropped) and made by `skincli.data.split.make_split`; fold k uses seed k, so the
folds are repeated random splits (Monte-Carlo cross-validation) of the whole collection.
Prints a table (macro F1 mean ± std, balanced accuracy, worst class, minutes) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from sklearn.metrics import balanced_accuracy_score, f1_score  # noqa: E402

from skincli import ui  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "isic9"

# Named training configurations: overrides of skincli.train DEFAULTS (so "default" is
# whatever `skin train` does today). Each lever of the accuracy work is one entry.
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "fast": {"preset": "fast"},
    "thorough": {"preset": "thorough"},
    "head-only": {"fine_tune": "none", "epochs": 8, "fine_tune_epochs": 0},
    "top-60": {"fine_tune": "top:60"},
    "res192": {"input_size": 192},
    "res260": {"input_size": 260},
    "lite1": {"arch": "efficientnet_lite1"},
    "lite2": {"arch": "efficientnet_lite2"},
    "no-oversample": {"oversample": False},
    "class-weights": {"oversample": False, "class_weights": True},
    "focal": {"loss": "focal"},
    "no-smoothing": {"label_smoothing": 0.0},
    "augment-0.5": {"augment": 0.5},
    "augment-1.5": {"augment": 1.5},
    "mixup": {"mixup": 0.2},
    "cutmix": {"cutmix": 1.0},
    "long": {"fine_tune_epochs": 20, "patience": 8},
    "lr-1e-3": {"fine_tune_lr": 1e-3},
    "lr-1e-4": {"fine_tune_lr": 1e-4},
    "long192": {"input_size": 192, "fine_tune_epochs": 20, "patience": 8},
    "lr6e-4-16": {"fine_tune_lr": 6e-4, "fine_tune_epochs": 16, "patience": 8},
    "previous-default": {"fine_tune_lr": 3e-4, "fine_tune_epochs": 12, "patience": 5},
    # The default with another seed: the paired difference to `default` is the noise floor of
    # a one-split comparison, and the two runs form a two-seed ensemble.
    "seed-1": {"seed": 1},
    "ema": {"ema": 0.99},
    "head-256": {"head_units": 256},
    "sampling-0.5": {"oversample_strength": 0.5},
    "use-metadata": {"use_metadata": True},
    "colour-constancy": {"colour_constancy": "shades-of-gray"},
    # With --metadata (labels from the archive, conflicts resolved, lesion-grouped splits),
    # two ways of making the data that are scored on the same lesion-grouped test images:
    # trained the way the project did before metadata (folder labels, conflicts dropped) ...
    "folder-labels": {"_data": "folder-labels"},
    # ... and the default on a split that groups only copies and near-duplicates, not lesions
    # (scored on its own test split: how much ignoring lesions overstates).
    "no-lesion-groups": {"_data": "no-lesion-groups"},
}

# What each configuration is, for the Markdown table (--markdown).
DESCRIPTIONS: dict[str, str] = {
    "default": "**default** (Lite0 224 px, fine-tune all at lr 6e-4 × 16 epochs, oversampling, "
               "label smoothing 0.1)",
    "fast": "`--preset fast` (192 px, 1 + 5 epochs)",
    "thorough": "`--preset thorough` (260 px, 3 + 24 epochs)",
    "head-only": "head only, backbone frozen (`--fine-tune none`)",
    "top-60": "fine-tune only the top 60 layers (`--fine-tune top:60`)",
    "res192": "192 px input (`--input-size 192`)",
    "res260": "260 px input (`--input-size 260`)",
    "lite1": "EfficientNet-Lite1, 240 px (`--arch efficientnet_lite1`)",
    "lite2": "EfficientNet-Lite2, 260 px (`--arch efficientnet_lite2`)",
    "no-oversample": "no oversampling (`--no-oversample`)",
    "class-weights": "class weights instead of oversampling",
    "focal": "focal loss (γ 2) with oversampling (`--loss focal`)",
    "no-smoothing": "no label smoothing (`--label-smoothing 0`)",
    "augment-0.5": "augmentation strength 0.5 (`--augment 0.5`)",
    "augment-1.5": "augmentation strength 1.5 (`--augment 1.5`)",
    "mixup": "mixup every batch, Beta(0.2) (`--mixup 0.2`)",
    "cutmix": "cutmix every batch (`--cutmix 1.0`)",
    "long": "20 fine-tuning epochs (`--fine-tune-epochs 20`)",
    "lr-1e-3": "fine-tune lr 1e-3",
    "lr-1e-4": "fine-tune lr 1e-4",
    "long192": "192 px input, 20 fine-tuning epochs",
    "lr6e-4-16": "fine-tune lr 6e-4 × 16 epochs (= default)",
    "previous-default": "previous default: fine-tune lr 3e-4 × 12 epochs",
    "seed-1": "the default with another seed (`--seed 1`): one split's noise floor",
    "ema": "moving average of the weights, decay 0.99 (`--ema 0.99`)",
    "head-256": "stronger head: 256 swish units before the logits (`--head-units 256`)",
    "sampling-0.5": "square-root class balancing (`--oversample-strength 0.5`)",
    "use-metadata": "age, sex and site term in the head, trained jointly (`--use-metadata`)",
    "colour-constancy": "Shades of Gray colour constancy (p = 6) inside the model, with a "
                        "colour-shift augmentation (`--colour-constancy shades-of-gray`)",
    "folder-labels": "trained on the folders' labels, conflicts dropped (as before metadata)",
    "no-lesion-groups": "split without lesion groups (copies and near-duplicates only), "
                        "scored on its own test split",
}


def evaluate_run(run_dir: Path, frame: Any, tta: bool) -> dict[str, Any]:
    """Macro F1, balanced accuracy and per-class F1 of a run on the split's test rows."""
    from skincli.metahead import records_from_frame
    from skincli.predictor import Predictor

    predictor = Predictor.from_run(run_dir)
    test = frame[frame["split"] == "test"]
    meta = predictor.encode_metadata(records_from_frame(test))  # None unless --use-metadata
    classes = predictor.classes
    y = np.array([classes.index(c) for c in test["label"]])
    batch = np.stack([predictor.preprocess(p) for p in test["filepath"]])
    # Averages run over the classes that have test images: a class the data set cannot
    # supply (isic9's seborrheic keratosis after conflict removal) cannot be measured.
    present = sorted(set(y.tolist()))
    out: dict[str, Any] = {"n_test": int(len(y)), "classes_measured": len(present),
                           "classes_without_test_images": [c for i, c in enumerate(classes)
                                                           if i not in present]}
    for name, use_tta in (("plain", False), ("tta", True)) if tta else (("plain", False),):
        pred = predictor.probabilities(batch, tta=use_tta, meta=meta).argmax(axis=1)
        per = f1_score(y, pred, labels=present, average=None, zero_division=0)
        out[name] = {
            "macro_f1": float(np.mean(per)),
            "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "per_class_f1": {classes[i]: float(f) for i, f in zip(present, per)},
        }
    return out


def variant_split(variant: str, manifest: Any, frame: Any, seed: int) -> Any:
    """The training split of a data variant, derived from the lesion-grouped split `frame`.

    folder-labels: the same train/val images with the folders' labels, minus every image
    filed under two classes (what `--conflicts drop` without metadata did); the test rows are
    unchanged (metadata labels), so both are scored on the same images.
    no-lesion-groups: a new split of the same images that groups only content copies and
    near-duplicates (lesion ids removed).
    """
    from skincli.data.split import SplitResult, make_split

    if variant == "no-lesion-groups":
        m = manifest.copy()
        m.attrs = dict(manifest.attrs)
        m["group"] = ""
        return make_split(m, val=0.15, test=0.15, seed=seed)
    if variant != "folder-labels":
        raise ValueError(variant)
    filed = manifest["folder_label"].where(manifest["folder_label"] != "", manifest["label"])
    per_hash = filed.groupby(manifest["sha256"]).nunique()
    conflicted = set(per_hash.index[per_hash > 1])
    df = frame.drop(columns=["filepath"]).copy()
    keep = (df["split"] == "test") | ~df["sha256"].isin(conflicted)
    train_val = df["split"] != "test"
    df.loc[train_val, "label"] = df.loc[train_val, "folder_label"].where(
        df.loc[train_val, "folder_label"] != "", df.loc[train_val, "label"])
    df = df[keep]
    # A folder class whose few remaining files all fell outside train (isic9's seborrheic
    # keratosis keeps 2) cannot be learned: leave its val rows out rather than stop.
    trained = set(df.loc[df["split"] == "train", "label"])
    df = df[(df["split"] != "val") | df["label"].isin(trained)].reset_index(drop=True)
    meta = dict(frame.attrs["meta"])
    meta.update(conflicts="drop (folder labels for train/val)",
                classes=sorted(df["label"].unique().tolist()), n_images=int(len(df)))
    return SplitResult(frame=df, meta=meta)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--metadata", type=Path, default=None,
                        help="image metadata CSV (e.g. ../shared/data/isic9_metadata.csv): "
                        "labels from it, conflicts resolved, lesion-grouped splits")
    parser.add_argument("--configs", default="default",
                        help=f"comma-separated names from: {', '.join(CONFIGS)}")
    parser.add_argument("--folds", type=int, default=1, help="splits (seeds 0..folds-1)")
    parser.add_argument("--first-fold", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra override applied to every config (YAML value)")
    parser.add_argument("--no-tta", action="store_true", help="skip the TTA evaluation")
    parser.add_argument("--reuse", action="store_true",
                        help="score runs already finished in --workdir instead of retraining")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/accuracy.json"))
    parser.add_argument("--report", type=Path, nargs="+", default=None, metavar="JSON",
                        help="train nothing: print one table from saved result files")
    parser.add_argument("--markdown", action="store_true",
                        help="with --report: print a Markdown table (for README)")
    parser.add_argument("--baseline", default="default",
                        help="config the paired difference column compares against")
    args = parser.parse_args(argv)
    if args.report:
        return _report(args.report, args.baseline, args.markdown)

    import yaml

    from skincli.data.dataset import load_dataset
    from skincli.data.manifest import build_manifest
    from skincli.data.split import make_split
    from skincli.data.splitfile import load_split, write_split
    from skincli.errors import SkinError
    from skincli.train import resolve, train

    if not args.data.is_dir():
        print(f"error: data folder {args.data} not found; pass --data DIR "
              "(the isic9 collection: Train/ and Test/ class folders)", file=sys.stderr)
        return 2
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        print(f"error: unknown config(s) {unknown}; choose from {list(CONFIGS)}", file=sys.stderr)
        return 2
    extra = {}
    for item in args.set:
        key, _, value = item.partition("=")
        extra[key.strip()] = yaml.safe_load(value)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="skin-accuracy-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        manifest = build_manifest(load_dataset(args.data, metadata=args.metadata))
    except SkinError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    needs_meta = [n for n in names if "_data" in CONFIGS[n]]
    if needs_meta and args.metadata is None:
        print(f"error: config(s) {needs_meta} compare against metadata labels; pass "
              "--metadata FILE", file=sys.stderr)
        return 2
    results: list[dict[str, Any]] = []
    try:
        for fold in range(args.first_fold, args.first_fold + args.folds):
            split_path = work / f"split-seed{fold}.csv"
            if not split_path.exists():
                write_split(make_split(manifest, val=0.15, test=0.15, seed=fold), split_path)
            frame = load_split(split_path)
            for name in names:
                overrides = dict(CONFIGS[name])
                preset = overrides.pop("preset", None)
                data_variant = overrides.pop("_data", None)
                train_split, score_frame = split_path, frame
                if data_variant:
                    train_split = work / f"split-seed{fold}-{data_variant}.csv"
                    if not train_split.exists():
                        write_split(variant_split(data_variant, manifest, frame, fold),
                                    train_split)
                    if data_variant == "no-lesion-groups":
                        score_frame = load_split(train_split)
                overrides.update(extra)
                overrides.update({"split": str(train_split), "runs_dir": str(work / "runs"),
                                  "name": f"{name}-seed{fold}"})
                cfg = resolve(overrides, preset=preset)
                ui.console.rule(f"{name} · split seed {fold}")
                done = work / "runs" / f"{name}-seed{fold}"
                if args.reuse and (done / "run.json").is_file():
                    # A run an earlier (interrupted) benchmark finished: score it again.
                    run_dir = done
                    wall = json.loads((done / "run.json").read_text()).get("extra", {}).get(
                        "wall_seconds")
                    minutes = wall / 60 if wall else None
                else:
                    start = time.perf_counter()
                    run_dir = train(cfg)
                    minutes = (time.perf_counter() - start) / 60
                scores = evaluate_run(run_dir, score_frame, tta=not args.no_tta)
                results.append({"config": name, "fold": fold, "minutes": minutes,
                                "overrides": overrides, "preset": preset,
                                "run": str(run_dir), **scores})
                _print_row(results[-1])
                _write(args.out, results, args)
    except SkinError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _print_table(results, args.baseline)
    return 0


def _report(files: list[Path], baseline: str, markdown: bool = False) -> int:
    """Merge the runs of saved result files (a later file wins for the same config and fold)."""
    import json

    merged: dict[tuple[str, int], dict[str, Any]] = {}
    for path in files:
        try:
            runs = json.loads(path.read_text(encoding="utf-8"))["runs"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"error: {path} is not a result file of this benchmark ({exc}); pass the "
                  "JSON written by --out", file=sys.stderr)
            return 2
        for run in runs:
            merged[(run["config"], int(run["fold"]))] = run
    if markdown:
        print(markdown_table(list(merged.values()), baseline))
    else:
        _print_table(list(merged.values()), baseline)
    return 0


def markdown_table(results: list[dict[str, Any]], baseline: str = "default") -> str:
    """The summary as a GitHub Markdown table: baseline first, then best to worst."""
    def num(value: float | None, fmt: str) -> str:
        return "" if value is None else format(value, fmt).replace("-", "−")

    lines = [f"| configuration | splits | test macro F1 | vs {baseline}, same splits | with TTA "
             "| balanced acc. | worst class (F1) | minutes |", "|---|---|---|---|---|---|---|---|"]
    rows = summarise(results, baseline)
    # The baseline first, then best to worst by the paired difference.
    rows.sort(key=lambda r: (r["paired_diff_mean"] is not None, -(r["paired_diff_mean"] or 0)))
    for r in rows:
        f1 = f"{r['macro_f1_mean']:.3f}" + (f" ± {r['macro_f1_std']:.3f}" if r["folds"] > 1
                                             else "")
        lines.append(" | ".join([
            f"| {DESCRIPTIONS.get(r['config'], r['config'])}", str(r["folds"]), f1,
            num(r["paired_diff_mean"], "+.3f"), num(r["tta_macro_f1_mean"], ".3f"),
            f"{r['balanced_accuracy_mean']:.3f}",
            f"{r['worst_class']} ({r['worst_class_f1']:.2f})",
            num(r["minutes_mean"], ".1f")]) + " |")
    return "\n".join(lines)


def _print_row(r: dict[str, Any]) -> None:
    tta = r.get("tta", {}).get("macro_f1")
    ui.console.print(f"{r['config']} seed {r['fold']}: macro F1 {r['plain']['macro_f1']:.3f}"
                     + (f", with TTA {tta:.3f}" if tta is not None else "")
                     + (f", {r['minutes']:.1f} min" if r.get("minutes") is not None else ""))


def summarise(results: list[dict[str, Any]], baseline: str = "default") -> list[dict[str, Any]]:
    """Aggregate per config over folds (mean ± std), with the paired difference to `baseline`.

    The difference is averaged over the folds both configs ran on: the same split, so the
    split-to-split spread (several points of macro F1 here) cancels out of it.
    """
    base = {r["fold"]: r["plain"]["macro_f1"] for r in results if r["config"] == baseline}
    rows = []
    for name in dict.fromkeys(r["config"] for r in results):
        rs = [r for r in results if r["config"] == name]
        f1 = np.array([r["plain"]["macro_f1"] for r in rs])
        tta = np.array([r["tta"]["macro_f1"] for r in rs if "tta" in r])
        ba = np.array([r["plain"]["balanced_accuracy"] for r in rs])
        per = {c: float(np.mean([r["plain"]["per_class_f1"][c] for r in rs]))
               for c in rs[0]["plain"]["per_class_f1"]}
        worst = min(per, key=per.get)
        diffs = [r["plain"]["macro_f1"] - base[r["fold"]] for r in rs if r["fold"] in base]
        minutes = [r["minutes"] for r in rs if r.get("minutes") is not None]
        rows.append({"paired_diff_mean": float(np.mean(diffs)) if diffs and name != baseline
                     else None, "paired_folds": len(diffs),
                     "config": name, "folds": len(rs), "macro_f1_mean": float(f1.mean()),
                     "macro_f1_std": float(f1.std()), "tta_macro_f1_mean":
                     float(tta.mean()) if tta.size else None,
                     "balanced_accuracy_mean": float(ba.mean()), "worst_class": worst,
                     "worst_class_f1": per[worst], "per_class_f1": per,
                     "minutes_mean": float(np.mean(minutes)) if minutes else None})
    return rows


def _print_table(results: list[dict[str, Any]], baseline: str = "default") -> None:
    rows = summarise(results, baseline)
    if not ui.console.is_terminal:
        ui.console.width = max(ui.console.width, 150)  # a log file: do not fold the table
    ui.console.print(ui.table(
        "accuracy on held-out test splits (leakage-free)",
        ["config", "splits", "macro F1", f"vs {baseline}, same splits", "with TTA",
         "balanced acc", "worst class", "worst F1", "train min"],
        [(r["config"], r["folds"], f"{r['macro_f1_mean']:.3f} ± {r['macro_f1_std']:.3f}",
          "-" if r["paired_diff_mean"] is None else
          f"{r['paired_diff_mean']:+.3f} ({r['paired_folds']})",
          "-" if r["tta_macro_f1_mean"] is None else f"{r['tta_macro_f1_mean']:.3f}",
          f"{r['balanced_accuracy_mean']:.3f}", r["worst_class"], f"{r['worst_class_f1']:.3f}",
          "-" if r["minutes_mean"] is None else f"{r['minutes_mean']:.1f}") for r in rows]))


def _write(out: Path, results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    from skincli.fsutil import write_json

    write_json(out, {"data": str(args.data), "folds": args.folds,
                     "summary": summarise(results, args.baseline), "runs": results})


if __name__ == "__main__":
    raise SystemExit(main())
