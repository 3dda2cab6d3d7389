"""Label shift from traffic: how common each class is among recent unlabelled predictions.

The EM procedure of Saerens, Latinne & Decaestecker (2002, "Adjusting the outputs of a
classifier to new a priori probabilities: a simple procedure", Neural Computation 14): with
calibrated posteriors p(y|x) that assume the model's prior pi_m, iterate

    q_i(y) ∝ p_i(y|x) * pi(y) / pi_m(y)      (E: posteriors under the current prior estimate)
    pi(y)  = mean_i q_i(y)                     (M: the new prior)

from pi = pi_m until the prior stops moving. It assumes label shift (p(x|y) unchanged) and
calibrated probabilities, which is why the prediction log keeps the calibrated probabilities,
before any decision rule. The 95% interval is a percentile bootstrap over the predictions.
EM that does not converge is reported and never alerts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

EM_TOL = 1e-6
EM_MAX_ITER = 1000
DEFAULT_SHIFT_THRESHOLD = 0.10  # absolute change of one class's prevalence that alerts
DEFAULT_SHIFT_BOOT = 200


def em_prior(probs: np.ndarray, base: np.ndarray, tol: float = EM_TOL,
             max_iter: int = EM_MAX_ITER, start: np.ndarray | None = None
             ) -> tuple[np.ndarray, bool, int]:
    """Saerens et al. EM: (estimated prior, converged, iterations)."""
    p = np.asarray(probs, dtype=np.float64)
    base = np.maximum(np.asarray(base, dtype=np.float64), 1e-12)
    prior = (base if start is None else np.asarray(start, np.float64)).copy()
    if len(p) == 0:
        return prior, False, 0
    for it in range(1, max_iter + 1):
        q = p * (prior / base)
        q /= np.maximum(q.sum(axis=1, keepdims=True), 1e-300)
        new = q.mean(axis=0)
        if np.abs(new - prior).max() < tol:
            return new, True, it
        prior = new
    return prior, False, max_iter


def bootstrap_prior(probs: np.ndarray, base: np.ndarray, start: np.ndarray, n_boot: int,
                    seed: int = 0, max_iter: int = EM_MAX_ITER
                    ) -> tuple[np.ndarray | None, int]:
    """Percentile 95% interval (2, C) of the EM prior over resampled predictions, and how many
    resamples did not converge (they are left out)."""
    if n_boot <= 0 or len(probs) == 0:
        return None, 0
    rng = np.random.default_rng(seed)
    got, failed = [], 0
    for _ in range(n_boot):
        idx = rng.integers(0, len(probs), size=len(probs))
        est, ok, _ = em_prior(probs[idx], base, start=start, max_iter=max_iter)
        if ok:
            got.append(est)
        else:
            failed += 1
    if not got:
        return None, failed
    return np.quantile(np.stack(got), [0.025, 0.975], axis=0), failed


def probability_matrix(rows: pd.DataFrame, classes: list[str]) -> tuple[np.ndarray, int]:
    """Logged probabilities as (N, C) in the run's class order (rows renormalised); rows that
    do not hold every class are skipped and counted."""
    out, skipped = [], 0
    for d in rows["probabilities"] if len(rows) else []:
        try:
            v = np.array([float(d[c]) for c in classes])
        except (KeyError, TypeError, ValueError):
            skipped += 1
            continue
        s = v.sum()
        if not np.isfinite(s) or s <= 0 or (v < 0).any():
            skipped += 1
            continue
        out.append(v / s)
    c = len(classes)
    return (np.stack(out) if out else np.zeros((0, c))), skipped


def estimate_label_shift(rows: pd.DataFrame, classes: list[str], base: np.ndarray,
                         references: dict[str, dict[str, float]], alert_against: str | None,
                         threshold: float = DEFAULT_SHIFT_THRESHOLD, min_samples: int = 50,
                         n_boot: int = DEFAULT_SHIFT_BOOT, seed: int = 0,
                         max_iter: int = EM_MAX_ITER) -> dict[str, Any]:
    """The class prevalence of `rows` (logged predictions of one model) by EM, with its 95% CI,
    beside the reference priors; `alert` when, for some class, the estimate is more than
    `threshold` from `references[alert_against]` and that reference lies outside the CI."""
    probs, skipped = probability_matrix(rows, classes)
    n = int(len(probs))
    result: dict[str, Any] = {
        "method": "EM (Saerens, Latinne & Decaestecker 2002) on the calibrated probabilities",
        "n": n, "n_skipped": skipped, "threshold": threshold, "min_samples": min_samples,
        "model_prior": dict(zip(classes, np.round(base, 6).tolist())),
        "references": references, "alert_against": alert_against,
        "estimate": None, "ci95": None, "converged": None, "iterations": 0,
        "alert": False, "detail": "", "status": "ok",
    }
    if n < min_samples:
        result["status"] = "too_few"
        result["detail"] = (f"{n} prediction(s) with calibrated probabilities in the window, "
                            f"fewer than {min_samples}: no prevalence estimate")
        return result
    est, ok, iters = em_prior(probs, base, max_iter=max_iter)
    result.update(converged=bool(ok), iterations=int(iters),
                  estimate=dict(zip(classes, np.round(est, 6).tolist())))
    if not ok:
        result["status"] = "not_converged"
        result["detail"] = (f"EM did not converge in {iters} iterations on {n} predictions: "
                            "the estimate is unreliable and raises no alert")
        return result
    ci, failed = bootstrap_prior(probs, base, est, n_boot, seed, max_iter)
    result["bootstrap_failed"] = failed
    if ci is not None:
        result["ci95"] = {c: [round(float(ci[0, i]), 6), round(float(ci[1, i]), 6)]
                          for i, c in enumerate(classes)}
    ref = references.get(alert_against or "")
    if ref is None:
        result["detail"] = f"estimated from {n} predictions; no reference prior to compare"
        return result
    moved = []
    for i, c in enumerate(classes):
        gap = float(est[i] - ref[c])
        outside = ci is None or not (ci[0, i] <= ref[c] <= ci[1, i])
        if abs(gap) > threshold and outside:
            moved.append(f"{c} {ref[c]:.1%} -> {est[i]:.1%}")
    result["max_change"] = float(max(abs(est[i] - ref[c]) for i, c in enumerate(classes)))
    if moved:
        result["alert"] = True
        result["status"] = "shift"
        result["detail"] = (f"class prevalence moved from the {alert_against} by more than "
                            f"{threshold:.0%}: {', '.join(moved)} ({n} predictions)")
    else:
        result["detail"] = (f"prevalence within {threshold:.0%} of the {alert_against} or its "
                            f"95% CI ({n} predictions; largest change "
                            f"{result['max_change']:.1%})")
    return result


def suggested_prior(result: dict[str, Any], floor: float = 1e-3) -> dict[str, float] | None:
    """The estimate as a prior file's content (no class below `floor`), or None if unusable."""
    est = result.get("estimate")
    if not est or not result.get("converged"):
        return None
    v = {c: max(float(p), floor) for c, p in est.items()}
    s = sum(v.values())
    return {c: p / s for c, p in v.items()}


