"""Tiny synthetic images for tests, written into a temporary folder.

Shared by several test modules; keep the function signatures stable.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# Distinct base colours so classes differ visibly (and in colour statistics).
PALETTE = [
    (200, 60, 60), (60, 160, 70), (70, 90, 200), (210, 170, 60),
    (150, 80, 170), (60, 170, 170), (120, 120, 120), (230, 120, 30),
]

_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}


def make_image(path: str | Path, color: tuple[int, int, int] = (180, 120, 100),
               size: tuple[int, int] = (32, 32), seed: int = 0) -> Path:
    """Write an RGB image of `size` (width, height): `color` plus seeded noise and a dark blob.

    Different seeds give different bytes and clearly different perceptual hashes;
    the format follows the suffix (.jpg/.jpeg/.png/.bmp, any case).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    # Coarse random structure (upsampled 4x4 noise) so perceptual hashes differ by seed.
    coarse = rng.normal(0, 40, size=(4, 4, 1))
    big = np.kron(coarse, np.ones((h // 4 + 1, w // 4 + 1, 1)))[:h, :w]
    arr = np.asarray(color, dtype=np.float64)[None, None, :] + big
    arr += rng.normal(0, 8, size=(h, w, 3))
    # A dark "lesion" at a seeded position.
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < (min(w, h) * 0.2) ** 2
    arr[mask] *= 0.4
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB")
    fmt = _FORMATS.get(path.suffix.lower(), "PNG")
    img.save(path, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return path


def make_class_folders(root: str | Path, counts: dict[str, int], size: tuple[int, int] = (32, 32),
                       suffix: str = ".jpg", seed: int = 0) -> dict[str, list[Path]]:
    """Create root/<class>/img_XXX<suffix> with counts[class] distinct images per class."""
    root = Path(root)
    made: dict[str, list[Path]] = {}
    n = seed * 100_000
    for i, (name, count) in enumerate(counts.items()):
        color = PALETTE[i % len(PALETTE)]
        made[name] = []
        for j in range(count):
            made[name].append(make_image(root / name / f"img_{j:03d}{suffix}", color=color,
                                         size=size, seed=n))
            n += 1
    return made


def make_truncated_jpeg(path: str | Path, seed: int = 0) -> Path:
    """Write a JPEG cut off halfway through its data."""
    path = Path(path)
    make_image(path, size=(64, 64), seed=seed)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def make_fake_jpeg(path: str | Path) -> Path:
    """Write a text file named like a JPEG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not an image\n")
    return path


def make_empty_file(path: str | Path) -> Path:
    """Write a 0-byte file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def make_png_bomb(path: str | Path, width: int = 30_000, height: int = 30_000) -> Path:
    """Write a tiny PNG whose header claims width x height pixels (a decompression bomb)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    # One compressed row of zeros is enough: the reader must refuse before decoding.
    idat = zlib.compress(b"\x00" * (width + 1))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))
    return path
