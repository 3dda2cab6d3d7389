"""Uvicorn's h11 protocol with what it lacks against slow or hostile clients.

Uvicorn bounds the keep-alive idle time (`timeout_keep_alive`) and, with `limit_concurrency`,
answers 503 once too many connections exist, but it has no deadline for receiving a request: a
client that sends half a request line and waits holds its connection (and a file descriptor)
forever, and thousands of them exhaust the process's open files ("accept out of resources").
This protocol class adds, per connection:

- a deadline for the request head (line + headers), counted from the connection's start or from
  the end of the previous response: past it, `408` and close (nothing was given to the app);
- a backstop deadline for the body (`body_timeout_s` + a grace): the app's own body deadline
  answers 408 first (see middleware.py); this closes the connection if the app never reads;
- a cap on open connections: at the cap, the connection that has waited longest for a request
  head (an idle keep-alive or a stalled client) is closed to make room; if every connection is
  busy with a request, the new one gets `503` and is closed.

Use it with `uvicorn --http skincli.serve.protocol:GuardedH11Protocol`; `skin serve` does. Its
limits come from the SKIN_* environment (Settings), read once per process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("skincli.serve")

_BODY_GRACE_S = 5.0


class Limits:
    """The connection limits this process applies (from Settings)."""

    def __init__(self, header_timeout_s: float = 10.0, body_timeout_s: float = 30.0,
                 max_connections: int = 2048) -> None:
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.max_connections = max_connections
        self.stats = {"head_timeouts": 0, "body_timeouts": 0, "evicted": 0, "refused": 0}

    @classmethod
    def from_env(cls) -> Limits:
        from skincli.serve.settings import Settings

        s = Settings.from_env()
        return cls(s.header_timeout_s, s.body_timeout_s, s.max_connections)


_limits: Limits | None = None


def limits() -> Limits:
    """This process's limits (read from the environment on first use)."""
    global _limits
    if _limits is None:
        _limits = Limits.from_env()
    return _limits


def set_limits(value: Limits | None) -> None:
    """Replace the limits (tests, embedding); None = read the environment again."""
    global _limits
    _limits = value


def _raw_response(status: int, reason: str, code: str, message: str,
                  extra: tuple[str, ...] = ()) -> bytes:
    body = json.dumps({"error": code, "message": message, "request_id": "-"}).encode()
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json",
            f"Content-Length: {len(body)}", "Connection: close", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


_HEAD_TIMEOUT = _raw_response(408, "Request Timeout", "request_timeout",
                              "The request head did not arrive in time")
_FULL = _raw_response(503, "Service Unavailable", "overloaded",
                      "Too many open connections; retry shortly", ("Retry-After: 1",))


class GuardedH11Protocol(H11Protocol):
    """H11Protocol plus request head/body deadlines and a cap on open connections."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits()
        self._timer: asyncio.TimerHandle | None = None
        self._phase = "head"  # head: waiting for a request head; body: reading; app: handled
        self._waiting_since = time.monotonic()

    # -- connection lifecycle ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._limits.max_connections and not self._make_room():
            self._limits.stats["refused"] += 1
            self.connections.discard(self)
            transport.write(_FULL)
            transport.close()
            return
        self._arm_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_head()  # the next request's head is due from now

    # -- deadlines ---------------------------------------------------------------------------
    def _follow(self) -> None:
        """Move the deadline along with what h11 has parsed so far."""
        state = self.conn.their_state
        if state is h11.IDLE:
            return  # still waiting for (the rest of) a head: the head deadline keeps running
        if state is h11.SEND_BODY:
            if self._phase == "head":
                self._phase = "body"
                self._set(self._limits.body_timeout_s + _BODY_GRACE_S, self._body_expired)
            return
        if self._phase != "app":
            self._phase = "app"  # the whole request is in: the app's own budget applies
            self._cancel()

    def _arm_head(self) -> None:
        self._phase = "head"
        self._waiting_since = time.monotonic()
        self._set(self._limits.header_timeout_s, self._head_expired)

    def _set(self, seconds: float, callback: Any) -> None:
        self._cancel()
        self._timer = self.loop.call_later(seconds, callback)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_expired(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self._phase != "head":
            return
        self._limits.stats["head_timeouts"] += 1
        # Only a client that sent something gets an answer; an idle keep-alive just closes.
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
            self.transport.write(_HEAD_TIMEOUT)
        self.transport.close()

    def _body_expired(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self._phase != "body":
            return
        self._limits.stats["body_timeouts"] += 1
        self.transport.close()  # the app sees a disconnect; a response was due long ago

    # -- the connection cap ------------------------------------------------------------------
    def _make_room(self) -> bool:
        """Close the connection waiting longest for a request head; False if none is idle."""
        oldest: GuardedH11Protocol | None = None
        for conn in self.connections:
            if (conn is not self and isinstance(conn, GuardedH11Protocol)
                    and conn._phase == "head" and not conn.transport.is_closing()
                    and (oldest is None or conn._waiting_since < oldest._waiting_since)):
                oldest = conn
        if oldest is None:
            return False
        self._limits.stats["evicted"] += 1
        oldest._cancel()
        oldest.transport.close()
        oldest.connections.discard(oldest)
        return True
