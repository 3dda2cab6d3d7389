"""Answer or defer: per-class confidence thresholds fitted on validation for a target.

The model answers an image when its top calibrated probability reaches the threshold of the
class it predicts, and otherwise hands the image to a dermatologist ("deferred"). One threshold
per predicted class, because one global threshold on the top probability stops answering the
hard classes first (on isic9 at 50% coverage squamous cell carcinoma was answered for only 15%
of its images).

The operating point (`fit`) is the largest coverage at which the accepted validation cases
reach the target: balanced accuracy and macro F1 >= target, every class's recall among the
accepted >= `recall_floor` (0.75), and every class answered for >= `coverage_floor` (20%) of
its images. Or it is infeasible, and says so: nothing is stored, there is no fallback.

The search is greedy, then coordinate-wise (exact optimisation over C thresholds is
combinatorial and would overfit validation anyway):

1. Peel: start answering everything; at each step raise one class's threshold to its next
   distinct score (a small step), choosing the class whose step cuts the shortfall most per
   case declined (shortfall = sum of how far balanced accuracy, macro F1 and each recall are
   below their bars). A step that takes a class's coverage below the floor is not allowed.
   Stop at the first point meeting every bar.
2. Add back: for each class in turn, lower its threshold as far as the bars still hold (a
   few sweeps), which recovers coverage the greedy path gave up.
3. Several paths: the peel is also run aimed at stricter bars (the grid 0.50, 0.525, ...
   above the target), each followed by the add-back under the target's own bars, and the
   largest coverage wins. A greedy path can get stuck where a stricter one does not; with the
   paths, a target feasible at 0.85 is feasible at 0.75 with at least as much coverage.

The fitted thresholds meet the target on validation by construction (`check` re-verifies);
test figures come from `evaluate_at`, with lesion-grouped bootstrap intervals.

For deferred cases a class-conditional (Mondrian) split-conformal set gives the differential:
with q_k the ceil((n_k + 1)(1 - alpha))-th smallest of 1 - p_k(x) over validation images of
class k, the set {k : 1 - p_k(x) <= q_k} holds the true class with probability >= 1 - alpha for
every class separately (Vovk et al. 2005). Class-conditional rather than marginal coverage, so
the rare malignant classes are not the ones left out; a few lines of numpy, no dependency.

Deferral never touches triage: an image whose malignancy score says "refer" is referred whether
it is answered or deferred (`action`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np

from skincli.errors import SkinError
from skincli.metrics import confusion_matrix, per_class_from_cm
from skincli.plots import pyplot, save_figure
from skincli.selective import group_ids, grouped_weights, risk_coverage, selection_metrics

DEFAULT_TARGET = 0.85
RECALL_FLOOR = 0.75
COVERAGE_FLOOR = 0.20
CONFORMAL_ALPHA = 0.10
FEW_ACCEPTED = 10  # a class with fewer accepted test cases than this is flagged
ANSWERED = "answered"
DEFERRED = "deferred to a dermatologist"
SCORE = "max calibrated probability"


def check_target(target: float, what: str = "--defer-target") -> float:
    """The target as a float in (0, 1), or a one-line error."""
    try:
        t = float(target)
    except (TypeError, ValueError):
        t = float("nan")
    if not 0.0 < t < 1.0:
        raise SkinError(f"{what} {target} is not valid: it must be between 0 and 1",
                        hint="e.g. 0.85 for balanced accuracy and macro F1 of 85%")
    return t


def accepted_mask(probs: np.ndarray, thresholds: Sequence[float | None]) -> np.ndarray:
    """True where the top probability reaches the threshold of the predicted class (None =
    that class is never answered)."""
    p = np.asarray(probs, dtype=np.float64)
    thr = np.array([np.inf if t is None else float(t) for t in thresholds])
    if p.shape[0] == 0:
        return np.zeros(0, bool)
    return p.max(axis=1) >= thr[p.argmax(axis=1)]


class _Bars:
    """The target's bars and the shortfall of a set of accepted cases."""

    def __init__(self, y: np.ndarray, pred: np.ndarray, c: int, target: float,
                 recall_floor: float, coverage_floor: float) -> None:
        self.y, self.pred, self.c = y, pred, c
        self.target, self.recall_floor, self.coverage_floor = target, recall_floor, coverage_floor
        self.totals = np.bincount(y, minlength=c).astype(np.float64)
        self.present = self.totals > 0

    def measure(self, accepted: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        """(shortfall, coverage floor held, figures) of the accepted cases."""
        cm = confusion_matrix(self.y[accepted], self.pred[accepted], self.c)
        pc = per_class_from_cm(cm)
        support = pc["support"]
        cover = np.divide(support, self.totals, out=np.zeros(self.c), where=self.present)
        floor_ok = bool((cover[self.present] >= self.coverage_floor - 1e-12).all())
        # Averages over every class with validation images: a class never answered counts 0.
        recall = pc["recall"][self.present]
        ba = float(recall.mean()) if recall.size else 0.0
        f1 = float(pc["f1"][self.present].mean()) if recall.size else 0.0
        short = (max(0.0, self.target - ba) + max(0.0, self.target - f1)
                 + float(np.clip(self.recall_floor - recall, 0.0, None).sum()))
        return short, floor_ok, {"balanced_accuracy": ba, "macro_f1": f1,
                                 "coverage": float(accepted.mean()) if accepted.size else 0.0}


def _levels(score: np.ndarray, pred: np.ndarray, c: int) -> list[np.ndarray]:
    """Per predicted class, its distinct scores ascending, then +inf (answer none)."""
    return [np.r_[np.unique(score[pred == k]), np.inf] for k in range(c)]


def _mask(score: np.ndarray, pred: np.ndarray, levels: list[np.ndarray],
          pos: list[int]) -> np.ndarray:
    thr = np.array([levels[k][pos[k]] for k in range(len(levels))])
    return score >= thr[pred]


def _peel(score: np.ndarray, pred: np.ndarray, levels: list[np.ndarray], step: list[int],
          bars: _Bars) -> tuple[list[int] | None, dict[str, Any]]:
    """Step 1 for one set of bars: the threshold positions where they first hold (or None),
    and the closest point met on the way."""
    c = len(levels)
    pos = [0] * c
    accepted = _mask(score, pred, levels, pos)
    short, floor_ok, figs = bars.measure(accepted)
    closest = {"shortfall": short, **figs}
    if not floor_ok:  # cannot happen with everything answered unless a class has no images
        return None, closest
    while short > 1e-12:
        best: tuple[float, int, int] | None = None
        n_now = int(accepted.sum())
        for k in range(c):
            if pos[k] >= len(levels[k]) - 1:
                continue
            trial = list(pos)
            trial[k] = min(len(levels[k]) - 1, pos[k] + step[k])
            mask = _mask(score, pred, levels, trial)
            s, ok, _ = bars.measure(mask)
            if not ok:
                continue
            ratio = (s - short) / max(1, n_now - int(mask.sum()))
            if best is None or ratio < best[0]:
                best = (ratio, k, trial[k])
        if best is None:
            return None, closest
        pos[best[1]] = best[2]
        accepted = _mask(score, pred, levels, pos)
        short, _, figs = bars.measure(accepted)
        if short < closest["shortfall"]:
            closest = {"shortfall": short, **figs}
    return pos, closest


def _add_back(score: np.ndarray, pred: np.ndarray, levels: list[np.ndarray], pos: list[int],
              bars: _Bars, sweeps: int) -> list[int]:
    """Step 2: lower each threshold as far as the bars still hold, a few sweeps."""
    pos = list(pos)
    for _ in range(sweeps):
        changed = False
        for k in range(len(levels)):
            for j in range(pos[k]):
                trial = list(pos)
                trial[k] = j
                s, ok, _ = bars.measure(_mask(score, pred, levels, trial))
                if ok and s <= 1e-12:
                    changed = changed or j != pos[k]
                    pos[k] = j
                    break
        if not changed:
            break
    return pos


def path_targets(target: float) -> list[float]:
    """The bars each peel aims at: the target itself, then the stricter grid points above it
    (0.50, 0.525, ... 0.975). A greedy peel aimed at 0.85 can end where the bars of 0.75 also
    hold although the 0.75 peel got stuck; trying the stricter paths too keeps the answer
    monotone — whatever is feasible at a target is feasible, with as much coverage, below it."""
    grid = [round(0.5 + 0.025 * i, 3) for i in range(20)]
    return [float(target)] + [g for g in grid if g > float(target) + 1e-9]


def fit_thresholds(probs: np.ndarray, y: np.ndarray, target: float = DEFAULT_TARGET,
                   recall_floor: float = RECALL_FLOOR, coverage_floor: float = COVERAGE_FLOOR,
                   max_steps_per_class: int = 200, sweeps: int = 3
                   ) -> tuple[list[float | None] | None, dict[str, Any]]:
    """Per-class thresholds (None = never answered) for the largest coverage meeting the
    bars on these cases, or (None, closest) when no thresholds can (see the module doc)."""
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(y, dtype=np.int64)
    c = p.shape[1]
    score, pred = p.max(axis=1), p.argmax(axis=1)
    bars = _Bars(t, pred, c, target, recall_floor, coverage_floor)
    levels = _levels(score, pred, c)
    step = [max(1, (len(v) - 1) // max_steps_per_class) for v in levels]
    best: tuple[int, list[int]] | None = None
    closest: dict[str, Any] = {}
    for i, path in enumerate(path_targets(target)):
        path_bars = bars if i == 0 else _Bars(t, pred, c, path, recall_floor, coverage_floor)
        pos, near = _peel(score, pred, levels, step, path_bars)
        if i == 0:  # the target's own path says how close it came
            closest = near
        if pos is None:
            continue
        # Stricter bars met imply the target's; adding back under the target's bars then
        # recovers the coverage the stricter path gave up.
        pos = _add_back(score, pred, levels, pos, bars, sweeps)
        n = int(_mask(score, pred, levels, pos).sum())
        if best is None or n > best[0]:
            best = (n, pos)
    if best is None:
        return None, closest
    pos = best[1]
    thresholds = [None if math.isinf(levels[k][pos[k]]) else float(levels[k][pos[k]])
                  for k in range(c)]
    return thresholds, closest


def conformal_quantiles(probs: np.ndarray, y: np.ndarray, alpha: float = CONFORMAL_ALPHA
                        ) -> list[float | None]:
    """Class-conditional split-conformal thresholds q_k on the score 1 - p_k (None: too few
    validation images of k for this alpha, so k is always in the set)."""
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(y, dtype=np.int64)
    out: list[float | None] = []
    for k in range(p.shape[1]):
        s = np.sort(1.0 - p[t == k, k])
        rank = math.ceil((s.size + 1) * (1.0 - alpha))
        out.append(float(s[rank - 1]) if 0 < rank <= s.size else None)
    return out


def prediction_set(probabilities: dict[str, float], quantiles: dict[str, float | None]
                   ) -> list[str]:
    """The conformal differential of one image, most probable first."""
    keep = [c for c, p in probabilities.items()
            if quantiles.get(c) is None or 1.0 - p <= float(quantiles[c]) + 1e-12]
    return sorted(keep, key=lambda c: -probabilities[c])


def _named(metrics: dict[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    out = dict(metrics)
    out["per_class"] = {c: r for c, r in zip(classes, metrics["per_class"])}
    return out


def fit(probs: np.ndarray, y: np.ndarray, classes: Sequence[str],
        target: float = DEFAULT_TARGET, recall_floor: float = RECALL_FLOOR,
        coverage_floor: float = COVERAGE_FLOOR, source: str = "") -> dict[str, Any]:
    """The operating point record for run.json (`feasible` False: store nothing)."""
    target = check_target(target)
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(y, dtype=np.int64)
    if t.size == 0:
        raise SkinError("No validation probabilities to fit the operating point on",
                        hint="The run's split needs validation images")
    thresholds, closest = fit_thresholds(p, t, target, recall_floor, coverage_floor)
    base = {"target": target, "recall_floor": recall_floor, "coverage_floor": coverage_floor,
            "score": SCORE, "n_val": int(t.size), "source": source,
            "rule": "answer when the top calibrated probability >= the threshold of the "
                    "predicted class; otherwise defer to a dermatologist",
            "method": "greedy peel over per-class thresholds, then coordinate add-back"}
    if thresholds is None:
        return {**base, "feasible": False, "closest": closest}
    accepted = accepted_mask(p, thresholds)
    figures = selection_metrics(t, p.argmax(axis=1), accepted, len(classes))
    q = conformal_quantiles(p, t)
    return {**base, "feasible": True,
            "thresholds": dict(zip(classes, thresholds)),
            "validation": _named(figures, classes),
            "conformal": {"alpha": CONFORMAL_ALPHA, "quantiles": dict(zip(classes, q)),
                          "kind": "class-conditional split conformal (1 - p_k)"},
            "fitted": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def check(record: dict[str, Any], probs: np.ndarray, y: np.ndarray,
          classes: Sequence[str]) -> bool:
    """True when the record's thresholds meet its bars on these cases."""
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(y, dtype=np.int64)
    bars = _Bars(t, p.argmax(axis=1), len(classes), float(record["target"]),
                 float(record["recall_floor"]), float(record["coverage_floor"]))
    short, ok, _ = bars.measure(accepted_mask(p, [record["thresholds"][c] for c in classes]))
    return ok and short <= 1e-9


def describe(record: dict[str, Any]) -> str:
    """One line naming the operating point (for predict, the card and FHIR)."""
    v = record.get("validation") or {}
    return (f"answers when the top probability reaches its class threshold (target "
            f"{record['target']:.2f} balanced accuracy and macro F1, every class recall >= "
            f"{record['recall_floor']:.2f} and coverage >= {record['coverage_floor']:.0%}; "
            f"answered {v.get('coverage', 0):.0%} of {record.get('n_val', 0)} validation "
            "images)")


def evaluate_at(record: dict[str, Any], probs: np.ndarray, y: np.ndarray,
                classes: Sequence[str], groups: Sequence[Any] | None = None,
                n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """What the stored operating point reaches on other images (test), with lesion-grouped
    95% intervals, the gap to validation and whether the target is met (lower bounds)."""
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(y, dtype=np.int64)
    accepted = accepted_mask(p, [record["thresholds"][c] for c in classes])
    weights = grouped_weights(group_ids(groups, t.size), n_boot, seed) \
        if n_boot > 0 and t.size else None
    m = _named(selection_metrics(t, p.argmax(axis=1), accepted, len(classes), weights),
               classes)
    val = record.get("validation") or {}
    target = float(record["target"])
    gap = {k: (m[k] - val[k]) if val.get(k) is not None else None
           for k in ("coverage", "balanced_accuracy", "macro_f1")}
    lows = [m[f"{k}_ci95"][0] if m.get(f"{k}_ci95") else None
            for k in ("balanced_accuracy", "macro_f1")]
    met = all(lo is not None and lo >= target for lo in lows)
    recall_ok = {c: r["recall"] is not None and r["recall"] >= record["recall_floor"]
                 for c, r in m["per_class"].items() if r["n_total"]}
    few = [c for c, r in m["per_class"].items() if r["n_total"] and r["n_accepted"] < FEW_ACCEPTED]
    return {**m, "gap_vs_validation": gap, "met": met, "recall_floor_held": recall_ok,
            "few_accepted": few, "n_boot": int(n_boot)}


def record_of(info: Any) -> dict[str, Any] | None:
    """The stored operating point of a RunInfo (None when the run has none)."""
    rec = (getattr(info, "extra", None) or {}).get("defer")
    return rec if isinstance(rec, dict) and rec.get("feasible") else None


def assess(record: dict[str, Any] | None, probabilities: dict[str, float]
           ) -> dict[str, Any] | None:
    """One prediction: answered or deferred (None when the run has no operating point).

    `probabilities` are the calibrated ones the thresholds were fitted on.
    """
    if not record or not probabilities:
        return None
    top = max(probabilities, key=lambda c: probabilities[c])
    confidence = float(probabilities[top])
    threshold = (record.get("thresholds") or {}).get(top)
    answered = threshold is not None and confidence >= float(threshold)
    out: dict[str, Any] = {
        "status": "answered" if answered else "deferred", "text": ANSWERED if answered
        else DEFERRED, "deferred": not answered, "predicted": top,
        "confidence": round(confidence, 6),
        "threshold": None if threshold is None else round(float(threshold), 6),
        "target": record.get("target"),
        "validation_coverage": (record.get("validation") or {}).get("coverage")}
    conf = record.get("conformal")
    if not answered and conf:
        out["differential"] = prediction_set(probabilities, conf.get("quantiles") or {})
        out["differential_note"] = (f"{1 - float(conf['alpha']):.0%} class-conditional "
                                    "conformal set")
    return out


def action(triage: dict[str, Any] | None, deferral: dict[str, Any] | None) -> str:
    """The one-word outcome: "refer" wins over everything; then deferred or answered."""
    if triage and triage.get("refer"):
        return "refer"
    if deferral and deferral.get("deferred"):
        return DEFERRED
    return ANSWERED


# --- the `skin evaluate --defer-target` section -------------------------------------------------

def evaluation_section(val: tuple[np.ndarray, np.ndarray, Sequence[Any] | None],
                       test: tuple[np.ndarray, np.ndarray, Sequence[Any] | None],
                       classes: Sequence[str], target: float, subset: str = "test",
                       n_boot: int = 1000, seed: int = 0, source: str = "") -> dict[str, Any]:
    """Risk-coverage curves of validation and the evaluated images, the operating point fitted
    on validation only, and what it reaches on the evaluated images.

    `val` and `test` are (calibrated probabilities, labels, lesion groups or None).
    """
    target = check_target(target)
    (vp, vy, vg), (tp, ty, tg) = val, test
    curves = {"validation": risk_coverage(vp, vy, classes, vg, n_boot=n_boot, seed=seed),
              subset: risk_coverage(tp, ty, classes, tg, n_boot=n_boot, seed=seed)}
    record = fit(vp, vy, classes, target, source=source)
    out: dict[str, Any] = {"target": target, "subset": subset, "curves": curves,
                           "operating_point": record}
    if record["feasible"]:
        out["result"] = evaluate_at(record, tp, ty, classes, tg, n_boot=n_boot, seed=seed)
    return out


def plot_risk_coverage(section: dict[str, Any], path: Any, title: str) -> None:
    """Balanced accuracy and macro F1 against coverage (with 95% bands), per curve."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in zip(axes, ("balanced_accuracy", "macro_f1"),
                              ("balanced accuracy", "macro F1")):
        for name, curve in section["curves"].items():
            rows = curve["levels"]
            cov = [r["target_coverage"] for r in rows]
            ax.plot(cov, [r[key] for r in rows], "o-", ms=3, label=name)
            cis = [r.get(f"{key}_ci95") for r in rows]
            if all(cis):
                ax.fill_between(cov, [c[0] for c in cis], [c[1] for c in cis], alpha=0.2)
        ax.axhline(section["target"], ls="--", c="grey", lw=0.8)
        op = section["operating_point"]
        if op.get("feasible"):
            ax.axvline(op["validation"]["coverage"], ls=":", c="k", lw=0.8)
        ax.set_xlabel("coverage (share answered)")
        ax.set_ylabel(label)
        ax.set_xlim(1.02, 0.05)
        ax.legend(fontsize=8)
    fig.suptitle(f"Risk-coverage, {title}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
