"""Does the archive's metadata (age, sex, site) add to the image model? A screen, no training.

    python benchmarks/metadata_fusion.py WORKDIR        # the --workdir of benchmarks/accuracy.py

For every fold k that `benchmarks/accuracy.py --metadata ...` trained (`runs/default-seedk`
on `split-seedk.csv`), a class-balanced logistic regression is fitted on the validation
images (which the network never trained on) and scored on the test images, with and without
the metadata beside the image features, so the paired difference is the metadata's own
contribution:

- logits: the run's 9 logits (+ metadata) — the smallest head a fusion could add;
- embedding: the pooled image embedding (+ metadata) — a new linear head.

This is late fusion on frozen features: if it finds nothing, a head trained end to end with
the metadata (as ISIC 2019's leading entries did) has little to find on these images either.
Prints one table (macro F1 mean over folds, paired difference) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def metadata_features(frame: Any, sites: list[str]) -> np.ndarray:
    """One-hot sex (male/female/unknown) and site (+unknown), age/100 and an age-missing flag."""
    sex = frame["sex"].astype(str).str.lower()
    cols = [(sex == "male"), (sex == "female"), ~sex.isin(["male", "female"])]
    site = frame["site"].astype(str).str.lower()
    cols += [site == s for s in sites] + [~site.isin(sites)]
    age = np.array([float(a) if str(a).strip() not in ("", "nan") else np.nan
                    for a in frame["age"]])
    cols += [np.nan_to_num(age / 100.0, nan=0.0), np.isnan(age)]
    return np.column_stack([np.asarray(c, dtype=np.float64) for c in cols])


def _scores(y: np.ndarray, pred: np.ndarray, present: list[int]) -> float:
    from sklearn.metrics import f1_score

    return float(np.mean(f1_score(y, pred, labels=present, average=None, zero_division=0)))


def fold_result(run_dir: Path, split_csv: Path) -> dict[str, Any]:
    """Macro F1 on the fold's test images: the model, and LR heads with/without metadata."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from skincli.data.splitfile import load_split
    from skincli.predictor import Predictor

    predictor = Predictor.from_run(run_dir)
    classes = predictor.classes
    frame = load_split(split_csv)
    parts = {}
    for part in ("val", "test"):
        rows = frame[frame["split"] == part].reset_index(drop=True)
        batch = np.stack([predictor.preprocess(p) for p in rows["filepath"]])
        logits, emb = predictor.logits_and_embeddings(batch)
        parts[part] = (rows, np.asarray([classes.index(c) for c in rows["label"]]), logits, emb)
    sites = sorted(set(parts["val"][0]["site"].astype(str).str.lower()) - {""})
    out: dict[str, Any] = {"fold_run": run_dir.name, "n_val": len(parts["val"][1]),
                           "n_test": len(parts["test"][1])}
    yte = parts["test"][1]
    present = sorted(set(yte.tolist()))
    out["model"] = _scores(yte, parts["test"][2].argmax(axis=1), present)
    for name, idx in (("logits", 2), ("embedding", 3)):
        for with_meta in (False, True):
            feats = {}
            for part in ("val", "test"):
                rows, _, logits, emb = parts[part]
                x = (logits, emb)[idx - 2]
                feats[part] = np.hstack([x, metadata_features(rows, sites)]) if with_meta else x
            clf = make_pipeline(StandardScaler(), LogisticRegression(
                C=1.0 if name == "logits" else 0.05, class_weight="balanced", max_iter=2000))
            clf.fit(feats["val"], parts["val"][1])
            pred = clf.predict(feats["test"])
            out[f"{name}{'+metadata' if with_meta else ''}"] = _scores(yte, pred, present)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path, help="the --workdir of benchmarks/accuracy.py")
    parser.add_argument("--config", default="default", help="which config's runs to use")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fusion.json"))
    args = parser.parse_args(argv)
    runs = sorted((args.workdir / "runs").glob(f"{args.config}-seed*"))
    runs = [r for r in runs if (r / "run.json").is_file()]
    if not runs:
        print(f"error: no finished {args.config}-seed* runs under {args.workdir}/runs; run "
              "benchmarks/accuracy.py --metadata FILE --workdir DIR first", file=sys.stderr)
        return 2
    from skincli import ui
    from skincli.fsutil import write_json

    results = []
    for run in runs:
        fold = run.name.rsplit("seed", 1)[1]
        results.append({"fold": int(fold), **fold_result(run, args.workdir /
                                                         f"split-seed{fold}.csv")})
        ui.console.print(json.dumps(results[-1]))
    keys = ["model", "logits", "logits+metadata", "embedding", "embedding+metadata"]
    rows = []
    for k in keys:
        vals = np.array([r[k] for r in results])
        base = {"logits+metadata": "logits", "embedding+metadata": "embedding"}.get(k)
        diff = (np.array([r[k] - r[base] for r in results]) if base else None)
        per_fold = "" if diff is None else ", ".join(f"{d:+.3f}" for d in diff)
        rows.append((k, len(vals), f"{vals.mean():.3f} ± {vals.std():.3f}",
                     "" if diff is None else f"{diff.mean():+.3f} ({per_fold})"))
    ui.console.print(ui.table("Metadata late fusion: test macro F1 (LR fitted on validation)",
                              ["features", "folds", "macro F1", "metadata adds (per fold)"],
                              rows))
    write_json(args.out, {"workdir": str(args.workdir), "folds": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
