"""Fuzz every operation of the OpenAPI schema: no 5xx, responses match the documented shapes."""

from __future__ import annotations

from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis (dev extra)")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402
from test_serve_support import make_runs  # noqa: E402

from skincli.serve.errors import ERROR_CODES  # noqa: E402

MAX_EXAMPLES = 250  # per operation; parameter-less ones run out sooner: >= 1,000 in all
MIN_CASES = 1000


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from skincli.serve.app import create_app
    from skincli.serve.settings import Settings

    runs = make_runs(tmp_path_factory.mktemp("fuzz"))
    # API keys on, so the fuzzer also hits the 401 paths; the reload run name is fuzzed too.
    app = create_app(Settings(run="alpha", runs_dir=str(runs), no_log=True, api_key="fuzz-key",
                              max_upload_mb=1, timeout_s=20))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def _fuzz(api_schema: Any, max_examples: int, check: Any) -> tuple[list[str], int]:
    """Run hypothesis over every operation; return the operations exercised and the cases."""
    from hypothesis import given

    seen = []
    cases = [0]
    for result in api_schema.get_all_operations():
        operation = result.ok()
        seen.append(f"{operation.method.upper()} {operation.path}")

        @given(case=operation.as_strategy())
        @settings(max_examples=max_examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            cases[0] += 1
            check(case)

        run()
    return seen, cases[0]


def _check_with_key(case: Any) -> None:
    response = case.call(headers={"X-API-Key": "fuzz-key"})
    assert response.status_code < 500, (case.method, case.path, response.text[:300])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error", "message", "request_id"}, body
        assert body["error"] in ERROR_CODES
        assert "Traceback" not in response.text
    # Any bytes match `format: binary`, but only images are accepted (415/422 by design), so
    # "schema-valid data must be accepted" does not apply to uploads.
    case.validate_response(response, excluded_checks=[positive_data_acceptance])


def _check_without_key(case: Any) -> None:
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.text[:300])
    if case.path.startswith("/v1/"):
        # Keys are on: whatever the parameters or body, no key is a 401 (auth comes first).
        assert response.status_code == 401, response.text[:300]


def test_fuzz_with_key_no_5xx_and_documented_responses(api_schema: Any) -> None:
    seen, cases = _fuzz(api_schema, MAX_EXAMPLES, _check_with_key)
    assert cases >= MIN_CASES, cases
    assert {"POST /v1/predict", "POST /v1/predict/batch", "POST /v1/explain", "GET /v1/model",
            "POST /v1/model/reload", "GET /health", "GET /ready", "GET /metrics"} <= set(seen)


def test_fuzz_without_key_is_refused_cleanly(api_schema: Any) -> None:
    _fuzz(api_schema, 10, _check_without_key)
