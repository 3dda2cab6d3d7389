"""Classification metrics with their uncertainty: plain numpy, checked against scikit-learn.

Conventions (the same as scikit-learn's defaults, so numbers can be cross-checked):

- Labels are integer class indices 0..C-1; `probs` is (N, C).
- Macro F1 and balanced accuracy average over the classes present in y_true (scikit-learn's
  `labels=np.unique(y_true)`): a class absent from the test data has no F1, and a stray
  prediction of it already costs the true class its recall. (scikit-learn's default would
  also average in a 0 for such a class, so one stray prediction could move macro F1 by 1/C.)
  A class never predicted has precision 0.
- One-vs-rest ROC AUC is computed per class present in y_true (and not the only class);
  the macro AUC averages those and lists the classes it skipped.
- Bootstrap intervals resample images with replacement (percentile method, 95%), vectorised
  over resamples via batched confusion matrices, so 1000 resamples take milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# A class is "weak" when its F1 is this far (absolute) below the macro F1 of the model.
WEAK_F1_GAP = 0.15
ECE_BINS = 15


def _as_int(a: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.int64).ravel()


def confusion_matrix(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                     n_classes: int) -> np.ndarray:
    """Counts (C, C): rows are true classes, columns predicted classes."""
    t, p = _as_int(y_true), _as_int(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.size} vs {p.size}")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes)


def batched_confusion(y_true: np.ndarray, y_pred: np.ndarray, idx: np.ndarray,
                      n_classes: int) -> np.ndarray:
    """Confusion matrices (B, C, C) of B resamples given as index rows idx (B, n)."""
    b = idx.shape[0]
    flat = y_true[idx] * n_classes + y_pred[idx]
    flat = flat + (np.arange(b) * n_classes * n_classes)[:, None]
    return np.bincount(flat.ravel(), minlength=b * n_classes * n_classes).reshape(
        b, n_classes, n_classes)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def per_class_from_cm(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from one or a batch of confusion matrices."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support = cm.sum(axis=-1)       # true counts per class
    predicted = cm.sum(axis=-2)     # predicted counts per class
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * tp, support + predicted)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support,
            "predicted": predicted}


def macro_f1_from_cm(cm: np.ndarray) -> np.ndarray:
    """Macro F1 over the classes present in y_true (works on (C,C) or (B,C,C))."""
    pc = per_class_from_cm(cm)
    present = pc["support"] > 0
    return _safe_div((pc["f1"] * present).sum(axis=-1), present.sum(axis=-1))


def balanced_accuracy_from_cm(cm: np.ndarray) -> np.ndarray:
    """Mean recall over classes present in y_true (works on (C,C) or (B,C,C))."""
    pc = per_class_from_cm(cm)
    present = pc["support"] > 0
    return _safe_div((pc["recall"] * present).sum(axis=-1), present.sum(axis=-1))


def accuracy_from_cm(cm: np.ndarray) -> np.ndarray:
    """Fraction correct (works on (C,C) or (B,C,C))."""
    cm = np.asarray(cm, dtype=np.float64)
    return _safe_div(np.diagonal(cm, axis1=-2, axis2=-1).sum(axis=-1), cm.sum(axis=(-2, -1)))


def weighted_f1_from_cm(cm: np.ndarray) -> np.ndarray:
    """F1 averaged with class support as weights."""
    pc = per_class_from_cm(cm)
    return _safe_div((pc["f1"] * pc["support"]).sum(axis=-1), pc["support"].sum(axis=-1))


def cohen_kappa_from_cm(cm: np.ndarray) -> float:
    """Cohen's kappa: agreement beyond chance between true and predicted labels."""
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.sum()
    if n == 0:
        return 0.0
    observed = np.trace(cm) / n
    expected = float((cm.sum(axis=1) * cm.sum(axis=0)).sum()) / (n * n)
    if expected >= 1.0:
        return 0.0 if observed < 1.0 else 1.0
    return float((observed - expected) / (1.0 - expected))


