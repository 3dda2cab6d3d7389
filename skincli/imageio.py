"""Safe image reading shared by the data layer, the predictor and the API.

Every image, whatever its file format or mode, comes out as an RGB uint8 array with EXIF
orientation applied; decompression bombs and corrupt files raise ImageError with a reason.

A caller that only needs a small image (the API: the model's input side) passes `target`:
JPEGs are then decoded at the DCT scale (1/2, 1/4, 1/8) that still gives at least twice the
target a side, and any other format is reduced in its own mode right after decoding, before the
RGB conversion. A `DecodeBudget` bounds the pixels being decoded at once across threads: a
decode waits briefly for room, then fails with code "overloaded" (the API answers 503).
"""

from __future__ import annotations

import io
import os
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from skincli.clinical import dicom  # DICOM ('DICM' at byte 128, or *.dcm): own decoder
from skincli.errors import ImageError

# Refuse anything above this many pixels before decoding it (a 180x180 dermoscopy image is
# 32 400 pixels; clinical originals are up to ~6000x4000 = 24 MP).
DEFAULT_MAX_PIXELS = 50_000_000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".dcm")
# Formats we accept; checked from the bytes, not the file name or content type.
ALLOWED_FORMATS = {"JPEG", "PNG", "BMP", "TIFF", "WEBP", "MPO"}
# What a person is told is accepted (MPO is a JPEG variant).
ACCEPTED_TEXT = "JPEG, PNG, BMP, TIFF or WebP"
# Formats whose decoder can scale while decoding (Image.draft).
_DRAFT_FORMATS = {"JPEG", "MPO"}

ImageFile.LOAD_TRUNCATED_IMAGES = False


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True if the file name has an image suffix we read (any case)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


class DecodeBudget:
    """A bound on the pixels being decoded at once, shared by every thread that decodes.

    A decoded pixel costs a few bytes at its peak (the decoder's buffer in the file's own mode
    plus the RGB copy), so this bounds the memory that decoding can take whatever the uploads.
    """

    def __init__(self, pixels: int, wait_s: float = 2.0) -> None:
        self.capacity = max(1, int(pixels))
        self.wait_s = max(0.0, float(wait_s))
        self._used = 0
        self._cond = threading.Condition()

    @property
    def in_use(self) -> int:
        """Pixels being decoded right now."""
        return self._used

    @contextmanager
    def hold(self, pixels: int, name: str = "upload") -> Iterator[None]:
        """Reserve `pixels` for one decode; wait up to wait_s, then raise ImageError."""
        cost = min(max(1, int(pixels)), self.capacity)  # one huge image may use it all, alone
        end = time.monotonic() + self.wait_s
        with self._cond:
            while self._used + cost > self.capacity:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    raise ImageError(f"{name}: the server is busy decoding other large images",
                                     code="overloaded", hint="Retry shortly, or send a "
                                     "smaller image (the model needs only a few hundred pixels)")
                self._cond.wait(remaining)
            self._used += cost
        try:
            yield
        finally:
            with self._cond:
                self._used -= cost
                idle = self._used == 0
                self._cond.notify_all()
            if idle and cost >= _TRIM_PIXELS:
                _trim_heap()


# After a large decode, hand freed heap pages back to the system: glibc keeps them in the
# decoding thread's arena otherwise, and a burst of large uploads would leave RSS high for good.
_TRIM_PIXELS = 4_000_000


def _trim_heap() -> None:
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


def _reduce(img: Image.Image, target: int) -> Image.Image:
    """Shrink a decoded image by an integer factor (box filter) while it keeps >= 2 x target a
    side, in its own mode (1 byte a pixel for L/1/P) before the RGB conversion."""
    factor = min(img.width, img.height) // (2 * target)
    if factor < 2:
        return img
    if img.mode in ("1", "P"):  # Image.reduce needs a continuous-tone mode
        img = to_rgb(img) if img.mode == "P" else img.convert("L")
    try:
        return img.reduce(factor)
    except ValueError:  # a mode reduce() does not support: convert first
        return to_rgb(img).reduce(factor)


