"""Safe image reading shared by the data layer, the predictor and the API.

Every image, whatever its file format or mode, comes out as an RGB uint8 array with EXIF
orientation applied; decompression bombs and corrupt files raise ImageError with a reason.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from skincli.errors import SkinError

# Refuse anything above this many pixels before decoding it (a 180x180 dermoscopy image is
# 32 400 pixels; clinical originals are up to ~6000x4000 = 24 MP).
DEFAULT_MAX_PIXELS = 50_000_000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".dcm")
# Formats we accept; checked from the bytes, not the file name or content type.
ALLOWED_FORMATS = {"JPEG", "PNG", "BMP", "TIFF", "WEBP", "MPO"}

ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(SkinError):
    """An image that cannot be used, with the reason (corrupt, too large, not an image)."""

    def __init__(self, message: str, *, code: str = "invalid_image", hint: str | None = None):
        self.code = code
        super().__init__(message, hint=hint)


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True if the file name has an image suffix we read (any case)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def open_image(source: str | os.PathLike[str] | bytes,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open, verify and fully decode an image; return an RGB PIL image (EXIF-rotated)."""
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
        from skincli.clinical import dicom  # DICOM ('DICM' at byte 128, or *.dcm): own decoder

        if dicom.is_dicom(raw, name):
            return dicom.decode(raw, name, max_pixels)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw))
            if img.format not in ALLOWED_FORMATS:
                raise ImageError(f"{name}: unsupported image format {img.format}",
                                 code="unsupported_type", hint="Use JPEG, PNG or BMP")
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(f"{name}: {w}x{h} pixels is more than the limit of "
                                 f"{max_pixels:,}", code="too_many_pixels",
                                 hint="Downscale the image first")
            img.load()
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
    return to_rgb(img)


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
