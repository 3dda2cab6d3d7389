"""DICOM files for tests, built with pydicom from pixel arrays or JPEG files (no tests here).

`make_dicom` writes a Part 10 file with a full patient module full of made-up identifying
values (PHI), so tests can check that none of them ever reaches a log or a store.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

DERMOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.7"
VL_PHOTO = "1.2.840.10008.5.1.4.1.1.77.1.4"
PDF = "1.2.840.10008.5.1.4.1.1.104.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

# Made-up identifying values: each is distinctive so a search of a log cannot miss it.
PHI = {
    "PatientName": "Zyxwvut^Qwertyuiop",
    "PatientID": "MRN-98765-PHI",
    "PatientBirthDate": "19010203",
    "PatientAddress": "42 Phistreet, Phitown",
    "OtherPatientIDs": "ALT-55555-PHI",
    "InstitutionName": "Phi General Hospital",
    "ReferringPhysicianName": "Doctor^Phiref",
    "AccessionNumber": "ACC-31337",
}
STUDY_UID = "1.2.826.0.1.3680043.8.498.1001"
SERIES_UID = "1.2.826.0.1.3680043.8.498.1002"
SOP_UID = "1.2.826.0.1.3680043.8.498.1003"


def make_dicom(path: str | Path | None, pixels: np.ndarray | None = None, *,
               jpeg: bytes | None = None, sop_class: str = DERMOSCOPIC,
               modality: str = "DMS", compress: bool = False, monochrome: bool = False,
               frames: int = 1, pdf: bytes | None = None,
               syntax_uid: str | None = None) -> bytes:
    """Build a DICOM file; return its bytes (and write them to `path` when given).

    `pixels` (H, W, 3) uint8 is stored uncompressed, or JPEG baseline with compress=True;
    `jpeg` stores an existing JPEG file's bytes as is (JPEG baseline, YBR_FULL_422);
    `pdf` makes an Encapsulated PDF object; pixels=None and jpeg=None: no Pixel Data.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(PDF if pdf is not None else sop_class)
    meta.MediaStorageSOPInstanceUID = UID(SOP_UID)
    ds = Dataset()
    ds.file_meta = meta
    for key, value in PHI.items():
        setattr(ds, key, value)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = SOP_UID
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = SERIES_UID
    ds.Modality = "DOC" if pdf is not None else modality
    ds.StudyDate = "20260101"
    syntax = EXPLICIT_LE
    if pdf is not None:
        ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
        ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    elif jpeg is not None or pixels is not None:
        if jpeg is not None or compress:
            if jpeg is None:
                buf = io.BytesIO()
                img = Image.fromarray(pixels[:, :, 0] if monochrome else pixels)
                img.save(buf, format="JPEG", quality=95)
                jpeg = buf.getvalue()
            img = Image.open(io.BytesIO(jpeg))
            w, h = img.size
            grey = img.mode == "L"
            ds.PixelData = encapsulate([jpeg] * frames)
            ds["PixelData"].VR = "OB"
            syntax = JPEG_BASELINE
            photometric = "MONOCHROME2" if grey else "YBR_FULL_422"
        else:
            h, w = pixels.shape[:2]
            grey = monochrome
            data = pixels[:, :, 0] if monochrome else pixels
            ds.PixelData = np.ascontiguousarray(np.stack([data] * frames)).tobytes()
            photometric = "MONOCHROME2" if grey else "RGB"
        ds.Rows, ds.Columns = h, w
        ds.SamplesPerPixel = 1 if grey else 3
        if not grey:
            ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        if frames > 1:
            ds.NumberOfFrames = frames
    meta.TransferSyntaxUID = UID(syntax_uid or syntax)  # syntax_uid: claim another syntax
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    raw = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(raw)
    return raw


def noise_rgb(width: int = 48, height: int = 40, seed: int = 0) -> np.ndarray:
    """Smooth RGB noise (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    small = (rng.random((4, 4, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))
