"""Grad-CAM heat maps for /v1/explain (skincli.explain), rendered as PNGs over the upload."""

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


def heatmap_for(predictor: Any, image: np.ndarray, target: int | None) -> tuple[np.ndarray, int]:
    """(heat map (S, S) in 0..1, explained class) for one preprocessed image.

    The same Grad-CAM as `skin predict --explain`; the explainer is built once per loaded
    model and cached on it. Raises SkinError for a model Grad-CAM cannot explain.
    """
    from skincli.explain import GradCamExplainer, explain

    explainer = getattr(predictor, "_serve_gradcam", None)
    if explainer is None:
        explainer = GradCamExplainer(predictor.model)
        predictor._serve_gradcam = explainer
    cam = explain(predictor, image[None].astype(np.float32), target, explainer=explainer)[0]
    return np.asarray(cam.heatmap, np.float32), int(cam.class_index)


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
