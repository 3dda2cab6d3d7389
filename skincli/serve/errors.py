"""API errors: every failure is JSON {"error": stable_code, "message": text, "request_id"}.

Codes are stable and documented; clients branch on `error`, people read `message`. No stack
trace ever reaches a client.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from skincli.imageio import ACCEPTED_TEXT, ImageError

log = logging.getLogger("skincli.serve")

# Stable error codes -> (HTTP status, meaning). The OpenAPI description lists them.
ERROR_CODES: dict[str, tuple[int, str]] = {
    "invalid_request": (422, "a parameter or the request body is malformed"),
    "missing_file": (422, "no image file in the request"),
    "too_many_files": (422, "more images than --max-files in one batch request"),
    "empty": (422, "the uploaded file is empty"),
    "corrupt": (422, "the image is corrupt or truncated"),
    "invalid_image": (422, "the image cannot be used"),
    "unsupported_type": (415, f"the bytes are not a supported image format ({ACCEPTED_TEXT})"),
    "payload_too_large": (413, "the upload is larger than --max-upload-mb"),
    "too_many_pixels": (413, "the decoded image has more pixels than --max-pixels"),
    "unauthorized": (401, "missing or wrong API key"),
    "forbidden": (403, "the action needs API keys to be configured on the server"),
    "not_found": (404, "no such route"),
    "method_not_allowed": (405, "the route exists but not with this method"),
    "not_explainable": (422, "this model has no feature map Grad-CAM can explain"),
    "invalid_run": (422, "the run to reload does not exist or cannot be loaded"),
    "reload_in_progress": (409, "another reload is running"),
    "job_conflict": (409, "the job id is taken by a job with other UIDs"),
    "rate_limited": (429, "more requests than --rate-limit from this client (API key, else "
                          "address); retry after the Retry-After seconds"),
    "not_acceptable": (406, "the Accept header allows neither JSON nor FHIR JSON"),
    "request_timeout": (408, "the request body did not arrive within --body-timeout-s"),
    "overloaded": (503, "the queue is full; retry after the Retry-After seconds"),
    "audit_unavailable": (503, "the audit record could not be written, so no answer was "
                               "released; retry shortly"),
    "not_ready": (503, "the model is not loaded yet"),
    "timeout": (504, "the request did not finish within --timeout-s"),
    "internal_error": (500, "a bug: the server logged it with the request id"),
}


class BodyTimeout(Exception):
    """The request body did not arrive within body_timeout_s (raised by the middleware)."""


class ApiError(Exception):
    """An error with a stable code; its status comes from ERROR_CODES unless given."""

    def __init__(self, code: str, message: str, *, status: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.code = code
        self.message = message
        self.status = status or ERROR_CODES.get(code, (400, ""))[0]
        self.headers = headers or {}
        super().__init__(message)


def request_id_of(request: Request) -> str:
    """The request id the middleware assigned (or 'unknown' outside it)."""
    return str(getattr(request.state, "request_id", None) or
               request.scope.get("skin.request_id") or "unknown")


def error_body(code: str, message: str, request_id: str) -> dict[str, str]:
    """The one JSON shape of every error."""
    return {"error": code, "message": message, "request_id": request_id}


def error_response(request: Request, code: str, message: str, status: int,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON error response for this request."""
    request.scope["skin.error_code"] = code
    return JSONResponse(error_body(code, message, request_id_of(request)), status_code=status,
                        headers=headers)


def from_image_error(exc: ImageError) -> ApiError:
    """Map the image reader's reason code onto an API error."""
    code = exc.code if exc.code in ERROR_CODES else "invalid_image"
    headers = {"Retry-After": "1"} if code == "overloaded" else None
    # The reader names the source 'upload'; the message is otherwise client-safe.
    return ApiError(code, str(exc), headers=headers)


def install_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every exception into the JSON error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.code, exc.message, exc.status, exc.headers)

    @app.exception_handler(ImageError)
    async def _image_error(request: Request, exc: ImageError) -> JSONResponse:
        err = from_image_error(exc)
        return error_response(request, err.code, err.message, err.status, err.headers)

    @app.exception_handler(BodyTimeout)
    async def _body_timeout(request: Request, exc: BodyTimeout) -> JSONResponse:
        return error_response(request, "request_timeout", "The request body did not arrive in "
                              "time; send it at once", 408, {"Connection": "close"})

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # Nobody is left to read an answer; the middleware counts it as client_closed.
        request.scope["skin.client_closed"] = True
        request.scope["skin.error_code"] = "client_closed"
        return Response(status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, "invalid_request", _validation_message(exc.errors()), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized",
                413: "payload_too_large", 415: "unsupported_type"}.get(
            exc.status_code, "invalid_request" if exc.status_code < 500 else "internal_error")
        message = exc.detail if isinstance(exc.detail, str) else ERROR_CODES[code][1]
        if exc.status_code == 404:
            message = f"No route {request.method} {request.url.path}; see /docs"
        return error_response(request, code, message, exc.status_code,
                              dict(exc.headers or {}))


def _validation_message(errors: list[Any]) -> str:
    """One readable line from pydantic's validation errors."""
    parts = []
    for err in errors[:3]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("query", "body"))
        parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"
