"""`POST /v1/jobs`, `GET /v1/jobs/{id}`: classify a study by reference (skincli.clinical.jobs).

The body names a configured source and UIDs, never a URL:
    {"source": "pacs", "study_uid": "1.2...", "series_uid": null, "sop_instance_uid": null,
     "id": "optional-client-job-id"}
The answer is the job's record (state done or failed, the predictions by UID, where the SR
and the FHIR report went, or a one-line error). 201 for a job run now; a repeat of an id is
answered 200 with the stored record and `"replayed": true` (nothing is run again); the same id
with other UIDs is 409 `job_conflict`. The clinical configuration comes from
$SKIN_CLINICAL_CONFIG; without it the routes answer 404 `not_found`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio.from_thread
from fastapi import APIRouter, Depends, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from skincli.clinical import audit, config, jobs
from skincli.errors import SkinError
from skincli.serve import schemas
from skincli.serve.auth import HEADER, presented_key
from skincli.serve.errors import ERROR_CODES, ApiError

log = logging.getLogger("skincli.serve")
# The same security schemes as the other /v1 routes (identical, so OpenAPI lists them once).
_API_KEY = APIKeyHeader(name=HEADER, auto_error=False, scheme_name="ApiKey",
                        description="An API key of the server (when it has keys)")
_BEARER = HTTPBearer(auto_error=False, scheme_name="Bearer",
                     description="The same API key as a bearer token")


def _require_key(request: Request, _key: str | None = Security(_API_KEY),
                 _bearer: Any = Security(_BEARER)) -> None:
    """Auth before validation: without a key, any body is a 401."""
    request.app.state.skin.keys.require(request)


router = APIRouter(tags=["jobs"], dependencies=[Depends(_require_key)])


def _errors(*codes: str) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        status, text = ERROR_CODES[code]
        entry = out.setdefault(status, {"model": schemas.ErrorOut, "description": ""})
        entry["description"] = (entry["description"] + "; " if entry["description"] else "") \
            + f"`{code}`: {text}"
    return out


class JobIn(BaseModel):
    """A job by reference: a configured source and the UIDs to read."""

    source: str = Field(max_length=64, description="A source name from the configuration")
    study_uid: str = Field(max_length=64)
    series_uid: str | None = Field(default=None, max_length=64)
    sop_instance_uid: str | None = Field(default=None, max_length=64)
    id: str | None = Field(default=None, max_length=64, description="Client job id "
                           "(idempotency key); generated when absent")
    model_config = {"extra": "forbid"}


_CONFIG: dict[str, Any] = {}


def _config() -> config.ClinicalConfig:
    """The clinical configuration, read once ($SKIN_CLINICAL_CONFIG)."""
    import os

    path = os.environ.get(config.CONFIG_ENV)
    if not path:
        raise ApiError("not_found", "Jobs by reference are not configured on this server "
                       "(set SKIN_CLINICAL_CONFIG)")
    if _CONFIG.get("path") != path:
        try:
            _CONFIG.update(path=path, cfg=config.load(path))
        except SkinError as exc:
            raise ApiError("not_ready", f"The clinical configuration is invalid: {exc}"
                           ) from None
    return _CONFIG["cfg"]


_RECORD = {"description": "The job's record", "content": {"application/json": {
    "schema": {"type": "object", "required": ["id", "state"]}}}}


@router.post("/v1/jobs", status_code=201, operation_id="createJob",
             summary="Classify a study by reference",
             responses={201: _RECORD, 200: {**_RECORD, "description": "A repeated id: the "
                                            "stored record, not run again"},
                        **_errors("unauthorized", "not_found", "job_conflict",
                                  "invalid_request", "not_ready", "overloaded", "timeout")})
async def create_job(request: Request, body: JobIn) -> JSONResponse:
    state = request.app.state.skin
    cfg = _config()
    model = state.model()
    req = jobs.JobRequest(source=body.source, study_uid=body.study_uid,
                          series_uid=body.series_uid, sop_instance_uid=body.sop_instance_uid,
                          id=body.id)
    settings = state.settings
    log_path = settings.audit_log or audit.default_path(settings.runs_dir)
    caller = audit.key_id(presented_key(request))

    def infer(fn: Any) -> Any:
        # On the inference thread, in queue order with the other requests.
        deadline = time.perf_counter() + settings.timeout_s
        return anyio.from_thread.run(state.call, fn, deadline)

    try:
        record, replayed = await run_in_threadpool(
            jobs.run, cfg, model.predictor, req, audit_log=audit.AuditLog(log_path),
            caller=caller, infer=infer)
    except jobs.JobConflict as exc:
        raise ApiError("job_conflict", str(exc), status=409) from None
    except SkinError as exc:
        raise ApiError("invalid_request", str(exc)) from None
    if record.get("state") == "failed":
        log.warning("job %s failed: %s", record["id"], record.get("error"))
    return JSONResponse({**record, "replayed": replayed}, status_code=200 if replayed else 201)


@router.get("/v1/jobs/{job_id}", operation_id="getJob", summary="A job's record",
            responses={200: _RECORD, **_errors("unauthorized", "not_found", "not_ready")})
async def get_job(request: Request, job_id: str) -> JSONResponse:
    record = jobs.JobStore(_config().jobs_dir).get(job_id)
    if record is None:
        raise ApiError("not_found", f"No job {job_id[:64]!r}", status=404)
    return JSONResponse(record)
