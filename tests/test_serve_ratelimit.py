"""Per-client rate limit: token buckets per API key (else per address), 429 + RateLimit-*."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_serve_support import image_bytes, make_runs, serving, upload
from typer.testing import CliRunner

from skincli.errors import SkinError
from skincli.serve.ratelimit import Rate, RateLimiter, parse_rate


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_runs(tmp_path_factory.mktemp("ratelimit"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- parsing -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, rate", [
    ("60/minute", Rate(60, 60.0)), ("5/second", Rate(5, 1.0)), ("1000/hour", Rate(1000, 3600.0)),
    (" 10 / min ", Rate(10, 60.0)), ("2/minutes", Rate(2, 60.0)), ("7/S", Rate(7, 1.0)),
])
def test_parse_rate(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate
    assert parse_rate(str(rate)) == rate


@pytest.mark.parametrize("text", ["", "60", "60/fortnight", "0/minute", "-1/minute",
                                  "1.5/second", "ten/minute", "60/", "/minute", "60 per minute"])
def test_bad_rate_is_one_clear_error(text: str) -> None:
    with pytest.raises(SkinError) as err:
        parse_rate(text)
    assert "--rate-limit (SKIN_RATE_LIMIT)" in err.value.message
    assert "N/minute" in (err.value.hint or "")


def test_bad_rate_from_env_and_cli_is_one_line(tmp_path: Path) -> None:
    from skincli.cli import app
    from skincli.serve.settings import Settings

    with pytest.raises(SkinError, match="SKIN_RATE_LIMIT"):
        Settings.from_env({"SKIN_RATE_LIMIT": "lots"})
    assert Settings.from_env({"SKIN_RATE_LIMIT": "30/min"}).rate_limit == "30/minute"
    runner = CliRunner()
    result = runner.invoke(app, ["serve", "--runs-dir", str(tmp_path), "--rate-limit", "fast"])
    assert result.exit_code == 1, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "'fast' is not a rate" in result.output and "Traceback" not in result.output
    assert "--rate-limit" in runner.invoke(app, ["serve", "--help"]).output


# --- the bucket --------------------------------------------------------------------------------

def test_bucket_allows_a_burst_then_one_per_interval() -> None:
    clock = Clock()
    limiter = RateLimiter(Rate(3, 60.0), clock=clock)
    verdicts = [limiter.hit("a") for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert [v.remaining for v in verdicts] == [2, 1, 0, 0]
    refused = verdicts[-1]
    assert refused.retry_after_s == 20 and refused.reset_s == 60
    assert dict(refused.headers())[b"retry-after"] == b"20"
    assert b"retry-after" not in dict(verdicts[0].headers())
    assert limiter.hit("b").allowed  # another client has its own bucket
    clock.now += 19.0
    assert not limiter.hit("a").allowed
    clock.now += 1.0  # 20 s after the first refusal: one token back
    assert limiter.hit("a").allowed and not limiter.hit("a").allowed
    clock.now += 3600
    assert limiter.hit("a").remaining == 2  # refills to the burst, not beyond


def test_bucket_memory_is_bounded_least_recent_dropped_first() -> None:
    clock = Clock()
    limiter = RateLimiter(Rate(1, 60.0), max_clients=100, clock=clock)
    assert limiter.hit("keep").allowed
    for i in range(1000):
        limiter.hit(f"addr-{i}")
        if i % 10 == 0:
            assert not limiter.hit("keep").allowed  # seen recently: never dropped
    assert len(limiter) == 100
    assert limiter.hit("addr-0").allowed  # dropped long ago: starts full again


# --- the server --------------------------------------------------------------------------------

def _keys(tmp_path: Path) -> str:
    path = tmp_path / "keys.txt"
    path.write_text("key-a\nkey-b\n")
    return str(path)


def _predict(client: Any, key: str | None = None, **headers: str) -> Any:
    if key:
        headers["X-API-Key"] = key
    return client.post("/v1/predict", files=upload(image_bytes(seed=1)), headers=headers)


def test_throttled_key_does_not_slow_another_key(runs: Path, tmp_path: Path) -> None:
    with serving(runs, api_keys_file=_keys(tmp_path), rate_limit="2/minute") as client:
        first, second = _predict(client, "key-a"), _predict(client, "key-a")
        assert first.status_code == second.status_code == 200, first.text
        assert first.headers["ratelimit-limit"] == "2"
        assert [first.headers["ratelimit-remaining"],
                second.headers["ratelimit-remaining"]] == ["1", "0"]
        refused = _predict(client, "key-a")
        assert refused.status_code == 429
        body = refused.json()
        assert set(body) == {"error", "message", "request_id"}
        assert body["error"] == "rate_limited" and "2/minute" in body["message"]
        assert body["request_id"] == refused.headers["x-request-id"]
        assert 1 <= int(refused.headers["retry-after"]) <= 30
        assert refused.headers["ratelimit-remaining"] == "0"
        assert 0 < int(refused.headers["ratelimit-reset"]) <= 60
        # The same key as a bearer token is the same client.
        assert client.get("/v1/model", headers={"Authorization": "Bearer key-a"}
                          ).status_code == 429
        # Key B is answered at once, with its own full allowance.
        other = _predict(client, "key-b")
        assert other.status_code == 200 and other.headers["ratelimit-remaining"] == "1"
        # Probes are not limited.
        assert client.get("/health").status_code == 200
        assert client.get("/ready").status_code == 200
        metrics = client.get("/metrics").text
        assert "skin_rate_limited_total 2" in metrics
        assert ('skin_requests_total{route="/v1/predict",method="POST",status="429"} 1'
                in metrics)
        assert 'skin_requests_total{route="/v1/model",method="GET",status="429"} 1' in metrics


def test_wrong_keys_share_their_address_bucket(runs: Path, tmp_path: Path) -> None:
    """Made-up keys cannot each claim a fresh allowance (nor push real clients out)."""
    with serving(runs, api_keys_file=_keys(tmp_path), rate_limit="2/minute") as client:
        codes = [client.get("/v1/model", headers={"X-API-Key": f"guess-{i}"}).status_code
                 for i in range(4)]
        assert codes == [401, 401, 429, 429]
        assert client.get("/v1/model", headers={"X-API-Key": "key-a"}).status_code == 200


def test_browser_apps_on_another_origin_can_read_the_headers(runs: Path) -> None:
    origin = "https://app.example.org"
    with serving(runs, rate_limit="1/minute", cors_origins=[origin]) as client:
        client.get("/v1/model", headers={"Origin": origin})
        refused = client.get("/v1/model", headers={"Origin": origin})
        assert refused.status_code == 429
        assert refused.headers["access-control-allow-origin"] == origin
        exposed = {h.strip().lower()
                   for h in refused.headers["access-control-expose-headers"].split(",")}
        assert {"retry-after", "ratelimit-limit", "ratelimit-remaining",
                "ratelimit-reset"} <= exposed


def test_without_keys_the_limit_is_per_address(runs: Path) -> None:
    with serving(runs, rate_limit="1/minute") as client:
        assert client.get("/v1/model").status_code == 200
        assert client.get("/v1/model").status_code == 429
        assert client.get("/v1/model").json()["error"] == "rate_limited"
        assert client.get("/v1/model", headers={"X-Forwarded-For": "10.0.0.9"}
                          ).status_code == 429  # a header is not an address


def test_no_limit_by_default_and_429_documented(runs: Path) -> None:
    with serving(runs) as client:
        r = client.get("/v1/model")
        assert r.status_code == 200 and "ratelimit-limit" not in r.headers
        assert r.json()["serving"]["rate_limit"] is None
        schema = client.get("/openapi.json").json()
        for path in ("/v1/predict", "/v1/predict/batch", "/v1/model", "/v1/explain"):
            method = "get" if path == "/v1/model" else "post"
            answer = schema["paths"][path][method]["responses"]["429"]
            assert answer["content"]["application/json"]["schema"]["$ref"].endswith("ErrorOut")
            assert "Retry-After" in answer["headers"]
        assert "429" not in schema["paths"]["/health"]["get"]["responses"]
        assert "`rate_limited` (429)" in schema["info"]["description"]
