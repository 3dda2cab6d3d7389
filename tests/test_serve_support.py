"""Shared helpers for the test_serve_* modules (no tests here)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CLASSES_A = ["melanoma", "nevus", "vascular lesion"]
CLASSES_B = ["basal cell carcinoma", "dermatofibroma"]


def image_bytes(size: tuple[int, int] = (40, 30), fmt: str = "PNG", seed: int = 0) -> bytes:
    """An RGB image (width, height) of smooth noise, encoded in memory."""
    rng = np.random.default_rng(seed)
    small = (rng.random((4, 4, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(small).resize(size, Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def make_runs(root: Path) -> Path:
    """runs/ with two tiny runs that differ in classes AND input size (so a mixed-up reload
    could not go unnoticed)."""
    from helpers_run import make_run

    runs = root / "runs"
    make_run(root, classes=CLASSES_A, input_size=32, name="alpha", runs_dir=runs,
             created="2026-01-01T00:00:00")
    make_run(root, classes=CLASSES_B, input_size=48, name="beta", runs_dir=runs,
             created="2026-01-02T00:00:00", seed=1)
    return runs


@contextmanager
def serving(runs: Path, run: str | None = "alpha", **settings: Any) -> Iterator[Any]:
    """A TestClient on a fresh app (lifespan started: model loaded and warm)."""
    from fastapi.testclient import TestClient

    from skincli.serve.app import create_app
    from skincli.serve.settings import Settings

    settings.setdefault("no_log", True)
    app = create_app(Settings(run=run, runs_dir=str(runs), **settings))
    with TestClient(app) as client:
        yield client


def upload(data: bytes, name: str = "lesion.png", ctype: str = "image/png") -> dict[str, Any]:
    """The `files=` argument for one image in field `file`."""
    return {"file": (name, data, ctype)}
