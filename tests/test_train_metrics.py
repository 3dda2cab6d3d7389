"""skincli.metrics.classification_metrics: the per-epoch numbers, checked against scikit-learn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from skincli.metrics import classification_metrics


def _probs(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    z = rng.normal(size=(n, c)) * 3
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_with_a_class_absent_from_the_labels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    classes = ["a", "b", "c", "d"]
    labels = rng.integers(0, 3, size=50)  # "d" never appears but may be predicted
    probs = _probs(rng, 50, 4)
    pred = probs.argmax(axis=1)
    present = sorted(set(labels.tolist()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f1 = skm.f1_score(labels, pred, labels=present, average=None, zero_division=0)
        balanced = skm.balanced_accuracy_score(labels, pred)
    got = classification_metrics(labels, probs, classes)
    assert got["macro_f1"] == pytest.approx(float(np.mean(f1)))
    assert got["balanced_accuracy"] == pytest.approx(balanced)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
    assert got["per_class_f1"]["d"] is None
    assert [got["per_class_f1"][classes[i]] for i in present] == pytest.approx(list(f1))
    assert got["loss"] == pytest.approx(skm.log_loss(labels, probs, labels=range(4)), rel=1e-5)
    assert got["n"] == 50


def test_loss_is_clipped_as_keras_clips_it() -> None:
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    got = classification_metrics([1, 1], probs, ["x", "y"])
    assert got["loss"] == pytest.approx(-np.log(1e-7) / 2)
    assert got["accuracy"] == 0.5 and got["per_class_f1"] == {"x": None, "y": pytest.approx(2 / 3)}


def test_no_images_gives_zeros_not_an_error() -> None:
    got = classification_metrics(np.zeros(0, np.int64), np.zeros((0, 0)), ["x", "y"])
    assert got == {"macro_f1": 0.0, "balanced_accuracy": 0.0, "accuracy": 0.0, "loss": 0.0,
                   "per_class_f1": {"x": None, "y": None}, "n": 0}
