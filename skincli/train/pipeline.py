"""The tf.data input pipeline: decode, resize, cache, balance, augment, mix, batch, prefetch.

Images are decoded and resized by `skincli.imageio` (the same PIL code the Predictor uses),
inside the pipeline via `tf.numpy_function`, so the model is trained on exactly the pixels it
will see later: RGB, bilinear-resized to the input size, uint8 values given as float32 0..255
(the normalisation is a layer inside the model). TensorFlow's own decoders and resize would
differ from serving by a few grey levels (different resampling, no EXIF orientation).

Decoded images are cached in memory as uint8 (about 150 KB per 224 px image). An image that
cannot be read is dropped from the stream and recorded in a `SkippedImages` counter instead of
stopping the run. Augmentation uses stateless random ops fed by a seeded random stream, so a
fixed seed gives the same batches every time; evaluation datasets are never augmented.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from skincli.imageio import load_rgb, resize_rgb


@dataclass
class SkippedImages:
    """Thread-safe record of images that could not be read (path -> reason)."""

    reasons: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, path: str, reason: str) -> None:
        with self._lock:
            self.reasons.setdefault(path, reason)

    @property
    def count(self) -> int:
        return len(self.reasons)

    def paths(self) -> list[str]:
        with self._lock:
            return sorted(self.reasons)


def read_image(path: str, size: int, skipped: SkippedImages | None = None) -> np.ndarray | None:
    """Decode and resize one file exactly as the Predictor does; None if it cannot be read."""
    try:
        return resize_rgb(load_rgb(path), size)
    except Exception as exc:  # any unreadable file is skipped, whatever the decoder raised
        if skipped is not None:
            skipped.add(path, str(exc) or type(exc).__name__)
        return None


def _loader(size: int, skipped: SkippedImages) -> Any:
    """A tf.data map function: path -> (uint8 image, ok flag)."""
    import tensorflow as tf

    empty = np.zeros((size, size, 3), np.uint8)

    def load(path: bytes) -> tuple[np.ndarray, np.bool_]:
        image = read_image(os.fsdecode(path), size, skipped)
        return (empty, np.False_) if image is None else (image, np.True_)

    def fn(path: Any, label: Any) -> tuple[Any, Any, Any]:
        image, ok = tf.numpy_function(load, [path], [tf.uint8, tf.bool], stateful=False)
        image.set_shape((size, size, 3))
        ok.set_shape(())
        return image, label, ok

    return fn


def _is_ok(image: Any, label: Any, ok: Any) -> Any:
    return ok


def _drop_flag(image: Any, label: Any, ok: Any) -> tuple[Any, Any]:
    return image, label


def decoded(paths: Sequence[str], labels: Sequence[int], size: int, skipped: SkippedImages,
            *, cache: bool = True, shuffle_seed: int | None = None) -> Any:
    """(uint8 image, int32 label) pairs, unreadable files dropped; cached in memory if asked.

    With shuffle_seed (and no cache) the file list is shuffled and repeated before decoding,
    so nothing large sits in a shuffle buffer.
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(
        (tf.constant([str(p) for p in paths], tf.string),
         tf.constant(np.asarray(labels, np.int32), tf.int32)))
    if shuffle_seed is not None and not cache and len(paths):
        ds = ds.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True).repeat()
    ds = ds.map(_loader(size, skipped), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.filter(_is_ok).map(_drop_flag)
    if cache:
        ds = ds.cache()
        if shuffle_seed is not None and len(paths):
            ds = ds.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True).repeat()
    return ds


def augment_image(image: Any, seed: Any, strength: float, colour_shift: float = 0.0) -> Any:
    """Dermoscopy augmentation of one uint8 image -> float32 0..255.

    Dermoscopy has no 'up': flips both ways and 90-degree turns; plus a small zoom-in with a
    random shift and a mild colour jitter, both scaled by `strength` (0 = identity).
    colour_shift > 0 multiplies each channel by its own gain in 1 ± 0.2·colour_shift: a
    different light or white balance, which a colour-constancy layer should undo.
    """
    import tensorflow as tf

    x = tf.cast(image, tf.float32)
    if strength <= 0:
        return x
    s = float(strength)
    size = int(image.shape[0])
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=9)
    x = tf.image.stateless_random_flip_left_right(x, seeds[0])
    x = tf.image.stateless_random_flip_up_down(x, seeds[1])
    k = tf.random.stateless_uniform([], seeds[2], 0, 4, dtype=tf.int32)
    x = tf.image.rot90(x, k)
    # Zoom in by up to 20% (strength 1) at a random position: a crop resized back.
    side = tf.random.stateless_uniform([], seeds[3], 1.0 - 0.2 * s, 1.0)
    corner = tf.random.stateless_uniform([2], seeds[4], 0.0, 1.0) * (1.0 - side)
    box = tf.stack([corner[0], corner[1], corner[0] + side, corner[1] + side])[None]
    x = tf.image.crop_and_resize(x[None], box, [0], [size, size], method="bilinear")[0]
    x = x / 255.0
    x = tf.image.stateless_random_brightness(x, 0.08 * s, seeds[5])
    x = tf.image.stateless_random_contrast(x, 1.0 - 0.15 * s, 1.0 + 0.15 * s, seeds[6])
    x = tf.image.stateless_random_saturation(x, 1.0 - 0.15 * s, 1.0 + 0.15 * s, seeds[7])
    x = tf.image.stateless_random_hue(x, 0.02 * s, seeds[8])
    if colour_shift > 0:
        # Its own stream (folded from the seed) so the other draws stay as they were.
        gain_seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), 17)
        c = 0.2 * float(colour_shift)
        x = x * tf.random.stateless_uniform([3], gain_seed, 1.0 - c, 1.0 + c)
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def _beta(shape: Any, seed: Any, alpha: float) -> Any:
    """Beta(alpha, alpha) samples from two stateless gammas."""
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed, num=2)
    a = tf.random.stateless_gamma(shape, seeds[0], alpha=alpha)
    b = tf.random.stateless_gamma(shape, seeds[1], alpha=alpha)
    return a / tf.maximum(a + b, 1e-12)


