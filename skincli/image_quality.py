"""Is there anything to classify? Image statistics that catch blank, uniform, tiny and
near-constant inputs before anyone reads a verdict on them.

The model answers every input with a confident-looking distribution, even a grey square; the
embedding-based out-of-distribution check does not flag such images reliably (their features
are unremarkable). A dermoscopic image always has texture: measured on the model-input image
(S x S x 3, 0..255), the largest per-channel spatial standard deviation of 976 isic9 images
(every other file of Train and Test) was at least 10.1 (1st percentile 13.3; none flagged),
while a uniform colour is 0, a JPEG of a uniform colour about 1, and a 1 x 1 (or any tiny) image
upscaled to the model's size is near 0 as well. Below `MIN_STD` the image is flagged: the
out-of-distribution warning and the uncertain verdict.
"""

from __future__ import annotations

import numpy as np

# Largest per-channel spatial standard deviation (grey levels) of an image that is flagged.
MIN_STD = 4.0
# An upload narrower or shorter than this (pixels) is flagged whatever its content.
MIN_SIDE = 8
MARK = "no lesion to classify"
# The start of every out-of-distribution warning (this module's and skincli.ood's).
OOD_WARNING = "does not look like a dermoscopic image"


def blank_reason(image: np.ndarray, original_size: tuple[int, int] | None = None) -> str | None:
    """Why this (H, W, 3) image has nothing to classify, or None if it has content."""
    if original_size is not None and min(original_size) < MIN_SIDE:
        w, h = original_size
        return f"the image is only {w}x{h} pixels"
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim != 3 or arr.size == 0:
        return "the image is empty"
    spread = float(arr.reshape(-1, arr.shape[-1]).std(axis=0).max())
    if spread < MIN_STD:
        return "the image is blank or a uniform colour" if spread < 0.5 else \
            "the image is nearly uniform"
    return None


def warning_for(reason: str) -> str:
    """The out-of-distribution warning for a flagged image."""
    return (f"{OOD_WARNING} ({MARK}: {reason}); the verdict is marked uncertain and should "
            "not be read")


def quality_warnings(batch: np.ndarray) -> list[list[str]]:
    """Per image of a model-input batch (N, S, S, 3): the warning, if it is flagged."""
    out: list[list[str]] = []
    for image in np.asarray(batch):
        reason = blank_reason(image)
        out.append([warning_for(reason)] if reason else [])
    return out


def is_flagged(warnings: list[str]) -> bool:
    """True if one of the warnings is this module's (the verdict must be uncertain)."""
    return any(MARK in w for w in warnings)
