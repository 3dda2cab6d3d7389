"""What several route modules share: the OpenAPI pieces for uploads and errors, and the
request's elapsed time."""

from __future__ import annotations

import time
from typing import Any

from fastapi import Request

from skincli.serve import schemas
from skincli.serve.errors import ERROR_CODES

# The errors any route that reads an image upload can answer with.
IMAGE_ERRORS = ("invalid_request", "missing_file", "empty", "corrupt", "unsupported_type",
                "payload_too_large", "too_many_pixels", "unauthorized", "overloaded", "timeout")


def upload_body(many: bool, max_files: int = 1) -> dict[str, Any]:
    """OpenAPI requestBody for an image upload (the route parses it itself, safely)."""
    field = "files" if many else "file"
    item = {"type": "string", "format": "binary"}
    prop = {"type": "array", "items": item, "minItems": 1, "maxItems": max_files} \
        if many else item
    content: dict[str, Any] = {"multipart/form-data": {"schema": {
        "type": "object", "required": [field], "properties": {field: prop}}}}
    if not many:
        content["application/octet-stream"] = {"schema": item}
    return {"requestBody": {"required": True, "content": content}}


def error_responses(*codes: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` for these error codes, grouped by HTTP status."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        status, text = ERROR_CODES[code]
        entry = out.setdefault(status, {"model": schemas.ErrorOut, "description": ""})
        entry["description"] = (entry["description"] + "; " if entry["description"] else "") + \
            f"`{code}`: {text}"
    return out


def elapsed_ms(request: Request) -> float:
    """Milliseconds since the request arrived (the middleware stamps its start)."""
    return round((time.perf_counter() - request.scope["skin.start"]) * 1000, 1)
