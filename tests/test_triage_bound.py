"""Triage threshold fitted on the lower confidence bound of validation sensitivity."""

from __future__ import annotations

import math

import numpy as np
import pytest

from skincli.clinical import triage
from skincli.errors import SkinError

CLASSES = ["melanoma", "nevus", "basal cell carcinoma"]


def _data(n: int = 1200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.choice(3, n, p=[0.15, 0.7, 0.15])
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), y] += 1.5
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True), y


def test_clopper_pearson_lower_bound() -> None:
    from scipy.stats import binomtest

    for k, n in [(95, 100), (50, 60), (59, 59), (1, 10)]:
        lo = triage.clopper_pearson_lower(k, n)
        # The same bound as scipy's exact one-sided interval.
        ref = binomtest(k, n).proportion_ci(0.90, method="exact").low
        assert lo == pytest.approx(ref, abs=1e-9)
    assert triage.clopper_pearson_lower(0, 5) == 0.0
    assert triage.clopper_pearson_lower(0, 0) is None


def test_lower_bound_fit_refers_more_and_its_bound_meets_target() -> None:
    p, y = _data()
    point = triage.fit(p, y, CLASSES, 0.95)
    bound = triage.fit(p, y, CLASSES, 0.95, method="lower-bound")
    assert bound["fit"] == "lower-bound" and point["fit"] == "point"
    v = bound["validation"]
    assert v["sensitivity_lower95"] >= 0.95
    assert v["sensitivity"] >= point["validation"]["sensitivity"]
    assert v["referral_rate"] >= point["validation"]["referral_rate"]
    assert bound["threshold"] <= point["threshold"]
    # The highest such threshold: one referred malignant case fewer would break the bound.
    k = v["tp"]
    assert triage.clopper_pearson_lower(k - 1, v["positives"]) < 0.95


def test_lower_bound_needs_enough_malignant_cases() -> None:
    p, y = _data(n=120, seed=1)
    n_pos = int(np.isin(y, [0, 2]).sum())
    assert n_pos < math.ceil(math.log(0.05) / math.log(0.99))
    with pytest.raises(SkinError, match="needs at least"):
        triage.fit(p, y, CLASSES, 0.99, method="lower-bound")
    with pytest.raises(SkinError, match="Unknown triage fit"):
        triage.fit(p, y, CLASSES, 0.95, method="upper")


def test_training_fits_the_lower_bound_by_default() -> None:
    from skincli.train.config import TrainConfig

    p, y = _data()
    cfg = TrainConfig()
    assert cfg.triage_fit == "lower-bound"
    rec = triage.fit_for_training(p, y, CLASSES, cfg)
    assert rec["fit"] == "lower-bound" and "fallback" not in rec
    assert rec["validation"]["sensitivity_lower95"] >= 0.95
    cfg.triage_fit = "point"
    assert triage.fit_for_training(p, y, CLASSES, cfg)["fit"] == "point"


def test_training_says_when_the_bound_cannot_be_fitted() -> None:
    from skincli.train.config import TrainConfig

    p, y = _data(n=120, seed=1)
    cfg = TrainConfig(triage_sensitivity=0.99)
    rec = triage.fit_for_training(p, y, CLASSES, cfg)
    # Not silent: the record says the point estimate stands in, and why.
    assert rec["fit"] == "point" and rec["threshold"] is not None
    assert "needs at least" in rec["fallback"]


def test_triage_fit_option_is_checked() -> None:
    from skincli.train.config import TrainConfig, validate

    with pytest.raises(SkinError, match="triage-fit"):
        validate(TrainConfig(triage_fit="upper"))
