"""Risk-coverage curve, AURC / E-AURC / AUGRC and the lesion-grouped bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from skincli import selective


def _probs(n: int = 300, c: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(0, 1, (n, c))
    logits[np.arange(n), y] += rng.normal(1.0, 1.0, n)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True), y


def test_perfect_ranking_gives_zero_e_aurc() -> None:
    rng = np.random.default_rng(1)
    error = rng.random(200) < 0.3
    # Correct cases all above errors, every score distinct.
    score = np.where(error, 0.0, 1.0) + rng.random(200) * 0.5
    oracle = selective.aurc(selective.oracle_scores(error), error)
    assert selective.aurc(score, error) - oracle == pytest.approx(0.0, abs=1e-12)
    # ...and a reversed ranking is worse than random.
    assert selective.aurc(-score, error) > error.mean()


def test_constant_score_gives_aurc_equal_to_error_rate() -> None:
    rng = np.random.default_rng(2)
    error = rng.random(150) < 0.4
    assert selective.aurc(np.full(150, 0.7), error) == pytest.approx(error.mean())
    assert selective.augrc(np.full(150, 0.7), error) == pytest.approx(error.mean())


def test_summary_orders_baselines() -> None:
    p, y = _probs()
    out = selective.aurc_summary(p, y)
    assert out["oracle"]["aurc"] <= out["scores"]["max_probability"]["aurc"] <= out["error_rate"]
    for s in out["scores"].values():
        assert s["e_aurc"] >= 0
        assert s["augrc"] >= out["oracle"]["augrc"]


def test_risk_coverage_levels_and_intervals() -> None:
    p, y = _probs(400)
    groups = [f"L{i // 2}" for i in range(len(y))]  # two images per lesion
    rc = selective.risk_coverage(p, y, ["a", "b", "c"], groups=groups, n_boot=200)
    levels = rc["levels"]
    assert [r["target_coverage"] for r in levels][:3] == [1.0, 0.95, 0.9]
    assert levels[-1]["target_coverage"] == pytest.approx(0.10)
    assert levels[0]["n_accepted"] == len(y) and levels[-1]["n_accepted"] == 40
    assert rc["n_lesions"] == 200
    # Answering only the surest cases helps on this data; the interval holds the point.
    assert levels[-1]["balanced_accuracy"] > levels[0]["balanced_accuracy"]
    for row in levels:
        lo, hi = row["macro_f1_ci95"]
        assert lo <= row["macro_f1"] <= hi
        assert sum(pc["n_accepted"] for pc in row["per_class"]) == row["n_accepted"]
    full = levels[0]["per_class"]
    assert all(pc["coverage"] == 1.0 for pc in full)


def test_group_ids_and_weights() -> None:
    gid = selective.group_ids(["a", "a", "", "b", ""], 5)
    assert gid[0] == gid[1] and len(set(gid.tolist())) == 4
    w = selective.grouped_weights(gid, 50, 0)
    assert w.shape == (50, 5)
    assert (w[:, 0] == w[:, 1]).all()  # images of one lesion move together
    assert np.allclose(w.sum(axis=1) - w[:, 1], 4)  # four lesions drawn per resample