def accuracy(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    """Fraction of correct predictions."""
    t, p = _as_int(y_true), _as_int(y_pred)
    return float((t == p).mean()) if t.size else 0.0


def _n_classes(*arrays: np.ndarray) -> int:
    return int(max((int(a.max()) for a in arrays if a.size), default=-1)) + 1


def balanced_accuracy(y_true: Sequence[int] | np.ndarray,
                      y_pred: Sequence[int] | np.ndarray) -> float:
    """Mean per-class recall over the classes present in y_true."""
    t, p = _as_int(y_true), _as_int(y_pred)
    return float(balanced_accuracy_from_cm(confusion_matrix(t, p, _n_classes(t, p))))


def macro_f1(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    """Unweighted mean F1 over the classes present in y_true."""
    t, p = _as_int(y_true), _as_int(y_pred)
    return float(macro_f1_from_cm(confusion_matrix(t, p, _n_classes(t, p))))


def cohen_kappa(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    """Cohen's kappa of predictions against the truth."""
    t, p = _as_int(y_true), _as_int(y_pred)
    return cohen_kappa_from_cm(confusion_matrix(t, p, _n_classes(t, p)))


def binary_auc(y_binary: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC via the Mann-Whitney U statistic with average ranks for ties."""
    y = np.asarray(y_binary, dtype=bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # Average ranks (1-based) within groups of tied scores.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], s.size]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_auc_ovr(y_true: Sequence[int] | np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """One-vs-rest AUC per class; classes absent from y_true (or the only class) are skipped."""
    t = _as_int(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    per_class: list[float | None] = []
    skipped: list[int] = []
    for c in range(probs.shape[1]):
        pos = t == c
        if pos.all() or not pos.any():
            per_class.append(None)
            skipped.append(c)
        else:
            per_class.append(binary_auc(pos, probs[:, c]))
    valid = [a for a in per_class if a is not None]
    return {"per_class": per_class, "macro": float(np.mean(valid)) if valid else None,
            "skipped": skipped}


def bootstrap_ci(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                 n_classes: int, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                 chunk: int = 200) -> dict[str, list[float] | None]:
    """Percentile bootstrap intervals for macro F1, balanced accuracy and accuracy."""
    t, p = _as_int(y_true), _as_int(y_pred)
    names = ("macro_f1", "balanced_accuracy", "accuracy")
    if n_boot <= 0 or t.size == 0:
        return {k: None for k in names}
    rng = np.random.default_rng(seed)
    values: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, t.size, size=(b, t.size))
        cms = batched_confusion(t, p, idx, n_classes)
        values["macro_f1"].append(macro_f1_from_cm(cms))
        values["balanced_accuracy"].append(balanced_accuracy_from_cm(cms))
        values["accuracy"].append(accuracy_from_cm(cms))
    alpha = (1.0 - level) / 2.0
    return {k: [float(q) for q in np.quantile(np.concatenate(v), [alpha, 1.0 - alpha])]
            for k, v in values.items()}


def expected_calibration_error(probs: np.ndarray, y_true: Sequence[int] | np.ndarray,
                               n_bins: int = ECE_BINS) -> dict[str, Any]:
    """ECE of the top-class confidence with equal-width bins, plus the reliability bins."""
    probs = np.asarray(probs, dtype=np.float64)
    t = _as_int(y_true)
    conf = probs.max(axis=1) if probs.size else np.zeros(0)
    correct = (probs.argmax(axis=1) == t) if probs.size else np.zeros(0, bool)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 goes into the first bin.
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(np.float64)
    conf_sum = np.bincount(which, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(which, weights=correct.astype(np.float64), minlength=n_bins)
    mean_conf = _safe_div(conf_sum, count)
    mean_acc = _safe_div(acc_sum, count)
    n = max(int(t.size), 1)
    ece = float((np.abs(mean_acc - mean_conf) * count).sum() / n)
    bins = [{"lo": float(edges[i]), "hi": float(edges[i + 1]), "count": int(count[i]),
             "confidence": float(mean_conf[i]) if count[i] else None,
             "accuracy": float(mean_acc[i]) if count[i] else None} for i in range(n_bins)]
    return {"ece": ece, "bins": bins, "n_bins": n_bins}


def nll(probs: np.ndarray, y_true: Sequence[int] | np.ndarray, floor: float = 1e-12) -> float:
    """Mean negative log-likelihood of the true class (probabilities below `floor` count as it)."""
    probs = np.asarray(probs, dtype=np.float64)
    t = _as_int(y_true)
    if t.size == 0:
        return 0.0
    return float(-np.log(np.clip(probs[np.arange(t.size), t], floor, 1.0)).mean())


def weak_classes(f1: Sequence[float | None], support: Sequence[int | float], macro: float,
                 gap: float = WEAK_F1_GAP) -> list[int]:
    """Indices of classes (with support) whose F1 is more than `gap` below the macro F1."""
    return [i for i, (f, s) in enumerate(zip(f1, support))
            if s and f is not None and f < macro - gap]


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, Any]:
    """McNemar's test on paired correctness with the exact two-sided binomial p-value."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    only_a = int((a & ~b).sum())
    only_b = int((~a & b).sum())
    n = only_a + only_b
    if n == 0:
        p = 1.0
    else:
        k = min(only_a, only_b)
        # P(X <= k) for X ~ Binomial(n, 1/2), in log space so large n does not overflow.
        logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2)
                for i in range(k + 1)]
        top = max(logs)
        cdf = math.exp(top) * sum(math.exp(v - top) for v in logs)
        p = min(1.0, 2.0 * cdf)
    return {"only_a_correct": only_a, "only_b_correct": only_b, "p_value": float(p)}


def paired_comparison(y_true: Sequence[int] | np.ndarray, pred_a: Sequence[int] | np.ndarray,
                      pred_b: Sequence[int] | np.ndarray, n_classes: int, n_boot: int = 1000,
                      seed: int = 0, level: float = 0.95, chunk: int = 200) -> dict[str, Any]:
    """Is model B's macro F1 really different from model A's on the same images?

    Paired bootstrap: each resample draws the same images for both models, so the interval is
    for the difference (B - A) itself. McNemar's exact test compares their error rates.
    """
    t, pa, pb = _as_int(y_true), _as_int(pred_a), _as_int(pred_b)
    if not (t.size == pa.size == pb.size):
        raise ValueError("paired comparison needs predictions for the same images")
    diff_point = float(macro_f1_from_cm(confusion_matrix(t, pb, n_classes))
                       - macro_f1_from_cm(confusion_matrix(t, pa, n_classes)))
    diffs: list[np.ndarray] = []
    rng = np.random.default_rng(seed)
    for start in range(0, max(n_boot, 0), chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, t.size, size=(b, t.size))
        diffs.append(macro_f1_from_cm(batched_confusion(t, pb, idx, n_classes))
                     - macro_f1_from_cm(batched_confusion(t, pa, idx, n_classes)))
    alpha = (1.0 - level) / 2.0
    if diffs:
        d = np.concatenate(diffs)
        lo, hi = (float(q) for q in np.quantile(d, [alpha, 1.0 - alpha]))
        # Two-sided bootstrap p-value: how often the resampled difference crosses zero.
        p_boot = float(min(1.0, 2.0 * min((d <= 0).mean(), (d >= 0).mean())))
    else:
        lo = hi = p_boot = float("nan")
    mc = mcnemar_exact(pa == t, pb == t)
    significant = bool(n_boot > 0 and (lo > 0 or hi < 0))
    return {"macro_f1_diff": diff_point, "macro_f1_diff_ci": [lo, hi],
            "bootstrap_p_value": p_boot, "significant": significant, "mcnemar": mc,
            "n_boot": int(n_boot), "seed": int(seed)}


def classification_summary(y_true: Sequence[int] | np.ndarray, probs: np.ndarray,
                           classes: Sequence[str], n_boot: int = 1000,
                           seed: int = 0) -> dict[str, Any]:
    """Every metric `skin evaluate` reports, as a JSON-able dict."""
    t = _as_int(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    c = len(classes)
    pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    cm = confusion_matrix(t, pred, c)
    pc = per_class_from_cm(cm)
    auc = roc_auc_ovr(t, probs)
    macro = float(macro_f1_from_cm(cm))
    per_class = []
    for i, name in enumerate(classes):
        # None where a value is undefined: precision of a class never predicted, recall and F1
        # of a class absent from the data.
        per_class.append({
            "class": name,
            "precision": float(pc["precision"][i]) if pc["predicted"][i] else None,
            "recall": float(pc["recall"][i]) if pc["support"][i] else None,
            "f1": float(pc["f1"][i]) if pc["support"][i] else None,
            "support": int(pc["support"][i]),
            "predicted": int(pc["predicted"][i]),
            "auc": auc["per_class"][i],
        })
    weak = weak_classes([r["f1"] for r in per_class], pc["support"], macro)
    for i, row in enumerate(per_class):
        row["weak"] = i in weak
    cal = expected_calibration_error(probs, t)
    return {
        "n": int(t.size),
        "classes": list(classes),
        "accuracy": float(accuracy_from_cm(cm)),
        "balanced_accuracy": float(balanced_accuracy_from_cm(cm)),
        "macro_f1": macro,
        "weighted_f1": float(weighted_f1_from_cm(cm)),
        "cohen_kappa": cohen_kappa_from_cm(cm),
        "macro_auc": auc["macro"],
        "auc_skipped_classes": [classes[i] for i in auc["skipped"]],
        "nll": nll(probs, t),
        "ece": cal["ece"],
        "reliability": cal["bins"],
        "ci95": bootstrap_ci(t, pred, c, n_boot=n_boot, seed=seed),
        "n_boot": int(n_boot),
        "seed": int(seed),
        "per_class": per_class,
        "weak_classes": [classes[i] for i in weak],
        "weak_rule": f"F1 more than {WEAK_F1_GAP:.2f} below the macro F1 ({macro:.3f})",
        "confusion_matrix": cm.tolist(),
    }


# Keras's cross-entropy clips probabilities at this, so the validation loss matches the
# training loss it is plotted beside.
KERAS_EPSILON = 1e-7


def classification_metrics(y_true: Sequence[int] | np.ndarray, probs: np.ndarray,
                           classes: Sequence[str]) -> dict[str, Any]:
    """The numbers model selection reads after every epoch (no bootstrap: it runs often).

    Macro F1, balanced accuracy, accuracy, the cross-entropy loss (clipped as Keras clips it),
    F1 per class name (None for a class absent from y_true) and n.
    """
    t = _as_int(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(axis=1) if t.size else np.zeros(0, np.int64)
    cm = confusion_matrix(t, pred, len(classes))
    pc = per_class_from_cm(cm)
    return {
        "macro_f1": float(macro_f1_from_cm(cm)),
        "balanced_accuracy": float(balanced_accuracy_from_cm(cm)),
        "accuracy": float(accuracy_from_cm(cm)),
        "loss": nll(probs, t, floor=KERAS_EPSILON),
        "per_class_f1": {name: float(pc["f1"][i]) if pc["support"][i] else None
                         for i, name in enumerate(classes)},
        "n": int(t.size),
    }
