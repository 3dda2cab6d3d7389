"""Result to the PACS: a Comprehensive 3D SR with a TID 1500 Measurement Report root.

Per source image, one measurement group (TID 1501) holding the qualitative evaluation
"Finding" = the predicted class (SNOMED CT when the class has a verified concept, else the
project's own coding scheme), the probability as a measurement, the algorithm identification
(TID 4019: name, version) and the source image reference. IHE AI Results asks for the
Contributing Equipment (manufacturer, model, software version, device UID, purpose
"Processing Equipment") and VerificationFlag UNVERIFIED: both are set. The SR joins the source
study as a new series; highdicom copies the patient and study modules from the source image,
which is where they belong (the SR goes back into the same PACS study).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from skincli.clinical.snomed import concept

LOCAL_SCHEME = "99SKINCLI"  # private coding scheme designator for the project's class names
SR_SERIES_NUMBER = 9901
# (SCT 95324001 "Skin lesion") is what was assessed; (SCT 439401001 "Diagnosis") names the
# qualitative evaluation whose value is the predicted class.
_SKIN_LESION = ("95324001", "SCT", "Skin lesion")
_DIAGNOSIS = ("439401001", "SCT", "Diagnosis")
DEFAULT_DEVICE = {"manufacturer": "skincli", "model_name": "skincli classifier"}


# What the SR takes from a source image: the patient and study modules (Type 2 attributes the
# source leaves out are added empty, as DICOM allows) and the image's own UIDs.
_COPIED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
           "Modality", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
           "IssuerOfPatientID", "OtherPatientIDs", "StudyID", "StudyDate", "StudyTime",
           "ReferringPhysicianName", "AccessionNumber", "StudyDescription",
           "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation",
           "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "NumberOfFrames")
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate",
          "StudyTime", "ReferringPhysicianName", "AccessionNumber")


def evidence_header(ds: Any) -> Any:
    """The attributes of `ds` an SR needs as evidence (no pixel data copied)."""
    from pydicom.dataset import Dataset

    out = Dataset()
    for keyword in _COPIED:
        if keyword in ds:
            out[keyword] = ds[keyword]
    for keyword in _TYPE2:
        if keyword not in out:
            setattr(out, keyword, "")
    return out


def _finding_value(label: str) -> Any:
    from highdicom.sr import CodedConcept

    c = concept(label)
    if c.snomed:
        return CodedConcept(c.snomed, "SCT", c.display)
    return CodedConcept(label.replace(" ", "-")[:16], LOCAL_SCHEME, label)


def build(sources: Sequence[Any], predictions: Sequence[dict[str, Any]], model: dict[str, Any],
          device: dict[str, str] | None = None, *, series_uid: str | None = None,
          sop_instance_uid: str | None = None) -> Any:
    """The SR dataset for predictions on `sources` (pydicom Datasets of the same study)."""
    import highdicom as hd
    from highdicom.sr import (
        AlgorithmIdentification,
        CodedConcept,
        Comprehensive3DSR,
        DeviceObserverIdentifyingAttributes,
        Measurement,
        MeasurementReport,
        MeasurementsAndQualitativeEvaluations,
        ObservationContext,
        ObserverContext,
        QualitativeEvaluation,
        SourceImageForMeasurementGroup,
        TrackingIdentifier,
    )
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes

    dev = {**DEFAULT_DEVICE, **(device or {})}
    device_uid = dev.get("device_uid") or hd.UID()
    version = str(model.get("version") or "unknown")
    algorithm = AlgorithmIdentification(name=str(model.get("name") or "skincli"),
                                        version=version)
    sources = [evidence_header(ds) for ds in sources]
    skin_lesion, diagnosis = CodedConcept(*_SKIN_LESION), CodedConcept(*_DIAGNOSIS)
    groups = []
    for i, (ds, pred) in enumerate(zip(sources, predictions), start=1):
        groups.append(MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=hd.UID(),
                                                   identifier=f"image {i} classification"),
            algorithm_id=algorithm,
            source_images=[SourceImageForMeasurementGroup.from_source_image(ds)],
            finding_type=skin_lesion,
            qualitative_evaluations=[QualitativeEvaluation(
                name=diagnosis, value=_finding_value(str(pred["label"])))],
            measurements=[Measurement(
                name=CodedConcept("probability", LOCAL_SCHEME,
                                  "Probability of the finding"),
                value=round(float(pred["probability"]), 6),
                unit=CodedConcept("1", "UCUM", "no units"),
                algorithm_id=algorithm)],
        ))
    observer = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=device_uid, name=str(model.get("name") or "skincli"),
            manufacturer_name=dev["manufacturer"], model_name=dev["model_name"]))
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=CodedConcept("AI-DERMOSCOPY", LOCAL_SCHEME,
                                        "AI classification of a dermoscopic image"),
        imaging_measurements=groups)
    equipment = hd.ContributingEquipment(
        manufacturer=dev["manufacturer"], purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=dev["model_name"], software_versions=version,
        institution_name=dev.get("institution"),
        contribution_description="AI classification (decision support, not a diagnosis)")
    sr = Comprehensive3DSR(
        evidence=list(sources), content=report[0],
        series_instance_uid=series_uid or hd.UID(), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid or hd.UID(), instance_number=1,
        manufacturer=dev["manufacturer"], is_complete=True, is_final=False,
        is_verified=False, contributing_equipment=[equipment],
        series_description="AI dermoscopy classification (not for diagnosis)")
    for item in sr.ContributingEquipmentSequence:
        if item.Manufacturer == dev["manufacturer"]:
            item.DeviceUID = device_uid  # IHE AIR asks for it (dciodvfy: a standard extension)
    scheme = Dataset()
    scheme.CodingSchemeDesignator = LOCAL_SCHEME
    scheme.CodingSchemeName = "skincli class names"
    scheme.CodingSchemeResponsibleOrganization = dev["manufacturer"]
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


def read_back(ds: Any) -> list[dict[str, Any]]:
    """The findings an SR holds (label code meaning and probability), read with highdicom."""
    from highdicom.sr import Comprehensive3DSR

    sr = Comprehensive3DSR.from_dataset(ds)
    out = []
    for group in sr.content.get_image_measurement_groups():
        finding = next(iter(group.get_qualitative_evaluations()), None)
        meas = next(iter(group.get_measurements()), None)
        out.append({"finding": finding.value.meaning if finding is not None else None,
                    "probability": float(meas.value) if meas is not None else None})
    return out
