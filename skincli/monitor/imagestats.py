"""What is logged about an image (also what the drift reference is computed from): cheap
colour and texture statistics, and a short random projection of the backbone embedding."""

from __future__ import annotations

import math
import threading

import numpy as np

from skincli.errors import SkinError

EMBEDDING_DIMS = 32
STAT_NAMES = ("mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "brightness",
              "saturation", "sharpness")


def image_stats(arr: np.ndarray) -> dict[str, float]:
    """Cheap colour/texture statistics of an RGB image (H, W, 3), uint8 (floats are rounded).

    Compute them on the model-input image (resized to the run's input size) so that they do
    not depend on the original resolution; the drift reference does exactly that.
    """
    a = np.asarray(arr)
    if a.ndim != 3 or a.shape[-1] != 3 or a.shape[0] < 3 or a.shape[1] < 3:
        raise SkinError(f"image_stats needs an RGB array of shape (H, W, 3), got {a.shape}")
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    planes = np.ascontiguousarray(np.moveaxis(a, -1, 0))  # (3, H, W): fast per-channel work
    n = planes[0].size
    # Means and standard deviations from 256-bin histograms: exact (no float32 cancellation
    # on flat images) and faster than float passes over the pixels.
    means, stds = [], []
    for c in range(3):
        hist = np.bincount(planes[c].ravel(), minlength=256).astype(np.float64)
        m = float(hist @ _LEVELS) / n
        var = float(hist @ _LEVELS_SQ) / n - m * m
        means.append(m)
        stds.append(math.sqrt(max(var, 0.0)))
    r, g, b = (planes[c].astype(np.float32) for c in range(3))
    # Rec. 601 luma: what "brightness" means for a camera; a colour cast moves it less than
    # it moves the channel means, which is why both are logged.
    gray = r * np.float32(0.299) + g * np.float32(0.587) + b * np.float32(0.114)
    hi = np.maximum(np.maximum(planes[0], planes[1]), planes[2])
    lo = np.minimum(np.minimum(planes[0], planes[1]), planes[2])
    saturation = float(np.mean((hi - lo).astype(np.float32) / np.maximum(hi, 1)))
    # Variance of the 4-neighbour Laplacian: falls when the image is blurred or out of focus.
    lap = (4.0 * gray[1:-1, 1:-1] - gray[:-2, 1:-1] - gray[2:, 1:-1]
           - gray[1:-1, :-2] - gray[1:-1, 2:])
    return {
        "mean_r": means[0], "mean_g": means[1], "mean_b": means[2],
        "std_r": stds[0], "std_g": stds[1], "std_b": stds[2],
        "brightness": 0.299 * means[0] + 0.587 * means[1] + 0.114 * means[2],
        "saturation": saturation,
        "sharpness": float(lap.var()),
    }


_LEVELS = np.arange(256, dtype=np.float64)
_LEVELS_SQ = _LEVELS * _LEVELS
_PROJECTIONS: dict[tuple[int, int], np.ndarray] = {}
_PROJ_LOCK = threading.Lock()


def _projection(in_dims: int, dims: int) -> np.ndarray:
    key = (in_dims, dims)
    with _PROJ_LOCK:
        if key not in _PROJECTIONS:
            # Fixed seed: the same embedding always maps to the same summary, across processes
            # and machines, so the reference and the logged rows are comparable.
            rng = np.random.default_rng(20240611 + in_dims * 1009 + dims)
            _PROJECTIONS[key] = (rng.standard_normal((in_dims, dims)) / math.sqrt(dims)
                                 ).astype(np.float64)
        return _PROJECTIONS[key]


def summarize_embedding(vec: np.ndarray, dims: int = EMBEDDING_DIMS) -> list[float]:
    """A deterministic `dims`-number random projection of a backbone embedding.

    A Gaussian random projection keeps distances between embeddings approximately (Johnson-
    Lindenstrauss), which is what a two-sample test needs, while 32 numbers cannot rebuild the
    image.
    """
    v = np.asarray(vec, dtype=np.float64).ravel()
    if v.size == 0:
        raise SkinError("summarize_embedding got an empty embedding")
    out = v @ _projection(v.size, dims)
    return [round(float(x), 6) for x in out]
