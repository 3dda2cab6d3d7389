"""A Grad-CAM heat map as a DICOM Secondary Capture, labelled not for diagnosis.

Viewers such as OHIF show nothing for a classification-only SR; this gives them a picture: the
source image with the model's Grad-CAM heat map blended over it, stored in the same study as its
own series. Series Description, Derivation Description and Image Comments all say it is an AI
visualisation, not for diagnosis; Burned In Annotation is NO (no text is drawn on the pixels).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from skincli.clinical.sr import DEFAULT_DEVICE

if TYPE_CHECKING:  # annotations only: loading stays where it was
    from skincli.predictor import Predictor

SC_SERIES_NUMBER = 9902
NOT_FOR_DIAGNOSIS = "AI heat map (Grad-CAM) - NOT FOR DIAGNOSIS"


def overlays(predictor: Predictor, images: list[Any], infer: Any) -> list[np.ndarray]:
    """The heat map of each image's predicted class over the image (RGB uint8, image size)."""
    from skincli.explain import explain, overlay

    rgb = [np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images]
    batch = np.stack([predictor.preprocess(im) for im in images])
    cams = infer(lambda: explain(predictor, batch))
    return [overlay(img, cam.heatmap) for img, cam in zip(rgb, cams)]


def build(source: Any, pixels: np.ndarray, label: str, *, series_uid: str,
          sop_instance_uid: str, device: dict[str, str] | None = None,
          instance_number: int = 1) -> Any:
    """The Secondary Capture for one source image (a pydicom Dataset of the same study)."""
    import highdicom as hd

    from skincli.clinical.sr import evidence_header

    dev = {**DEFAULT_DEVICE, **(device or {})}
    ref = evidence_header(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref, pixel_array=np.ascontiguousarray(pixels, dtype=np.uint8),
        photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
        patient_orientation=("L", "F"),  # replaced below: highdicom insists on a value
        series_instance_uid=series_uid, series_number=SC_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid, instance_number=instance_number,
        manufacturer=dev["manufacturer"])
    # A dermoscopic photograph has no known orientation: keep the source's, else leave the
    # Type 2C attribute empty (unknown) rather than claim one.
    sc.PatientOrientation = source.get("PatientOrientation", "") or ""
    sc.Laterality = source.get("Laterality", "") or ""  # Type 2C: the source's, or unknown
    sc.SeriesDescription = NOT_FOR_DIAGNOSIS
    sc.ImageComments = (f"{NOT_FOR_DIAGNOSIS}. Regions that drove the model's answer "
                        f"'{label}'; decision support only.")[:10240]
    sc.DerivationDescription = "Grad-CAM heat map blended over the source image"
    sc.BurnedInAnnotation = "NO"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    return sc
