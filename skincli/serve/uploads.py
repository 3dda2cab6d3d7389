"""Reading uploads safely: size checked from Content-Length AND counted while reading.

Accepted bodies: multipart/form-data with the image in field `file` (batch: repeated `files`
or `file` fields), or the raw image bytes as the whole body (e.g. Content-Type: image/jpeg).
The image type is never trusted from a header; the decoder checks the bytes.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from skincli.serve.errors import ApiError

# Room for multipart boundaries and part headers on top of the image bytes.
_MULTIPART_OVERHEAD = 64 * 1024


@dataclass
class Upload:
    """One uploaded image's bytes and the name the client gave it."""

    filename: str | None
    data: bytes


def _too_large(limit: int) -> ApiError:
    return ApiError("payload_too_large",
                    f"The upload is larger than the limit of {limit / 1024 / 1024:.1f} MB; "
                    "send a smaller image (the model only needs a few hundred pixels a side)")


async def _counted(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    """The body stream, refusing it as soon as more than `limit` bytes have arrived."""
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise _too_large(limit)
        yield chunk


async def read_uploads(request: Request, *, per_file: int, max_files: int,
                       many: bool) -> list[Upload]:
    """Read the request's image(s); raise ApiError for size, count or malformed bodies."""
    body_limit = per_file * (max_files if many else 1) + _MULTIPART_OVERHEAD
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError("invalid_request", "Content-Length is not a number") from None
        if size > body_limit:
            raise _too_large(per_file if not many else body_limit)
    content_type = request.headers.get("content-type", "")
    if content_type.lower().startswith("multipart/form-data"):
        uploads = await _multipart(request, body_limit, max_files, many)
    else:
        data = bytearray()
        async for chunk in _counted(request, per_file):
            data.extend(chunk)
        uploads = [Upload(None, bytes(data))] if data else []
    if not uploads:
        field = "files" if many else "file"
        raise ApiError("missing_file", f"No image in the request: send it as multipart field "
                       f"'{field}' (or as the raw request body)")
    for up in uploads:
        if len(up.data) > per_file:
            raise _too_large(per_file)
    return uploads


async def _multipart(request: Request, body_limit: int, max_files: int,
                     many: bool) -> list[Upload]:
    parser = MultiPartParser(request.headers, _counted(request, body_limit),
                             max_files=max_files if many else 1, max_fields=32,
                             max_part_size=64 * 1024)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        too_many = "Too many files" in str(exc)
        if too_many and many:
            raise ApiError("too_many_files", f"At most {max_files} images per batch request; "
                           "split the batch") from None
        if too_many:
            raise ApiError("invalid_request", "Send exactly one image to this endpoint; use "
                           "/v1/predict/batch for several") from None
        raise ApiError("invalid_request", f"Malformed multipart body: {exc}") from None
    except (ValueError, UnicodeError, KeyError, IndexError) as exc:
        raise ApiError("invalid_request", f"Malformed multipart body ({type(exc).__name__})"
                       ) from None
    names = ("files", "file") if many else ("file",)
    uploads: list[Upload] = []
    try:
        for key, value in form.multi_items():
            if key not in names:
                continue
            if not isinstance(value, UploadFile):
                raise ApiError("missing_file", f"Field '{key}' must be a file upload, not text")
            uploads.append(Upload(value.filename, await value.read()))
    finally:
        await form.close()
    return uploads
