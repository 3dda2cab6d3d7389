"""DICOM in: decode one dermoscopic / VL photographic image, keep no patient data.

Accepted: single-frame Dermoscopic Photography Image Storage (modality DMS) and VL
Photographic Image Storage objects (other single-frame image objects are decoded too), colour
(RGB, YBR) or monochrome, in the uncompressed transfer syntaxes or JPEG baseline.

Privacy: no attribute value ever goes into an error message or a return value except the
technical ones (SOP class, transfer syntax, photometric interpretation, frame count, size)
and the study / series / SOP instance UIDs, which results may reference. The patient module
(name, id, birth date...) is never read into anything this module returns.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from skincli.errors import ImageError

MAGIC_OFFSET, MAGIC = 128, b"DICM"
# pydicom's warnings about malformed elements can quote their values (a patient's name):
# keep them out of the logs.
logging.getLogger("pydicom").setLevel(logging.ERROR)
DICOM_SUFFIXES = (".dcm", ".dicom")

# SOP classes (DICOM PS3.4 Annex B).
DERMOSCOPIC_PHOTOGRAPHY = "1.2.840.10008.5.1.4.1.1.77.1.7"
VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
SOP_NAMES = {DERMOSCOPIC_PHOTOGRAPHY: "Dermoscopic Photography Image Storage",
             VL_PHOTOGRAPHIC: "VL Photographic Image Storage",
             ENCAPSULATED_PDF: "Encapsulated PDF Storage"}

# Transfer syntaxes we decode (PS3.5 Annex A): uncompressed, and JPEG baseline via pylibjpeg.
TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline (Process 1)",
}
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422")
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


@dataclass(frozen=True)
class DicomRef:
    """What outputs may say about the source instance: UIDs and technical facts only."""

    study_uid: str | None
    series_uid: str | None
    sop_instance_uid: str | None
    sop_class_uid: str | None
    modality: str | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (no patient data: there is none in this object)."""
        return {"study_instance_uid": self.study_uid, "series_instance_uid": self.series_uid,
                "sop_instance_uid": self.sop_instance_uid, "sop_class_uid": self.sop_class_uid,
                "sop_class": SOP_NAMES.get(self.sop_class_uid or "", None),
                "modality": self.modality}


def is_dicom(raw: bytes, name: str | None = None) -> bool:
    """True for a DICOM Part 10 file ('DICM' at byte 128) or a file named *.dcm."""
    if raw[MAGIC_OFFSET:MAGIC_OFFSET + 4] == MAGIC:
        return True
    # A damaged marker but the file meta group (0002,xxxx) right after it: a corrupt DICOM,
    # worth saying so instead of "not an image".
    if raw[MAGIC_OFFSET + 4:MAGIC_OFFSET + 6] == b"\x02\x00" and raw[
            MAGIC_OFFSET + 8:MAGIC_OFFSET + 10] in (b"UL", b"OB", b"UI"):
        return True
    return bool(name) and str(name).lower().endswith(DICOM_SUFFIXES)


def _error(message: str, code: str, hint: str | None = None) -> ImageError:
    return ImageError(message, code=code, hint=hint)


def _read(raw: bytes, name: str, pixels: bool) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    if raw[MAGIC_OFFSET:MAGIC_OFFSET + 4] != MAGIC:
        raise _error(f"{name}: not a DICOM Part 10 file (no 'DICM' marker at byte 128: "
                     "corrupt or missing preamble)", "corrupt",
                     hint="Export the image from the archive as a DICOM Part 10 file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=not pixels)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError,
            AttributeError, NotImplementedError) as exc:
        # The library's message can quote element values; say only what kind of failure.
        raise _error(f"{name}: corrupt DICOM file ({type(exc).__name__} while parsing)",
                     "corrupt") from None


def _uid(ds: Any, keyword: str) -> str | None:
    value = ds.get(keyword)
    return str(value) if value else None


