"""Model setup: build the run's model, freeze it for a phase, schedule and compile it.

Phases: (1) the new head on a frozen backbone, (2) fine-tuning the top of the backbone (or all
of it) at a lower learning rate. BatchNorm layers stay frozen in phase 2: in Keras 3 a
BatchNormalization layer whose `trainable` is False runs in inference mode, so its ImageNet
statistics are neither used as batch statistics nor overwritten by a small, imbalanced batch
(the fine-tuning recipe of the Keras transfer-learning guide). Each phase uses AdamW with a
linear warm-up and a cosine decay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from skincli.metahead import LR_SCALE
from skincli.train.config import TrainConfig, fine_tune_layers


@dataclass
class RunModel:
    """The model of one run: the image model and what fit() trains.

    With --use-metadata fit() trains the image model plus the metadata term; otherwise
    `model` is `built.model` itself.
    """

    built: Any          # skincli.models.registry.BuiltModel (model, backbone, preprocessing)
    model: Any          # what fit() trains
    encoder: Any = None  # skincli.metahead.MetadataEncoder of a --use-metadata run


def build_image_model(cfg: TrainConfig, num_classes: int, weights: str,
                      input_size: int | None) -> Any:
    """The run's image model as the config describes it (one place for every build option)."""
    from skincli.models.registry import build_model

    return build_model(cfg.arch, num_classes, weights=weights, input_size=input_size,
                       dropout=cfg.dropout, seed=cfg.seed, head_units=cfg.head_units,
                       colour_constancy=cfg.colour_constancy)


def build_run_model(cfg: TrainConfig, num_classes: int, encoder: Any, weights: str,
                    input_size: int | None) -> RunModel:
    """The image model and, with a metadata encoder, the model fit() trains around it."""
    built = build_image_model(cfg, num_classes, weights, input_size)
    if encoder is None:
        return RunModel(built, built.model)
    return RunModel(built, with_metadata(built, encoder, num_classes), encoder)


def with_metadata(built: Any, encoder: Any, num_classes: int) -> Any:
    """logits = image model(image) + centred one-hot metadata @ W (skincli.metahead).

    W starts at zero, so training starts from the image model alone.
    """
    import keras

    size = int(built.input_size)
    image = keras.Input((size, size, 3), name="image")
    meta = keras.Input((encoder.dim,), name="metadata")
    term = keras.layers.Dense(num_classes, use_bias=False, kernel_initializer="zeros",
                              name="metadata_logits")(meta)
    # W = LR_SCALE x kernel: with Adam the term then learns LR_SCALE times faster.
    term = keras.layers.Rescaling(LR_SCALE, name="metadata_scale")(term)
    logits = keras.layers.Add(name="fused_logits")([built.model(image), term])
    return keras.Model([image, meta], logits, name="with_metadata")


def metadata_head(run_model: RunModel) -> Any:
    """The trained metadata term (skincli.metahead.MetadataHead) or None."""
    if run_model.encoder is None:
        return None
    from skincli.metahead import MetadataHead

    kernel = run_model.model.get_layer("metadata_logits").get_weights()[0]
    return MetadataHead(run_model.encoder, np.asarray(kernel, np.float32) * LR_SCALE)


def clean_copy(cfg: TrainConfig, run_model: RunModel, num_classes: int, input_size: int) -> Any:
    """A fresh, uncompiled image model with the trained weights (model.keras then holds no
    optimizer state)."""
    clean = build_image_model(cfg, num_classes, "none", input_size)
    clean.model.set_weights(run_model.built.model.get_weights())
    return clean


def set_phase_trainable(built: Any, phase: str, fine_tune: str) -> None:
    """Freeze what the phase must not change; BatchNorm always stays frozen (inference mode)."""
    import keras

    backbone = built.backbone
    if phase == "head":
        backbone.trainable = False
        return
    backbone.trainable = True
    for layer in _all_layers(backbone):  # Keras skips sublayers if the flag did not change
        layer.trainable = True
    top = fine_tune_layers(fine_tune)
    layers = list(backbone.layers)
    if top is not None:
        for layer in layers[: max(0, len(layers) - top)]:
            layer.trainable = False
    for layer in _all_layers(backbone):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def _all_layers(model: Any) -> list[Any]:
    out = []
    for layer in model.layers:
        out.append(layer)
        if hasattr(layer, "layers"):
            out.extend(_all_layers(layer))
    return out


def make_schedule(peak_lr: float, steps_per_epoch: int, epochs: int, warmup_epochs: float,
                  min_lr_ratio: float) -> Any:
    """Linear warm-up to `peak_lr`, then cosine decay to `peak_lr * min_lr_ratio`."""
    import keras

    total = max(1, steps_per_epoch * epochs)
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), total - 1)
    if warmup <= 0:
        return keras.optimizers.schedules.CosineDecay(peak_lr, decay_steps=total,
                                                      alpha=min_lr_ratio)
    return keras.optimizers.schedules.CosineDecay(
        peak_lr / (warmup + 1), decay_steps=max(1, total - warmup), alpha=min_lr_ratio,
        warmup_target=peak_lr, warmup_steps=warmup)


def compile_for_phase(model: Any, cfg: TrainConfig, peak_lr: float, steps: int,
                      epochs: int) -> None:
    """A fresh AdamW + schedule and the configured loss (must be called after freezing)."""
    import keras

    optimizer = keras.optimizers.AdamW(
        learning_rate=make_schedule(peak_lr, steps, epochs, cfg.warmup_epochs, cfg.min_lr_ratio),
        weight_decay=cfg.weight_decay)
    # Decaying biases and BatchNorm/normalisation parameters only hurts.
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    if cfg.loss == "focal":
        loss = keras.losses.CategoricalFocalCrossentropy(
            alpha=1.0, gamma=cfg.focal_gamma, from_logits=True,
            label_smoothing=cfg.label_smoothing)
    else:
        loss = keras.losses.CategoricalCrossentropy(from_logits=True,
                                                    label_smoothing=cfg.label_smoothing)
    model.compile(optimizer=optimizer, loss=loss,
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
                  jit_compile=bool(cfg.jit_compile))


def trainable_count(model: Any) -> int:
    """The number of parameters the current phase trains."""
    return int(sum(int(np.prod(v.shape)) for v in model.trainable_weights))


def inference_fn(model: Any, size: int, meta_dim: int = 0) -> Any:
    """A traced softmax(model(x)) for the per-epoch validation (x = (image, metadata) when
    meta_dim > 0).

    A named function with autograph off (as Keras's own predict step): there is no Python
    control flow to convert, and autograph would otherwise read and re-parse the source.
    """
    import tensorflow as tf

    spec = tf.TensorSpec([None, size, size, 3], tf.float32)
    if meta_dim:
        def fused(x: Any, m: Any) -> Any:
            return tf.nn.softmax(model([x, m], training=False))

        traced = tf.function(fused, input_signature=[
            spec, tf.TensorSpec([None, meta_dim], tf.float32)], autograph=False)
        return lambda pair: traced(pair[0], pair[1])

    def probabilities(x: Any) -> Any:
        return tf.nn.softmax(model(x, training=False))

    return tf.function(probabilities, input_signature=[spec], autograph=False)
