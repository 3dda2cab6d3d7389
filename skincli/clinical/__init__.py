"""Clinical formats in one package, shared by the CLI and the API.

- `dicom`:  DICOM Part 10 in (dermoscopic and VL photographic images), no patient data kept.
- `snomed`: the one table of SNOMED CT concepts for the classes.
- `fhir`:   HL7 FHIR R4 Bundle out (DiagnosticReport, Observation, Device, Provenance).
- `triage`: the malignancy score and its referral threshold (fitted on validation).
- `card`:   the model card (MODEL_CARD.md + model_card.json) from what a run knows.
- `audit`:  the append-only, hash-chained audit log of every prediction.
"""
