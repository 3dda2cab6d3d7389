"""Temperature scaling lowers ECE on an over-confident model; the uncertain threshold rule."""

from __future__ import annotations

import numpy as np
import pytest

from skincli import calibration as cal
from skincli.metrics import expected_calibration_error
from skincli.predictor import softmax


def _overconfident(n: int, seed: int, sharpen: float = 3.0, c: int = 4
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z), but the model reports sharpen * z: over-confident."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.2, size=(n, c))
    p = softmax(z)
    y = np.array([rng.choice(c, p=row) for row in p])
    return z * sharpen, y


def test_temperature_recovers_the_sharpening_and_lowers_ece() -> None:
    val_logits, val_y = _overconfident(3000, seed=0)
    test_logits, test_y = _overconfident(3000, seed=1)
    t = cal.fit_temperature(val_logits, val_y)
    assert t == pytest.approx(3.0, rel=0.15)
    before = expected_calibration_error(softmax(test_logits, 1.0), test_y)["ece"]
    after = expected_calibration_error(softmax(test_logits, t), test_y)["ece"]
    assert after < before / 2
    assert after < 0.04


def test_fit_matches_a_brute_force_grid() -> None:
    logits, y = _overconfident(500, seed=2, sharpen=0.4)  # under-confident: T < 1
    t = cal.fit_temperature(logits, y)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4000))
    best = grid[np.argmin([cal.temperature_nll(logits, y, g) for g in grid])]
    assert t == pytest.approx(best, rel=0.01)
    assert t < 1
    assert cal.temperature_nll(logits, y, t) <= cal.temperature_nll(logits, y, 1.0)


def test_accuracy_unchanged_by_temperature() -> None:
    logits, y = _overconfident(400, seed=3)
    t = cal.fit_temperature(logits, y)
    assert (softmax(logits, t).argmax(1) == softmax(logits).argmax(1)).all()


def test_fit_temperature_rejects_empty_input() -> None:
    with pytest.raises(ValueError):
        cal.fit_temperature(np.zeros((0, 3)), np.zeros(0))


def test_uncertain_threshold_flags_the_least_confident_group_below_target() -> None:
    logits, y = _overconfident(2000, seed=4, sharpen=1.0)
    probs = softmax(logits)
    rule = cal.choose_uncertain_threshold(probs, y, target=0.5)
    conf = probs.max(1)
    correct = probs.argmax(1) == y
    flagged = conf < rule["threshold"]
    assert 0 < flagged.mean() < 1
    assert correct[flagged].mean() < 0.5
    assert rule["accuracy_uncertain"] == pytest.approx(correct[flagged].mean())
    assert rule["uncertain_share"] == pytest.approx(flagged.mean())
    # It is the largest such group: every larger group of least confident images reaches 50%.
    order = np.argsort(conf)
    k = int(flagged.sum())
    prefix = np.cumsum(correct[order]) / np.arange(1, len(y) + 1)
    assert (prefix[k:] >= 0.5).all()


def test_uncertain_threshold_is_zero_when_every_prediction_is_right() -> None:
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.55, 0.45]])
    rule = cal.choose_uncertain_threshold(probs, [0, 1, 0])
    assert rule["threshold"] == 0.0 and rule["uncertain_share"] == 0.0


def test_uncertain_threshold_by_hand() -> None:
    # Confidences sorted: 0.5 (wrong), 0.6 (wrong), 0.7 (right), 0.8 (right), 0.9 (right).
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6], [0.5, 0.5]])
    y = np.array([0, 1, 0, 0, 1])
    # Prefix accuracies: 0, 0, 1/3, 2/4, 3/5 -> below 0.5 for the 3 least confident.
    rule = cal.choose_uncertain_threshold(probs, y, target=0.5)
    assert rule["threshold"] == pytest.approx(0.75)
    assert rule["uncertain_share"] == pytest.approx(0.6)


def test_calibrate_bundle() -> None:
    logits, y = _overconfident(1000, seed=6)
    out = cal.calibrate(logits, y)
    assert out["val_nll_after"] < out["val_nll_before"]
    assert out["val_ece_after"] < out["val_ece_before"]
    assert 0 < out["uncertain"]["threshold"] <= 1
