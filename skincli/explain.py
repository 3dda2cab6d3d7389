"""Grad-CAM heat maps: where in the image the evidence for a class lies.

Works for every registry architecture, including nested backbones. Keras 3 cannot build one
model from the outer input to a tensor inside a nested functional model, so the model is cut
into three graphs that share its layers and weights:

    pre   : outer input -> the backbone's input (normalisation layers; may be empty)
    inner : backbone input -> [last 4-D feature map, backbone output]
    head  : backbone output -> logits (pooling if outside the backbone, dropout, Dense)

and the three are chained under one GradientTape. A model with no nested backbone is explained
from its own last 4-D feature map. The chain is checked against the model's own logits once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from skincli.calibration import softmax
from skincli.errors import SkinError
from skincli.fsutil import atomic_path
from skincli.models.graph import find_backbone, outer_node
from skincli.predictor import Predictor


@dataclass
class GradCam:
    """A heat map (H, W) in 0..1 over the model-input image, for one class."""

    heatmap: np.ndarray
    class_index: int
    class_name: str
    probability: float
    layer: str  # the feature map that was explained


def _last_feature_layer(model: Any) -> Any:
    """The last layer whose output is a 4-D map with more than one spatial position."""
    import keras

    for layer in reversed(model.layers):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if len(shape) == 4 and ((shape[1] or 2) > 1 or (shape[2] or 2) > 1):
            return layer
    return None


class GradCamExplainer:
    """Build the Grad-CAM graphs for a model once; explain many images."""

    def __init__(self, model: Any) -> None:
        import keras

        self.model = model
        self.pre: Any = None
        self.head: Any = None
        backbone = find_backbone(model)
        node = outer_node(backbone, model) if backbone is not None else None
        feature = _last_feature_layer(backbone) if node is not None else None
        if feature is not None:
            self.inner = keras.Model(backbone.inputs[0], [feature.output, backbone.outputs[0]])
            b_in, b_out = node.input_tensors[0], node.output_tensors[0]
            if b_in is not model.inputs[0]:
                self.pre = keras.Model(model.inputs[0], b_in)
            self.head = keras.Model(b_out, model.outputs[0])
        else:  # a flat model: its own last feature map
            feature = _last_feature_layer(model)
            if feature is None:
                raise SkinError(f"Model {model.name} has no convolutional feature map to explain",
                                hint="Grad-CAM needs a convolutional network")
            self.inner = keras.Model(model.inputs[0], [feature.output, model.outputs[0]])
        self.layer_name = feature.name
        self._checked = False

    def _forward(self, x: Any) -> tuple[Any, Any]:
        h = self.pre(x, training=False) if self.pre is not None else x
        fmap, out = self.inner(h, training=False)
        logits = self.head(out, training=False) if self.head is not None else out
        return fmap, logits

    def __call__(self, batch: np.ndarray, class_index: int | Sequence[int] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Heat maps (N, h, w) in 0..1 at feature-map resolution, and the logits (N, C).

        class_index: one class for all images, one per image, or None for each top class.
        """
        import tensorflow as tf

        x = tf.convert_to_tensor(np.asarray(batch, dtype=np.float32))
        n = int(x.shape[0])
        with tf.GradientTape() as tape:
            tape.watch(x)  # records every op even when the weights are frozen
            fmap, logits = self._forward(x)
            if class_index is None:
                idx = tf.argmax(logits, axis=-1)
            else:
                idx = tf.constant(np.broadcast_to(np.asarray(class_index, np.int64), (n,)))
            score = tf.gather(logits, idx, axis=1, batch_dims=1)
        grads = tape.gradient(score, fmap)
        if not self._checked:
            ref = np.asarray(self.model(x, training=False))
            if not np.allclose(ref, np.asarray(logits), rtol=1e-3, atol=1e-3):
                raise SkinError(f"Grad-CAM could not reproduce the logits of {self.model.name}",
                                hint="The model graph is not backbone -> head as expected")
            self._checked = True
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1)).numpy()
        top = cam.max(axis=(1, 2), keepdims=True)
        cam = np.divide(cam, top, out=np.zeros_like(cam), where=top > 0)
        return cam.astype(np.float32), np.asarray(logits)


def resize_heatmap(heatmap: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a 0..1 map to (height, width)."""
    img = Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F")
    return np.clip(np.asarray(img.resize((width, height), Image.BILINEAR)), 0.0, 1.0)


def explain(predictor: Predictor, images: np.ndarray,
            class_index: int | Sequence[int] | None = None,
            explainer: GradCamExplainer | None = None) -> list[GradCam]:
    """Grad-CAM for preprocessed images (N, S, S, 3) at input resolution, one per image."""
    explainer = explainer or GradCamExplainer(predictor.model)
    cams, logits = explainer(images, class_index)
    probs = softmax(logits, predictor.temperature)
    wanted = (None if class_index is None
              else np.broadcast_to(np.asarray(class_index, np.int64), (len(cams),)))
    out = []
    for i, cam in enumerate(cams):
        c = int(np.argmax(logits[i])) if wanted is None else int(wanted[i])
        out.append(GradCam(heatmap=resize_heatmap(cam, images.shape[1], images.shape[2]),
                           class_index=c, class_name=predictor.classes[c],
                           probability=float(probs[i, c]), layer=explainer.layer_name))
    return out


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a jet-coloured heat map over an RGB uint8 image (resized to the image)."""
    from matplotlib import colormaps

    img = np.asarray(image, dtype=np.float32)
    heat = resize_heatmap(heatmap, img.shape[0], img.shape[1])
    colour = colormaps["jet"](heat)[..., :3] * 255.0
    return np.clip((1 - alpha) * img + alpha * colour, 0, 255).astype(np.uint8)


def save_overlay(path: str | os.PathLike[str], image: np.ndarray, cam: GradCam,
                 alpha: float = 0.45) -> Path:
    """Write the overlay PNG atomically (the original image beside its heat map overlay)."""
    img = np.asarray(image, dtype=np.uint8)
    blended = overlay(img, cam.heatmap, alpha)
    gap = np.full((img.shape[0], 4, 3), 255, np.uint8)
    side = np.concatenate([img, gap, blended], axis=1)
    with atomic_path(path) as tmp:
        Image.fromarray(side).save(tmp, format="PNG")
    return Path(path)
