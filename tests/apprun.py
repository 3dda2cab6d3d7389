"""A tiny trained run for the app-export tests, and generated images to classify.

The run tells 'patch in the top-left quadrant' (melanoma) from 'no patch' (nevus), with a real
split on disk (so triage and the export's agreement are fitted and measured on files).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers_run import make_run, quadrant_images, train_quadrant_model
from PIL import Image

CLASSES = ("nevus", "melanoma")  # model output order: label 1 = the patch
SIZES = ((64, 64), (80, 60), (33, 47), (32, 32))  # (width, height): shrink, stretch, as is


def _write(images: np.ndarray, labels: np.ndarray, folder: Path, part: str
           ) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for i, (image, y) in enumerate(zip(images, labels)):
        path = folder / CLASSES[y] / f"{part}{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.astype(np.uint8)).save(path)
        out.setdefault(CLASSES[y], []).append(path)
    return out


def make_trained_run(root: Path, name: str = "tiny") -> Path:
    """runs/<name>: trained, temperature 1.5, uncertain threshold 0.6; return the runs folder."""
    model, _, _ = train_quadrant_model(32)
    files = {part: _write(*quadrant_images(n, 32, seed), root / "data", part)
             for part, seed, n in (("train", 1, 8), ("val", 2, 40), ("test", 3, 40))}
    make_run(root, classes=CLASSES, split_files=files, temperature=1.5,
             uncertain_threshold=0.6, model=model, name=name)
    return root / "runs"


def generated_images(folder: Path, n: int = 8, seed: int = 9) -> list[Path]:
    """PNG files of several sizes (not the run's), half with the patch."""
    images, _ = quadrant_images(n, 64, seed)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"generated{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.astype(np.uint8)).resize(SIZES[i % len(SIZES)],
                                                       Image.BICUBIC).save(path)
        paths.append(path)
    return paths