def open_image(source: str | os.PathLike[str] | bytes,
               max_pixels: int = DEFAULT_MAX_PIXELS, *, target: int | None = None,
               budget: DecodeBudget | None = None) -> Image.Image:
    """Open, verify and decode an image; return an RGB PIL image (EXIF-rotated).

    With `target`, the image may come out smaller than the file (never under 2 x target a
    side); its `info["original_size"]` keeps the file's (width, height). With `budget`, the
    decode holds its pixels in the budget while it runs.
    """
    name = "upload" if isinstance(source, bytes) else str(source)
    try:
        if isinstance(source, bytes):
            if not source:
                raise ImageError(f"{name}: empty file (0 bytes)", code="empty")
            raw = source
        else:
            raw = Path(source).read_bytes()
            if not raw:
                raise ImageError(f"{name}: empty file (0 bytes)", code="empty")
        if dicom.is_dicom(raw, name):
            return dicom.decode(raw, name, max_pixels)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw))
            if img.format not in ALLOWED_FORMATS:
                raise ImageError(f"{name}: unsupported image format {img.format}; accepted: "
                                 f"{ACCEPTED_TEXT}", code="unsupported_type",
                                 hint=f"Convert it to {ACCEPTED_TEXT}")
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(f"{name}: {w}x{h} pixels is more than the limit of "
                                 f"{max_pixels:,}", code="too_many_pixels",
                                 hint="Downscale the image first")
            if target is not None and img.format in _DRAFT_FORMATS:
                # DCT scaling: the decoder itself produces the small image (>= requested size).
                img.draft(img.mode if img.mode in ("RGB", "L") else None,
                          (2 * target, 2 * target))
            dw, dh = img.size
            with budget.hold(dw * dh, name) if budget is not None else _nothing():
                img.load()
                if target is not None:
                    img = _reduce(img, target)
                rgb = to_rgb(img)
            rgb.info["original_size"] = (w, h)
            return rgb
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name}: refused as a decompression bomb ({exc})",
                         code="too_many_pixels") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not an image file (cannot identify its format)",
                         code="unsupported_type") from exc
    except FileNotFoundError as exc:
        raise ImageError(f"{name}: file not found", code="not_found") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: corrupt or truncated image ({exc})", code="corrupt") from exc


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def to_rgb(img: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert any mode (RGBA, P, L, I;16, CMYK...) to RGB."""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block should not make a good image unusable
        pass
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() if arr.size and arr.max() > 255 else 255.0
        arr = np.clip(arr / max(top, 1e-9) * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_rgb(source: str | os.PathLike[str] | bytes,
             max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image as an RGB uint8 array of shape (H, W, 3)."""
    return np.asarray(open_image(source, max_pixels=max_pixels), dtype=np.uint8)


def resize_rgb(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB uint8 array to size x size with bilinear filtering (as training does)."""
    if arr.shape[0] == size and arr.shape[1] == size:
        return arr
    img = Image.fromarray(arr).resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _read_one(path: str | os.PathLike[str], size: int, max_pixels: int
              ) -> np.ndarray | ImageError:
    try:
        return resize_rgb(load_rgb(path, max_pixels=max_pixels), size)
    except ImageError as exc:
        return exc
    except OSError as exc:  # a folder given as a file, a permission problem...
        return ImageError(f"{path}: cannot read ({exc.strerror or exc})", code="unreadable")


def read_images(paths: Sequence[str | os.PathLike[str]], size: int,
                max_pixels: int = DEFAULT_MAX_PIXELS, workers: int | None = None
                ) -> list[np.ndarray | ImageError]:
    """Read and resize files to (size, size, 3) uint8, in order; errors are returned, not raised."""
    workers = workers or min(4, os.cpu_count() or 1)
    if workers <= 1 or len(paths) <= 1:
        return [_read_one(p, size, max_pixels) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: _read_one(p, size, max_pixels), paths))
