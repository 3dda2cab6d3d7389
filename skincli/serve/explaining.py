"""Grad-CAM heat maps for /v1/explain, rendered as a PNG overlay on the uploaded image.

Uses `skincli.explain` (the same maps as the command line) when it is installed; otherwise a compact
Grad-CAM over the run contract's model shape: layers before the nested "backbone", the
backbone's last feature map (the input of its final GlobalAveragePooling2D), then the layers
after it up to "logits".
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

OVERLAY_MAX_SIDE = 448
ALPHA = 0.45


@dataclass
class Explanation:
    """A heat map for one class and its rendering."""

    target: int
    heatmap: np.ndarray  # (h, w) float32 in 0..1, in model-input coordinates
    overlay_png: bytes
    heatmap_png: bytes


def _split_layers(model: Any) -> tuple[list[Any], Any, list[Any]]:
    """(layers before the backbone, the backbone, layers after it) of a chain-shaped model."""
    import keras

    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    names = [layer.name for layer in layers]
    if "backbone" not in names:
        raise ValueError("the model has no 'backbone' layer to explain")
    i = names.index("backbone")
    return layers[:i], layers[i], layers[i + 1:]


class GradCam:
    """Grad-CAM for one Keras model (built once per loaded model, reused per request)."""

    def __init__(self, model: Any) -> None:
        import keras

        self.pre, backbone, self.post = _split_layers(model)
        inner = [layer for layer in backbone.layers
                 if not isinstance(layer, keras.layers.InputLayer)]
        self.pool = inner[-1]
        if not isinstance(self.pool, keras.layers.GlobalAveragePooling2D):
            raise ValueError("the backbone does not end with GlobalAveragePooling2D")
        self.features = keras.Model(backbone.inputs, self.pool.input, name="gradcam_features")

    def __call__(self, image: np.ndarray, target: int | None = None) -> tuple[np.ndarray, int]:
        """(heat map (h, w) in 0..1, target class) for one float32 (S, S, 3) image."""
        import tensorflow as tf

        x = tf.convert_to_tensor(image[None].astype(np.float32))
        for layer in self.pre:
            x = layer(x, training=False)
        with tf.GradientTape() as tape:
            feats = self.features(x, training=False)
            tape.watch(feats)
            z = self.pool(feats)
            for layer in self.post:
                z = layer(z, training=False)
            if target is None:
                target = int(tf.argmax(z[0]))
            score = z[:, target]
        grads = tape.gradient(score, feats)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(feats * weights, axis=-1))[0].numpy()
        top = float(cam.max()) if cam.size else 0.0
        cam = cam / top if top > 0 else np.zeros_like(cam)
        return cam.astype(np.float32), int(target)


def heatmap_for(predictor: Any, image: np.ndarray, target: int | None) -> tuple[np.ndarray, int]:
    """Grad-CAM via skincli.explain (same maps as the CLI) when available, else the built-in
    one; the explainer is built once per loaded model and cached on it."""
    cached = getattr(predictor, "_serve_gradcam", None)
    if cached is None:
        try:
            from skincli.explain import GradCamExplainer

            cached = ("shared", GradCamExplainer(predictor.model))
        except ImportError:
            cached = ("builtin", GradCam(predictor.model))
        predictor._serve_gradcam = cached
    kind, impl = cached
    if kind == "shared":
        from skincli.explain import explain

        cam = explain(predictor, image[None].astype(np.float32), target, explainer=impl)[0]
        return np.asarray(cam.heatmap, np.float32), int(cam.class_index)
    return impl(image, target)


def _jet(values: np.ndarray) -> np.ndarray:
    """A blue-cyan-yellow-red colour map for values in 0..1 -> uint8 RGB."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.concatenate([r, g, b], axis=-1) * 255).astype(np.uint8)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def display_image(img: Image.Image, max_side: int = OVERLAY_MAX_SIDE) -> np.ndarray:
    """The uploaded image downscaled for display (keeps its aspect ratio)."""
    w, h = img.size
    scale = min(1.0, max_side / max(w, h, 1))
    if scale < 1.0:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def render(cam: np.ndarray, base: np.ndarray, target: int) -> Explanation:
    """Blend the heat map over the display image (the model sees the image squashed to a
    square, so stretching the map back to the image's aspect ratio lines them up)."""
    h, w = base.shape[:2]
    resized = np.asarray(Image.fromarray(cam.astype(np.float32), mode="F").resize(
        (w, h), Image.BILINEAR), dtype=np.float32)
    colours = _jet(resized).astype(np.float32)
    weight = (ALPHA * np.clip(resized, 0, 1) ** 0.5)[..., None]  # faint where the map is cold
    overlay = (base.astype(np.float32) * (1 - weight) + colours * weight).round()
    return Explanation(target=target, heatmap=cam, overlay_png=_png(overlay.astype(np.uint8)),
                       heatmap_png=_png(_jet(resized)))
