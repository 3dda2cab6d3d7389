"""Per-client rate limit: a token bucket per API key (per client address without a key).

`--rate-limit 60/minute` lets each client send a burst of up to 60 `/v1/*` requests and then
one more per second; beyond it, 429 `rate_limited` with `Retry-After` and the `RateLimit-*`
headers. Every `/v1/*` answer carries `RateLimit-Limit`, `RateLimit-Remaining` and
`RateLimit-Reset`, so a client can pace itself before it is refused.

The buckets live in this worker process: the limit holds per worker, so per replica with the
default single worker. A fleet needs one limit at the balancer (nginx `limit_req`; see
docs/deployment.md). Memory is bounded: at most `max_clients` buckets, the least recently seen
dropped first (a dropped bucket starts full again, which costs a client at most one burst).
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skincli.errors import SkinError
from skincli.serve.errors import error_body

CODE = "rate_limited"
MAX_CLIENTS = 10_000  # buckets kept at once: ~200 bytes each, so ~2 MB at most
_PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0}
_ALIASES = {"s": "second", "sec": "second", "m": "minute", "min": "minute", "h": "hour",
            "hr": "hour"}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+?)s?\s*$")


@dataclass(frozen=True)
class Rate:
    """`limit` requests per `period_s` seconds (also the burst a quiet client may send)."""

    limit: int
    period_s: float

    def __str__(self) -> str:
        unit = next(name for name, s in _PERIODS.items() if s == self.period_s)
        return f"{self.limit}/{unit}"


def parse_rate(text: str) -> Rate:
    """'60/minute' (also '5/second', '1000/hour', '60/min') -> Rate; SkinError otherwise."""
    match = _RATE.match(text.lower())
    unit = _ALIASES.get(match.group(2), match.group(2)) if match else ""
    if not match or unit not in _PERIODS or not 1 <= int(match.group(1)) <= 1_000_000:
        raise SkinError(f"--rate-limit (SKIN_RATE_LIMIT) {text!r} is not a rate",
                        hint="Write N/second, N/minute or N/hour with N from 1 to 1000000, "
                        "e.g. 60/minute")
    return Rate(int(match.group(1)), _PERIODS[unit])


@dataclass
class Verdict:
    """The limiter's answer for one request, and what the RateLimit-* headers say."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # seconds until the bucket is full again
    retry_after_s: int  # seconds until the next request would be allowed (0 if allowed)

    def headers(self) -> list[tuple[bytes, bytes]]:
        """RateLimit-* (and Retry-After when refused) as ASGI headers."""
        out = [(b"ratelimit-limit", str(self.limit).encode()),
               (b"ratelimit-remaining", str(self.remaining).encode()),
               (b"ratelimit-reset", str(self.reset_s).encode())]
        if not self.allowed:
            out.append((b"retry-after", str(self.retry_after_s).encode()))
        return out


