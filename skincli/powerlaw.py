"""Learning curves: inverse power laws y = a - b n^(-c) fitted to score-vs-training-size points.

- `fit_curve`: weighted least squares (scipy's curve_fit with each point's standard error as
  sigma; a in [0, 1], b >= 0, c in [0.05, 2]) and a parametric bootstrap (refits on the fitted
  curve plus Gaussian noise of each point's standard error) for intervals.
- `required`: the training size at which the curve reaches a target, as a median with an 80%
  interval over the bootstrap fits; "unreachable" when the asymptote a is below the target;
  "> X" when the median lies beyond the horizon (HORIZON x the largest size measured): a
  power law fitted on sizes up to N says little about 10 N, so it does not pretend to.
- `backtest`: refit on the small sizes only and predict the largest one; the truth must fall
  inside the 95% predictive interval (fit uncertainty plus the point's own noise), else the
  curve is not trusted for a required size.

Learning curves of this form are the usual model of how accuracy grows with data (Hestness et
al. 2017; Cho et al. 2015 for medical images); with 5 sizes and 3 parameters the intervals are
wide, and they say so.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HORIZON = 3.0       # extrapolate at most to this multiple of the largest size measured
SIGMA_FLOOR = 0.01  # no point is trusted to better than one F1 point
BOUNDS = ([0.0, 0.0, 0.05], [1.0, np.inf, 2.0])


def power_law(n: np.ndarray | float, a: float, b: float, c: float) -> np.ndarray:
    """y = a - b n^(-c)."""
    return a - b * np.power(np.asarray(n, dtype=np.float64), -c)


@dataclass
class CurveFit:
    """A fitted curve with its bootstrap parameter draws."""

    a: float
    b: float
    c: float
    n: np.ndarray
    y: np.ndarray
    sigma: np.ndarray
    boot: np.ndarray = field(repr=False)  # (B, 3) parameter draws
    ok: bool = True

    def predict(self, n: float) -> float:
        """The fitted value at size n."""
        return float(power_law(n, self.a, self.b, self.c))

    def interval(self, key: str, level: float = 0.8) -> list[float] | None:
        """Bootstrap interval of a parameter ("a", "b" or "c")."""
        if not len(self.boot):
            return None
        col = self.boot[:, "abc".index(key)]
        lo = (1.0 - level) / 2.0
        return [float(v) for v in np.quantile(col, [lo, 1.0 - lo])]

    @property
    def largest(self) -> float:
        """The largest size measured."""
        return float(self.n.max())


def _jacobian(n: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    p = np.power(n, -c)
    return np.stack([np.ones_like(n), -p, b * p * np.log(n)], axis=1)


def _one_fit(n: np.ndarray, y: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, bool]:
    from scipy.optimize import curve_fit

    a0 = float(min(1.0, max(y.max() + 0.05, 0.05)))
    c0 = 0.5
    b0 = max(1e-6, (a0 - float(y.min())) * float(n.min()) ** c0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, _ = curve_fit(power_law, n, y, p0=[a0, b0, c0], sigma=sigma,
                                  absolute_sigma=True, bounds=BOUNDS, maxfev=5000,
                                  jac=_jacobian)
        return np.asarray(params, dtype=np.float64), True
    except (RuntimeError, ValueError):
        # No convergence: a flat line at the weighted mean (b = 0) is the honest fallback.
        w = 1.0 / sigma ** 2
        return np.array([float((w * y).sum() / w.sum()), 0.0, c0]), False


def fit_curve(n: Sequence[float], y: Sequence[float], sigma: Sequence[float] | None = None,
              n_boot: int = 300, seed: int = 0) -> CurveFit:
    """Weighted least-squares inverse power law with parametric-bootstrap draws."""
    nn = np.asarray(n, dtype=np.float64)
    yy = np.asarray(y, dtype=np.float64)
    if nn.size < 3 or np.unique(nn).size < 3:
        raise ValueError("a learning curve needs at least 3 distinct sizes")
    if (nn <= 0).any():
        raise ValueError("training sizes must be positive")
    ss = np.full(nn.size, 0.05) if sigma is None else np.asarray(sigma, dtype=np.float64)
    ss = np.maximum(ss, SIGMA_FLOOR)
    params, ok = _one_fit(nn, yy, ss)
    rng = np.random.default_rng(seed)
    fitted = power_law(nn, *params)
    draws = []
    for _ in range(max(0, n_boot)):
        ystar = np.clip(fitted + rng.normal(0.0, ss), 0.0, 1.0)
        draws.append(_one_fit(nn, ystar, ss)[0])
    boot = np.array(draws) if draws else np.zeros((0, 3))
    return CurveFit(float(params[0]), float(params[1]), float(params[2]), nn, yy, ss, boot, ok)


def size_for(a: float, b: float, c: float, target: float) -> float:
    """The size at which a - b n^(-c) reaches the target (inf if never)."""
    if a <= target:
        return math.inf
    if b <= 0:
        return 0.0
    return float((b / (a - target)) ** (1.0 / c))


def required(fit: CurveFit, target: float, horizon: float = HORIZON) -> dict[str, Any]:
    """Images needed to reach `target`: status, median, 80% interval, text."""
    limit = horizon * fit.largest
    base = {"target": target, "horizon": limit}
    if fit.a < target:
        iv = fit.interval("a")
        return {**base, "status": "unreachable", "median": None, "interval80": None,
                "text": f"unreachable (asymptote {fit.a:.2f} < {target:.2f}"
                        + (f"; 80% interval {iv[0]:.2f}-{iv[1]:.2f}" if iv else "") + ")"}
    today = fit.predict(fit.largest)
    if today >= target and fit.y[fit.n == fit.largest].mean() >= target:
        return {**base, "status": "reached", "median": None, "interval80": None,
                "text": "reached"}
    sizes = np.array([size_for(a, b, c, target) for a, b, c in fit.boot]) if len(fit.boot) \
        else np.array([size_for(fit.a, fit.b, fit.c, target)])
    sizes = np.minimum(sizes, 1e300)  # "never" as a huge size, so quantiles stay defined
    med = float(np.quantile(sizes, 0.5))
    lo, hi = (float(v) for v in np.quantile(sizes, [0.1, 0.9]))
    if not med <= limit:
        return {**base, "status": "beyond", "median": None,
                "interval80": [_cap(lo, limit), None], "text": f"> {limit:,.0f}"}
    hi_text = f"> {limit:,.0f}" if not hi <= limit else f"{hi:,.0f}"
    return {**base, "status": "estimate", "median": med,
            "interval80": [_cap(lo, limit), None if not hi <= limit else hi],
            "text": f"{med:,.0f} (80%: {_cap(lo, limit):,.0f} to {hi_text})"}


def _cap(value: float, limit: float) -> float:
    return float(min(value, limit))


def predictive_interval(fit: CurveFit, n: float, sigma: float, level: float = 0.95,
                        seed: int = 0) -> list[float]:
    """Where a new measurement at size n should fall: fit uncertainty plus its own noise."""
    rng = np.random.default_rng(seed)
    draws = np.array([float(power_law(n, *p)) for p in fit.boot]) if len(fit.boot) \
        else np.array([fit.predict(n)])
    # A score lives in [0, 1]: so does any measurement of it.
    draws = np.clip(draws + rng.normal(0.0, max(sigma, SIGMA_FLOOR), draws.size), 0.0, 1.0)
    lo = (1.0 - level) / 2.0
    return [float(v) for v in np.quantile(draws, [lo, 1.0 - lo])]


def backtest(n: Sequence[float], y: Sequence[float], sigma: Sequence[float],
             early: Sequence[bool], holdout: Sequence[bool], n_boot: int = 300,
             seed: int = 0) -> dict[str, Any]:
    """Fit on the `early` points only and predict the `holdout` points (one size)."""
    nn, yy, ss = (np.asarray(v, dtype=np.float64) for v in (n, y, sigma))
    e, h = np.asarray(early, dtype=bool), np.asarray(holdout, dtype=bool)
    if np.unique(nn[e]).size < 3 or not h.any():
        return {"status": "not possible", "passed": False,
                "reason": "needs at least 3 early sizes and a held-out one"}
    fit = fit_curve(nn[e], yy[e], ss[e], n_boot=n_boot, seed=seed)
    size = float(nn[h].mean())
    truth = float(yy[h].mean())
    sigma_truth = float(np.sqrt((ss[h] ** 2).mean()))
    pred = fit.predict(size)
    lo, hi = predictive_interval(fit, size, sigma_truth, seed=seed)
    inside = lo <= truth <= hi
    return {"status": "passed" if inside else "failed", "passed": bool(inside),
            "size": size, "predicted": pred, "truth": truth, "error": pred - truth,
            "interval95": [lo, hi], "fitted_on_sizes": sorted(set(nn[e].tolist()))}
