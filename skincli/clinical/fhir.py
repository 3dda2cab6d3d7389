"""HL7 FHIR R4 out: one prediction as a Bundle (collection) of

- DiagnosticReport (status preliminary): the AI report, its conclusion and result;
- Observation (status preliminary): value = the top class as a SNOMED CT concept (and the
  project's own class code); components = every class probability, the uncertain flag, the
  malignancy score, its threshold and the triage decision; `device` = the model;
  `derivedFrom` = the source ImagingStudy by Study Instance UID when the input was DICOM;
- Device: the model (name, version = run id, the metrics it was released with);
- Provenance: the model as the agent that authored both resources.

AI transparency (HL7 "AI Transparency on FHIR"): every resource the model produced carries the
security label AIAST (v3-ObservationValue, "artificial intelligence asserted") in
meta.security, and the model is the Observation's device and the Provenance agent. (R4 allows
no Device as Observation.performer, so the model is named through `device` and Provenance.)

No patient data: there is no subject (the caller links the report to the patient record), and
only DICOM UIDs are referenced. Built as plain dicts; tests validate them with fhir.resources.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from skincli import DISCLAIMER
from skincli.clinical.snomed import codings, concept
from skincli.clinical.triage import record_of
from skincli.decision import decision_summary
from skincli.defer import record_of as defer_record_of
from skincli.predictor import Predictor

FHIR_JSON = "application/fhir+json"
AIAST = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
         "code": "AIAST", "display": "Artificial Intelligence asserted"}
UCUM = "http://unitsofmeasure.org"
LOCAL = "urn:skincli"
DICOM_UID_SYSTEM = "urn:dicom:uid"
# Headline metrics the Device lists (from run.json test metrics, else validation metrics).
DEVICE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece")


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _meta() -> dict[str, Any]:
    return {"security": [dict(AIAST)]}


def _local(code: str, display: str | None = None) -> dict[str, Any]:
    return {"coding": [{"system": LOCAL, "code": code, "display": display or code}],
            "text": display or code}


def _probability(value: float) -> dict[str, Any]:
    return {"value": round(float(value), 6), "unit": "probability", "system": UCUM, "code": "1"}


def device_resource(model: dict[str, Any]) -> dict[str, Any]:
    """The model as a Device: name, version (= run id), released metrics as properties."""
    metrics = model.get("test_metrics") or {}
    which = "test"
    if not any(metrics.get(k) is not None for k in DEVICE_METRICS):
        metrics, which = model.get("val_metrics") or {}, "validation"
    props = []
    for key in DEVICE_METRICS:
        value = metrics.get(key)
        if isinstance(value, (int, float)):
            props.append({"type": _local(f"metric-{which}-{key}", f"{which} {key}"),
                          "valueQuantity": [{"value": round(float(value), 6)}]})
    op = model.get("defer") or {}
    if op.get("thresholds"):
        props.append({"type": _local("defer-target", "answer-or-defer target (balanced "
                                     "accuracy and macro F1 on validation)"),
                      "valueQuantity": [_probability(op["target"])]})
    triage = model.get("triage") or {}
    if triage.get("threshold") is not None:
        props.append({"type": _local("triage-threshold", "referral threshold on the "
                                     "malignancy score"),
                      "valueQuantity": [_probability(triage["threshold"])]})
    decision = model.get("decision") or {}
    if decision.get("rule"):
        # The rule (and prior) that turned probabilities into the answer: a different prior
        # gives a different answer for the same image.
        props.append({"type": _local("decision-rule", "decision rule"),
                      "valueCode": [{"text": str(decision.get("description")
                                                 or decision["rule"])}]})
        for cls, value in sorted((decision.get("prior") or {}).items()):
            props.append({"type": _local(f"decision-prior-{cls}", f"class prior: {cls}"),
                          "valueQuantity": [_probability(value)]})
    return {
        "resourceType": "Device", "meta": _meta(),
        "status": "active",
        "deviceName": [{"name": str(model["name"]), "type": "model-name"}],
        "type": {"text": "AI skin-lesion classification model (software)"},
        "version": [{"value": str(model["version"])}],
        "property": props,
        "note": [{"text": f"Architecture {model.get('arch', '?')}; classes: "
                          f"{', '.join(model.get('classes', []))}. {DISCLAIMER}"}],
    }


def bundle(prediction: dict[str, Any], model: dict[str, Any], *,
           dicom: dict[str, Any] | None = None, request_id: str | None = None,
           image_sha256: str | None = None, issued: datetime | None = None
           ) -> dict[str, Any]:
    """The FHIR R4 Bundle for one prediction (a `Prediction.to_dict()`-shaped dict).

    `model` holds name, version, arch, classes and the run's metrics (`model_info`);
    `dicom` the source instance's UIDs (`DicomRef.to_dict()`), when the input was DICOM.
    """
    when = (issued or datetime.now(timezone.utc)).isoformat(timespec="seconds")
    dev_url, obs_url, rep_url, prov_url = _urn(), _urn(), _urn(), _urn()
    label = prediction["label"]
    c = concept(label)
    components: list[dict[str, Any]] = []
    for cls, p in prediction["probabilities"].items():
        components.append({"code": {"coding": codings(cls), "text": f"probability of {cls}"},
                           "valueQuantity": _probability(p)})
    components.append({"code": _local("uncertain", "uncertain (top probability below the "
                                      "run's threshold)"),
                       "valueBoolean": bool(prediction["uncertain"])})
    triage = prediction.get("triage")
    if triage:
        components += [
            {"code": _local("malignancy-score", "malignancy score (summed probability of "
                            "the malignant classes)"),
             "valueQuantity": _probability(triage["malignancy_score"])},
            {"code": _local("referral-threshold", "referral threshold"),
             "valueQuantity": _probability(triage["threshold"])},
            {"code": _local("triage-decision", "triage decision"),
             "valueCodeableConcept": _local(triage["decision"].replace(" ", "-"),
                                            triage["decision"])},
        ]
    deferral = prediction.get("deferral")
    if deferral:
        components.append({"code": _local("answer-or-defer", "answered, or deferred to a "
                                          "dermatologist, at the run's operating point"),
                           "valueCodeableConcept": _local(deferral["status"], deferral["text"])})
        if deferral.get("threshold") is not None:
            components.append({"code": _local("defer-threshold", "answer threshold of the "
                                              "predicted class"),
                               "valueQuantity": _probability(deferral["threshold"])})
    identifiers = []
    if request_id:
        identifiers.append({"system": f"{LOCAL}:request-id", "value": str(request_id)})
    if image_sha256:
        identifiers.append({"system": f"{LOCAL}:image-sha256", "value": str(image_sha256)})
    observation: dict[str, Any] = {
        "resourceType": "Observation", "meta": _meta(), "status": "preliminary",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "imaging", "display": "Imaging"}]}],
        "code": _local("skin-lesion-classification", "AI classification of a dermoscopic "
                       "image of a skin lesion"),
        "issued": when,
        "valueCodeableConcept": {"coding": codings(label), "text": c.display},
        "component": components,
        "device": {"reference": dev_url, "display": f"{model['name']} {model['version']}"},
        "note": [{"text": DISCLAIMER}] + [{"text": w} for w in prediction.get("warnings", [])],
    }
    if identifiers:
        observation["identifier"] = identifiers
    study = None
    if dicom and dicom.get("study_instance_uid"):
        parts = [f"series {dicom['series_instance_uid']}" if dicom.get("series_instance_uid")
                 else "", f"SOP instance {dicom['sop_instance_uid']}"
                 if dicom.get("sop_instance_uid") else ""]
        study = {"type": "ImagingStudy",
                 "identifier": {"system": DICOM_UID_SYSTEM,
                                "value": f"urn:oid:{dicom['study_instance_uid']}"},
                 "display": "; ".join(p for p in parts if p) or "source study"}
        observation["derivedFrom"] = [study]
    conclusion = f"AI suggests {label} ({prediction['probability']:.1%})"
    if prediction["uncertain"]:
        conclusion += ", uncertain"
    if deferral:
        conclusion += f"; {deferral['text']}"
        if deferral.get("differential"):
            conclusion += f" (differential: {', '.join(deferral['differential'])})"
    if triage:
        conclusion += (f"; malignancy score {triage['malignancy_score']:.3f} vs threshold "
                       f"{triage['threshold']:.3f}: {triage['decision']}")
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "meta": _meta(), "status": "preliminary",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                                  "code": "OTH", "display": "Other"}],
                      "text": "AI decision support (dermatology)"}],
        "code": _local("ai-dermoscopy-report", "AI dermoscopy classification report"),
        "issued": when,
        "result": [{"reference": obs_url}],
        "conclusion": f"{conclusion}. {DISCLAIMER}",
        "conclusionCode": [{"coding": codings(label), "text": c.display}],
    }
    if identifiers:
        report["identifier"] = identifiers
    if study is not None:
        report["imagingStudy"] = [study]
    provenance = {
        "resourceType": "Provenance",
        "target": [{"reference": obs_url}, {"reference": rep_url}],
        "recorded": when,
        "agent": [{"type": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
            "code": "author", "display": "Author"}]},
            "who": {"reference": dev_url}}],
    }
    entries = [(rep_url, report), (obs_url, observation), (dev_url, device_resource(model)),
               (prov_url, provenance)]
    return {"resourceType": "Bundle", "type": "collection", "timestamp": when,
            "entry": [{"fullUrl": url, "resource": res} for url, res in entries]}


def model_info(predictor: Predictor) -> dict[str, Any]:
    """What the Device says, from a loaded Predictor's run.json."""
    info = predictor.info
    return {"name": info.name, "version": info.version, "arch": info.arch,
            "classes": list(info.classes), "test_metrics": info.test_metrics or {},
            "val_metrics": info.val_metrics or {}, "triage": record_of(info),
            "defer": defer_record_of(info),
            "decision": decision_summary(info, predictor.decision)}
