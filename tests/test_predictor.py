"""The shared Predictor: one-pass logits + embedding, predict_paths, input warnings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers_run import make_run
from imagegen import make_fake_jpeg, make_image, make_truncated_jpeg

from skincli.image_quality import OOD_WARNING
from skincli.imageio import ImageError
from skincli.models.graph import embedding_model
from skincli.ood import build_reference, colour_features
from skincli.predictor import Predictor
from skincli.runs import update_run_info

CLASSES = ["melanoma", "nevus", "vascular lesion"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("p"), classes=CLASSES, input_size=32)


@pytest.fixture(scope="module")
def predictor(run_dir: Path) -> Predictor:
    return Predictor.from_run(run_dir)


def _skin_batch(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.array([190.0, 130.0, 110.0]) + rng.normal(0, 12, size=(n, 1, 1, 3))
    return np.clip(base + rng.normal(0, 20, size=(n, 32, 32, 3)), 0, 255).astype(np.float32)


def test_one_pass_gives_the_same_logits_and_the_pooled_embedding(predictor: Predictor) -> None:
    batch = _skin_batch(5)
    logits, emb = predictor.logits_and_embeddings(batch, batch_size=2)
    np.testing.assert_allclose(logits, predictor.logits(batch), rtol=1e-5, atol=1e-5)
    assert emb is not None and emb.shape == (5, 8)
    backbone = predictor.model.get_layer("backbone")
    manual = np.asarray(backbone(predictor.model.get_layer("normalise")(batch)))
    np.testing.assert_allclose(emb, manual, rtol=1e-4, atol=1e-5)


def test_probabilities_and_embeddings_match_probabilities(predictor: Predictor) -> None:
    batch = _skin_batch(4, seed=1)
    for tta in (False, True):
        probs, emb = predictor.probabilities_and_embeddings(batch, tta=tta)
        np.testing.assert_allclose(probs, predictor.probabilities(batch, tta=tta), atol=1e-6)
        assert emb is not None and len(emb) == 4
    views, _ = predictor.tta_logits(batch)
    assert views.shape == (8, 4, 3)


def test_embedding_model_is_none_without_a_pooled_layer() -> None:
    import keras

    inp = keras.Input((8, 8, 3))
    out = keras.layers.Conv2D(2, 1, name="logits")(inp)  # 4-D features into "logits"
    assert embedding_model(keras.Model(inp, out)) is None


def test_predict_keeps_the_public_dict_shape(predictor: Predictor) -> None:
    preds = predictor.predict([_skin_batch(1)[0].astype(np.uint8)], top_k=2)
    d = preds[0].to_dict()
    assert set(d) == {"label", "probability", "top_k", "probabilities", "uncertain", "model",
                      "warnings", "disclaimer"}
    assert len(d["top_k"]) == 2 and d["label"] in CLASSES
    assert preds[0].embedding is not None


def test_predict_paths_reports_bad_files_and_predicts_the_rest(predictor: Predictor,
                                                               tmp_path: Path) -> None:
    good = [make_image(tmp_path / f"ok{i}.jpg", seed=i) for i in range(5)]
    bad = make_truncated_jpeg(tmp_path / "cut.jpg")
    fake = make_fake_jpeg(tmp_path / "fake.jpg")
    paths = [good[0], bad, good[1], good[2], fake, good[3], tmp_path / "missing.png", good[4]]
    calls: list[tuple[int, int]] = []
    out = predictor.predict_paths(paths, batch_size=3, progress=lambda d, t: calls.append((d, t)),
                                  image_hook=lambda a: {"shape": a.shape})
    assert len(out) == len(paths)
    errors = {i: r for i, r in enumerate(out) if isinstance(r, ImageError)}
    assert set(errors) == {1, 4, 6}
    assert errors[1].code == "corrupt" and errors[4].code == "unsupported_type"
    assert errors[6].code == "not_found" and "missing.png" in str(errors[6])
    for i in (0, 2, 3, 5, 7):
        assert out[i].source == str(paths[i])
        assert out[i].meta["shape"] == (32, 32, 3)
        assert out[i].to_dict()["file"] == str(paths[i])
    assert calls == [(3, 8), (6, 8), (8, 8)]
    # Same numbers as predicting the readable images directly.
    direct = predictor.predict(good)
    for a, b in zip([out[i] for i in (0, 2, 3, 5, 7)], direct):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)


def test_input_warning_flags_images_unlike_the_reference(run_dir: Path, tmp_path: Path) -> None:
    p = Predictor.from_run(run_dir)
    ref_batch = _skin_batch(200, seed=2)
    _, emb = p.logits_and_embeddings(ref_batch)
    ref = build_reference(colour_features(ref_batch), emb, source="test")
    p.info = update_run_info(run_dir, extra={**p.info.extra, "reference": ref})
    fresh = _skin_batch(100, seed=3)
    probs, emb_fresh = p.probabilities_and_embeddings(fresh)
    flagged = sum(bool(w) for w in p.input_warnings(fresh, emb_fresh))
    assert flagged <= 3  # images like the reference are (almost) never flagged
    rng = np.random.default_rng(4)
    gray = np.repeat(rng.uniform(0, 255, (4, 32, 32, 1)), 3, axis=3).astype(np.float32)
    blue = np.zeros((4, 32, 32, 3), np.float32) + [20, 60, 230]
    odd = np.concatenate([gray, blue])
    _, emb_odd = p.probabilities_and_embeddings(odd)
    warns = p.input_warnings(odd, emb_odd)
    assert all(w and OOD_WARNING in w[0] for w in warns)
    # The warning reaches predictions made from files too, after reloading the run.
    make_image(tmp_path / "blue.png", color=(20, 60, 230))
    reloaded = Predictor.from_run(run_dir)
    out = reloaded.predict_paths([tmp_path / "blue.png"])
    assert OOD_WARNING in out[0].warnings[0]


def test_damaged_reference_is_ignored(run_dir: Path) -> None:
    p = Predictor.from_run(run_dir)
    p.info.extra = {"reference": {"colour": "nonsense"}}
    assert p.reference is None
    assert p.input_warnings(_skin_batch(2)) == [[], []]
