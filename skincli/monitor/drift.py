"""Drift tests: is what the model sees (and says) in production still like its validation data?

Four families, each with a threshold and a verdict (`ok`, `drift`, or `too few` when the
current sample is smaller than `min_samples`):

- prediction distribution: Population Stability Index (threshold 0.2, the usual "significant
  shift" level) and a chi-square test of homogeneity of predicted-class counts (alpha);
- confidence: two-sample Kolmogorov-Smirnov test on the top probability (alpha);
- input statistics: per-feature KS tests on `image_stats`, Bonferroni-corrected (family alpha);
- embedding: maximum mean discrepancy (Gaussian kernel, median-heuristic bandwidth) with a
  seeded permutation p-value (alpha).

With the default alpha of 0.01 for each of the four tests the chance of at least one false
alarm on an unshifted stream is at most about 4% per check (union bound).

The reference is computed once from the run's validation split and cached as
`runs/<run>/reference.json`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from skincli.monitor.store import STAT_NAMES

REFERENCE_FILE = "reference.json"
REFERENCE_VERSION = 1

OK, DRIFT, TOO_FEW = "ok", "drift", "too few"


@dataclass
class Thresholds:
    """When a test says `drift` (all configurable from the CLI/YAML)."""

    alpha: float = 0.01            # per-test significance level
    psi: float = 0.2               # PSI above this = a significant prediction-mix shift
    min_samples: int = 50          # fewer current predictions than this: no verdict
    n_permutations: int = 200      # MMD permutation test resamples
    max_embedding_samples: int = 500  # subsample each side for the O(n^2) MMD
    seed: int = 0                  # fixes the permutations, subsamples and bootstraps
    f1_tolerance: float = 0.05     # performance alert: CI upper bound below test F1 - this
    min_labels: int = 30           # fewer labelled predictions than this: no verdict


@dataclass
class DriftResult:
    """One test's outcome."""

    name: str
    kind: str
    statistic: float | None
    p_value: float | None
    threshold: float
    threshold_kind: str  # "alpha" (drift when p < threshold) or "max" (drift when stat > it)
    verdict: str
    detail: str
    n_reference: int
    n_current: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------

def psi(ref_counts: Sequence[float], cur_counts: Sequence[float], eps: float = 1e-4) -> float:
    """Population Stability Index between two count vectors over the same categories."""
    r = np.asarray(ref_counts, dtype=np.float64)
    c = np.asarray(cur_counts, dtype=np.float64)
    if r.sum() <= 0 or c.sum() <= 0:
        return float("nan")
    # A category empty on one side would make the log infinite; a small floor keeps PSI finite
    # while still penalising the shift heavily.
    rp = np.maximum(r / r.sum(), eps)
    cp = np.maximum(c / c.sum(), eps)
    return float(np.sum((cp - rp) * np.log(cp / rp)))


def chi_square(ref_counts: Sequence[float], cur_counts: Sequence[float]) -> tuple[float, float]:
    """Chi-square test of homogeneity of two count vectors: (statistic, p-value)."""
    table = np.vstack([np.asarray(ref_counts, float), np.asarray(cur_counts, float)])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0
    res = sps.chi2_contingency(table, correction=False)
    return float(res[0]), float(res[1])


