"""The outermost middleware: request id, model and latency headers, metrics, the request log
line, the cap on requests in flight, the body deadline, and the catch-all that turns a bug into
a JSON 500 without a stack trace.

A client that goes away while its body is being read is not a server error: it is counted as
`client_closed` (status label 499 in skin_requests_total, as nginx does) and logged in one line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skincli.serve.errors import BodyTimeout, error_body

log = logging.getLogger("skincli.serve")

_PLAIN_ROUTES = {"/openapi.json", "/"}
# Probes stay answerable when the request cap is reached: they are cheap and say why.
_PROBES = ("/health", "/ready", "/metrics")
CLIENT_CLOSED = 499


def _plain_json(status: int, code: str, message: str, request_id: str,
                extra: list[tuple[bytes, bytes]] | None = None) -> tuple[Message, Message]:
    body = json.dumps(error_body(code, message, request_id)).encode()
    start: Message = {"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *(extra or [])]}
    return start, {"type": "http.response.body", "body": body}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def new_request_id() -> str:
    """A fresh random request id."""
    return uuid.uuid4().hex


class RequestContext:
    """Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer streaming bodies)."""

    def __init__(self, app: ASGIApp, state: Any) -> None:
        self.app = app
        self.state = state
        self.active = 0  # requests being handled now (probes excluded)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        incoming = _header(scope, b"x-request-id")
        # Honour a caller's id (to correlate across services) only if it is a safe token.
        request_id = incoming if incoming and _REQUEST_ID.match(incoming) else new_request_id()
        scope["skin.request_id"] = request_id
        scope["skin.start"] = start
        scope.setdefault("state", {})["request_id"] = request_id
        scope["skin.images"] = []  # SHA-256 of each image, filled by the routes
        sent: dict[str, Any] = {"status": None}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
                # The model that answered (set by the route), not whichever is current now.
                model = scope.get("skin.model") or self.state.holder.current
                elapsed_ms = (time.perf_counter() - start) * 1000
                headers = list(message.get("headers", []))
                headers += [
                    (b"x-request-id", request_id.encode()),
                    (b"x-model-name", (model.name if model else "none").encode()),
                    (b"x-model-version", (model.version if model else "none").encode()),
                    (b"x-latency-ms", f"{elapsed_ms:.1f}".encode()),
                    (b"server-timing", f"total;dur={elapsed_ms:.1f}".encode()),
                    (b"x-content-type-options", b"nosniff"),
                ]
                if scope.get("path", "").startswith("/v1/"):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        settings = self.state.settings
        body_deadline = start + settings.body_timeout_s
        body_done = scope.get("method") in ("GET", "HEAD")

        async def guarded_receive() -> Message:
            """receive() with the body deadline; after the body, plain receive()."""
            nonlocal body_done
            if body_done:
                return await receive()
            remaining = body_deadline - time.perf_counter()
            try:
                if remaining <= 0:
                    raise TimeoutError
                message = await asyncio.wait_for(receive(), remaining)
            except (TimeoutError, asyncio.TimeoutError):
                raise BodyTimeout from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        probe = scope.get("path", "") in _PROBES
        if not probe and self.active >= settings.max_requests:
            scope["skin.error_code"] = "overloaded"
            for message in _plain_json(503, "overloaded", f"More than {settings.max_requests} "
                                       "requests in flight; retry shortly", request_id,
                                       [(b"retry-after", b"1")]):
                await send_with_headers(message)
            self._record(scope, 503, time.perf_counter() - start, request_id)
            return
        if not probe:
            self.active += 1
        try:
            await self.app(scope, guarded_receive, send_with_headers)
        except Exception:
            log.exception("internal error in request %s", request_id)
            if sent["status"] is None:
                body = json.dumps(error_body(
                    "internal_error", "Internal error; it was logged with this request id",
                    request_id)).encode()
                scope["skin.error_code"] = "internal_error"
                await send_with_headers({"type": "http.response.start", "status": 500,
                                         "headers": [(b"content-type", b"application/json"),
                                                     (b"content-length", str(len(body)).encode())]})
                await send_with_headers({"type": "http.response.body", "body": body})
        finally:
            if not probe:
                self.active -= 1
            status = CLIENT_CLOSED if scope.get("skin.client_closed") else (sent["status"] or 500)
            self._record(scope, status, time.perf_counter() - start, request_id)

    def _record(self, scope: Scope, status: int, seconds: float, request_id: str) -> None:
        route = getattr(scope.get("route"), "path", None)
        raw = scope.get("path", "")
        # Never label with a raw path: clients could explode the number of series.
        path = route or ("/static" if raw.startswith(("/static/", "/docs-assets/")) else
                         raw if raw in _PLAIN_ROUTES else "unmatched")
        metrics = self.state.metrics
        metrics.requests.inc(route=path, method=scope.get("method", ""), status=str(status))
        metrics.latency.observe(seconds, route=path)
        if status == CLIENT_CLOSED:
            metrics.client_closed.inc(route=path)
        if path in ("/metrics", "/health", "/ready", "/static"):
            return  # probes and assets would drown the log
        images = ",".join(scope.get("skin.images") or []) or "-"
        code = scope.get("skin.error_code", "-")
        log.info("%s %s %s %d %.1fms error=%s image_sha256=%s", request_id,
                 scope.get("method"), path, status, seconds * 1000, code, images)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            try:
                return value.decode("latin-1").strip()
            except Exception:
                return None
    return None
