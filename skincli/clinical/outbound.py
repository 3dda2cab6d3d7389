"""Safe outbound calls: only to configured endpoints, retried only when a retry can help.

Every call the service makes to a PACS or an EHR goes through `Outbound.request`:
- The URL is the configured endpoint's base plus a relative path; a caller never supplies a
  host. The base is checked when configured and the host's addresses again before each call:
  only http(s), no user@host, no numeric tricks (2130706433, 0x7f.1, 017700000001), no
  link-local/metadata (169.254.169.254, fe80::), unspecified or multicast addresses, IPv4
  hidden in IPv6 (::ffff:127.0.0.1) judged as the IPv4 it is; loopback only when the
  endpoint allows it (`allow_loopback`, for a PACS on the same host and for tests).
- Redirects are followed only to the same scheme, host and port (at most 3).
- 503/502/504, 429 and dropped connections are retried with exponential backoff and full
  jitter (Retry-After honoured) under one overall deadline; other 4xx are permanent and never
  retried; 401 asks the auth for a fresh token once.
- Tokens and passwords never appear in an error message or a log line: errors name the
  endpoint, the method and the status, and a server's own words are cut short.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import random
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

import httpx

from skincli.errors import SkinError

log = logging.getLogger("skincli.outbound")

RETRY_STATUS = frozenset({429, 502, 503, 504})
MAX_REDIRECTS = 3
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}\.?$", re.I)


class OutboundError(SkinError):
    """A call to a configured endpoint failed (permanently, or after its retries)."""

    def __init__(self, message: str, *, hint: str | None = None, status: int | None = None,
                 body: str = "") -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.body = body


class BlockedDestination(OutboundError):
    """The URL or the address it resolves to is not one the service may call."""


class Auth(Protocol):
    """Headers for an endpoint's calls; `refresh` drops a cached token after a 401."""

    def headers(self) -> dict[str, str]: ...

    def refresh(self) -> None: ...

    def secrets(self) -> list[str]: ...


class BearerAuth:
    """A fixed bearer token (from the environment, never from the configuration file)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    def refresh(self) -> None:
        """A fixed token cannot be renewed: the retried call fails with 401 again."""

    def secrets(self) -> list[str]:
        return [self._token]

    def __repr__(self) -> str:
        return "BearerAuth(***)"


class BasicAuth:
    """HTTP Basic (user name and a password from the environment)."""

    def __init__(self, username: str, password: str) -> None:
        self._username, self._password = username, password

    def headers(self) -> dict[str, str]:
        raw = f"{self._username}:{self._password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}

    def refresh(self) -> None:
        """Nothing to renew."""

    def secrets(self) -> list[str]:
        return [self._password, self.headers()["Authorization"].split(" ", 1)[1]]

    def __repr__(self) -> str:
        return f"BasicAuth({self._username!r}, ***)"


@dataclass
class Retry:
    """How hard to try: attempts, backoff (base, cap) and one deadline for all of it."""

    attempts: int = 4
    base_s: float = 0.25
    cap_s: float = 4.0
    deadline_s: float = 30.0

    def delay(self, attempt: int, retry_after: str | None) -> float:
        """Full jitter (0..min(cap, base*2^n)), or the server's Retry-After if it says more."""
        wait = random.uniform(0, min(self.cap_s, self.base_s * (2 ** attempt)))
        if retry_after:
            try:
                wait = max(wait, min(self.cap_s, float(retry_after)))
            except ValueError:  # an HTTP date: the backoff alone
                pass
        return wait


@dataclass
class Endpoint:
    """One configured place the service may call."""

    name: str
    url: str
    allow_loopback: bool = False
    allow_private: bool = True
    timeout_s: float = 30.0
    retry: Retry = field(default_factory=Retry)
    auth: Any = None  # an Auth, or None
    kind: str = "dicomweb"  # or "fhir"

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/") + "/"
        check_url(self.url, self.name, self.allow_loopback, self.allow_private)


def _blocked(name: str, why: str) -> BlockedDestination:
    return BlockedDestination(f"Endpoint {name!r}: {why}",
                              hint="Only configured http(s) endpoints on allowed addresses "
                              "are called")


def check_address(addr: str, name: str, allow_loopback: bool, allow_private: bool) -> None:
    """Refuse an IP address the service must never call."""
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            ip = mapped
    if ip.is_link_local:
        raise _blocked(name, "a link-local address (cloud metadata lives there)")
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        raise _blocked(name, "an unspecified, multicast or reserved address")
    if ip.is_loopback:
        if not allow_loopback:
            raise _blocked(name, "a loopback address (set allow_loopback for a local server)")
        return
    if ip.is_private and not allow_private:
        raise _blocked(name, "a private address (set allow_private to call it)")


