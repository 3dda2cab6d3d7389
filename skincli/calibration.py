"""Temperature scaling and the "uncertain" threshold, both chosen on validation data.

Temperature scaling divides the logits by one number T > 0 fitted to minimise the validation
negative log-likelihood. The NLL of softmax(beta * z) is convex in beta = 1/T, so it is unimodal
in log T and a golden-section search on log T finds the optimum without scipy or gradients.
Argmax (and so accuracy and F1) does not change; only the probabilities do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from skincli.metrics import expected_calibration_error

T_MIN, T_MAX = 0.05, 20.0
# Default for the uncertain verdict (as `skin train --uncertain-accuracy`): predictions at a
# confidence where validation accuracy was below this are called uncertain.
UNCERTAIN_ACCURACY = 0.5


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax of logits / temperature along the last axis."""
    z = np.asarray(logits, dtype=np.float64) / max(float(temperature), 1e-6)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def temperature_nll(logits: np.ndarray, y: Sequence[int] | np.ndarray, temperature: float) -> float:
    """Mean NLL of the true class under softmax(logits / T)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    logsum = np.log(np.exp(z).sum(axis=1))
    t = np.asarray(y, dtype=np.int64)
    return float((logsum - z[np.arange(t.size), t]).mean())


def fit_temperature(logits: np.ndarray, y: Sequence[int] | np.ndarray,
                    t_min: float = T_MIN, t_max: float = T_MAX, tol: float = 1e-4) -> float:
    """The temperature in [t_min, t_max] that minimises validation NLL."""
    logits = np.asarray(logits, dtype=np.float64)
    t = np.asarray(y, dtype=np.int64)
    if logits.ndim != 2 or len(logits) == 0 or len(logits) != t.size:
        raise ValueError("fit_temperature needs (N, C) logits and N labels, N > 0")
    lo, hi = math.log(t_min), math.log(t_max)
    g = (math.sqrt(5) - 1) / 2

    def f(log_t: float) -> float:
        return temperature_nll(logits, t, math.exp(log_t))

    a, b = lo + (1 - g) * (hi - lo), lo + g * (hi - lo)
    fa, fb = f(a), f(b)
    while hi - lo > tol:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - g) * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = f(b)
    best = (lo + hi) / 2
    # Keep T = 1 when it is (numerically) as good: no change without evidence.
    return 1.0 if f(0.0) <= f(best) + 1e-12 else float(math.exp(best))


def choose_uncertain_threshold(probs: np.ndarray, y: Sequence[int] | np.ndarray,
                               target: float = UNCERTAIN_ACCURACY) -> dict[str, Any]:
    """Pick the top probability below which a prediction is called "uncertain".

    Rule: fit validation accuracy as a non-decreasing function of the top probability
    (isotonic regression of right/wrong on confidence); the threshold is where that curve
    reaches `target`, halfway between the neighbouring validation confidences. So "uncertain"
    means: on validation data, predictions this unsure were right less than `target` of the
    time. A cumulative rule ("the least confident group as a whole is below target") is not
    used because, for a model whose overall accuracy is near the target, it flags almost
    everything. Threshold 0.0 when even the least confident predictions met the target.
    """
    from sklearn.isotonic import IsotonicRegression

    probs = np.asarray(probs, dtype=np.float64)
    t = np.asarray(y, dtype=np.int64)
    n = t.size
    if n == 0:
        raise ValueError("choose_uncertain_threshold needs at least one validation image")
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == t
    fitted = IsotonicRegression(increasing=True, y_min=0.0, y_max=1.0).fit_transform(
        conf, correct.astype(np.float64))
    good = fitted >= target
    if good.all():
        threshold = 0.0
    elif not good.any():
        threshold = float(np.nextafter(conf.max(), 2.0))  # nothing on validation was reliable
    else:
        lowest_good = float(conf[good].min())
        below = conf[(~good) & (conf < lowest_good)]
        threshold = (lowest_good + float(below.max())) / 2 if below.size else lowest_good
    uncertain = conf < threshold
    return {
        "threshold": threshold,
        "target_accuracy": float(target),
        "rule": (f"top probability below which validation predictions were right less than "
                 f"{target:.0%} of the time (isotonic fit of accuracy on confidence)"),
        "uncertain_share": float(uncertain.mean()),
        "accuracy_uncertain": float(correct[uncertain].mean()) if uncertain.any() else None,
        "accuracy_confident": float(correct[~uncertain].mean()) if (~uncertain).any() else None,
        "n": int(n),
    }


def calibrate(val_logits: np.ndarray, val_y: Sequence[int] | np.ndarray,
              uncertain_accuracy: float = UNCERTAIN_ACCURACY) -> dict[str, Any]:
    """Fit T on validation logits, then choose the uncertain threshold on calibrated probs."""
    temperature = fit_temperature(val_logits, val_y)
    probs_before = softmax(val_logits, 1.0)
    probs_after = softmax(val_logits, temperature)
    rule = choose_uncertain_threshold(probs_after, val_y, uncertain_accuracy)
    return {
        "temperature": temperature,
        "val_nll_before": temperature_nll(val_logits, val_y, 1.0),
        "val_nll_after": temperature_nll(val_logits, val_y, temperature),
        "val_ece_before": expected_calibration_error(probs_before, val_y)["ece"],
        "val_ece_after": expected_calibration_error(probs_after, val_y)["ece"],
        "uncertain": rule,
    }