class RateLimiter:
    """Token buckets by client id, at most `max_clients` of them (least recently seen dropped)."""

    def __init__(self, rate: Rate, max_clients: int = MAX_CLIENTS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.max_clients = max_clients
        self._clock = clock
        self._per_s = rate.limit / rate.period_s
        # client id -> (tokens, time of that count); the event loop is the only caller.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def hit(self, client: str) -> Verdict:
        """Take one token for `client` if it has one."""
        now = self._clock()
        cap = float(self.rate.limit)
        tokens, then = self._buckets.pop(client, (cap, now))
        tokens = min(cap, tokens + (now - then) * self._per_s)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[client] = (tokens, now)  # (re)inserted last: the most recently seen
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        wait = 0 if allowed else math.ceil((1.0 - tokens) / self._per_s)
        return Verdict(allowed, self.rate.limit, int(tokens),
                       math.ceil((cap - tokens) / self._per_s), wait)


def client_id(scope: Scope, valid_key: Callable[[str], bool]) -> str:
    """A valid API key's hash, else the client address: an unknown key cannot claim a bucket
    of its own (so random keys cannot flush other clients' buckets)."""
    key = _presented_key(scope)
    if key and valid_key(key):
        return "key:" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    client = scope.get("client")
    return "addr:" + (client[0] if client else "unknown")


def _presented_key(scope: Scope) -> str | None:
    """X-API-Key, else an Authorization: Bearer token (as the auth check reads them)."""
    bearer = None
    for name, value in scope.get("headers", []):
        name = name.lower()
        if name == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
        if name == b"authorization" and bearer is None:
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                bearer = token.strip()
    return bearer


class RateLimit:
    """ASGI middleware limiting `/v1/*` per client; probes, the page and the docs are free."""

    def __init__(self, app: ASGIApp, state: Any, routes: list[Any] | None = None) -> None:
        self.app = app
        self.state = state
        self.routes = routes or []  # to label a refused request by its route in the metrics
        rate = state.settings.rate_limit
        self.limiter = RateLimiter(parse_rate(rate)) if rate else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (self.limiter is None or scope["type"] != "http"
                or not scope.get("path", "").startswith("/v1/")):
            await self.app(scope, receive, send)
            return
        verdict = self.limiter.hit(client_id(scope, self.state.keys.valid))
        if not verdict.allowed:
            await self._refuse(scope, send, verdict)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  *verdict.headers()]}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _refuse(self, scope: Scope, send: Send, verdict: Verdict) -> None:
        import json

        self.state.metrics.rate_limited.inc()
        scope["skin.error_code"] = CODE
        # Refused before routing: name the route here, as the request counter labels by it.
        from starlette.routing import Match

        scope.setdefault("route", next((r for r in _flat(self.routes)
                                        if r.matches(scope)[0] is Match.FULL), None))
        rate = self.limiter.rate if self.limiter else ""
        body = json.dumps(error_body(
            CODE, f"More than {rate} requests from this client; retry in "
            f"{verdict.retry_after_s} s", scope.get("skin.request_id", "unknown"))).encode()
        await send({"type": "http.response.start", "status": 429, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            *verdict.headers()]})
        await send({"type": "http.response.body", "body": body})


def _flat(routes: list[Any]) -> list[Any]:
    """The routes themselves: FastAPI keeps an included router as one entry (without a path)
    that holds the router's own routes (the project's routers use full paths, no prefix)."""
    out: list[Any] = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        out.extend(_flat(list(inner.routes)) if inner is not None else [route])
    return out


def document_429(schema: dict[str, Any]) -> dict[str, Any]:
    """Declare the 429 answer on every /v1 operation of an OpenAPI schema (idempotent), so a
    generated client has a typed `rate_limited` error."""
    for path, item in schema.get("paths", {}).items():
        if not path.startswith("/v1/"):
            continue
        for op in item.values():
            if isinstance(op, dict) and "responses" in op:
                op["responses"].setdefault("429", {
                    "description": f"`{CODE}`: more requests than the server's --rate-limit "
                                   "from this client; retry after Retry-After seconds",
                    "headers": {name: {"schema": {"type": "integer"}, "description": text}
                                for name, text in _HEADER_DOCS.items()},
                    "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/ErrorOut"}}}})
    return schema


# Response headers a browser app on another origin may read (CORS expose-headers).
HEADERS = ("Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")

_HEADER_DOCS = {
    "Retry-After": "Seconds until the next request from this client is allowed",
    "RateLimit-Limit": "Requests allowed per period (the burst)",
    "RateLimit-Remaining": "Requests left now",
    "RateLimit-Reset": "Seconds until the full allowance is back",
}


def install(app: Any, state: Any) -> None:
    """Add the middleware inside the request-context middleware (so a 429 carries the request id
    and is counted like any answer) and inside CORS (so a browser app on another origin can
    read the 429), and declare the 429 in the schema. Call it last in the app factory: it wraps
    whatever `app.openapi` is by then."""
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware

    from skincli.serve.middleware import RequestContext

    stack = app.user_middleware  # outermost first
    outer = max((i for i, m in enumerate(stack) if m.cls in (RequestContext, CORSMiddleware)),
                default=-1)
    stack.insert(outer + 1, Middleware(RateLimit, state=state, routes=app.router.routes))
    inner = app.openapi
    app.openapi = lambda: document_429(inner())