def check_url(url: str, name: str, allow_loopback: bool = False,
              allow_private: bool = True) -> str:
    """The URL's host if the URL may be called at all; BlockedDestination otherwise."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise _blocked(name, "not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise _blocked(name, f"scheme {parts.scheme or '(none)'!r} is not http or https")
    if "\\" in url or any(ord(c) < 33 for c in url):
        raise _blocked(name, "a backslash, space or control character in the URL")
    if "@" in parts.netloc or parts.username is not None:
        raise _blocked(name, "a user name or password in the URL (configure auth instead)")
    host = (parts.hostname or "").lower()
    if not host:
        raise _blocked(name, "no host")
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        if _NUMERIC_HOST.match(host):
            raise _blocked(name, f"the numeric host {host!r} is not a dotted IPv4 address "
                           "(decimal, octal and hex forms are refused)") from None
        if not re.fullmatch(r"[a-z0-9.-]+", host):
            raise _blocked(name, "the host name has characters a DNS name cannot have") from None
        return host
    check_address(host, name, allow_loopback, allow_private)
    return host


def _resolve(host: str, port: int) -> list[str]:
    try:
        return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port)})
    except OSError:
        return []


class Outbound:
    """Calls one endpoint: allowlisted URLs, same-origin redirects, bounded retries."""

    def __init__(self, endpoint: Endpoint, *, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.endpoint = endpoint
        self._client = httpx.Client(timeout=endpoint.timeout_s, follow_redirects=False,
                                    transport=transport, trust_env=False)
        self._sleep = sleep

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def url(self, path: str) -> str:
        """The endpoint's base joined with a relative path (never another host)."""
        if re.match(r"^[a-z][a-z0-9+.-]*:", path, re.I) or path.startswith(("//", "\\")):
            raise _blocked(self.endpoint.name, "a path that names its own host or scheme")
        # No path: the configured URL itself (a token endpoint, a FHIR base), no slash added.
        url = urljoin(self.endpoint.url, path.lstrip("/")) if path else \
            self.endpoint.url.rstrip("/")
        self._same_origin(url)
        return url

    def _same_origin(self, url: str) -> None:
        a, b = urlsplit(self.endpoint.url), urlsplit(url)
        if (a.scheme, a.hostname, a.port) != (b.scheme, b.hostname, b.port):
            raise _blocked(self.endpoint.name, "a redirect or path to another host")

    def _check_host(self, url: str) -> None:
        ep = self.endpoint
        host = check_url(url, ep.name, ep.allow_loopback, ep.allow_private)
        try:
            ipaddress.ip_address(host)
            return
        except ValueError:
            pass
        parts = urlsplit(url)
        addrs = _resolve(host, parts.port or (443 if parts.scheme == "https" else 80))
        for addr in addrs:
            check_address(addr, ep.name, ep.allow_loopback, ep.allow_private)

    def request(self, method: str, path: str = "", *, params: Any = None,
                headers: dict[str, str] | None = None, content: bytes | None = None,
                json: Any = None, deadline_s: float | None = None,
                ok: tuple[int, ...] = ()) -> httpx.Response:
        """One call, retried if it may help; the response (2xx, or a status in `ok`).

        Raises OutboundError (status set) for anything else, BlockedDestination before any
        byte is sent to a host that is not allowed.
        """
        ep = self.endpoint
        url = self.url(path)
        deadline = time.monotonic() + (ep.retry.deadline_s if deadline_s is None
                                       else deadline_s)
        refreshed = False
        attempt = 0
        redirects = 0
        while True:
            self._check_host(url)
            hdrs = dict(headers or {})
            if ep.auth is not None:
                hdrs.update(ep.auth.headers())
            left = deadline - time.monotonic()
            if left <= 0:
                raise OutboundError(f"{ep.name}: {method} gave up at its deadline",
                                    hint="The endpoint is slow or down; the job can be rerun")
            try:
                resp = self._client.request(method, url, params=params, headers=hdrs,
                                            content=content, json=json,
                                            timeout=min(ep.timeout_s, left))
            except (httpx.TransportError, httpx.DecodingError) as exc:
                # A reset, refused or timed-out connection: worth another try.
                reason, status, retry_after = type(exc).__name__, None, None
            else:
                status = resp.status_code
                if 300 <= status < 400 and "location" in resp.headers:
                    redirects += 1
                    target = urljoin(url, resp.headers["location"])
                    if redirects > MAX_REDIRECTS:
                        raise OutboundError(f"{ep.name}: {method} redirected too often")
                    self._same_origin(target)
                    url = target
                    continue
                if 200 <= status < 300 or status in ok:
                    return resp
                if status == 401 and ep.auth is not None and not refreshed:
                    refreshed = True  # the token may have expired: one fresh one, once
                    ep.auth.refresh()
                    continue
                if status not in RETRY_STATUS:
                    raise OutboundError(
                        f"{ep.name}: {method} refused with HTTP {status}"
                        f"{self._scrub(_summary(resp))}", status=status,
                        body=self._scrub(resp.text[:2000]),
                        hint="Not retried: the request itself was refused")
                reason, retry_after = f"HTTP {status}", resp.headers.get("retry-after")
            attempt += 1
            wait = ep.retry.delay(attempt - 1, retry_after)
            if attempt >= ep.retry.attempts or time.monotonic() + wait >= deadline:
                raise OutboundError(f"{ep.name}: {method} failed after {attempt} attempt(s) "
                                    f"({reason})", status=status,
                                    hint="The endpoint is busy or down; the job can be rerun")
            log.warning("%s: %s %s, retry %d in %.2fs", ep.name, method, reason, attempt, wait)
            self._sleep(wait)


    def _scrub(self, text: str) -> str:
        """A server's words with any of our secrets it echoed blanked out."""
        secrets = getattr(self.endpoint.auth, "secrets", None)
        for secret in (secrets() if secrets else []):
            if secret:
                text = text.replace(secret, "[secret]")
        return text


def _summary(resp: httpx.Response) -> str:
    """A server's own explanation in one short line (a FHIR OperationOutcome's issues)."""
    try:
        body = resp.json()
    except ValueError:
        return ""
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        texts = [str(i.get("diagnostics") or (i.get("details") or {}).get("text")
                     or i.get("code")) for i in body.get("issue", [])[:3]]
        return ": " + "; ".join(" ".join(t.split())[:200] for t in texts)
    if isinstance(body, dict) and isinstance(body.get("error"), str):  # OAuth2 errors
        text = f"{body['error']} {body.get('error_description') or ''}"
        return ": " + " ".join(text.split())[:200]
    return ""
