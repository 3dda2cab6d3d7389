"""The API's clinical side: FHIR negotiation and the audit trail (the model card is a route of
skincli.serve.routes.model).

- `POST /v1/predict?format=fhir` or `Accept: application/fhir+json`: the answer is a FHIR R4
  Bundle (`skincli.clinical.fhir`), built from the same prediction the JSON answer carries.
  FHIR is for one image: the batch endpoint refuses it (422). An Accept header that allows
  neither JSON nor FHIR JSON gets 406 `not_acceptable`.
- Every prediction answered by /v1/predict, /v1/predict/batch or /v1/explain is written to
  the audit log *before* the response leaves: the request waits for its record (bounded by
  the request's remaining time budget). If the record cannot be written in time, or at all,
  the answer is withheld and the client gets 503 `audit_unavailable`: never a prediction
  without its record.

The routes (skincli.serve.routes.predict) only call `note_prediction`; everything else happens
here.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skincli.clinical import audit, fhir
from skincli.serve.errors import ApiError, error_body

log = logging.getLogger("skincli.serve")

PREDICT, BATCH, EXPLAIN = "/v1/predict", "/v1/predict/batch", "/v1/explain"
_AUDITED = {PREDICT, BATCH, EXPLAIN}
_JSON_TYPES = {"application/json", "application/*", "*/*"}
_FHIR_TYPES = {"application/fhir+json", "application/json+fhir"}
_NOTES = "skin.clinical"


def note_prediction(request: Request, model: Any, prepared: Any, pred: dict[str, Any]) -> None:
    """Called by the routes for each answered image: what the audit record and FHIR need."""
    from skincli.serve.auth import presented_key

    state = request.app.state.skin
    key = presented_key(request) if state.keys.enabled else None
    request.scope.setdefault(_NOTES, []).append({
        "entry": audit.entry(request_id=request.scope.get("skin.request_id", "unknown"),
                             caller=audit.key_id(key), source="api",
                             model_version=model.version, image_sha256=prepared.sha256,
                             prediction=pred),
        "prediction": pred, "model": model, "sha256": prepared.sha256,
        "dicom": getattr(prepared, "dicom", None)})


def _wanted(scope: Scope) -> str:
    """'fhir' or 'json' for a predict request; ApiError for an impossible request."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    fmt = (query.get("format") or [None])[-1]
    if fmt is not None and fmt not in ("json", "fhir"):
        raise ApiError("invalid_request", f"format={fmt!r} is not known: use format=json or "
                       "format=fhir")
    accept = ""
    for key, value in scope.get("headers", []):
        if key.lower() == b"accept":
            accept = value.decode("latin-1")
    best, best_q = None, -1.0
    for part in accept.split(","):
        media, *params = [p.strip() for p in part.split(";")]
        media = media.lower()
        if not media:
            continue
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        if q <= 0:
            continue
        kind = "fhir" if media in _FHIR_TYPES else "json" if media in _JSON_TYPES else None
        if kind and (q > best_q or (q == best_q and kind == "fhir" and best == "json"
                                    and media != "*/*")):
            best, best_q = kind, q
    if accept.strip() and best is None:
        raise ApiError("not_acceptable", f"Cannot answer with {accept[:100]!r}: this endpoint "
                       f"returns application/json or {fhir.FHIR_JSON}")
    return fmt or best or "json"


class ClinicalMiddleware:
    """Holds each predict/explain response until its audit records are written; turns a
    /v1/predict answer into FHIR when asked."""

    def __init__(self, app: ASGIApp, state: Any) -> None:
        self.app = app
        self.state = state
        settings = state.settings
        self.log = audit.AuditLog(settings.audit_log or audit.default_path(settings.runs_dir),
                                  timeout_s=settings.timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope.get("method") != "POST" or path not in _AUDITED:
            await self.app(scope, receive, send)
            return
        try:
            wanted = _wanted(scope) if path in (PREDICT, BATCH) else "json"
            if wanted == "fhir" and path == BATCH:
                raise ApiError("invalid_request", "FHIR output is for one image: POST each "
                               "image to /v1/predict?format=fhir")
        except ApiError as exc:
            await self._error(scope, send, exc)
            return
        held: list[Message] = []

        async def hold(message: Message) -> None:
            held.append(message)

        await self.app(scope, receive, hold)
        start = next((m for m in held if m["type"] == "http.response.start"), None)
        notes = scope.get(_NOTES) or []
        if start is None or start["status"] != 200 or not notes:
            for message in held:
                await send(message)
            return
        deadline = scope["skin.start"] + self.state.settings.timeout_s
        try:
            await run_in_threadpool(self.log.append, [n["entry"] for n in notes],
                                    max(0.05, deadline - time.perf_counter()))
        except audit.AuditUnavailable as exc:
            log.error("audit: %s (request %s refused)", exc, scope.get("skin.request_id"))
            self.state.metrics.rejected.inc(len(notes), reason="audit_unavailable")
            await self._error(scope, send, ApiError(
                "audit_unavailable", f"The prediction was not released: its audit record "
                f"could not be written ({exc.message}); retry shortly",
                headers={"Retry-After": "2"}))
            return
        if wanted == "fhir":
            n = notes[0]
            doc = fhir.bundle(n["prediction"], fhir.model_info(n["model"].predictor),
                              dicom=n["dicom"], request_id=scope.get("skin.request_id"),
                              image_sha256=n["sha256"])
            body = json.dumps(doc).encode()
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", fhir.FHIR_JSON.encode()),
                (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        for message in held:
            await send(message)

    @staticmethod
    async def _error(scope: Scope, send: Send, exc: ApiError) -> None:
        scope["skin.error_code"] = exc.code
        body = json.dumps(error_body(exc.code, exc.message,
                                     scope.get("skin.request_id", "unknown"))).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

