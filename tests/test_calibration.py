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


def test_uncertain_threshold_reaches_target_accuracy() -> None:
    logits, y = _overconfident(2000, seed=4, sharpen=1.0)
    probs = softmax(logits)
    rule = cal.choose_uncertain_threshold(probs, y, target_accuracy=0.8,
                                          max_uncertain_share=0.9)
    conf = probs.max(1)
    confident = conf >= rule["threshold"]
    acc = (probs.argmax(1) == y)[confident].mean()
    assert acc >= 0.8 and rule["accuracy_confident"] == pytest.approx(acc)
    assert not rule["capped"]
    # Lowering the threshold to the next confidence below would break the target.
    lower = conf[conf < rule["threshold"]].max()
    assert (probs.argmax(1) == y)[conf >= lower].mean() < 0.8
    assert rule["accuracy_uncertain"] < rule["accuracy_confident"]


def test_uncertain_threshold_is_capped_when_the_target_is_out_of_reach() -> None:
    rng = np.random.default_rng(5)
    probs = softmax(rng.normal(size=(400, 3)))
    y = rng.integers(0, 3, 400)  # a useless model: ~33% accuracy
    rule = cal.choose_uncertain_threshold(probs, y, target_accuracy=0.99,
                                          max_uncertain_share=0.3)
    assert rule["capped"]
    assert rule["uncertain_share"] == pytest.approx(0.3, abs=0.01)


def test_calibrate_bundle() -> None:
    logits, y = _overconfident(1000, seed=6)
    out = cal.calibrate(logits, y)
    assert out["val_nll_after"] < out["val_nll_before"]
    assert out["val_ece_after"] < out["val_ece_before"]
    assert 0 < out["uncertain"]["threshold"] <= 1
