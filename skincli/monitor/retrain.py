"""Safe retraining: champion vs challenger on the same held-out images, promote only if better.

Steps (each appended as one JSON line to `runs/retrain-log.jsonl`):

1. start     champion run, new data folder, margin.
2. data      the new labelled images are hashed and checked: unreadable files, images already
             in the champion's data (same SHA-256), perceptual near-duplicates of its held-out
             test images, duplicates inside the new data and unknown classes are left out. The
             rest go to train or val (a near-duplicate of a val/train image follows it; others
             stratified at the champion's val fraction). The test split is never touched, so
             the held-out comparison stays fair. The merged split is written to
             `runs/retrain/<id>/split.csv` (+ split.json) with the list of added images.
3. train     a challenger is trained with the champion's config on the merged split.
4. evaluate  champion and challenger predict the SAME images: the champion's test split.
5. decision  promote (atomically switch runs/CURRENT, which a running `skin serve` reloads)
             only if challenger macro F1 >= champion macro F1 + margin.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skincli.errors import SkinError
from skincli.fsutil import json_default, write_json
from skincli.runs import load_run_info, next_run_dir, resolve_run, set_current

LOG_FILE = "retrain-log.jsonl"
RETRAIN_DIR = "retrain"

TrainFn = Callable[[dict[str, Any]], Path]
# run folder, image paths -> calibrated probabilities (N, C) in the run's class order; a row of
# NaN for an image that could not be read.
EvaluateFn = Callable[[Path, list[str]], np.ndarray]
Progress = Callable[[str], None]


@dataclass
class RetrainResult:
    """What happened, step by step (also in the JSONL log)."""

    retrain_id: str
    champion: str
    data: dict[str, Any]
    split_path: Path | None
    log_path: Path
    challenger: str | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)
    decision: str | None = None  # "promote" | "keep" | None (dry run)
    reason: str = ""

    @property
    def promoted(self) -> bool:
        """True when the challenger became the current model."""
        return self.decision == "promote"


def _append_log(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line; a single O_APPEND write so concurrent writers never interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, default=json_default, sort_keys=False) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Data: merge new labelled images into the champion's split without leakage
# ---------------------------------------------------------------------------------------------

def _inspect_all(paths: list[str]) -> pd.DataFrame:
    from skincli.data.manifest import inspect_file

    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        rows = list(pool.map(inspect_file, paths))
    return pd.DataFrame(rows).assign(filepath=paths)


def _near(new_ph: np.ndarray, old_ph: np.ndarray, max_bits: int) -> np.ndarray:
    """For each new hash: is any old hash within max_bits bits? (chunked to bound memory)"""
    from skincli.data.duplicates import popcount

    out = np.zeros(len(new_ph), dtype=bool)
    if not len(new_ph) or not len(old_ph):
        return out
    for start in range(0, len(new_ph), 512):
        x = np.bitwise_xor(new_ph[start:start + 512, None], old_ph[None, :])
        out[start:start + 512] = (popcount(x) <= max_bits).any(axis=1)
    return out


def _lesion_keys(frame: pd.DataFrame) -> pd.Series:
    """Each row's identity unit without its kind prefix ("lesion:HAM_1" and a CSV's "HAM_1"
    are one lesion), from the group column, else the lesion_id column."""
    empty = pd.Series("", index=frame.index)
    group = frame["group"].astype(str) if "group" in frame else empty
    group = group.str.replace(r"^(lesion|patient|image):", "", regex=True)
    lesion = frame["lesion_id"].astype(str) if "lesion_id" in frame else empty
    return group.where(group != "", lesion)


def merge_new_data(split: pd.DataFrame, new_data: str | Path, classes: list[str],
                   seed: int = 0, metadata: dict[str, Any] | None = None
                   ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """(merged split frame, added rows, summary) — new images never enter the test split.

    `metadata`: load_dataset's metadata keyword arguments: labels and lesion groups from an
    image metadata file; a new photograph of a lesion in the test split is left out, one of a
    lesion in train or val follows it.
    """
    from skincli.data.dataset import load_dataset
    from skincli.data.duplicates import NearDupParams, phash_ints
    from skincli.data.split import SPLIT_COLUMNS

    try:
        ds = load_dataset(new_data, min_classes=1, **(metadata or {}))
    except SkinError as exc:
        if exc.hint and exc.hint.startswith("Pass --"):  # eda/split options retrain lacks
            raise SkinError(exc.message, hint="Rename the CSV columns to path and label, or "
                            "use class folders") from None
        raise
    entries = ds.frame()
    summary: dict[str, Any] = {"new_data": str(Path(new_data).resolve()),
                               "found": int(len(entries)), "unreadable": 0,
                               "duplicate_existing": 0, "duplicate_test": 0,
                               "near_duplicate_test": 0, "same_lesion_test": 0,
                               "duplicate_new": 0,
                               "conflicting_labels": 0, "unknown_class": 0,
                               "unknown_class_names": [], "added_train": 0, "added_val": 0}
    info = _inspect_all(list(entries["filepath"]))
    df = entries.drop(columns=["filepath"]).assign(filepath=info["filepath"].values)
    for col in info.columns:
        if col != "filepath":
            df[col] = info[col].values

    lookup = {c.lower(): c for c in classes}
    df["label"] = [lookup.get(str(lab).strip().lower(), str(lab)) for lab in df["label"]]
    unknown = ~df["label"].isin(classes)
    summary["unknown_class"] = int(unknown.sum())
    summary["unknown_class_names"] = sorted(set(df.loc[unknown, "label"]))
    df = df[~unknown]
    bad = ~df["readable"].astype(bool)
    summary["unreadable"] = int(bad.sum())
    df = df[~bad]

    existing = split.copy()
    known_sha = set(existing["sha256"].astype(str))
    test_sha = set(existing.loc[existing["split"] == "test", "sha256"].astype(str))
    is_dup = df["sha256"].isin(known_sha)
    summary["duplicate_test"] = int(df["sha256"].isin(test_sha).sum())
    summary["duplicate_existing"] = int(is_dup.sum())
    df = df[~is_dup]

    # The same image twice in the new data: keep one; with two different labels, keep none.
    labels_per_sha = df.groupby("sha256")["label"].nunique()
    conflicting = set(labels_per_sha[labels_per_sha > 1].index)
    summary["conflicting_labels"] = int(df["sha256"].isin(conflicting).sum())
    df = df[~df["sha256"].isin(conflicting)]
    before = len(df)
    df = df.drop_duplicates("sha256", keep="first")
    summary["duplicate_new"] = int(before - len(df)) + summary["conflicting_labels"]

    max_bits = NearDupParams().strict_distance
    new_ph = phash_ints(list(df["phash"].astype(str)))

    def part_ph(part: str) -> np.ndarray:
        if "phash" not in existing.columns:
            return np.zeros(0, dtype=np.uint64)
        return phash_ints([h for h in existing.loc[existing["split"] == part, "phash"]
                           .astype(str) if h])

    near_test = _near(new_ph, part_ph("test"), max_bits)
    summary["near_duplicate_test"] = int(near_test.sum())
    # Another photograph of a test lesion (same group) would leak it into training.
    groups = _lesion_keys(existing)
    test_groups = set(groups[existing["split"] == "test"]) - {""}
    same_lesion = _lesion_keys(df).isin(test_groups).to_numpy() & ~near_test
    summary["same_lesion_test"] = int(same_lesion.sum())
    drop_test = near_test | same_lesion
    df = df[~drop_test]
    new_ph = new_ph[~drop_test]

    # A near-copy of a val (train) image follows it, so one lesion is never on both sides.
    assigned = np.full(len(df), "", dtype=object)
    assigned[_near(new_ph, part_ph("val"), max_bits)] = "val"
    near_train = _near(new_ph, part_ph("train"), max_bits)
    assigned[(assigned == "") & near_train] = "train"
    group_split = dict(zip(groups, existing["split"], strict=True))
    for i, g in enumerate(_lesion_keys(df)):
        if g and assigned[i] == "" and group_split.get(g) in ("train", "val"):
            assigned[i] = group_split[g]
    n_tr = int((existing["split"] == "train").sum())
    n_va = int((existing["split"] == "val").sum())
    val_fraction = n_va / max(n_tr + n_va, 1)
    rng = np.random.default_rng(seed)
    labels = df["label"].to_numpy()
    for cls in classes:
        idx = np.flatnonzero((labels == cls) & (assigned == ""))
        rng.shuffle(idx)
        k = int(round(len(idx) * val_fraction))
        assigned[idx[:k]] = "val"
        assigned[idx[k:]] = "train"
    # Paths relative to the data root like the rest of the split file (nothing machine-
    # specific); `../new/...` resolves the same way when data and new data move together.
    root = split.attrs.get("root")
    rel = [os.path.relpath(Path(p).resolve(), root) if root else str(Path(p).resolve())
           for p in df["filepath"]]
    df = df.assign(split=assigned, path=[Path(r).as_posix() for r in rel], given_split="")
    added = df.reindex(columns=SPLIT_COLUMNS)
    summary["added_train"] = int((assigned == "train").sum())
    summary["added_val"] = int((assigned == "val").sum())
    old = existing.reindex(columns=SPLIT_COLUMNS)
    merged = pd.concat([old, added], ignore_index=True)
    return merged, added, summary


# ---------------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------------

def default_train(config: dict[str, Any]) -> Path:
    """Train with skincli.train.train (TensorFlow)."""
    from skincli.train import train

    return Path(train(config))


def default_evaluate(run_dir: Path, paths: list[str],
                     metadata: list[dict[str, str]] | None = None) -> np.ndarray:
    """Calibrated probabilities of a run on image files; NaN rows for unreadable files.

    metadata: per file {sex, age_band, site}, used by runs trained with --use-metadata.
    """
    from skincli.predictor import Predictor

    pred = Predictor.from_run(run_dir)
    out = np.full((len(paths), len(pred.classes)), np.nan)
    for i, res in enumerate(pred.predict_paths(paths, metadata=metadata)):
        probs = getattr(res, "probabilities", None)
        if probs is not None:
            out[i] = [probs[c] for c in pred.classes]
    return out


def compare_on_held_out(y_true: np.ndarray, champion_probs: np.ndarray,
                        challenger_probs: np.ndarray, classes: list[str],
                        n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Both models' metrics on the images both could read, and the paired difference."""
    from skincli.metrics import classification_summary, paired_comparison

    ok = np.isfinite(champion_probs).all(axis=1) & np.isfinite(challenger_probs).all(axis=1)
    t = np.asarray(y_true)[ok]
    a, b = champion_probs[ok], challenger_probs[ok]
    keep = ("macro_f1", "balanced_accuracy", "accuracy", "ci95")
    sa = classification_summary(t, a, classes, n_boot=n_boot, seed=seed)
    sb = classification_summary(t, b, classes, n_boot=n_boot, seed=seed)
    paired = paired_comparison(t, a.argmax(axis=1), b.argmax(axis=1), len(classes),
                               n_boot=n_boot, seed=seed)
    return {"n": int(ok.sum()), "unreadable": int((~ok).sum()),
            "champion": {k: sa[k] for k in keep}
            | {"per_class_f1": {r["class"]: r["f1"] for r in sa["per_class"]}},
            "challenger": {k: sb[k] for k in keep}
            | {"per_class_f1": {r["class"]: r["f1"] for r in sb["per_class"]}},
            "paired": {k: paired[k] for k in ("macro_f1_diff", "macro_f1_diff_ci",
                                              "bootstrap_p_value", "significant")}}


