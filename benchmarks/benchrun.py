"""What the timing benchmarks share: a bench run folder and a generated JPEG payload.

Imported by predict_throughput.py and serve_latency.py (each run as a script from this folder).
"""

from __future__ import annotations

import io
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def make_bench_run(workdir: Path, arch: str = "efficientnet_lite0") -> Path:
    """A run folder for timing: registry model, untrained head, model.tflite as training
    writes it (parity checked on synthetic images)."""
    from skincli.engines.convert import RECORD_KEY, synthetic_images, write_run_tflite
    from skincli.models.registry import build_model, get_arch
    from skincli.runs import MODEL_FILE, RunInfo, save_run_info

    spec = get_arch(arch)
    built = build_model(arch, 9, weights="imagenet" if spec.weights_available() else "none")
    run_dir = workdir / "runs" / f"bench-{arch}"
    run_dir.mkdir(parents=True)
    built.model.save(run_dir / MODEL_FILE)
    record = write_run_tflite(run_dir, built.model, synthetic_images(16, built.input_size),
                              images_note="16 synthetic images", warn=print)
    save_run_info(run_dir, RunInfo(
        name=f"bench-{arch}", arch=arch, classes=[f"class{i}" for i in range(9)],
        input_size=built.input_size, preprocessing=built.preprocessing,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        extra={RECORD_KEY: record}))
    return run_dir


def make_payload(size: int, seed: int = 0) -> bytes:
    """A skin-coloured JPEG with a darker blob, `size` x `size` pixels."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    base = np.clip(np.array([190, 140, 120]) + rng.normal(0, 12, (size, size, 3)), 0, 255)
    img = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.ellipse((size * 0.3, size * 0.25, size * 0.7, size * 0.75), fill=(95, 60, 50))
    img = img.filter(ImageFilter.GaussianBlur(2))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()
