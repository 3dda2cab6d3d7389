"""The triage operating point: a malignancy score and a referral threshold.

score = the summed calibrated probability of the malignant classes (default: melanoma, basal
cell carcinoma, squamous cell carcinoma). Actinic keratosis is pre-malignant: reported as its
own score and, by default, not counted (count it with `count_premalignant`). The grouping is
configurable (`triage_malignant` in the training config, `--triage-malignant` on evaluate).

The threshold is fitted on the validation split for a target sensitivity (default 95%): the
highest threshold that still refers at least that share of the validation malignant cases
(k-th highest malignant score, k = ceil(target x positives)). "refer" when score >= threshold.
With `method="lower-bound"` the threshold is instead the highest one whose one-sided 95% lower
Clopper-Pearson bound of validation sensitivity reaches the target: a point estimate on ~130
validation malignancies cannot promise 95% on unseen lesions (isic9's held-out set: 90.7%), a
bound can, at the cost of more referrals (the record states the validation referral rate).
Chosen over out-of-fold predictions because it needs no extra training and holds for whatever
validation split the run has; it needs enough malignant validation cases (59 for 95%).
It is stored in run.json (`extra["triage"]`). The test split then reports what that threshold
gives (sensitivity and specificity with 95% Wilson intervals), since the validation figure is
optimistic by construction.

A prediction is never waved through on its top class alone: a melanoma predicted as "nevus
82%" with a malignancy score above the threshold is "refer".

This module holds the rule and its run.json record; fitting it on a run's validation images is
`skincli.evaluate.refit`, its test operating point in `skin evaluate` `skincli.evaluate.rules`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from skincli.errors import SkinError

DEFAULT_MALIGNANT = ("melanoma", "basal cell carcinoma", "squamous cell carcinoma")
DEFAULT_PREMALIGNANT = ("actinic keratosis",)
DEFAULT_SENSITIVITY = 0.95
REFER, NO_REFERRAL = "refer", "no referral suggested"
FIT_METHODS = ("point", "lower-bound")
BOUND_LEVEL = 0.95  # one-sided confidence of the lower bound (method "lower-bound")


@dataclass
class Grouping:
    """Which classes make the malignancy score."""

    malignant: list[str]
    premalignant: list[str]
    count_premalignant: bool = False

    @property
    def scored(self) -> list[str]:
        """The classes summed into the score."""
        return self.malignant + (self.premalignant if self.count_premalignant else [])


def parse_classes(text: str | Sequence[str] | None) -> list[str] | None:
    """'a, b' or ['a', 'b'] -> ['a', 'b']; None/empty -> None (the default grouping)."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [str(s).strip() for s in items if str(s).strip()]
    return names or None


def grouping(classes: Sequence[str], malignant: str | Sequence[str] | None = None,
             count_premalignant: bool = False) -> Grouping:
    """The grouping for a run's classes; a named malignant class the run lacks is an error."""
    chosen = parse_classes(malignant)
    if chosen is not None:
        unknown = [c for c in chosen if c not in classes]
        if unknown:
            raise SkinError(f"Triage class(es) {', '.join(repr(u) for u in unknown)} are not "
                            "classes of the run", hint=f"The run's classes: {', '.join(classes)}")
        mal = chosen
    else:
        mal = [c for c in DEFAULT_MALIGNANT if c in classes]
    pre = [c for c in DEFAULT_PREMALIGNANT if c in classes and c not in mal]
    return Grouping(mal, pre, bool(count_premalignant))