def mix_batch(x: Any, y: Any, w: Any, seed: Any, mixup: float, cutmix: float) -> tuple[Any, ...]:
    """Mixup or cutmix a batch with itself reversed (targets and weights mixed alike).

    When both are on, each batch uses one of them with probability 1/2.
    """
    import tensorflow as tf

    seed = tf.cast(seed, tf.int64)
    seeds = tf.random.experimental.stateless_split(seed, num=4)
    x2, y2, w2 = tf.reverse(x, [0]), tf.reverse(y, [0]), tf.reverse(w, [0])
    batch = tf.shape(x)[0]

    def do_mixup() -> tuple[Any, Any, Any]:
        lam = _beta([batch], seeds[0], mixup)
        lx = tf.reshape(lam, [-1, 1, 1, 1])
        ly = tf.reshape(lam, [-1, 1])
        return (lx * x + (1 - lx) * x2, ly * y + (1 - ly) * y2, lam * w + (1 - lam) * w2)

    def do_cutmix() -> tuple[Any, Any, Any]:
        size = tf.shape(x)[1]
        lam = _beta([], seeds[1], cutmix)
        cut = tf.cast(tf.math.sqrt(1.0 - lam) * tf.cast(size, tf.float32), tf.int32)
        centre = tf.random.stateless_uniform([2], seeds[2], 0, size, dtype=tf.int32)
        y0 = tf.clip_by_value(centre[0] - cut // 2, 0, size)
        y1 = tf.clip_by_value(centre[0] + cut // 2, 0, size)
        x0 = tf.clip_by_value(centre[1] - cut // 2, 0, size)
        x1 = tf.clip_by_value(centre[1] + cut // 2, 0, size)
        rows = tf.range(size)
        inside = ((rows >= y0) & (rows < y1))[:, None] & ((rows >= x0) & (rows < x1))[None, :]
        mask = tf.cast(inside, x.dtype)[None, :, :, None]
        area = tf.reduce_sum(mask) / tf.cast(size * size, tf.float32)
        keep = 1.0 - area  # the share of the first image left after pasting
        return (x * (1 - mask) + x2 * mask, keep * y + (1 - keep) * y2, keep * w + (1 - keep) * w2)

    if mixup > 0 and cutmix > 0:
        use_mixup = tf.random.stateless_uniform([], seeds[3]) < 0.5
        return tf.cond(use_mixup, do_mixup, do_cutmix)
    if mixup > 0:
        return do_mixup()
    return do_cutmix()


@dataclass
class TrainData:
    """The training stream and what fit() needs to know about it."""

    dataset: Any
    steps_per_epoch: int
    num_images: int


def train_dataset(paths: Sequence[str], labels: Sequence[int], *, num_classes: int, size: int,
                  batch_size: int, skipped: SkippedImages, oversample: bool = True,
                  oversample_strength: float = 1.0, augment: float = 1.0, mixup: float = 0.0,
                  cutmix: float = 0.0, seed: int = 0,
                  class_weights: Sequence[float] | None = None, cache: bool = True,
                  meta: np.ndarray | None = None, meta_blocks: np.ndarray | None = None,
                  meta_dropout: float = 0.0, colour_shift: float = 0.0) -> TrainData:
    """An infinite stream of augmented batches (x float32 0..255, y one-hot[, weight]).

    oversample: each class is its own shuffled, repeated stream and batches draw from the
    classes with equal probability, so every class is seen equally often without copying
    files; an epoch is still len(paths) / batch_size steps. oversample_strength s < 1 draws
    class c with weight n_c^(1-s) instead (0 = the data's own class mix).

    meta: encoded metadata rows (N, D) (skincli.metahead); x becomes (image, metadata row),
    and each field (columns with one value in meta_blocks) is zeroed (= missing) with
    probability meta_dropout.
    """
    import tensorflow as tf

    labels = np.asarray(labels, np.int32)
    if meta is not None and (mixup > 0 or cutmix > 0):
        raise ValueError("metadata inputs do not combine with mixup or cutmix")
    # The stream carries row indices; labels (and metadata) are looked up per element, so
    # decoding, caching and the class streams do not depend on what a row holds.
    rows = np.arange(len(labels), dtype=np.int32)
    if oversample:
        streams, weights = [], []
        for c in range(num_classes):
            idx = np.flatnonzero(labels == c)
            if not len(idx):
                continue
            streams.append(decoded([paths[i] for i in idx], rows[idx], size, skipped,
                                   cache=cache, shuffle_seed=seed * 1000 + c))
            weights.append(float(len(idx)) ** (1.0 - float(oversample_strength)))
        total = sum(weights)
        ds = tf.data.Dataset.sample_from_datasets(
            streams, weights=None if oversample_strength >= 1 else [w / total for w in weights],
            seed=seed, stop_on_empty_dataset=False)
    else:
        ds = decoded(paths, rows, size, skipped, cache=cache, shuffle_seed=seed)

    table = tf.constant(np.asarray(class_weights if class_weights is not None
                                   else np.ones(num_classes), np.float32))
    randoms = tf.data.Dataset.random(seed=seed).batch(2)
    label_table = tf.constant(labels)
    metadata = None if meta is None else _metadata_rows(meta, meta_blocks, meta_dropout)

    def prepare(pair: Any, rnd: Any) -> tuple[Any, Any, Any]:
        image, row = pair
        label = tf.gather(label_table, row)
        x = augment_image(image, rnd, augment, colour_shift)
        if metadata is not None:
            x = (x, metadata(row, rnd))
        return x, tf.one_hot(label, num_classes), tf.gather(table, label)

    ds = tf.data.Dataset.zip((ds, randoms)).map(prepare, num_parallel_calls=tf.data.AUTOTUNE,
                                                deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    if mixup > 0 or cutmix > 0:
        batch_randoms = tf.data.Dataset.random(seed=seed + 7919).batch(2)

        def mix(b: Any, rnd: Any) -> tuple[Any, Any, Any]:
            return mix_batch(b[0], b[1], b[2], rnd, mixup, cutmix)

        ds = tf.data.Dataset.zip((ds, batch_randoms)).map(
            mix, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if class_weights is None:
        ds = ds.map(_drop_weight)
    ds = ds.prefetch(tf.data.AUTOTUNE).with_options(_options())
    steps = max(1, math.ceil(len(paths) / batch_size))
    return TrainData(dataset=ds, steps_per_epoch=steps, num_images=len(paths))


def _metadata_rows(meta: np.ndarray, blocks: np.ndarray | None, dropout: float) -> Any:
    """fn(row, rnd) -> the row's metadata with each field (the columns of one value in
    `blocks`) zeroed, i.e. missing, with probability `dropout`."""
    import tensorflow as tf

    table = tf.constant(np.asarray(meta, np.float32))
    columns = np.zeros(table.shape[1], np.int32) if blocks is None else np.asarray(blocks,
                                                                                  np.int32)
    field_of = tf.constant(columns)
    n_fields = int(columns.max()) + 1 if columns.size else 1

    def lookup(row: Any, rnd: Any) -> Any:
        m = tf.gather(table, row)
        seed = tf.stack([tf.cast(rnd[0], tf.int64), tf.cast(rnd[1], tf.int64) + 1])
        hide = tf.random.stateless_uniform([n_fields], seed) < dropout
        return tf.where(tf.gather(hide, field_of), tf.zeros_like(m), m)

    return lookup


def eval_dataset(paths: Sequence[str], labels: Sequence[int], *, size: int, batch_size: int,
                 skipped: SkippedImages, cache: bool = True,
                 meta: np.ndarray | None = None) -> Any:
    """Batches of (x float32 0..255, int label), in file order, never augmented.

    With meta (encoded rows, N x D), x is (image, metadata row).
    """
    import tensorflow as tf

    if meta is None:
        ds = decoded(paths, labels, size, skipped, cache=cache).map(_to_float)
    else:
        label_table = tf.constant(np.asarray(labels, np.int32))
        meta_table = tf.constant(np.asarray(meta, np.float32))

        def with_meta(image: Any, row: Any) -> tuple[Any, Any]:
            return ((tf.cast(image, tf.float32), tf.gather(meta_table, row)),
                    tf.gather(label_table, row))

        ds = decoded(paths, np.arange(len(labels), dtype=np.int32), size, skipped,
                     cache=cache).map(with_meta)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE).with_options(_options())


def _drop_weight(x: Any, y: Any, w: Any) -> tuple[Any, Any]:
    return x, y


def _to_float(image: Any, label: Any) -> tuple[Any, Any]:
    import tensorflow as tf

    return tf.cast(image, tf.float32), label


def _options() -> Any:
    import tensorflow as tf

    options = tf.data.Options()
    options.deterministic = True
    # Every worker runs the whole (seeded, sampled) stream and keeps every n-th element.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


def balanced_class_weights(labels: Sequence[int], num_classes: int) -> list[float]:
    """n / (k * n_c): the weight that makes every class count equally in the loss."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes).astype(np.float64)
    n = counts.sum()
    return [float(n / (num_classes * c)) if c else 0.0 for c in counts]
