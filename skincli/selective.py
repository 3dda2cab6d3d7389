"""Selective classification: how good the answers are when the model may decline some.

A model that answers only the cases it is surest of trades coverage (the share answered) for
risk (the share of answers that are wrong). This module measures that trade, in plain numpy:

- `risk_coverage`: for coverage 100% down to 10% in 5% steps, the accepted cases (the most
  confident first) with their count, balanced accuracy, macro F1 and, per true class, recall,
  coverage (the share of that class's images answered) and count answered; each with a 95%
  interval from a bootstrap over lesions (`groups`), so images of one lesion move together.
  The acceptance set of each level is fixed at its point estimate; the interval is the
  sampling uncertainty of the metrics given that set.
- `aurc_summary`: AURC (area under the risk-coverage curve, Geifman et al. 2019), E-AURC (AURC
  minus the best AURC any ranking could reach on these errors) and AUGRC (area under the
  generalised risk-coverage curve, Traub et al. 2024: the joint probability "accepted and
  wrong", which does not reward declining easy cases) for each confidence score, with the
  oracle (every error ranked last) and random (AURC = error rate) baselines. Tied scores are
  accepted together: a constant score has one point on the curve, so its AURC is the error rate.

Confidence scores: the maximum calibrated probability and the margin between the two highest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from skincli.metrics import balanced_accuracy_from_cm, macro_f1_from_cm, per_class_from_cm

DEFAULT_LEVELS = tuple(round(1.0 - 0.05 * i, 2) for i in range(19))  # 1.00, 0.95 ... 0.10
SCORES = ("max_probability", "margin")
SCORE_LABELS = {"max_probability": "max calibrated probability",
                "margin": "margin (top-1 minus top-2 probability)"}


def confidence_scores(probs: np.ndarray) -> dict[str, np.ndarray]:
    """The confidence scores (N,) of calibrated probabilities (N, C), by name."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape[0] == 0:
        return {k: np.zeros(0) for k in SCORES}
    top2 = np.sort(p, axis=1)[:, -2:] if p.shape[1] > 1 else np.c_[np.zeros(len(p)), p]
    return {"max_probability": top2[:, 1], "margin": top2[:, 1] - top2[:, 0]}


# --- AURC, E-AURC, AUGRC ------------------------------------------------------------------------

def _curve(score: np.ndarray, error: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative errors, accepted counts and coverage steps at each distinct score (desc)."""
    s = np.asarray(score, dtype=np.float64)
    e = np.asarray(error, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, e = s[order], e[order]
    # The end of each block of tied scores: ties are accepted or declined together.
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    cum_err = np.cumsum(e)[ends]
    accepted = ends + 1.0
    d_cov = np.diff(np.r_[0.0, accepted]) / s.size
    return cum_err, accepted, d_cov


def aurc(score: np.ndarray, error: np.ndarray) -> float:
    """Area under the risk-coverage curve (risk = errors among accepted / accepted)."""
    if len(error) == 0:
        return float("nan")
    cum_err, accepted, d_cov = _curve(score, error)
    return float((cum_err / accepted * d_cov).sum())


def augrc(score: np.ndarray, error: np.ndarray) -> float:
    """Area under the generalised risk-coverage curve (risk = accepted errors / all cases)."""
    n = len(error)
    if n == 0:
        return float("nan")
    cum_err, _, d_cov = _curve(score, error)
    return float((cum_err / n * d_cov).sum())


def oracle_scores(error: np.ndarray) -> np.ndarray:
    """A score that ranks every correct case above every error, without ties."""
    e = np.asarray(error, dtype=bool)
    return np.where(e, 0.0, 1.0) + np.linspace(0.5, 0.0, e.size, endpoint=False) / 2.0


def aurc_summary(probs: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """AURC, E-AURC and AUGRC of each confidence score, with oracle and random baselines."""
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(y, dtype=np.int64)
    error = (p.argmax(axis=1) != t) if len(t) else np.zeros(0, bool)
    rate = float(error.mean()) if len(t) else float("nan")
    best = oracle_scores(error)
    oracle = {"aurc": aurc(best, error), "augrc": augrc(best, error)}
    # A random ranking has, in expectation, the error rate at every coverage.
    random = {"aurc": rate, "augrc": rate / 2.0}
    out: dict[str, Any] = {"n": int(len(t)), "error_rate": rate, "oracle": oracle,
                           "random": {**random, "e_aurc": rate - oracle["aurc"]}, "scores": {}}
    for name, s in confidence_scores(p).items():
        a = aurc(s, error)
        out["scores"][name] = {"label": SCORE_LABELS[name], "aurc": a,
                               "e_aurc": a - oracle["aurc"], "augrc": augrc(s, error)}
    return out


# --- the risk-coverage table with lesion-grouped intervals -------------------------------------

def group_ids(groups: Sequence[Any] | np.ndarray | None, n: int) -> np.ndarray:
    """Integer lesion ids (N,); an empty or missing group makes the image its own lesion."""
    if groups is None:
        return np.arange(n)
    g = np.asarray([str(v) if v is not None else "" for v in groups], dtype=object)
    if g.size != n:
        raise ValueError(f"groups has {g.size} entries for {n} images")
    keys = np.where(g == "", np.array([f"\0{i}" for i in range(n)], dtype=object), g)
    return np.unique(keys.astype(str), return_inverse=True)[1].astype(np.int64)


def grouped_weights(gid: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(B, N) image weights of B lesion-level bootstrap resamples (lesions drawn with
    replacement; each image of a lesion drawn k times gets weight k)."""
    n_groups = int(gid.max()) + 1 if gid.size else 0
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot) \
        if n_groups else np.zeros((n_boot, 0))
    return draws[:, gid].astype(np.float64)