def scores(probs: np.ndarray, classes: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """Summed probability (N,) of the named classes."""
    idx = [list(classes).index(c) for c in names]
    p = np.asarray(probs, dtype=np.float64)
    return p[:, idx].sum(axis=1) if idx else np.zeros(len(p))


def wilson(k: int, n: int, z: float = 1.96) -> list[float] | None:
    """95% Wilson score interval of k successes in n (None when n = 0)."""
    if n <= 0:
        return None
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [max(0.0, centre - half), min(1.0, centre + half)]


def clopper_pearson_lower(k: int, n: int, level: float = BOUND_LEVEL) -> float | None:
    """One-sided lower Clopper-Pearson bound of a proportion k/n at `level` (None if n = 0)."""
    if n <= 0:
        return None
    if k <= 0:
        return 0.0
    from scipy.stats import beta

    return float(beta.ppf(1.0 - level, k, n - k + 1))


def _bound_k(target: float, n_pos: int) -> int | None:
    """The fewest referred positives whose lower bound reaches the target (None: n too few)."""
    for k in range(max(1, math.ceil(target * n_pos)), n_pos + 1):
        low = clopper_pearson_lower(k, n_pos)
        if low is not None and low >= target:
            return k
    return None


def operating_point(score: np.ndarray, positive: np.ndarray, threshold: float
                    ) -> dict[str, Any]:
    """Sensitivity and specificity (with 95% Wilson CIs) of "refer when score >= threshold"."""
    refer = np.asarray(score) >= threshold
    pos = np.asarray(positive, dtype=bool)
    tp, fn = int((refer & pos).sum()), int((~refer & pos).sum())
    tn, fp = int((~refer & ~pos).sum()), int((refer & ~pos).sum())
    return {
        "threshold": float(threshold), "n": int(len(pos)), "positives": tp + fn,
        "negatives": tn + fp, "tp": tp, "fn": fn, "tn": tn, "fp": fp,
        "sensitivity": tp / (tp + fn) if tp + fn else None, "sensitivity_ci95": wilson(tp, tp + fn),
        "sensitivity_lower95": clopper_pearson_lower(tp, tp + fn),
        "specificity": tn / (tn + fp) if tn + fp else None, "specificity_ci95": wilson(tn, tn + fp),
        "referral_rate": float(refer.mean()) if len(refer) else None,
    }


def fit(probs: np.ndarray, y: np.ndarray, classes: Sequence[str],
        target: float = DEFAULT_SENSITIVITY, malignant: str | Sequence[str] | None = None,
        count_premalignant: bool = False, source: str = "", method: str = "point"
        ) -> dict[str, Any]:
    """The run.json record: threshold for `target` sensitivity on these (validation) outputs
    (`method`: "point" estimate or its one-sided 95% Clopper-Pearson "lower-bound")."""
    if not 0 < float(target) < 1:
        raise SkinError(f"Triage sensitivity {target} is not valid",
                        hint="Use a fraction between 0 and 1, e.g. 0.95")
    if method not in FIT_METHODS:
        raise SkinError(f"Unknown triage fit {method!r}",
                        hint=f"Use one of: {', '.join(FIT_METHODS)}")
    g = grouping(classes, malignant, count_premalignant)
    record: dict[str, Any] = {
        "target_sensitivity": float(target), "malignant": g.malignant,
        "premalignant": g.premalignant, "count_premalignant": g.count_premalignant,
        "rule": "refer when the summed probability of the malignant classes >= threshold",
        "fitted": datetime.now(timezone.utc).isoformat(timespec="seconds"), "source": source,
        "threshold": None, "fit": method,
    }
    if not g.malignant:
        record["reason"] = "the run has none of the malignant classes"
        return record
    s = scores(probs, classes, g.scored)
    positive = np.isin(np.asarray(y), [list(classes).index(c) for c in g.scored])
    n_pos = int(positive.sum())
    record["n_val"], record["n_val_positive"] = int(len(s)), n_pos
    if n_pos == 0:
        record["reason"] = "no malignant case in the validation images"
        return record
    k = math.ceil(float(target) * n_pos)
    if method == "lower-bound":
        bound_k = _bound_k(float(target), n_pos)
        if bound_k is None:
            need = math.ceil(math.log(1.0 - BOUND_LEVEL) / math.log(float(target)))
            raise SkinError(f"The validation split has {n_pos} malignant case(s); a 95% lower "
                            f"bound of {float(target):.0%} sensitivity needs at least {need}",
                            hint="Use --triage-fit point, a lower --triage-sensitivity, or a "
                            "split with more malignant validation images")
        record["rule"] += (f" (threshold: the one-sided {BOUND_LEVEL:.0%} lower Clopper-Pearson "
                           "bound of validation sensitivity reaches the target)")
        k = bound_k
    threshold = float(np.sort(s[positive])[::-1][k - 1])
    record["threshold"] = threshold
    record["validation"] = operating_point(s, positive, threshold)
    return record


def assess(record: dict[str, Any] | None, probabilities: dict[str, float]
           ) -> dict[str, Any] | None:
    """One prediction's triage: score, threshold, refer / no referral suggested (None if unfit)."""
    if not record or record.get("threshold") is None:
        return None
    names = list(record["malignant"]) + (list(record.get("premalignant", []))
                                         if record.get("count_premalignant") else [])
    score = float(sum(probabilities.get(c, 0.0) for c in names))
    pre = float(sum(probabilities.get(c, 0.0) for c in record.get("premalignant", [])))
    threshold = float(record["threshold"])
    refer = score >= threshold
    return {"malignancy_score": round(score, 6), "premalignant_score": round(pre, 6),
            "threshold": round(threshold, 6), "refer": bool(refer),
            "decision": REFER if refer else NO_REFERRAL,
            "target_sensitivity": record.get("target_sensitivity")}


def record_of(info: Any) -> dict[str, Any] | None:
    """The triage record in a RunInfo's run.json (None when never fitted)."""
    rec = (getattr(info, "extra", None) or {}).get("triage")
    return rec if isinstance(rec, dict) else None


def fit_for_training(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                     cfg: Any) -> dict[str, Any]:
    """The record `skin train` stores, from its validation pass (calibrated probabilities)."""
    if len(labels) == 0:
        return {"threshold": None, "reason": "no readable validation images"}
    target = float(getattr(cfg, "triage_sensitivity", DEFAULT_SENSITIVITY))
    malignant = getattr(cfg, "triage_malignant", None) or None
    method = getattr(cfg, "triage_fit", "point") or "point"
    source = f"validation split ({len(labels)} images), skin train"
    try:
        return fit(probs, labels, classes, target, malignant, source=source, method=method)
    except SkinError as exc:
        if method != "lower-bound":
            raise
        # Too few malignant validation cases for the bound: the point estimate, said aloud in
        # run.json and the training summary (never silently).
        record = fit(probs, labels, classes, target, malignant, source=source, method="point")
        record["fallback"] = f"lower-bound fit not possible: {exc.message}; point estimate used"
        return record
