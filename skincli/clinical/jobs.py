"""Jobs by reference: read a study from a configured PACS, classify it, send the results back.

A job names a configured source and UIDs (never a URL). It runs once: fetch (QIDO-RS, then
WADO-RS), predict, write the audit records, store a DICOM SR into the same study (STOW-RS) and
POST the FHIR transaction to the configured EHR. Its record — state, step, the UIDs, the
predictions, where the results went, or the one-line error — is kept in `jobs_dir/<id>.json`
(written atomically at every step). A job with an id that exists already is not run again:
the stored record is returned (`replayed: true`); the same id with other UIDs is a conflict.

No patient data is kept: the record holds UIDs, hashes and results only; the source images
stay in memory. Errors are not retried here (the outbound client retried what could help).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skincli.clinical import audit, dicom, ehr, fhir, heatmap, sr
from skincli.clinical.config import ClinicalConfig
from skincli.clinical.dicomweb import IMAGE_CLASSES, DicomWeb, InstanceRef
from skincli.clinical.outbound import Outbound
from skincli.errors import SkinError
from skincli.fsutil import write_json

if TYPE_CHECKING:  # annotations only: loading stays where it was
    from skincli.predictor import Predictor

JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
STATES = ("running", "done", "failed")


class JobConflict(SkinError):
    """The job id is taken by a job with other UIDs or another source."""


@dataclass(frozen=True)
class JobRequest:
    """What a job reads: a configured source name and DICOM UIDs."""

    source: str
    study_uid: str
    series_uid: str | None = None
    sop_instance_uid: str | None = None
    id: str | None = None

    def check(self) -> None:
        """One line for a malformed id or UID (nothing is recorded for these)."""
        if self.id is not None and not JOB_ID.match(self.id):
            raise SkinError(f"Job id {self.id[:80]!r} is not allowed",
                            hint="Use 1-64 letters, digits, '.', '_' or '-'")
        for name, value in (("study_uid", self.study_uid), ("series_uid", self.series_uid),
                            ("sop_instance_uid", self.sop_instance_uid)):
            if value is not None and (len(value) > 64 or not UID.match(value)):
                raise SkinError(f"{name} is not a DICOM UID",
                                hint="A UID is digits and dots, at most 64 characters")

    def key(self) -> dict[str, Any]:
        """What must match for a repeat of the same id to be the same job."""
        return {"source": self.source, "study_uid": self.study_uid,
                "series_uid": self.series_uid, "sop_instance_uid": self.sop_instance_uid}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class JobStore:
    """One JSON file per job, claimed exclusively so two runs of one id cannot both start."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def path(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.json"

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The stored record, or None."""
        if not JOB_ID.match(job_id):
            return None
        try:
            return json.loads(self.path(job_id).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def claim(self, req: JobRequest, job_id: str) -> tuple[dict[str, Any], bool]:
        """(record, True) for a new job; (the stored record, False) for a repeat."""
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.folder / f"{job_id}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                         0o644)
            os.close(fd)
        except FileExistsError:
            stored = self.get(job_id) or {"id": job_id, "state": "running", **req.key()}
            if {k: stored.get(k) for k in req.key()} != req.key():
                raise JobConflict(f"Job {job_id} exists with other UIDs or another source",
                                  hint="Use a new job id for a different study") from None
            return stored, False
        record = {"id": job_id, "state": "running", "step": "accepted", **req.key(),
                  "created": _now(), "updated": _now()}
        self.save(record)
        return record, True

    def save(self, record: dict[str, Any]) -> None:
        record["updated"] = _now()
        write_json(self.path(record["id"]), record)


def _job_uid(job_id: str, what: str) -> str:
    """A UID derived from the job id: a rerun stores the same SR instance, not a second one."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[job_id, what]))


def run(cfg: ClinicalConfig, predictor: Predictor, req: JobRequest, *, audit_log: audit.AuditLog,
        caller: str = "cli", infer: Callable[[Callable[[], Any]], Any] | None = None
        ) -> tuple[dict[str, Any], bool]:
    """Run a job (or return the stored one); (record, replayed). SkinError only for a bad
    request or a conflicting id; every later failure is recorded as state `failed`.

    `infer(fn)` runs a model call (the server runs it on its inference thread); default: now.
    """
    req.check()
    return _execute(cfg, predictor, req, req.id or uuid.uuid4().hex, audit_log, caller,
                    infer)


def _execute(cfg: ClinicalConfig, predictor: Predictor, req: JobRequest, job_id: str,
             audit_log: audit.AuditLog, caller: str,
             infer: Callable[[Callable[[], Any]], Any] | None,
             received: bytes | None = None) -> tuple[dict[str, Any], bool]:
    store = JobStore(cfg.jobs_dir)
    record, new = store.claim(req, job_id)
    if not new:
        return record, True
    try:
        _steps(cfg, predictor, req, record, store, audit_log, caller,
               infer or (lambda fn: fn()), received)
        record.update(state="done", step="done")
    except SkinError as exc:
        record.update(state="failed", error=str(exc))
    except Exception as exc:  # a bug or a library error: one line, no traceback in the record
        record.update(state="failed", error=f"{type(exc).__name__} during {record['step']}")
        raise
    finally:
        store.save(record)
    return record, False