def label_shift_for_run(df: pd.DataFrame, info: Any, run_dir: Any, window_seconds: float,
                        now: float, prevalence: Any = None,
                        threshold: float = DEFAULT_SHIFT_THRESHOLD, min_samples: int = 50,
                        n_boot: int = DEFAULT_SHIFT_BOOT, seed: int = 0
                        ) -> tuple[dict[str, Any], list[str]]:
    """`estimate_label_shift` on this run's predictions of the trailing window (as drift),
    against the prior in force (`prevalence` file) or else the training prior.
    Returns (result, warnings about the prior file)."""
    from skincli.decision import model_prior, read_prior, training_counts
    from skincli.monitor.report import model_rows

    classes = list(info.classes)
    counts = training_counts(run_dir, classes) or (info.extra or {}).get(
        "decisions", {}).get("train_counts")
    base, _ = model_prior(info, counts)
    references: dict[str, dict[str, float]] = {}
    warnings: list[str] = []
    if counts and sum(counts.values()):
        total = sum(counts.values())
        references["training prior"] = {c: round(counts.get(c, 0) / total, 6) for c in classes}
    if prevalence is not None:
        prior, warnings = read_prior(prevalence, classes)
        references["prior in force"] = {c: round(v, 6) for c, v in prior.items()}
    against = ("prior in force" if "prior in force" in references else
               "training prior" if references else None)
    mine = model_rows(df, info)
    current = mine[(mine["time"] >= now - window_seconds) & (mine["time"] < now)] \
        if len(mine) else mine
    result = estimate_label_shift(current, classes, base, references, against,
                                  threshold=threshold, min_samples=min_samples,
                                  n_boot=n_boot, seed=seed)
    return result, warnings
