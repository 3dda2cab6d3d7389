"""Outbound calls: only configured hosts (the SSRF table), and retries only where they help."""

from __future__ import annotations

import logging

import httpx
import pytest

from skincli.clinical import outbound
from skincli.clinical.outbound import (
    BearerAuth,
    BlockedDestination,
    Endpoint,
    Outbound,
    OutboundError,
    Retry,
)

CANARY = "canary-token-7f3a9c"


@pytest.mark.parametrize(("url", "why"), [
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://[::ffff:169.254.169.254]/", "link-local"),
    ("http://[::ffff:7f00:1]/", "loopback"),
    ("http://2130706433/", "numeric host"),
    ("http://0x7f000001/", "numeric host"),
    ("http://017700000001/", "numeric host"),
    ("http://127.1/", "numeric host"),
    ("http://0x7f.0.0.1/", "numeric host"),
    ("http://127.0.0.1:8042/", "loopback"),
    ("http://localhost:8042/", "loopback"),  # resolved, then judged
    ("http://user@pacs.example/", "user name"),
    ("http://user:pw@127.0.0.1/", "user name"),
    ("http://pacs.example@169.254.169.254/", "user name"),
    ("file:///etc/passwd", "scheme"),
    ("gopher://pacs.example/", "scheme"),
    ("ftp://pacs.example/", "scheme"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://[::]/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://pacs.example\\@evil/", "backslash"),
    ("http://pacs example/", "space"),
    ("http://pacs_ex!ample/", "characters"),
])
def test_ssrf_table(url: str, why: str) -> None:
    """Each trick is refused before any byte is sent (the transport would fail the test)."""
    def never(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"a request was sent to {request.url}")

    with pytest.raises(BlockedDestination) as err:
        ep = Endpoint("pacs", url)
        Outbound(ep, transport=httpx.MockTransport(never)).request("GET", "studies")
    assert why in str(err.value)


def test_private_and_allowed_loopback_pass_and_paths_stay_on_the_host() -> None:
    seen: list[str] = []

    def ok(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={})

    out = Outbound(Endpoint("pacs", "http://127.0.0.1:8042/dicom-web", allow_loopback=True),
                   transport=httpx.MockTransport(ok))
    out.request("GET", "studies", params={"PatientID": "x"})
    assert seen == ["http://127.0.0.1:8042/dicom-web/studies?PatientID=x"]
    for path in ("http://169.254.169.254/", "//evil.example/x", "file:///etc/passwd",
                 "https:evil.example"):
        with pytest.raises(BlockedDestination):
            out.request("GET", path)
    Endpoint("pacs", "http://10.1.2.3/")  # a hospital network
    with pytest.raises(BlockedDestination, match="private"):
        Endpoint("pacs", "http://10.1.2.3/", allow_private=False)


def test_redirects_only_to_the_same_origin() -> None:
    hits: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hits.append(str(request.url))
        if request.url.path == "/a":
            return httpx.Response(302, headers={"Location": "/b"})
        if request.url.path == "/b":
            return httpx.Response(200, text="b")
        if request.url.path == "/meta":
            return httpx.Response(302, headers={"Location": "http://169.254.169.254/x"})
        return httpx.Response(307, headers={"Location": "http://127.0.0.1:9999/x"})

    out = Outbound(Endpoint("pacs", "http://127.0.0.1:8042/", allow_loopback=True),
                   transport=httpx.MockTransport(handler))
    assert out.request("GET", "a").text == "b"
    for path in ("meta", "other"):
        with pytest.raises(BlockedDestination, match="another host"):
            out.request("GET", path)
    assert not [h for h in hits if "169.254" in h or "9999" in h]


def _flaky(statuses: list[int | type[Exception]]):
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        step = statuses[min(len(calls) - 1, len(statuses) - 1)]
        if isinstance(step, type):
            raise step("connection reset by peer", request=request)
        return httpx.Response(step, json={"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "invalid", "diagnostics": f"status {step}"}]})
    return handler, calls


@pytest.mark.parametrize("fault", [503, 429, 502, httpx.ReadError, httpx.ConnectError,
                                   httpx.RemoteProtocolError])
def test_transient_faults_are_retried_with_backoff(fault: object) -> None:
    handler, calls = _flaky([fault, fault, 200])
    waits: list[float] = []
    ep = Endpoint("ehr", "http://127.0.0.1:1/", allow_loopback=True,
                  retry=Retry(attempts=4, base_s=0.5, cap_s=4.0, deadline_s=60))
    out = Outbound(ep, transport=httpx.MockTransport(handler), sleep=waits.append)
    assert out.request("POST", "", json={}).status_code == 200
    assert len(calls) == 3 and len(waits) == 2
    assert 0 <= waits[0] <= 0.5 and 0 <= waits[1] <= 1.0  # full jitter under 2^n backoff


def test_retries_are_bounded_by_attempts_and_by_the_deadline() -> None:
    handler, calls = _flaky([503])
    ep = Endpoint("ehr", "http://127.0.0.1:1/", allow_loopback=True,
                  retry=Retry(attempts=3, base_s=0.01, deadline_s=60))
    out = Outbound(ep, transport=httpx.MockTransport(handler), sleep=lambda s: None)
    with pytest.raises(OutboundError, match="after 3 attempt"):
        out.request("GET", "")
    assert len(calls) == 3
    # Retry-After longer than the time left: give up now rather than sleep past the deadline.
    def later(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": "30"})
    ep = Endpoint("ehr", "http://127.0.0.1:1/", allow_loopback=True,
                  retry=Retry(attempts=10, cap_s=60, deadline_s=5))
    waits: list[float] = []
    with pytest.raises(OutboundError, match="after 1 attempt"):
        Outbound(ep, transport=httpx.MockTransport(later), sleep=waits.append).request("GET")
    assert waits == []


@pytest.mark.parametrize("status", [400, 403, 404, 409, 410, 422, 500])
def test_permanent_failures_are_not_retried(status: int) -> None:
    handler, calls = _flaky([status, 200])
    out = Outbound(Endpoint("ehr", "http://127.0.0.1:1/", allow_loopback=True),
                   transport=httpx.MockTransport(handler), sleep=lambda s: None)
    with pytest.raises(OutboundError) as err:
        out.request("POST", "", json={})
    assert len(calls) == 1 and err.value.status == status
    assert f"HTTP {status}: status {status}" in str(err.value)  # the OperationOutcome, 1 line


class _Rotating:
    def __init__(self) -> None:
        self.token, self.refreshes = CANARY + "-1", 0

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def refresh(self) -> None:
        self.refreshes += 1
        self.token = CANARY + f"-{self.refreshes + 1}"

    def secrets(self) -> list[str]:
        return [self.token]


def test_401_refreshes_the_token_once() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        return httpx.Response(200 if seen[-1].endswith("-2") else 401)

    auth = _Rotating()
    out = Outbound(Endpoint("ehr", "http://127.0.0.1:1/", allow_loopback=True, auth=auth),
                   transport=httpx.MockTransport(handler))
    assert out.request("GET").status_code == 200 and auth.refreshes == 1
    # Still refused with the fresh token: one refresh only, then a permanent failure.
    def never(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, text=f"bad token {request.headers['authorization']}")
    auth2 = _Rotating()
    out = Outbound(Endpoint("ehr", "http://127.0.0.1:1/", allow_loopback=True, auth=auth2),
                   transport=httpx.MockTransport(never))
    with pytest.raises(OutboundError) as err:
        out.request("GET")
    assert auth2.refreshes == 1 and err.value.status == 401
    assert CANARY not in str(err.value) and CANARY not in err.value.body


def test_secrets_never_reach_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    def echo(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/busy":
            return httpx.Response(503)
        return httpx.Response(403, json={"resourceType": "OperationOutcome", "issue": [{
            "severity": "error", "code": "forbidden",
            "diagnostics": f"token {request.headers['authorization']} not allowed"}]})

    auth = BearerAuth(CANARY)
    assert CANARY not in repr(auth)
    out = Outbound(Endpoint("ehr", "http://127.0.0.1:1/", allow_loopback=True, auth=auth,
                            retry=Retry(attempts=2, base_s=0.0)),
                   transport=httpx.MockTransport(echo), sleep=lambda s: None)
    messages = []
    for path in ("denied", "busy"):
        with pytest.raises(OutboundError) as err:
            out.request("GET", path)
        messages += [str(err.value), err.value.body]
    assert "forbidden" not in messages[0] and "[secret] not allowed" in messages[0]
    text = "\n".join(messages) + caplog.text
    assert CANARY not in text and "retry 1" in caplog.text
    assert outbound.RETRY_STATUS == {429, 502, 503, 504}
