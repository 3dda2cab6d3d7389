"""How a deployment's rules do on the evaluated images: every decision rule side by side (with
the accuracy / balanced-accuracy frontier) and the triage threshold's operating point."""

from __future__ import annotations

from typing import Any

import numpy as np

from skincli.clinical import triage
from skincli.data.evalset import EvalSet
from skincli.decision import (
    Decision,
    describe_rule,
    interpolate_prior,
    model_prior,
    prior_weights,
    training_counts,
)
from skincli.evaluate.refit import Validation, ensure_triage, fit_decisions
from skincli.metrics import (
    accuracy_from_cm,
    balanced_accuracy_from_cm,
    batched_confusion,
    bootstrap_ci,
    confusion_matrix,
    macro_f1_from_cm,
)
from skincli.predictor import Predictor
from skincli.runs import update_run_info


def evaluate_decisions(predictor: Predictor, y: np.ndarray, probs: np.ndarray, n_boot: int,
                       seed: int, validation: Validation) -> dict[str, Any]:
    """Every decision rule on the same images side by side (skincli.decision), and the
    accuracy / balanced-accuracy frontier from the model's own prior to the training prior."""
    decisions, notes, train_prior = fit_decisions(predictor, validation)
    base = model_prior(predictor.info, training_counts(predictor.run_dir, predictor.classes))[0]
    out = compare_rules(y, probs, decisions, list(predictor.classes), n_boot=n_boot, seed=seed,
                        base=base, train_prior=train_prior)
    out["notes"] = notes
    if train_prior is not None:
        out["training_prior"] = dict(zip(predictor.classes, train_prior.round(6).tolist()))
    return out


def rule_metrics(y: np.ndarray, probs: np.ndarray, classes: list[str], n_boot: int = 1000,
                 seed: int = 0) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro F1 and per-class recall with bootstrap 95% CIs."""
    y = np.asarray(y, np.int64)
    c = len(classes)
    pred = np.asarray(probs).argmax(axis=1)
    cm = confusion_matrix(y, pred, c)
    support = cm.sum(axis=1)
    recall = [float(cm[i, i] / support[i]) if support[i] else None for i in range(c)]
    recall_ci: list[list[float] | None] = [None] * c
    if n_boot > 0 and y.size:
        # The same resampling as metrics.bootstrap_ci (same seed), for per-class recall.
        rng = np.random.default_rng(seed)
        vals = []
        for start in range(0, n_boot, 200):
            b = min(200, n_boot - start)
            cms = batched_confusion(y, pred, rng.integers(0, y.size, size=(b, y.size)), c)
            rows = cms.sum(axis=2)
            diag = np.diagonal(cms, axis1=1, axis2=2)
            vals.append(np.divide(diag, rows, out=np.full(diag.shape, np.nan), where=rows > 0))
        allv = np.concatenate(vals)
        for i in range(c):
            col = allv[:, i][np.isfinite(allv[:, i])]
            if support[i] and col.size:
                recall_ci[i] = [float(q) for q in np.quantile(col, [0.025, 0.975])]
    return {
        "accuracy": float(accuracy_from_cm(cm)),
        "balanced_accuracy": float(balanced_accuracy_from_cm(cm)),
        "macro_f1": float(macro_f1_from_cm(cm)),
        "ci95": bootstrap_ci(y, pred, c, n_boot=n_boot, seed=seed),
        "per_class_recall": {cl: {"recall": r, "ci95": ci, "n": int(s)}
                             for cl, r, ci, s in zip(classes, recall, recall_ci, support)},
    }


def frontier(y: np.ndarray, probs: np.ndarray, base: np.ndarray, end: np.ndarray,
             points: int = 11) -> list[dict[str, float]]:
    """Accuracy and balanced accuracy as the prior moves from `base` (the model's own, i.e. the
    balanced rule) to `end` (the training prior) on the log scale."""
    y = np.asarray(y, np.int64)
    out = []
    for t in np.linspace(0.0, 1.0, max(2, points)):
        prior = interpolate_prior(base, end, float(t))
        q = np.asarray(probs, np.float64) * prior_weights(prior, base)
        cm = confusion_matrix(y, q.argmax(axis=1), len(base))
        out.append({"t": round(float(t), 4), "accuracy": float(accuracy_from_cm(cm)),
                    "balanced_accuracy": float(balanced_accuracy_from_cm(cm))})
    return out


def compare_rules(y: np.ndarray, probs: np.ndarray, decisions: list[Decision],
                  classes: list[str], n_boot: int = 1000, seed: int = 0,
                  base: np.ndarray | None = None, train_prior: np.ndarray | None = None
                  ) -> dict[str, Any]:
    """Each rule's metrics on the same images, and the balanced-to-training-prior frontier."""
    rules = []
    for d in decisions:
        adjusted = d.apply(probs)
        m = rule_metrics(y, adjusted, classes, n_boot=n_boot, seed=seed)
        conf = adjusted.max(axis=1)
        thr = d.uncertain_threshold
        m["uncertain_share"] = float((conf < thr).mean()) if thr is not None and len(y) else None
        rules.append({"rule": d.rule, "description": describe_rule(d), **m,
                      "uncertain_threshold": thr})
    result: dict[str, Any] = {"rules": rules, "n": int(len(y)), "n_boot": int(n_boot)}
    if base is not None and train_prior is not None:
        result["frontier"] = frontier(y, probs, base, train_prior)
    return result


def triage_section(predictor: Predictor, eval_set: EvalSet, y: np.ndarray, probs: np.ndarray,
                   validation: Validation, store: bool = False) -> dict[str, Any]:
    """`skin evaluate`'s triage section: the stored threshold on the evaluated images.

    With `store` (the run's own test split) the test operating point goes into run.json.
    """
    rec = ensure_triage(predictor, validation)
    if not rec or rec.get("threshold") is None:
        return {"available": False, "reason": (rec or {}).get("reason", "not fitted")}
    classes = predictor.classes
    names = list(rec["malignant"]) + (list(rec.get("premalignant", []))
                                      if rec.get("count_premalignant") else [])
    s = triage.scores(probs, classes, names)
    positive = np.isin(np.asarray(y), [classes.index(c) for c in names])
    point = triage.operating_point(s, positive, float(rec["threshold"]))
    target = rec.get("target_sensitivity")
    if target is not None and point["sensitivity"] is not None:
        # "held": the lower bound clears the target; "point only": the estimate does, the
        # interval does not; "missed": the estimate is below it.
        point["target_check"] = ("held" if (point["sensitivity_lower95"] or 0) >= target
                                 else "point only" if point["sensitivity"] >= target
                                 else "missed")
    out = {"available": True, "subset": eval_set.subset, "record": rec, **point}
    if store:
        extra = dict(predictor.info.extra or {})
        extra["triage"] = {**rec, "test": point}
        predictor.info = update_run_info(predictor.run_dir, extra=extra)
    return out
