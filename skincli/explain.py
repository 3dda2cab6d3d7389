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

import io
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


# --- the one rendering: `skin predict --explain`, /v1/explain and the clinician page -----------

OVERLAY_MAX_SIDE = 448  # the picture's longer side at most (never enlarged)
ALPHA = 0.45  # the colour's weight where the map is hottest


@dataclass
class Explanation:
    """A heat map for one class and its rendering as PNGs."""

    target: int
    heatmap: np.ndarray  # (h, w) float32 in 0..1, in model-input coordinates
    overlay_png: bytes
    heatmap_png: bytes


def decode_side(input_size: int) -> int:
    """The `target` for `skincli.imageio.open_image` when an overlay is drawn: one decode that
    serves both the model input and the picture, so every caller starts from the same pixels."""
    return max(int(input_size), OVERLAY_MAX_SIDE)


def display_image(img: Image.Image | np.ndarray, max_side: int = OVERLAY_MAX_SIDE) -> np.ndarray:
    """The image the heat map is drawn on: downscaled to `max_side` (keeps its aspect ratio)."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(np.asarray(img, dtype=np.uint8))
    w, h = img.size
    scale = min(1.0, max_side / max(w, h, 1))
    if scale < 1.0:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _jet(values: np.ndarray) -> np.ndarray:
    """A blue-cyan-yellow-red colour map for values in 0..1 -> uint8 RGB."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.concatenate([r, g, b], axis=-1) * 255).astype(np.uint8)


def overlay(image: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """The heat map blended over an RGB uint8 image, weighted by the heat: the image stays
    visible where the map is cold. The model sees the image squashed to a square, so the map
    is stretched back to the image's aspect ratio to line up."""
    img = np.asarray(image, dtype=np.float32)
    heat = resize_heatmap(heatmap, img.shape[0], img.shape[1])
    weight = (ALPHA * heat ** 0.5)[..., None]
    return (img * (1 - weight) + _jet(heat).astype(np.float32) * weight).round().astype(np.uint8)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def render(heatmap: np.ndarray, base: np.ndarray, target: int) -> Explanation:
    """The overlay and the coloured heat map as PNGs at the size of `base` (a display_image)."""
    h, w = base.shape[:2]
    return Explanation(target=target, heatmap=heatmap, overlay_png=_png(overlay(base, heatmap)),
                       heatmap_png=_png(_jet(resize_heatmap(heatmap, h, w))))


def save_overlay(path: str | os.PathLike[str], image: np.ndarray, cam: GradCam) -> Path:
    """Write a PNG atomically: the display image beside its overlay (the same overlay the API
    and the clinician page show)."""
    img = display_image(image)
    gap = np.full((img.shape[0], 4, 3), 255, np.uint8)
    side = np.concatenate([img, gap, overlay(img, cam.heatmap)], axis=1)
    with atomic_path(path) as tmp:
        Image.fromarray(side).save(tmp, format="PNG")
    return Path(path)