def instance_ref(ds: Any) -> DicomRef:
    """The UIDs and modality of a parsed dataset."""
    sop_class = _uid(ds, "SOPClassUID") or _uid(ds.file_meta, "MediaStorageSOPClassUID")
    return DicomRef(_uid(ds, "StudyInstanceUID"), _uid(ds, "SeriesInstanceUID"),
                    _uid(ds, "SOPInstanceUID"), sop_class,
                    str(ds.get("Modality")) if ds.get("Modality") else None)


def read_ref(raw: bytes, name: str = "upload") -> DicomRef:
    """Only the UIDs and modality (pixel data not decoded); raises ImageError when corrupt."""
    return instance_ref(_read(raw, name, pixels=False))


def decode(raw: bytes, name: str = "upload", max_pixels: int | None = None) -> Image.Image:
    """Decode the one image of a DICOM file into an RGB PIL image (ImageError when not usable)."""
    ds = _read(raw, name, pixels=True)
    sop_class = instance_ref(ds).sop_class_uid or ""
    if sop_class == ENCAPSULATED_PDF or "EncapsulatedDocument" in ds:
        raise _error(f"{name}: DICOM Encapsulated PDF (a document), not an image",
                     "unsupported_type", hint="Send a DICOM image (dermoscopic or VL "
                     "photographic) or a JPEG/PNG")
    if "PixelData" not in ds:
        what = SOP_NAMES.get(sop_class, f"SOP class {sop_class or 'unknown'}")
        raise _error(f"{name}: DICOM object holds no image (no Pixel Data, or the file is "
                     f"truncated; {what})",
                     "invalid_image", hint="Send a DICOM image object")
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if syntax not in TRANSFER_SYNTAXES:
        raise _error(f"{name}: DICOM transfer syntax {syntax or 'missing'} is not supported",
                     "unsupported_type", hint="Use an uncompressed or JPEG baseline "
                     "(1.2.840.10008.1.2.4.50) transfer syntax")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames != 1:
        raise _error(f"{name}: multi-frame DICOM ({frames} frames); one image per request",
                     "unsupported_type", hint="Send each frame as its own image")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in COLOUR + MONOCHROME:
        raise _error(f"{name}: DICOM photometric interpretation {photometric or 'missing'} "
                     "is not supported", "unsupported_type",
                     hint="Use RGB, YBR_FULL(_422) or MONOCHROME1/2")
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if max_pixels is not None and rows * cols > max_pixels:
        raise _error(f"{name}: {cols}x{rows} pixels is more than the limit of {max_pixels:,}",
                     "too_many_pixels", hint="Downscale the image first")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = np.asarray(ds.pixel_array)  # pydicom converts YBR to RGB by default
    except Exception as exc:  # a decoder failure: truncated pixel data, bad JPEG stream...
        raise _error(f"{name}: DICOM pixel data cannot be decoded ({type(exc).__name__})",
                     "corrupt") from None
    return Image.fromarray(_to_rgb8(arr, photometric), mode="RGB")


def _to_rgb8(arr: np.ndarray, photometric: str) -> np.ndarray:
    """Pixel array (H, W) or (H, W, 3), any bit depth -> uint8 RGB (H, W, 3)."""
    if arr.ndim == 2:
        a = arr.astype(np.float64)
        if arr.dtype != np.uint8:  # 12/16-bit monochrome: stretch its own range to 0..255
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) / max(hi - lo, 1e-9) * 255.0
        if photometric == "MONOCHROME1":  # 0 is white in MONOCHROME1
            a = 255.0 - a
        grey = np.clip(a, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 3:
        if arr.dtype != np.uint8:
            a = arr.astype(np.float64)
            arr = np.clip(a / max(float(a.max()), 1.0) * 255.0, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(arr)
    raise _error(f"DICOM pixel array of shape {arr.shape} is not one image", "unsupported_type")
