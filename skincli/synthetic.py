"""Synthetic lesion-like images for the demo and for tests: clearly labelled as synthetic.

Each class gets its own colour, shape, border and texture so a small model can learn it in a
minute; nothing here resembles real patient data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# (lesion colour RGB, ellipse aspect, border irregularity, dots) per synthetic class.
_STYLES: dict[str, tuple[tuple[int, int, int], float, float, int]] = {
    "synthetic-nevus": ((120, 72, 50), 1.0, 0.02, 0),
    "synthetic-melanoma": ((45, 30, 35), 1.3, 0.25, 12),
    "synthetic-keratosis": ((150, 120, 80), 1.6, 0.10, 30),
    "synthetic-vascular": ((170, 40, 60), 1.1, 0.05, 0),
}
SYNTHETIC_NOTE = (
    "SYNTHETIC IMAGES made by `skin demo` for demonstration only.\n"
    "They are drawn shapes, not photographs of skin, and say nothing about real lesions.\n"
)


def synthetic_classes() -> list[str]:
    """The synthetic class names."""
    return list(_STYLES)


def draw_lesion(style: str, rng: np.random.Generator, size: int = 96) -> Image.Image:
    """Draw one lesion-like image of the given synthetic class."""
    colour, aspect, irregular, dots = _STYLES[style]
    skin = np.array([225, 180, 150]) + rng.normal(0, 12, 3)
    img = np.ones((size, size, 3)) * skin + rng.normal(0, 6, (size, size, 3))
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    cx, cy = size / 2 + rng.normal(0, size * 0.05, 2)
    radius = size * rng.uniform(0.2, 0.32)
    angle = rng.uniform(0, 2 * np.pi)
    theta = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    r = radius * (1 + irregular * rng.normal(0, 1, theta.size))
    x, y = r * np.cos(theta) * aspect, r * np.sin(theta)
    xs = cx + x * np.cos(angle) - y * np.sin(angle)
    ys = cy + x * np.sin(angle) + y * np.cos(angle)
    fill = tuple(int(np.clip(c + rng.normal(0, 10), 0, 255)) for c in colour)
    draw.polygon(list(zip(xs.tolist(), ys.tolist())), fill=fill)
    for _ in range(dots):
        dx, dy = rng.normal(0, radius * 0.5, 2)
        d = rng.uniform(1, 3)
        draw.ellipse([cx + dx - d, cy + dy - d, cx + dx + d, cy + dy + d], fill=(20, 15, 20))
    return canvas.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.5, 1.5)))


def make_synthetic_dataset(root: str | Path, counts: dict[str, int] | None = None,
                           size: int = 96, seed: int = 0) -> Path:
    """Write a folder-of-class-folders data set of synthetic lesions; return its root.

    Only images go inside `root` (a stray file there would show up in `skin eda`); callers
    put SYNTHETIC_NOTE beside it.
    """
    root = Path(root)
    counts = counts or {"synthetic-nevus": 60, "synthetic-melanoma": 40,
                        "synthetic-keratosis": 30, "synthetic-vascular": 20}
    rng = np.random.default_rng(seed)
    for style, n in counts.items():
        folder = root / style
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            draw_lesion(style, rng, size).save(folder / f"{style}_{i:04d}.jpg", quality=92)
    return root