def _cms(y: np.ndarray, pred: np.ndarray, weights: np.ndarray, c: int) -> np.ndarray:
    """Weighted confusion matrices (B, C, C) from per-image weights (B, N)."""
    onehot = np.zeros((y.size, c * c))
    onehot[np.arange(y.size), y * c + pred] = 1.0
    return (weights @ onehot).reshape(-1, c, c)


def accept_top(score: np.ndarray, coverage: float) -> np.ndarray:
    """Mask of the ceil(coverage x N) highest scores (ties broken by order, stable)."""
    n = score.size
    k = int(np.ceil(round(coverage * n, 9)))
    mask = np.zeros(n, bool)
    mask[np.argsort(-score, kind="mergesort")[:k]] = True
    return mask


def _q(values: np.ndarray, level: float) -> list[float] | None:
    if values.size == 0:
        return None
    a = (1.0 - level) / 2.0
    return [float(v) for v in np.quantile(values, [a, 1.0 - a])]


def selection_metrics(y: np.ndarray, pred: np.ndarray, accepted: np.ndarray, c: int,
                      weights: np.ndarray | None = None, level: float = 0.95
                      ) -> dict[str, Any]:
    """Metrics of the accepted cases (and their per-class coverage), with bootstrap CIs when
    `weights` (B, N) are given."""
    w_all = np.ones((1, y.size)) if weights is None else np.vstack([np.ones(y.size), weights])
    acc = accepted.astype(np.float64)
    cms = _cms(y, pred, w_all * acc, c)
    pc = per_class_from_cm(cms)
    totals = (w_all[:, :, None] * (y[None, :, None] == np.arange(c))).sum(axis=1)  # (B', C)
    coverage = np.divide(pc["support"], totals, out=np.zeros_like(totals), where=totals > 0)
    ba = balanced_accuracy_from_cm(cms)
    f1 = macro_f1_from_cm(cms)
    boot = weights is not None and len(w_all) > 1
    # A resample that happens to hold no accepted case has no metrics: left out, not zero.
    some = cms.sum(axis=(-2, -1))[1:] > 0

    def ci(v: np.ndarray) -> list[float] | None:
        return _q(v[1:][some], level) if boot else None

    per_class = []
    for k in range(c):
        present = pc["support"][:, k] > 0
        per_class.append({
            "recall": float(pc["recall"][0, k]) if present[0] else None,
            "recall_ci95": None,
            "coverage": float(coverage[0, k]) if totals[0, k] else None,
            "coverage_ci95": (_q(coverage[1:, k][totals[1:, k] > 0], level) if boot else None)
            if totals[0, k] else None,
            "n_accepted": int(round(pc["support"][0, k])),
            "n_total": int(round(totals[0, k])),
        })
    if boot:  # recall resamples where the class has no accepted case are left out, not zero
        for k in range(c):
            if per_class[k]["recall"] is not None:
                ok = pc["support"][1:, k] > 0
                per_class[k]["recall_ci95"] = _q(pc["recall"][1:, k][ok], level)
    return {"n_accepted": int(accepted.sum()), "coverage": float(acc.mean()) if y.size else 0.0,
            "balanced_accuracy": float(ba[0]), "balanced_accuracy_ci95": ci(ba),
            "macro_f1": float(f1[0]), "macro_f1_ci95": ci(f1), "per_class": per_class}


def risk_coverage(probs: np.ndarray, y: np.ndarray, classes: Sequence[str],
                  groups: Sequence[Any] | np.ndarray | None = None,
                  score: str = "max_probability", levels: Sequence[float] = DEFAULT_LEVELS,
                  n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The risk-coverage table: metrics of the surest `level` share of cases, per level."""
    if score not in SCORES:
        raise ValueError(f"unknown confidence score {score!r}; choose from {SCORES}")
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(y, dtype=np.int64)
    c = len(classes)
    pred = p.argmax(axis=1) if len(t) else np.zeros(0, np.int64)
    s = confidence_scores(p)[score]
    gid = group_ids(groups, t.size)
    weights = grouped_weights(gid, n_boot, seed) if n_boot > 0 and t.size else None
    rows = []
    for level in levels:
        row = selection_metrics(t, pred, accept_top(s, float(level)), c, weights)
        rows.append({"target_coverage": float(level), **row})
    return {"score": score, "score_label": SCORE_LABELS[score], "classes": list(classes),
            "n": int(t.size), "n_lesions": int(gid.max()) + 1 if gid.size else 0,
            "n_boot": int(n_boot), "seed": int(seed), "levels": rows,
            "aurc": aurc_summary(p, t)}