def _steps(cfg: ClinicalConfig, predictor: Predictor, req: JobRequest, record: dict[str, Any],
           store: JobStore, audit_log: audit.AuditLog, caller: str,
           infer: Callable[[Callable[[], Any]], Any], received: bytes | None = None) -> None:
    def step(name: str) -> None:
        record["step"] = name
        store.save(record)

    source = cfg.source(req.source) if req.source else None
    dw = DicomWeb(source) if source is not None else None
    try:
        if received is None:
            assert dw is not None
            step("fetching")
            refs = dw.images(req.study_uid, req.series_uid, req.sop_instance_uid)
            raws = [dw.retrieve(req.study_uid, ref) for ref in refs]
        else:  # pushed to us by C-STORE
            got = dicom.read_ref(received)
            refs = [InstanceRef(got.series_uid or "", got.sop_instance_uid or "",
                                got.sop_class_uid or "")]
            raws = [received]
        images = [dicom.decode(raw, name=f"instance {i + 1}") for i, raw in enumerate(raws)]
        step("predicting")
        preds = [p.to_dict() for p in infer(lambda: predictor.predict(images))]
        shas = [hashlib.sha256(raw).hexdigest() for raw in raws]
        job_ids = [record["id"]] if len(preds) == 1 else \
            [f"{record['id']}.{i + 1}" for i in range(len(preds))]
        model = fhir.model_info(predictor)
        step("auditing")
        audit_log.append([audit.entry(request_id=jid, caller=caller, source="job",
                                      model_version=str(model["version"]), image_sha256=sha,
                                      prediction=pd)
                          for jid, sha, pd in zip(job_ids, shas, preds)])
        record["model"] = {"name": model["name"], "version": model["version"]}
        record["images"] = [
            {"series_instance_uid": ref.series_uid, "sop_instance_uid": ref.sop_instance_uid,
             "sop_class_uid": ref.sop_class_uid, "image_sha256": sha,
             "prediction": {k: pd[k] for k in ("label", "probability", "probabilities",
                                                "uncertain", "warnings", "triage") if k in pd}}
            for ref, sha, pd in zip(refs, shas, preds)]
        if cfg.store_sr and dw is not None:
            step("storing SR")
            import pydicom

            datasets = [pydicom.dcmread(_bytes_io(raw)) for raw in raws]
            series_uid = _job_uid(record["id"], "sr-series")
            sop_uid = _job_uid(record["id"], "sr-instance")
            doc = sr.build(datasets, preds, model, cfg.device, series_uid=series_uid,
                           sop_instance_uid=sop_uid)
            stored = [doc]
            if cfg.heatmap:
                step("drawing heat maps")
                sc_series = _job_uid(record["id"], "sc-series")
                stored += [heatmap.build(ds, pixels, pd["label"], series_uid=sc_series,
                                         sop_instance_uid=_job_uid(record["id"], f"sc-{i}"),
                                         device=cfg.device, instance_number=i + 1)
                           for i, (ds, pixels, pd) in enumerate(zip(
                               datasets, heatmap.overlays(predictor, images, infer), preds))]
                step("storing SR")
            dw.store(stored, req.study_uid)
            record["sr"] = {"source": req.source, "study_instance_uid": req.study_uid,
                            "series_instance_uid": series_uid, "sop_instance_uid": sop_uid}
            if cfg.heatmap:
                record["heatmap"] = {"series_instance_uid": sc_series,
                                     "instances": len(stored) - 1}
        if cfg.fhir:
            step("sending FHIR")
            out = Outbound(cfg.destinations[cfg.fhir])
            try:
                stored = []
                for sha, pd, jid, raw in zip(shas, preds, job_ids, raws):
                    collection = fhir.bundle(pd, model, dicom=dicom.read_ref(raw).to_dict(),
                                             request_id=jid, image_sha256=sha)
                    bundle = ehr.transaction(collection, jid, study_uid=req.study_uid,
                                             wado_url=source.url.rstrip("/") if source
                                             else None)
                    stored.append(ehr.post(out, bundle, jid))
                record["fhir"] = {"destination": cfg.fhir, "reports": stored}
            finally:
                out.close()
    finally:
        if dw is not None:
            dw.close()


def run_received(cfg: ClinicalConfig, predictor: Predictor, raw: bytes, *,
                 audit_log: audit.AuditLog, caller: str = "dimse",
                 infer: Callable[[Callable[[], Any]], Any] | None = None
                 ) -> tuple[dict[str, Any], bool]:
    """A job for one instance pushed by C-STORE (its results go to `receive.results_to`).

    The job id derives from the SOP Instance UID: the same instance sent twice is one job.
    """
    ref = dicom.read_ref(raw)
    if ref.sop_class_uid not in IMAGE_CLASSES or not ref.study_uid or not ref.sop_instance_uid:
        raise SkinError("The instance is not a dermoscopic or VL photographic image with "
                        "study and SOP instance UIDs", hint="Send dermoscopic photographs")
    job_id = "cstore-" + hashlib.sha256(ref.sop_instance_uid.encode()).hexdigest()[:24]
    req = JobRequest(source=cfg.receive_results_to or "", study_uid=ref.study_uid,
                     series_uid=ref.series_uid, sop_instance_uid=ref.sop_instance_uid,
                     id=job_id)
    return _execute(cfg, predictor, req, job_id, audit_log, caller, infer, received=raw)


def _bytes_io(raw: bytes) -> Any:
    import io

    return io.BytesIO(raw)
