"""Metric code checked against scikit-learn (and hand calculations) on fixed arrays."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from skincli import metrics as m


def _fixed(seed: int = 3, n: int = 300, c: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), y] += rng.uniform(0, 2.5, n)  # informative but imperfect
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs


@pytest.fixture(autouse=True)
def _quiet_sklearn() -> None:
    warnings.simplefilter("ignore")


def test_confusion_and_scalar_metrics_match_sklearn() -> None:
    y, probs = _fixed()
    pred = probs.argmax(1)
    cm = m.confusion_matrix(y, pred, 5)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y, pred, labels=range(5)))
    assert m.accuracy(y, pred) == pytest.approx(skm.accuracy_score(y, pred))
    assert m.balanced_accuracy(y, pred) == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m.macro_f1(y, pred) == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert float(m.weighted_f1_from_cm(cm)) == pytest.approx(
        skm.f1_score(y, pred, average="weighted"))
    assert m.cohen_kappa(y, pred) == pytest.approx(skm.cohen_kappa_score(y, pred))


def test_per_class_matches_sklearn_including_a_never_predicted_class() -> None:
    y = np.array([0, 0, 1, 1, 2, 2, 2, 3, 3, 3])
    pred = np.array([0, 1, 1, 1, 2, 0, 2, 1, 0, 0])  # class 3 never predicted
    pc = m.per_class_from_cm(m.confusion_matrix(y, pred, 4))
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=range(4), zero_division=0)
    np.testing.assert_allclose(pc["precision"], p)
    np.testing.assert_allclose(pc["recall"], r)
    np.testing.assert_allclose(pc["f1"], f)
    np.testing.assert_array_equal(pc["support"], s)
    assert m.macro_f1(y, pred) == pytest.approx(skm.f1_score(y, pred, average="macro"))


def test_class_absent_from_truth_is_left_out_of_the_averages() -> None:
    y = np.array([0, 0, 1, 1, 1, 0])
    pred = np.array([0, 2, 1, 1, 0, 0])  # class 2 predicted but never true
    assert m.macro_f1(y, pred) == pytest.approx(
        skm.f1_score(y, pred, labels=np.unique(y), average="macro"))
    assert m.macro_f1(y, pred) > skm.f1_score(y, pred, average="macro")  # not averaging a 0
    assert m.balanced_accuracy(y, pred) == pytest.approx(skm.balanced_accuracy_score(y, pred))
    s = m.classification_summary(y, np.eye(3)[pred], ["a", "b", "c"], n_boot=0)
    assert s["per_class"][2]["f1"] is None and s["per_class"][2]["precision"] == 0.0


def test_roc_auc_per_class_and_macro_match_sklearn() -> None:
    y, probs = _fixed(seed=7)
    probs = np.round(probs, 2)  # force ties: the rank formula must average them
    auc = m.roc_auc_ovr(y, probs)
    for c in range(5):
        assert auc["per_class"][c] == pytest.approx(skm.roc_auc_score(y == c, probs[:, c]))
    assert auc["skipped"] == []
    y, probs = _fixed(seed=8)
    assert m.roc_auc_ovr(y, probs)["macro"] == pytest.approx(
        skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))


def test_roc_auc_skips_classes_absent_from_truth() -> None:
    y = np.array([0, 1, 0, 1, 0, 1])
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1],
                      [0.5, 0.4, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1]])
    auc = m.roc_auc_ovr(y, probs)
    assert auc["skipped"] == [2]
    assert auc["per_class"][2] is None
    assert auc["per_class"][0] == pytest.approx(skm.roc_auc_score(y == 0, probs[:, 0]))
    assert auc["macro"] == pytest.approx(np.mean(auc["per_class"][:2]))


def test_bootstrap_matches_a_plain_loop_and_is_seedable() -> None:
    y, probs = _fixed(n=120)
    pred = probs.argmax(1)
    ci = m.bootstrap_ci(y, pred, 5, n_boot=200, seed=11)
    assert ci == m.bootstrap_ci(y, pred, 5, n_boot=200, seed=11)
    assert ci != m.bootstrap_ci(y, pred, 5, n_boot=200, seed=12)
    # Same draws, computed one resample at a time with scikit-learn.
    rng = np.random.default_rng(11)
    f1s, bals = [], []
    for _ in range(200):
        idx = rng.integers(0, y.size, y.size)
        f1s.append(skm.f1_score(y[idx], pred[idx], labels=np.unique(y[idx]), average="macro"))
        bals.append(skm.balanced_accuracy_score(y[idx], pred[idx]))
    assert ci["macro_f1"] == pytest.approx(list(np.quantile(f1s, [0.025, 0.975])))
    assert ci["balanced_accuracy"] == pytest.approx(list(np.quantile(bals, [0.025, 0.975])))
    point = m.macro_f1(y, pred)
    assert ci["macro_f1"][0] < point < ci["macro_f1"][1]


def test_ece_by_hand_and_reliability_bins() -> None:
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 0, 1])
    out = m.expected_calibration_error(probs, y, n_bins=10)
    # bin (0.8,0.9]: conf 0.9, acc 0.5 (2 images); bin (0.5,0.6]: 0.6 vs 1; (0.6,0.7]: 0.7 vs 1
    expected = (2 * 0.4 + 1 * 0.4 + 1 * 0.3) / 4
    assert out["ece"] == pytest.approx(expected)
    assert sum(b["count"] for b in out["bins"]) == 4
    assert out["bins"][8]["count"] == 2 and out["bins"][8]["accuracy"] == pytest.approx(0.5)


def test_ece_near_zero_for_a_calibrated_source() -> None:
    rng = np.random.default_rng(0)
    n = 20000
    conf = rng.uniform(0.5, 1.0, n)
    correct = rng.uniform(size=n) < conf  # correct with exactly the stated probability
    probs = np.stack([conf, 1 - conf], axis=1)
    y = np.where(correct, 0, 1)
    assert m.expected_calibration_error(probs, y)["ece"] < 0.02


def test_mcnemar_exact_by_hand_and_against_scipy() -> None:
    from scipy.stats import binomtest

    a = np.array([1] * 10 + [1] * 1 + [0] * 6 + [0] * 3, dtype=bool)
    b = np.array([1] * 10 + [0] * 1 + [1] * 6 + [0] * 3, dtype=bool)
    out = m.mcnemar_exact(a, b)
    assert (out["only_a_correct"], out["only_b_correct"]) == (1, 6)
    assert out["p_value"] == pytest.approx(2 * (1 + 7) / 128)
    assert out["p_value"] == pytest.approx(binomtest(1, 7, 0.5).pvalue)
    big = m.mcnemar_exact(np.r_[np.ones(400), np.zeros(600)] > 0,
                          np.r_[np.zeros(430), np.ones(570)] > 0)
    assert big["p_value"] == pytest.approx(binomtest(400, 970, 0.5).pvalue, rel=1e-6)
    assert m.mcnemar_exact(a, a)["p_value"] == 1.0


def test_paired_comparison_finds_a_real_difference_and_not_a_fake_one() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 400)
    good = np.where(rng.uniform(size=400) < 0.85, y, rng.integers(0, 4, 400))
    bad = np.where(rng.uniform(size=400) < 0.45, y, rng.integers(0, 4, 400))
    real = m.paired_comparison(y, bad, good, 4, n_boot=500, seed=0)
    assert real["macro_f1_diff"] == pytest.approx(m.macro_f1(y, good) - m.macro_f1(y, bad))
    assert real["significant"] and real["macro_f1_diff_ci"][0] > 0
    assert real["mcnemar"]["p_value"] < 0.001
    same = m.paired_comparison(y, good, good, 4, n_boot=200, seed=0)
    assert same["macro_f1_diff"] == 0 and not same["significant"]
    assert same["mcnemar"]["p_value"] == 1.0


def test_weak_classes_rule() -> None:
    assert m.weak_classes([0.9, 0.85, 0.5, None], [10, 10, 10, 0], macro=0.75) == [2]
    assert m.weak_classes([0.7, 0.65], [5, 5], macro=0.675) == []


def test_summary_shape_and_consistency() -> None:
    y, probs = _fixed()
    s = m.classification_summary(y, probs, list("abcde"), n_boot=100, seed=0)
    pred = probs.argmax(1)
    assert s["n"] == 300
    assert s["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert s["cohen_kappa"] == pytest.approx(skm.cohen_kappa_score(y, pred))
    assert s["nll"] == pytest.approx(skm.log_loss(y, probs))
    assert [r["class"] for r in s["per_class"]] == list("abcde")
    assert sum(r["support"] for r in s["per_class"]) == 300
    assert len(s["ci95"]["macro_f1"]) == 2
