"""Synthetic drift: shifted streams are detected, an unshifted one is not (alpha = 0.01/test).

A tiny deterministic numpy "model" (a fixed random feature map and a least-squares head fitted on
synthetic lesion images) stands in for the network, so the whole chain — images -> image_stats,
embedding summary, calibrated probabilities -> prediction store -> drift tests — runs in seconds.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skincli.monitor.drift import (
    DRIFT,
    OK,
    TOO_FEW,
    Thresholds,
    build_reference,
    chi_square,
    mmd_permutation_test,
    psi,
    run_drift,
)
from skincli.monitor.store import image_stats, open_store, summarize_embedding
from skincli.synthetic import draw_lesion, synthetic_classes

CLASSES = synthetic_classes()
SIZE = 40
ALPHA = 0.01  # stated significance level of every test
REF_MIX = (0.4, 0.3, 0.2, 0.1)


class FakeModel:
    """Deterministic: 8x8 thumbnail -> tanh random features (the 'embedding') -> linear head."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w1 = rng.standard_normal((8 * 8 * 3, 64)) / 8.0
        emb = self.embed(images)
        onehot = np.eye(len(CLASSES))[labels]
        x = np.hstack([emb, np.ones((len(emb), 1))])
        self.w2 = np.linalg.lstsq(x, onehot * 6.0 - 3.0, rcond=None)[0]

    def embed(self, images: np.ndarray) -> np.ndarray:
        n = len(images)
        thumb = images.reshape(n, 8, SIZE // 8, 8, SIZE // 8, 3).mean(axis=(2, 4)) / 255.0
        return np.tanh((thumb.reshape(n, -1) - 0.5) @ self.w1)

    def probabilities(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        emb = self.embed(images)
        logits = np.hstack([emb, np.ones((len(emb), 1))]) @ self.w2
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True), emb


def draw(n: int, mix: tuple[float, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(CLASSES), size=n, p=mix)
    images = np.stack([np.asarray(draw_lesion(CLASSES[k], rng, SIZE)) for k in labels])
    return images, labels


def brighten(images: np.ndarray, amount: float) -> np.ndarray:
    return np.clip(images.astype(float) + amount, 0, 255).astype(np.uint8)


def colour_cast(images: np.ndarray) -> np.ndarray:
    out = images.astype(float)
    out[..., 0] -= 12
    out[..., 2] += 25
    return np.clip(out, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def world() -> dict:
    train_x, train_y = draw(240, (0.25, 0.25, 0.25, 0.25), seed=1)
    model = FakeModel(train_x, train_y)
    val_x, val_y = draw(300, REF_MIX, seed=2)
    probs, emb = model.probabilities(val_x)
    ref = build_reference(CLASSES, probs, [image_stats(a) for a in val_x],
                          [summarize_embedding(e) for e in emb],
                          [CLASSES[k] for k in val_y],
                          {"model_version": "fake@1", "run": "fake"})
    return {"model": model, "reference": ref}


def stream(model: FakeModel, images: np.ndarray, t0: float = 0.0) -> pd.DataFrame:
    """What the prediction log returns for these images."""
    probs, emb = model.probabilities(images)
    rows = []
    for i, (p, e, im) in enumerate(zip(probs, emb, images)):
        rows.append({"time": t0 + i, "predicted": CLASSES[int(p.argmax())],
                     "top_probability": float(p.max()), "image_stats": image_stats(im),
                     "embedding": summarize_embedding(e), "model_version": "fake@1",
                     "uncertain": False, "latency_ms": 5.0, "source": "api", "label": None,
                     "probabilities": dict(zip(CLASSES, p.tolist())),
                     "image_sha256": f"{i:064x}", "request_id": str(i)})
    return pd.DataFrame(rows)


def verdicts(results: list) -> dict[str, str]:
    return {r.name: r.verdict for r in results}


TH = Thresholds(alpha=ALPHA, n_permutations=200, seed=0)


def test_unshifted_stream_raises_no_alarm(world: dict) -> None:
    images, _ = draw(300, REF_MIX, seed=3)
    v = verdicts(run_drift(world["reference"], stream(world["model"], images), TH))
    assert v == {"prediction_psi": OK, "prediction_chi2": OK, "confidence_ks": OK,
                 "input_stats_ks": OK, "embedding_mmd": OK}


def test_brightness_shift_is_detected(world: dict) -> None:
    images, _ = draw(300, REF_MIX, seed=4)
    results = run_drift(world["reference"], stream(world["model"], brighten(images, 35)), TH)
    v = verdicts(results)
    assert v["input_stats_ks"] == DRIFT
    assert v["embedding_mmd"] == DRIFT
    stats = next(r for r in results if r.name == "input_stats_ks")
    assert "brightness" in stats.extra["drifted"]


def test_colour_cast_is_detected(world: dict) -> None:
    images, _ = draw(300, REF_MIX, seed=5)
    results = run_drift(world["reference"], stream(world["model"], colour_cast(images)), TH)
    v = verdicts(results)
    assert v["input_stats_ks"] == DRIFT
    drifted = next(r for r in results if r.name == "input_stats_ks").extra["drifted"]
    assert "mean_b" in drifted


def test_class_mix_shift_is_detected(world: dict) -> None:
    images, _ = draw(300, (0.1, 0.2, 0.3, 0.4), seed=6)
    v = verdicts(run_drift(world["reference"], stream(world["model"], images), TH))
    assert v["prediction_psi"] == DRIFT
    assert v["prediction_chi2"] == DRIFT


def test_false_alarm_rate_of_each_test_is_near_alpha(world: dict) -> None:
    # Many small unshifted streams: each test should fire in about alpha of them. With 40
    # streams and alpha 0.01 the expected count is 0.4; allow a few for sampling noise.
    th = Thresholds(alpha=ALPHA, n_permutations=100, seed=0, min_samples=40)
    alarms = {k: 0 for k in ("prediction_chi2", "confidence_ks", "input_stats_ks",
                             "embedding_mmd")}
    for s in range(40):
        images, _ = draw(60, REF_MIX, seed=100 + s)
        for r in run_drift(world["reference"], stream(world["model"], images), th):
            if r.name in alarms and r.verdict == DRIFT:
                alarms[r.name] += 1
    assert all(n <= 3 for n in alarms.values()), alarms


def test_small_window_gives_no_verdict(world: dict) -> None:
    images, _ = draw(20, REF_MIX, seed=7)
    results = run_drift(world["reference"], stream(world["model"], brighten(images, 60)), TH)
    assert {r.verdict for r in results} == {TOO_FEW}


def test_statistics_behave() -> None:
    assert psi([10, 20, 30], [10, 20, 30]) == pytest.approx(0.0)
    assert psi([50, 50], [90, 10]) > 0.2
    assert chi_square([100, 100], [100, 100])[1] == pytest.approx(1.0)
    assert chi_square([100, 100], [160, 40])[1] < 1e-6
    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 5))
    _, p_same, _ = mmd_permutation_test(x, rng.standard_normal((80, 5)), 200, seed=0)
    _, p_diff, _ = mmd_permutation_test(x, rng.standard_normal((80, 5)) + 0.8, 200, seed=0)
    assert p_same > 0.05 and p_diff < 0.01
    # seeded: the same inputs give the same p-value
    assert mmd_permutation_test(x, x + 0.1, 50, seed=3) == mmd_permutation_test(x, x + 0.1, 50,
                                                                                 seed=3)


def test_store_round_trip_keeps_drift_verdicts(world: dict, tmp_path: Path) -> None:
    images, _ = draw(120, REF_MIX, seed=8)
    df = stream(world["model"], brighten(images, 35), t0=time.time() - 100)
    store = open_store(tmp_path / "p.db")
    store.log(df.drop(columns=["label"]).to_dict("records"))
    back = store.predictions()
    assert verdicts(run_drift(world["reference"], back, TH)) == verdicts(
        run_drift(world["reference"], df, TH))