def decide(evaluation: dict[str, Any], margin: float) -> tuple[str, str]:
    """('promote' | 'keep', why): promote only when challenger F1 >= champion F1 + margin."""
    if evaluation["n"] == 0:
        return "keep", "no held-out image could be evaluated by both models"
    a = evaluation["champion"]["macro_f1"]
    b = evaluation["challenger"]["macro_f1"]
    diff = b - a
    lo, hi = evaluation["paired"]["macro_f1_diff_ci"]
    ci = f"paired 95% CI of the difference [{lo:+.3f}, {hi:+.3f}]"
    if diff >= margin:
        return "promote", (f"challenger macro F1 {b:.4f} vs champion {a:.4f} on the same "
                           f"{evaluation['n']} held-out images: {diff:+.4f} >= margin "
                           f"{margin:g} ({ci})")
    return "keep", (f"challenger macro F1 {b:.4f} vs champion {a:.4f} on the same "
                    f"{evaluation['n']} held-out images: {diff:+.4f} < margin {margin:g} "
                    f"({ci})")


# ---------------------------------------------------------------------------------------------
# The whole procedure
# ---------------------------------------------------------------------------------------------

def retrain(new_data: str | Path, champion: str | Path | None = None,
            runs_dir: str | Path = "runs", margin: float = 0.01, seed: int = 0,
            dry_run: bool = False, train_fn: TrainFn | None = None,
            evaluate_fn: EvaluateFn | None = None, n_boot: int = 1000,
            progress: Progress | None = None,
            metadata: dict[str, Any] | None = None) -> RetrainResult:
    """Merge new data, train a challenger, compare on the same held-out data, maybe promote."""
    from skincli.data.split import SplitResult
    from skincli.data.splitfile import load_split, split_file_sha256, write_split

    say = progress or (lambda _msg: None)
    if not (margin >= 0):
        raise SkinError(f"--margin {margin} is not valid: it must be 0 or more",
                        hint="A negative margin could promote a worse model")
    runs_dir = Path(runs_dir)
    champ_dir = resolve_run(champion, runs_dir)
    info = load_run_info(champ_dir)
    classes = list(info.classes)
    log_path = runs_dir / LOG_FILE
    rid = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}"

    def log(step: str, **fields: Any) -> None:
        _append_log(log_path, {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "retrain_id": rid, "step": step, **fields})

    log("start", champion=champ_dir.name, champion_version=info.version,
        new_data=str(Path(new_data).resolve()), margin=margin, seed=seed, dry_run=dry_run)
    try:
        split_csv = champ_dir / "split.csv"
        if not split_csv.is_file():
            raise SkinError(f"Champion {champ_dir} has no split.csv to extend",
                            hint="Retrain needs a run made by `skin train`")
        split = load_split(split_csv)
        if not (split["split"] == "test").any():
            raise SkinError(f"Champion {champ_dir.name}'s split has no test images to compare on",
                            hint="Make a split with a test fraction above 0 and train again")
        say(f"Checking the new images in {new_data} against {champ_dir.name}'s data ...")
        merged, added, summary = merge_new_data(split, new_data, classes, seed=seed,
                                                metadata=metadata)
        work = runs_dir / RETRAIN_DIR / rid
        meta = dict(split.attrs.get("meta") or {})
        meta["retrain"] = {"id": rid, "from_run": champ_dir.name, **summary}
        split_path = write_split(SplitResult(frame=merged, meta=meta), work / "split.csv")
        with_added = work / "added.csv"
        added.to_csv(with_added, index=False)
        summary["split"] = str(split_path)
        summary["split_sha256"] = split_file_sha256(split_path)
        log("data", **summary)
        result = RetrainResult(rid, champ_dir.name, summary, split_path, log_path)
        n_added = summary["added_train"] + summary["added_val"]
        if dry_run:
            log("decision", decision=None, reason="dry run: nothing trained")
            return result
        if n_added == 0:
            result.decision, result.reason = "keep", "no new image to add; nothing trained"
            log("decision", decision="keep", promoted=False, reason=result.reason)
            return result

        config = dict(info.config or {})
        if not config:
            raise SkinError(f"Champion {champ_dir.name} has no training config in run.json",
                            hint="Retrain needs a run made by `skin train`")
        name = next_run_dir(f"{champ_dir.name}-challenger", runs_dir).name
        config.update(split=str(split_path), runs_dir=str(runs_dir), name=name)
        say(f"Training challenger {name} with {champ_dir.name}'s config on "
            f"{n_added} new + {len(split) - int((split['split'] == 'test').sum())} "
            "existing train/val images ...")
        log("train", challenger=name, config=config)
        t0 = time.perf_counter()
        chall_dir = Path((train_fn or default_train)(config))
        chall = load_run_info(chall_dir)
        result.challenger = chall_dir.name
        log("trained", challenger=chall_dir.name, challenger_version=chall.version,
            seconds=round(time.perf_counter() - t0, 1), val_metrics=_short(chall.val_metrics))

        test = split[split["split"] == "test"]
        paths = [str(p) for p in test["filepath"]]
        say(f"Evaluating both on the same {len(paths)} held-out test images ...")
        index = {c: i for i, c in enumerate(classes)}
        y = test["label"].map(index).to_numpy()
        if list(chall.classes) != classes:
            evaluation = {"n": 0, "error": f"class lists differ: {chall.classes} vs {classes}"}
            decision, reason = "keep", "the challenger's classes differ from the champion's"
        else:
            from skincli.metahead import records_from_frame

            evaluate = evaluate_fn or functools.partial(default_evaluate,
                                                        metadata=records_from_frame(test))
            evaluation = compare_on_held_out(y, np.asarray(evaluate(champ_dir, paths), float),
                                             np.asarray(evaluate(chall_dir, paths), float),
                                             classes, n_boot=n_boot, seed=seed)
            decision, reason = decide(evaluation, margin)
        evaluation["held_out"] = f"test split of {champ_dir.name} ({len(paths)} images)"
        result.evaluation = evaluation
        log("evaluate", champion_run=champ_dir.name, challenger_run=chall_dir.name, **evaluation)
        if decision == "promote":
            set_current(chall_dir, runs_dir)
        result.decision, result.reason = decision, reason
        log("decision", decision=decision, promoted=decision == "promote",
            current=(chall_dir if decision == "promote" else champ_dir).name, reason=reason)
        write_json(work / "result.json", {"retrain_id": rid, "champion": champ_dir.name,
                                          "challenger": chall_dir.name, "data": summary,
                                          "evaluation": evaluation, "decision": decision,
                                          "reason": reason})
        return result
    except BaseException as exc:
        log("failed", error=f"{type(exc).__name__}: {exc}")
        raise


def _short(metrics: dict[str, Any] | None) -> dict[str, Any]:
    keep = ("macro_f1", "balanced_accuracy", "accuracy")
    return {k: v for k, v in (metrics or {}).items() if k in keep}
