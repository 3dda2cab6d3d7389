"""Inverse power-law learning curves: recovery, horizon, backtest."""

from __future__ import annotations

import numpy as np
import pytest

from skincli import powerlaw


def _curve(a: float, b: float, c: float, sizes: list[float], noise: float = 0.0,
           seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return powerlaw.power_law(np.array(sizes), a, b, c) + rng.normal(0, noise, len(sizes))


SIZES = [40, 70, 100, 140, 200, 300, 400]


def test_fit_recovers_known_parameters() -> None:
    y = _curve(0.9, 2.5, 0.5, SIZES)
    fit = powerlaw.fit_curve(SIZES, y, np.full(len(SIZES), 0.01), n_boot=100)
    assert fit.a == pytest.approx(0.9, abs=0.01)
    assert fit.b == pytest.approx(2.5, rel=0.05)
    assert fit.c == pytest.approx(0.5, abs=0.02)
    lo, hi = fit.interval("a")
    assert lo <= 0.9 <= hi


def test_fit_with_noise_covers_truth() -> None:
    y = _curve(0.85, 3.0, 0.6, SIZES, noise=0.01, seed=3)
    fit = powerlaw.fit_curve(SIZES, y, np.full(len(SIZES), 0.01), n_boot=200)
    lo, hi = fit.interval("a", level=0.95)
    assert lo <= 0.85 <= hi


def test_required_size_and_horizon() -> None:
    a, b, c = 0.9, 2.5, 0.5
    fit = powerlaw.fit_curve(SIZES, _curve(a, b, c, SIZES), np.full(len(SIZES), 0.005),
                             n_boot=100)
    want = powerlaw.size_for(a, b, c, 0.8)  # 625 images: within 3 x 400
    out = powerlaw.required(fit, 0.8)
    assert out["status"] == "estimate"
    assert out["median"] == pytest.approx(want, rel=0.1)
    # 0.88 needs 15,625 images: far past the horizon, so no number is given.
    far = powerlaw.required(fit, 0.88)
    assert far["status"] == "beyond" and far["median"] is None
    assert far["text"] == f"> {3 * 400:,}"
    assert powerlaw.required(fit, 0.95)["status"] == "unreachable"
    assert powerlaw.required(fit, 0.5)["status"] == "reached"


def test_backtest_passes_on_a_true_power_law_and_fails_on_a_break() -> None:
    sizes = [20, 35, 50, 70, 100]
    s = np.full(5, 0.01)
    early = np.array(sizes) <= 50
    hold = np.array(sizes) == 100
    good = powerlaw.backtest(sizes, _curve(0.8, 2.0, 0.6, sizes), s, early, hold, n_boot=100)
    assert good["passed"] and abs(good["error"]) < 0.02
    broken = _curve(0.8, 2.0, 0.6, sizes)
    broken[-1] += 0.2  # a jump the early points cannot foresee
    bad = powerlaw.backtest(sizes, broken, s, early, hold, n_boot=100)
    assert bad["status"] == "failed" and not bad["passed"]
    few = powerlaw.backtest(sizes, broken, s, np.array(sizes) <= 35, hold)
    assert few["status"] == "not possible"


def test_fit_needs_three_sizes() -> None:
    with pytest.raises(ValueError):
        powerlaw.fit_curve([10, 20, 20], [0.5, 0.6, 0.6])
