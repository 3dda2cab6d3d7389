"""Result to the EHR: the project's FHIR Bundle as a transaction, POSTed once per job.

The collection Bundle from fhir.bundle becomes a transaction: DiagnosticReport and Observation
are conditional creates on the job id (`ifNoneExist: identifier=urn:skincli:request-id|<job>`),
the model's Device a conditional create on its version, and the Provenance is only sent with a
report that does not exist yet (the report is looked up by the job id first): a replayed job
adds nothing. When the source is a DICOMweb study, the transaction also carries an
ImagingStudy (conditional on the Study Instance UID) whose Endpoint is the source's WADO-RS
base, and the report points at it.
"""

from __future__ import annotations

from typing import Any

from skincli.clinical.fhir import FHIR_JSON, LOCAL
from skincli.clinical.outbound import Outbound

JOB_SYSTEM = f"{LOCAL}:request-id"
MODEL_SYSTEM = f"{LOCAL}:model-version"
ENDPOINT_SYSTEM = f"{LOCAL}:dicomweb-endpoint"


def transaction(collection: dict[str, Any], job_id: str, *,
                study_uid: str | None = None, wado_url: str | None = None) -> dict[str, Any]:
    """The transaction Bundle for one job (entries keep their urn:uuid fullUrls)."""
    entries = []
    study_ref = None
    if study_uid and wado_url:
        ep_url, study_url = "urn:uuid:" + _uuid(job_id, "endpoint"), \
            "urn:uuid:" + _uuid(job_id, "study")
        ep_key = _uuid("", wado_url)  # one Endpoint per WADO-RS base
        entries.append({"fullUrl": ep_url, "resource": {
            "resourceType": "Endpoint", "status": "active",
            "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/"
                               "endpoint-connection-type", "code": "dicom-wado-rs"},
            "identifier": [{"system": ENDPOINT_SYSTEM, "value": ep_key}],
            "payloadType": [{"text": "DICOM"}], "payloadMimeType": ["application/dicom"],
            "address": wado_url},
            "request": {"method": "POST", "url": "Endpoint",
                        "ifNoneExist": f"identifier={ENDPOINT_SYSTEM}|{ep_key}"}})
        entries.append({"fullUrl": study_url, "resource": {
            "resourceType": "ImagingStudy", "status": "available",
            "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}],
            "subject": {"display": "the patient of the source study"},
            "endpoint": [{"reference": ep_url}]},
            "request": {"method": "POST", "url": "ImagingStudy",
                        "ifNoneExist": f"identifier=urn:dicom:uid|urn:oid:{study_uid}"}})
        study_ref = study_url
    for e in collection["entry"]:
        res = dict(e["resource"])
        rtype = res["resourceType"]
        request: dict[str, Any] = {"method": "POST", "url": rtype}
        if rtype in ("DiagnosticReport", "Observation"):
            res["identifier"] = [i for i in res.get("identifier", [])
                                 if i.get("system") != JOB_SYSTEM] + [
                {"system": JOB_SYSTEM, "value": job_id}]
            request["ifNoneExist"] = f"identifier={JOB_SYSTEM}|{job_id}"
            if study_ref is not None and rtype == "DiagnosticReport":
                res["imagingStudy"] = [{"reference": study_ref}]
        elif rtype == "Device":
            version = str((res.get("version") or [{}])[0].get("value", ""))
            res["identifier"] = [{"system": MODEL_SYSTEM, "value": version}]
            request["ifNoneExist"] = f"identifier={MODEL_SYSTEM}|{version}"
        entries.append({"fullUrl": e["fullUrl"], "resource": res, "request": request})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _uuid(job_id: str, what: str) -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{JOB_SYSTEM}|{job_id}|{what}"))


def existing_report(out: Outbound, job_id: str) -> str | None:
    """The id of the DiagnosticReport this job already stored, or None."""
    resp = out.request("GET", "DiagnosticReport", params={
        "identifier": f"{JOB_SYSTEM}|{job_id}"}, headers={"Accept": FHIR_JSON})
    for e in resp.json().get("entry", []) or []:
        rid = (e.get("resource") or {}).get("id")
        if rid:
            return f"DiagnosticReport/{rid}"
    return None


def post(out: Outbound, bundle: dict[str, Any], job_id: str) -> dict[str, Any]:
    """POST the transaction (unless this job's report is there already); what was stored."""
    found = existing_report(out, job_id)
    if found is not None:
        return {"report": found, "created": False}
    resp = out.request("POST", "", json=bundle, headers={"Content-Type": FHIR_JSON,
                                                         "Accept": FHIR_JSON})
    locations = [str((e.get("response") or {}).get("location", ""))
                 for e in resp.json().get("entry", []) or []]
    report = next(("DiagnosticReport/" + loc.split("DiagnosticReport/", 1)[1].split("/")[0]
                   for loc in locations if "DiagnosticReport/" in loc), None)
    return {"report": report, "created": True, "entries": len(locations)}
