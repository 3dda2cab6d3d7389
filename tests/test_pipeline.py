"""The training input pipeline: shapes, value range, parity with the Predictor, sampling."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path

import numpy as np
import pytest
from imagegen import make_class_folders, make_fake_jpeg, make_truncated_jpeg

from skincli.errors import SkinError
from skincli.imageio import load_rgb, resize_rgb
from skincli.train.config import DEFAULTS, PRESETS, TrainConfig, fine_tune_layers, resolve
from skincli.train.pipeline import (
    SkippedImages,
    balanced_class_weights,
    eval_dataset,
    train_dataset,
)

SIZE = 32


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[int]]:
    """40/6/4 images of three colour classes, 50x40 pixels (so resizing really happens)."""
    root = tmp_path_factory.mktemp("pipe")
    made = make_class_folders(root, {"a": 40, "b": 6, "c": 4}, size=(50, 40))
    paths, labels = [], []
    for i, files in enumerate(made.values()):
        paths += [str(p) for p in files]
        labels += [i] * len(files)
    return paths, labels


def _take(ds, n: int) -> list:
    it = iter(ds)
    return [next(it) for _ in range(n)]


def test_eval_batches_match_the_predictor_exactly(images) -> None:
    paths, labels = images
    skipped = SkippedImages()
    batches = list(eval_dataset(paths, labels, size=SIZE, batch_size=16, skipped=skipped))
    x = np.concatenate([b[0].numpy() for b in batches])
    y = np.concatenate([b[1].numpy() for b in batches])
    assert x.shape == (len(paths), SIZE, SIZE, 3) and x.dtype == np.float32
    assert y.tolist() == labels  # file order kept
    expected = np.stack([resize_rgb(load_rgb(p), SIZE) for p in paths]).astype(np.float32)
    np.testing.assert_array_equal(x, expected)  # no augmentation, same resize as serving
    assert skipped.count == 0


def test_train_batches_shapes_range_and_one_hot(images) -> None:
    paths, labels = images
    data = train_dataset(paths, labels, num_classes=3, size=SIZE, batch_size=8,
                         skipped=SkippedImages(), seed=3)
    assert data.steps_per_epoch == int(np.ceil(len(paths) / 8))
    for x, y in _take(data.dataset, 5):
        assert x.shape == (8, SIZE, SIZE, 3) and x.dtype.name == "float32"
        assert 0.0 <= float(np.min(x)) and float(np.max(x)) <= 255.0
        np.testing.assert_allclose(np.sum(y, axis=1), 1.0)
        assert set(np.unique(y)) <= {0.0, 1.0}


def test_augmentation_zero_is_identity_and_positive_changes_pixels(images) -> None:
    paths, labels = images
    reference = {resize_rgb(load_rgb(p), SIZE).astype(np.float32).tobytes() for p in paths}
    plain = train_dataset(paths, labels, num_classes=3, size=SIZE, batch_size=10,
                          skipped=SkippedImages(), augment=0.0, oversample=False)
    for x, _ in _take(plain.dataset, 3):
        assert all(img.tobytes() in reference for img in x.numpy())
    augmented = train_dataset(paths, labels, num_classes=3, size=SIZE, batch_size=10,
                              skipped=SkippedImages(), augment=1.0, oversample=False)
    xs = np.concatenate([x.numpy() for x, _ in _take(augmented.dataset, 3)])
    changed = sum(img.tobytes() not in reference for img in xs)
    assert changed > len(xs) // 2


def test_same_seed_same_batches_other_seed_differs(images) -> None:
    paths, labels = images

    def first(seed: int) -> np.ndarray:
        data = train_dataset(paths, labels, num_classes=3, size=SIZE, batch_size=8,
                             skipped=SkippedImages(), seed=seed)
        return _take(data.dataset, 1)[0][0].numpy()

    np.testing.assert_array_equal(first(5), first(5))
    assert not np.array_equal(first(5), first(6))


def _label_shares(paths, labels, oversample: bool, strength: float = 1.0) -> np.ndarray:
    data = train_dataset(paths, labels, num_classes=3, size=SIZE, batch_size=16,
                         skipped=SkippedImages(), oversample=oversample, augment=0.0, seed=1,
                         oversample_strength=strength)
    y = np.concatenate([b[1].numpy() for b in _take(data.dataset, 60)])
    return y.sum(axis=0) / len(y)


def test_oversampling_balances_classes(images) -> None:
    paths, labels = images
    natural = _label_shares(paths, labels, oversample=False)
    balanced = _label_shares(paths, labels, oversample=True)
    assert natural[0] > 0.7  # 40 of 50 images are class a
    # 960 draws: each class near 1/3 (binomial sd ~0.015; allow 5 sd).
    np.testing.assert_allclose(balanced, 1 / 3, atol=0.075)


def test_oversample_strength_interpolates_between_natural_and_balanced(images) -> None:
    paths, labels = images
    counts = np.bincount(labels, minlength=3).astype(float)
    half = _label_shares(paths, labels, oversample=True, strength=0.5)
    want = np.sqrt(counts) / np.sqrt(counts).sum()
    np.testing.assert_allclose(half, want, atol=0.075)
    assert half[0] < 0.7 and half[0] > 1 / 3 + 0.05


def test_mixup_and_cutmix_make_soft_targets_that_sum_to_one(images) -> None:
    paths, labels = images
    for kind in ({"mixup": 0.4}, {"cutmix": 1.0}):
        data = train_dataset(paths, labels, num_classes=3, size=SIZE, batch_size=8,
                             skipped=SkippedImages(), seed=2, **kind)
        ys = np.concatenate([b[1].numpy() for b in _take(data.dataset, 4)])
        np.testing.assert_allclose(ys.sum(axis=1), 1.0, rtol=1e-5)
        assert np.any((ys > 0.01) & (ys < 0.99)), kind


def test_class_weights_add_a_third_element(images) -> None:
    paths, labels = images
    weights = balanced_class_weights(labels, 3)
    assert weights[0] < weights[1] < weights[2]
    np.testing.assert_allclose(np.dot(np.bincount(labels), weights), len(labels))
    data = train_dataset(paths, labels, num_classes=3, size=SIZE, batch_size=8,
                         skipped=SkippedImages(), class_weights=weights, oversample=False,
                         augment=0.0)
    x, y, w = _take(data.dataset, 1)[0]
    np.testing.assert_allclose(w.numpy(), np.asarray(weights)[np.argmax(y.numpy(), axis=1)])


@pytest.mark.parametrize("cache", [True, False])
def test_unreadable_images_are_skipped_and_counted(tmp_path: Path, images, cache: bool) -> None:
    paths, labels = images
    bad = [str(make_fake_jpeg(tmp_path / "fake.jpg")),
           str(make_truncated_jpeg(tmp_path / "cut.jpg")), str(tmp_path / "gone.jpg")]
    skipped = SkippedImages()
    batches = list(eval_dataset(paths + bad, labels + [0, 1, 2], size=SIZE, batch_size=16,
                                skipped=skipped, cache=cache))
    assert sum(len(b[1]) for b in batches) == len(paths)
    assert sorted(skipped.paths()) == sorted(bad)
    train_skipped = SkippedImages()
    data = train_dataset(paths + bad, labels + [0, 1, 2], num_classes=3, size=SIZE,
                         batch_size=8, skipped=train_skipped, cache=cache)
    _take(data.dataset, 20)  # 160 draws: every file is read at least once
    assert sorted(train_skipped.paths()) == sorted(bad)


def test_resolve_precedence_and_validation() -> None:
    assert resolve().epochs == DEFAULTS["epochs"]
    fast = resolve(preset="fast")
    assert fast.fine_tune_epochs == PRESETS["fast"]["fine_tune_epochs"]
    assert resolve({"fine_tune_epochs": 1}, preset="fast").fine_tune_epochs == 1
    assert resolve({"epochs": None}).epochs == DEFAULTS["epochs"]  # None = not given
    assert fine_tune_layers("all") is None and fine_tune_layers("none") == 0
    assert fine_tune_layers("TOP:12") == 12
    for bad in ({"fine_tune": "half"}, {"loss": "focl"}, {"augment": 3}, {"batch_size": 0},
                {"name": "a/b"}, {"epcohs": 2}):
        with pytest.raises(SkinError):
            resolve(bad)
    with pytest.raises(SkinError, match="Did you mean: fast"):
        resolve(preset="fats")
    with pytest.raises(SkinError, match="epochs"):
        TrainConfig.from_dict({"epcohs": 1})
