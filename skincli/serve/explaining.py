"""Grad-CAM heat maps for /v1/explain: one explainer per loaded model (skincli.explain draws)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: loading stays where it was
    from skincli.predictor import Predictor


def heatmap_for(predictor: Predictor, image: np.ndarray, target: int | None
                ) -> tuple[np.ndarray, int]:
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