def mmd_permutation_test(x: np.ndarray, y: np.ndarray, n_permutations: int = 200,
                         seed: int = 0) -> tuple[float, float, float]:
    """Biased MMD^2 with a Gaussian kernel and its permutation p-value: (mmd2, p, bandwidth)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    z = np.vstack([x, y])
    n, m = len(x), len(y)
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
    off = d2[np.triu_indices(len(z), k=1)]
    # Median heuristic: the kernel width adapts to the scale of the embeddings.
    bandwidth = float(np.median(off[off > 0])) if np.any(off > 0) else 1.0
    k = np.exp(-d2 / bandwidth)
    rng = np.random.default_rng(seed)
    # MMD^2 = w' K w with w = +1/n on the first sample and -1/m on the second; all permutations
    # at once as one matrix product.
    base = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    w = np.empty((len(z), n_permutations + 1))
    w[:, 0] = base
    for j in range(1, n_permutations + 1):
        w[:, j] = base[rng.permutation(len(z))]
    vals = np.einsum("ij,ij->j", w, k @ w)
    observed = float(vals[0])
    p = float((1 + np.sum(vals[1:] >= observed - 1e-12)) / (1 + n_permutations))
    return observed, p, bandwidth


# ---------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------

def build_reference(classes: Sequence[str], probabilities: np.ndarray,
                    stats: Sequence[dict[str, float]],
                    embeddings: Sequence[Sequence[float]] | None = None,
                    labels: Sequence[str] | None = None,
                    meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The reference (JSON-able) from the model's outputs on reference images.

    probabilities: (N, C) calibrated; stats: one `image_stats` dict per image; embeddings:
    one `summarize_embedding` list per image (or None).
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(classes) or len(probs) != len(stats):
        raise ValueError("probabilities must be (N, C) with one stats dict per row")
    pred = probs.argmax(axis=1)
    counts = np.bincount(pred, minlength=len(classes))
    ref: dict[str, Any] = {
        "version": REFERENCE_VERSION,
        **(meta or {}),
        "n": int(len(probs)),
        "classes": list(classes),
        "predicted_counts": {c: int(counts[i]) for i, c in enumerate(classes)},
        "top_probability": [round(float(v), 6) for v in probs.max(axis=1)],
        "image_stats": {name: [round(float(s.get(name, float("nan"))), 4) for s in stats]
                        for name in STAT_NAMES},
        "embedding": ([[round(float(v), 6) for v in e] for e in embeddings]
                      if embeddings is not None else None),
    }
    if labels is not None:
        ref["label_counts"] = {c: int(sum(1 for x in labels if x == c)) for c in classes}
    return ref


# ---------------------------------------------------------------------------------------------
# Tests on a current sample
# ---------------------------------------------------------------------------------------------

def _too_few(name: str, kind: str, threshold: float, tkind: str, n_ref: int, n_cur: int,
             need: int) -> DriftResult:
    return DriftResult(name, kind, None, None, threshold, tkind, TOO_FEW,
                       f"{n_cur} predictions, need at least {need} for a verdict", n_ref, n_cur)


def prediction_drift(reference: dict[str, Any], predicted: Sequence[str],
                     th: Thresholds) -> list[DriftResult]:
    """PSI and chi-square on the predicted-class mix."""
    classes = list(reference["classes"])
    ref_counts = np.array([reference["predicted_counts"].get(c, 0) for c in classes], float)
    n_ref, n_cur = int(ref_counts.sum()), len(predicted)
    if n_cur < th.min_samples:
        return [_too_few("prediction_psi", "prediction", th.psi, "max", n_ref, n_cur,
                         th.min_samples),
                _too_few("prediction_chi2", "prediction", th.alpha, "alpha", n_ref, n_cur,
                         th.min_samples)]
    index = {c: i for i, c in enumerate(classes)}
    cur_counts = np.zeros(len(classes))
    unknown = 0
    for p in predicted:
        if p in index:
            cur_counts[index[p]] += 1
        else:
            unknown += 1
    ref_share = ref_counts / max(ref_counts.sum(), 1)
    cur_share = cur_counts / max(cur_counts.sum(), 1)
    moved = int(np.argmax(np.abs(cur_share - ref_share)))
    biggest = (f"largest change: {classes[moved]} {ref_share[moved]:.1%} -> "
               f"{cur_share[moved]:.1%}")
    value = psi(ref_counts, cur_counts)
    shares = {"reference_share": dict(zip(classes, ref_share.round(4).tolist())),
              "current_share": dict(zip(classes, cur_share.round(4).tolist())),
              "unknown_classes": unknown}
    out = [DriftResult("prediction_psi", "prediction", value, None, th.psi, "max",
                       DRIFT if value > th.psi else OK,
                       f"PSI {value:.3f} (drift above {th.psi:g}); {biggest}", n_ref, n_cur,
                       shares)]
    chi2, p = chi_square(ref_counts, cur_counts)
    out.append(DriftResult("prediction_chi2", "prediction", chi2, p, th.alpha, "alpha",
                           DRIFT if p < th.alpha else OK,
                           f"chi-square p = {p:.2g} (drift below {th.alpha:g}); {biggest}",
                           n_ref, n_cur))
    return out


def confidence_drift(reference: dict[str, Any], top_probability: Sequence[float],
                     th: Thresholds) -> DriftResult:
    """KS test on the top probability (calibrated confidence)."""
    ref = np.asarray(reference["top_probability"], float)
    cur = np.asarray(top_probability, float)
    cur = cur[np.isfinite(cur)]
    if len(cur) < th.min_samples:
        return _too_few("confidence_ks", "confidence", th.alpha, "alpha", len(ref), len(cur),
                        th.min_samples)
    res = sps.ks_2samp(ref, cur)
    d, p = float(res.statistic), float(res.pvalue)
    detail = (f"KS D = {d:.3f}, p = {p:.2g} (drift below {th.alpha:g}); mean confidence "
              f"{ref.mean():.3f} -> {cur.mean():.3f}")
    return DriftResult("confidence_ks", "confidence", d, p, th.alpha, "alpha",
                       DRIFT if p < th.alpha else OK, detail, len(ref), len(cur),
                       {"reference_mean": float(ref.mean()), "current_mean": float(cur.mean())})


def input_stats_drift(reference: dict[str, Any], current: pd.DataFrame,
                      th: Thresholds) -> DriftResult:
    """Per-feature KS tests on image statistics; Bonferroni over the features."""
    ref_stats = reference.get("image_stats") or {}
    features = [f for f in STAT_NAMES if f in ref_stats and f in current.columns]
    n_ref = len(next(iter(ref_stats.values()), []))
    n_cur = int(current[features].dropna().shape[0]) if features else 0
    if not features or n_cur < th.min_samples:
        return _too_few("input_stats_ks", "input", th.alpha, "alpha", n_ref, n_cur,
                        th.min_samples)
    per: dict[str, dict[str, float]] = {}
    for f in features:
        r = np.asarray(ref_stats[f], float)
        c = current[f].to_numpy(dtype=float)
        r, c = r[np.isfinite(r)], c[np.isfinite(c)]
        res = sps.ks_2samp(r, c)
        per[f] = {"D": float(res.statistic), "p": float(res.pvalue),
                  "p_adjusted": min(1.0, float(res.pvalue) * len(features)),
                  "reference_mean": float(r.mean()), "current_mean": float(c.mean())}
    worst = min(per, key=lambda f: per[f]["p"])
    p_adj = per[worst]["p_adjusted"]
    drifted = [f for f in features if per[f]["p_adjusted"] < th.alpha]
    if drifted:
        moves = ", ".join(f"{f} {per[f]['reference_mean']:.1f} -> {per[f]['current_mean']:.1f}"
                          for f in sorted(drifted, key=lambda f: per[f]["p"])[:3])
        detail = f"{len(drifted)}/{len(features)} features shifted (Bonferroni): {moves}"
    else:
        detail = (f"no feature shifted; smallest Bonferroni p = {p_adj:.2g} ({worst}) "
                  f"(drift below {th.alpha:g})")
    return DriftResult("input_stats_ks", "input", per[worst]["D"], p_adj, th.alpha, "alpha",
                       DRIFT if drifted else OK, detail, n_ref, n_cur,
                       {"features": per, "drifted": drifted})


def embedding_drift(reference: dict[str, Any], embeddings: Sequence[Sequence[float] | None],
                    th: Thresholds) -> DriftResult:
    """MMD two-sample test on the embedding summaries, permutation p-value."""
    ref_list = reference.get("embedding") or []
    cur_list = [e for e in embeddings if e is not None and len(e)]
    n_ref, n_cur = len(ref_list), len(cur_list)
    if not ref_list:
        return DriftResult("embedding_mmd", "embedding", None, None, th.alpha, "alpha", TOO_FEW,
                           "the reference has no embeddings", n_ref, n_cur)
    dims = len(ref_list[0])
    cur_list = [e for e in cur_list if len(e) == dims]
    if len(cur_list) < th.min_samples:
        detail = (f"{len(cur_list)} predictions with a {dims}-number embedding summary, "
                  f"need at least {th.min_samples}")
        return DriftResult("embedding_mmd", "embedding", None, None, th.alpha, "alpha", TOO_FEW,
                           detail, n_ref, len(cur_list))
    rng = np.random.default_rng(th.seed)
    x = np.asarray(ref_list, float)
    y = np.asarray(cur_list, float)
    cap = th.max_embedding_samples
    if len(x) > cap:
        x = x[rng.choice(len(x), cap, replace=False)]
    if len(y) > cap:
        y = y[rng.choice(len(y), cap, replace=False)]
    mmd2, p, bw = mmd_permutation_test(x, y, th.n_permutations, th.seed)
    detail = (f"MMD^2 = {mmd2:.4f}, permutation p = {p:.3f} ({th.n_permutations} permutations; "
              f"drift below {th.alpha:g})")
    # With n_permutations permutations the smallest possible p is 1/(n+1): say so if alpha is
    # below it, otherwise the test could never fire.
    if th.alpha < 1.0 / (th.n_permutations + 1):
        detail += f"; note alpha < 1/({th.n_permutations}+1) can never be reached"
    return DriftResult("embedding_mmd", "embedding", mmd2, p, th.alpha, "alpha",
                       DRIFT if p < th.alpha else OK, detail, len(x), len(y),
                       {"bandwidth": bw})


def stats_frame(image_stats: Sequence[dict[str, float] | None]) -> pd.DataFrame:
    """A column per statistic from a sequence of image_stats dicts."""
    return pd.DataFrame([s or {} for s in image_stats]).reindex(columns=list(STAT_NAMES))


def calibrated_view(current: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """Predicted class and top probability per row from the logged calibrated probabilities.

    The reference counts the calibrated argmax; a decision rule (docs/decisions.md) may answer
    with another class, so the comparison uses the calibrated probabilities whichever rule
    answered. Rows without probabilities keep their logged label and top probability.
    """
    if not len(current):
        return [], np.zeros(0)
    labels, tops = [], []
    for probs, label, top in zip(current["probabilities"], current["predicted"],
                                 current["top_probability"].to_numpy(float)):
        if isinstance(probs, dict) and probs:
            best = max(probs, key=lambda k: probs[k])
            labels.append(best)
            tops.append(float(probs[best]))
        else:
            labels.append(label)
            tops.append(top)
    return labels, np.asarray(tops, dtype=np.float64)


def run_drift(reference: dict[str, Any], current: pd.DataFrame,
              th: Thresholds | None = None) -> list[DriftResult]:
    """Every drift test of `current` (rows from PredictionStore.predictions) vs the reference."""
    th = th or Thresholds()
    predicted, top = calibrated_view(current)
    results = prediction_drift(reference, predicted, th)
    results.append(confidence_drift(reference, top, th))
    results.append(input_stats_drift(
        reference, stats_frame(list(current["image_stats"]) if len(current) else []), th))
    results.append(embedding_drift(
        reference, list(current["embedding"]) if len(current) else [], th))
    return results


def finite_or_none(value: float | None) -> float | None:
    """NaN/inf -> None for JSON."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)
