"""Evaluate a loaded run on labelled images, or compare two runs on the same images."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from skincli import DISCLAIMER
from skincli.data.evalset import (
    EvalSet,
    check_labels,
    check_subset,
    lesion_groups,
    load_eval_set,
)
from skincli.defer import check_target, evaluation_section
from skincli.errors import SkinError
from skincli.evaluate.compare import HEADLINE, compare_results, headline, result_warnings
from skincli.evaluate.refit import Validation, calibrate_run
from skincli.evaluate.rules import evaluate_decisions, triage_section
from skincli.evaluate.scoring import Progress, Scored, score
from skincli.fsutil import sha256_file
from skincli.metrics import classification_summary, expected_calibration_error
from skincli.predictor import Predictor, load_predictor
from skincli.runs import DEFAULT_RUNS_DIR, update_run_info
from skincli.subgroups import subgroup_metrics

MAX_BOOTSTRAP = 100_000


def _uncertain_stats(probs: np.ndarray, y: np.ndarray, threshold: float | None
                     ) -> dict[str, Any]:
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    flagged = conf < threshold if threshold is not None else np.zeros(len(y), bool)
    return {"threshold": threshold, "share": float(flagged.mean()) if len(y) else 0.0,
            "accuracy_uncertain": float(correct[flagged].mean()) if flagged.any() else None,
            "accuracy_confident": float(correct[~flagged].mean()) if (~flagged).any() else None}


def evaluate_predictor(predictor: Predictor, eval_set: EvalSet, calibrate: bool = False,
                       tta: bool = False, n_boot: int = 1000, seed: int = 0,
                       batch_size: int = 32, progress: Progress | None = None,
                       defer_target: float | None = None) -> dict[str, Any]:
    """All metrics for one loaded run on one EvalSet (and its calibration if asked).

    The run's validation images are scored at most once, for every refit that needs them.
    `defer_target`: also fit and report the answer-or-defer operating point (skincli.defer).
    """
    started = time.perf_counter()
    calibration = None
    validation = Validation(predictor, batch_size, progress)
    t_before = float(predictor.info.temperature or 1.0)
    if calibrate:
        calibration = calibrate_run(predictor, validation)
    scored = score(predictor, eval_set, tta=tta, batch_size=batch_size, progress=progress)
    temperature = float(predictor.info.temperature or 1.0)
    probs = scored.probs(temperature, tta)
    summary = classification_summary(scored.y, probs, predictor.classes, n_boot=n_boot,
                                      seed=seed)
    result: dict[str, Any] = {
        "run": predictor.model_summary(),
        "data": {"description": eval_set.description, "subset": eval_set.subset,
                 "kind": eval_set.kind, "n_images": len(eval_set.filepaths),
                 "n_evaluated": int(scored.y.size), "n_skipped": len(scored.skipped),
                 "skipped": scored.skipped},
        "tta": tta,
        "metrics": summary,
        "uncertain": _uncertain_stats(probs, scored.y, predictor.info.uncertain_threshold),
        "disclaimer": DISCLAIMER,
    }
    result["triage"] = triage_section(predictor, eval_set, scored.y, probs, validation,
                                      store=is_own_test_split(predictor, eval_set))
    if defer_target is not None:
        # Without TTA: the thresholds are fitted, and applied by predict, on single views.
        result["defer"] = _defer(predictor, eval_set, scored, scored.probs(temperature, False),
                                 defer_target, n_boot, seed, validation)
    if tta:
        plain = classification_summary(scored.y, scored.probs(temperature, False),
                                       predictor.classes, n_boot=0)
        without, with_ = headline(plain), headline(summary)
        result["tta_comparison"] = {
            "without": without, "with": with_,
            "gain": {k: (with_[k] - without[k]) if with_[k] is not None
                     and without[k] is not None else None for k in HEADLINE}}
    if calibration is not None:
        pre = expected_calibration_error(scored.probs(t_before, tta), scored.y)
        calibration["eval_ece_before"] = pre["ece"]
        calibration["eval_ece_after"] = summary["ece"]
        calibration["eval_reliability_before"] = pre["bins"]
        calibration["temperature_before"] = t_before
        result["calibration"] = calibration
    if eval_set.subgroups:
        result["subgroups"] = _subgroups(eval_set, scored, probs, predictor.classes, n_boot, seed)
    result["decisions"] = evaluate_decisions(predictor, scored.y, probs, n_boot, seed,
                                             validation)
    result["seconds"] = round(time.perf_counter() - started, 2)
    result["_arrays"] = {"y": scored.y, "probs": probs, "filepaths": scored.filepaths}
    return result


def _defer(predictor: Predictor, eval_set: EvalSet, scored: Scored, probs: np.ndarray,
           target: float, n_boot: int, seed: int, validation: Validation) -> dict[str, Any]:
    """Answer-or-defer (skincli.defer): curves, the operating point fitted on the run's own
    validation split (stored in run.json when feasible) and what it reaches here."""
    val = validation.scored()
    assert validation.eval_set is not None
    section = evaluation_section(
        (val.probs(float(predictor.info.temperature or 1.0), False), val.y,
         lesion_groups(validation.eval_set, val.filepaths)),
        (probs, scored.y, lesion_groups(eval_set, scored.filepaths)), predictor.classes,
        target, eval_set.subset, n_boot=n_boot, seed=seed,
        source=f"validation split ({len(val.y)} images), skin evaluate --defer-target")
    section["stored"] = bool(section["operating_point"]["feasible"])
    if section["stored"]:
        extra = dict(predictor.info.extra or {})
        record = dict(section["operating_point"])
        if is_own_test_split(predictor, eval_set):  # the card states what test reached
            res = section["result"]
            record["test"] = {k: res[k] for k in (
                "coverage", "n_accepted", "balanced_accuracy", "balanced_accuracy_ci95",
                "macro_f1", "macro_f1_ci95", "met", "few_accepted")}
        extra["defer"] = record
        predictor.info = update_run_info(predictor.run_dir, extra=extra)
    return section


def _subgroups(eval_set: EvalSet, scored: Scored, probs: np.ndarray, classes: Sequence[str],
               n_boot: int, seed: int) -> dict[str, Any]:
    """Subgroup metrics of the images that were scored (unreadable ones are left out)."""
    where = {p: i for i, p in enumerate(eval_set.filepaths)}
    rows = [where[p] for p in scored.filepaths]
    groups = {attr: [vals[i] for i in rows] for attr, vals in eval_set.subgroups.items()}
    return subgroup_metrics(scored.y, probs.argmax(axis=1), classes, groups,
                            n_boot=n_boot, seed=seed)


def is_own_test_split(predictor: Predictor, eval_set: EvalSet) -> bool:
    """True when the EvalSet is the test part of the split this run was trained on."""
    if eval_set.kind != "split" or eval_set.subset != "test" or eval_set.split_path is None:
        return False
    own = Path(predictor.run_dir) / "split.csv"
    if eval_set.split_path == own:
        return True
    want = predictor.info.split_sha256
    try:
        return bool(want) and sha256_file(eval_set.split_path) == want
    except OSError:
        return False


def store_test_metrics(predictor: Predictor, result: dict[str, Any]) -> None:
    """Write a compact copy of the test metrics into run.json."""
    s = result["metrics"]
    compact = {k: s[k] for k in ("n", "accuracy", "balanced_accuracy", "macro_f1", "weighted_f1",
                                 "cohen_kappa", "macro_auc", "ece", "nll", "ci95", "n_boot",
                                 "weak_classes")}
    compact["per_class_f1"] = {r["class"]: r["f1"] for r in s["per_class"]}
    sub = result.get("subgroups")
    if sub:  # the model card states how the model performs for whom
        compact["subgroups"] = {
            "overall_macro_f1": sub["overall_macro_f1"], "flagged": sub["flagged"],
            "attributes": {a: [{k: r.get(k) for k in ("value", "n", "macro_f1", "ci95",
                                                       "below_overall")} for r in rows]
                           for a, rows in sub["attributes"].items()}}
    compact.update({"tta": result["tta"], "temperature": result["run"]["temperature"],
                    "data": result["data"]["description"],
                    "evaluated": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    predictor.info = update_run_info(predictor.run_dir, test_metrics=compact)


def evaluate(runs: Sequence[str | Path] | None = None, runs_dir: str | Path = DEFAULT_RUNS_DIR,
             data: str | Path | None = None, split: str | Path | None = None,
             subset: str = "test", calibrate: bool = False, tta: bool = False,
             n_boot: int = 1000, seed: int = 0, batch_size: int = 32,
             progress: Progress | None = None,
             metadata: dict[str, Any] | None = None,
             engine: str | None = None, defer_target: float | None = None) -> dict[str, Any]:
    """Evaluate one run, or compare two on the same images (paired test).

    `defer_target`: also fit and report the answer-or-defer operating point (skincli.defer).

    `metadata`: load_dataset's metadata keyword arguments for `data` (labels, groups and
    subgroups from an image metadata file).
    """
    check_subset(subset)
    if defer_target is not None:
        check_target(defer_target)
    if n_boot < 0:
        raise SkinError(f"--bootstrap must be 0 or more, got {n_boot}")
    if n_boot > MAX_BOOTSTRAP:  # would run for hours; the intervals stop moving long before
        raise SkinError(f"--bootstrap {n_boot} is too many (at most {MAX_BOOTSTRAP:,})",
                        hint="1000 (the default) to 10000 gives stable 95% intervals")
    names: list[str | Path | None] = list(runs) if runs else [None]
    if len(names) > 2:
        raise SkinError(f"Compare at most two runs at a time, got {len(names)}",
                        hint="Pass one run to evaluate it, or two to compare them")
    engine_notes: list[str] = []
    predictors = [load_predictor(r, runs_dir, engine, engine_notes.append) for r in names]
    if len(predictors) == 2 and predictors[0].run_dir.resolve() == predictors[1].run_dir.resolve():
        raise SkinError(f"Both runs are {predictors[0].run_dir}", hint="Pass two different runs")
    first = predictors[0]
    eval_set = load_eval_set(first.run_dir, first.classes, data=data, split=split, subset=subset,
                             metadata=metadata)
    warnings: list[str] = list(engine_notes)
    for other in predictors[1:]:
        if sorted(other.classes) != sorted(first.classes):
            raise SkinError(f"Runs {first.info.name} and {other.info.name} have different classes",
                            hint="Only runs trained on the same classes can be compared")
        check_labels(eval_set.labels, other.classes, eval_set.description)
        if (eval_set.kind == "split" and other.info.split_sha256 and first.info.split_sha256
                and other.info.split_sha256 != first.info.split_sha256):
            warnings.append(f"{other.info.name} was trained on a different split than "
                            f"{first.info.name}: some of these test images may have been in its "
                            "training data, which would flatter it")
    if defer_target is not None:  # no validation images: one line now, before any scoring
        for p in predictors:
            load_eval_set(p.run_dir, p.classes, subset="val")
    results = []
    for p in predictors:
        res = evaluate_predictor(p, eval_set, calibrate=calibrate, tta=tta, n_boot=n_boot,
                                 seed=seed, batch_size=batch_size, progress=progress,
                                 defer_target=defer_target)
        res["stored_test_metrics"] = is_own_test_split(p, eval_set) and data is None
        if res["stored_test_metrics"]:
            store_test_metrics(p, res)
        results.append(res)
    if len(results) == 1:
        out = results[0]
        out["warnings"] = warnings + result_warnings(out)
        return out
    a, b = results
    comparison = compare_results(a, b, n_boot=n_boot, seed=seed)
    return {"runs": results, "comparison": comparison, "tta": tta, "disclaimer": DISCLAIMER,
            "warnings": warnings + result_warnings(a) + result_warnings(b)}
