"""Temperature scaling lowers ECE on an over-confident model; the uncertain threshold rule."""

from __future__ import annotations

import numpy as np
import pytest

from skincli import calibration as cal
from skincli.calibration import softmax
from skincli.metrics import expected_calibration_error


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


def test_uncertain_threshold_separates_unreliable_confidences() -> None:
    logits, y = _overconfident(3000, seed=4, sharpen=1.0)  # calibrated by construction
    probs = softmax(logits)
    rule = cal.choose_uncertain_threshold(probs, y, target=0.5)
    conf = probs.max(1)
    correct = probs.argmax(1) == y
    flagged = conf < rule["threshold"]
    assert 0 < flagged.mean() < 1
    assert rule["accuracy_uncertain"] == pytest.approx(correct[flagged].mean())
    assert rule["uncertain_share"] == pytest.approx(flagged.mean())
    assert correct[flagged].mean() < 0.5 < correct[~flagged].mean()
    # Calibrated probabilities: the crossing sits near 0.5 (accuracy ~ confidence).
    assert 0.4 < rule["threshold"] < 0.6
    # Just below the threshold predictions were mostly wrong, just above mostly right.
    near_below = flagged & (conf > rule["threshold"] - 0.05)
    near_above = ~flagged & (conf < rule["threshold"] + 0.05)
    assert correct[near_below].mean() < correct[near_above].mean()


def test_uncertain_threshold_is_zero_when_every_prediction_is_right() -> None:
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.55, 0.45]])
    rule = cal.choose_uncertain_threshold(probs, [0, 1, 0])
    assert rule["threshold"] == 0.0 and rule["uncertain_share"] == 0.0


def test_uncertain_threshold_flags_everything_when_nothing_is_reliable() -> None:
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.55, 0.45]])
    rule = cal.choose_uncertain_threshold(probs, [1, 0, 1])
    assert rule["threshold"] > 0.9 and rule["uncertain_share"] == 1.0


def test_uncertain_threshold_by_hand() -> None:
    # Confidences 0.5 (wrong), 0.6 (wrong), 0.7 (right), 0.8 (right), 0.9 (right).
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6], [0.5, 0.5]])
    y = np.array([0, 1, 0, 0, 1])
    rule = cal.choose_uncertain_threshold(probs, y, target=0.5)
    assert rule["threshold"] == pytest.approx(0.65)
    assert rule["uncertain_share"] == pytest.approx(0.4)
    # Not monotone: 0.5 right, 0.6 and 0.7 wrong -> pooled to 1/3 below 0.75.
    y2 = np.array([0, 1, 1, 0, 0])
    rule2 = cal.choose_uncertain_threshold(probs, y2, target=0.5)
    assert rule2["threshold"] == pytest.approx(0.75)
    assert rule2["accuracy_uncertain"] == pytest.approx(1 / 3)


def test_calibrate_bundle() -> None:
    logits, y = _overconfident(1000, seed=6)
    out = cal.calibrate(logits, y)
    assert out["val_nll_after"] < out["val_nll_before"]
    assert out["val_ece_after"] < out["val_ece_before"]
    assert 0 < out["uncertain"]["threshold"] <= 1
