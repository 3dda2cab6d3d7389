"""What the API says about itself is true: the model headers during a reload, the OpenAPI
security scheme, auth before validation, run names resolved in the runs folder, the `target`
enum, batch size bounds, the list of accepted formats."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from test_serve_support import CLASSES_A, CLASSES_B, image_bytes, make_runs, serving, upload


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_runs(tmp_path_factory.mktemp("contract"))


def test_model_version_header_names_the_model_that_answered(runs: Path) -> None:
    from skincli.serve.model import load_model

    with serving(runs) as c:
        state = c.app.state.skin
        other = load_model(state.settings, "beta")
        original = state.infer

        async def infer_then_reload(model: Any, *args: Any, **kwargs: Any) -> Any:
            rows = await original(model, *args, **kwargs)
            state.holder.swap(other)  # a reload lands while this request is being answered
            await asyncio.sleep(0)
            return rows

        state.infer = infer_then_reload
        r = c.post("/v1/predict", files=upload(image_bytes()))
        assert r.status_code == 200
        body = r.json()
        assert body["model"]["name"] == "alpha"
        assert set(body["prediction"]["probabilities"]) == set(CLASSES_A)
        assert r.headers["x-model-name"] == "alpha"
        assert r.headers["x-model-version"] == body["model"]["version"]
        state.infer = original
        # The next request is answered by (and labelled with) the new model.
        r = c.post("/v1/predict", files=upload(image_bytes()))
        assert r.headers["x-model-name"] == r.json()["model"]["name"] == "beta"


def test_openapi_declares_the_key_schemes_and_bounds(runs: Path) -> None:
    with serving(runs, max_files=7) as c:
        schema = c.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key",
                                 "description": schemes["ApiKey"]["description"]}
    assert schemes["Bearer"]["type"] == "http" and schemes["Bearer"]["scheme"] == "bearer"
    for path, method in (("/v1/predict", "post"), ("/v1/predict/batch", "post"),
                         ("/v1/explain", "post"), ("/v1/model", "get"),
                         ("/v1/model/reload", "post")):
        names = {name for req in schema["paths"][path][method]["security"] for name in req}
        assert names == {"ApiKey", "Bearer"}, path
    assert "security" not in schema["paths"]["/health"]["get"]
    files = schema["paths"]["/v1/predict/batch"]["post"]["requestBody"]["content"][
        "multipart/form-data"]["schema"]["properties"]["files"]
    assert files["minItems"] == 1 and files["maxItems"] == 7
    target = next(p for p in schema["paths"]["/v1/explain"]["post"]["parameters"]
                  if p["name"] == "target")
    assert target["schema"]["anyOf"][0]["enum"] == CLASSES_A


def test_target_enum_follows_a_reload(runs: Path) -> None:
    with serving(runs, api_key="k") as c:
        r = c.post("/v1/model/reload", params={"run": "beta"}, headers={"X-API-Key": "k"})
        assert r.status_code == 200, r.text
        schema = c.get("/openapi.json").json()
    target = next(p for p in schema["paths"]["/v1/explain"]["post"]["parameters"]
                  if p["name"] == "target")
    assert target["schema"]["anyOf"][0]["enum"] == CLASSES_B


def test_auth_comes_before_query_validation(runs: Path) -> None:
    with serving(runs, api_key="secret") as c:
        for method, path, params in (("post", "/v1/model/reload", {"run": "/etc"}),
                                     ("post", "/v1/predict", {"top_k": "zero"}),
                                     ("post", "/v1/explain", {"format": "gif"}),
                                     ("post", "/v1/predict/batch", {"top_k": "-5"})):
            r = getattr(c, method)(path, params=params)
            assert r.status_code == 401, (path, r.status_code, r.text)
            assert r.json()["error"] == "unauthorized"
        # With the key, the same query is a validation error.
        r = c.post("/v1/predict", params={"top_k": "zero"}, headers={"X-API-Key": "secret"})
        assert r.status_code == 422


def test_reload_run_is_a_name_in_the_runs_folder_not_the_cwd(
        runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers_run import make_run

    make_run(tmp_path, classes=["p", "q"], name="gamma", runs_dir=tmp_path)  # ./gamma
    monkeypatch.chdir(tmp_path)
    with serving(runs, api_key="k") as c:
        r = c.post("/v1/model/reload", params={"run": "gamma"}, headers={"X-API-Key": "k"})
        assert r.status_code == 422 and r.json()["error"] == "invalid_run"
        assert "runs folder" in r.json()["message"]
        assert c.get("/v1/model", headers={"X-API-Key": "k"}).json()["name"] == "alpha"


def test_gif_error_lists_the_formats_really_accepted(runs: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), (1, 2, 3)).save(buf, "GIF")
    with serving(runs) as c:
        r = c.post("/v1/predict", files=upload(buf.getvalue(), "a.gif", "image/gif"))
        assert r.status_code == 415
        message = r.json()["message"]
        for name in ("JPEG", "PNG", "BMP", "TIFF", "WebP"):
            assert name in message, message
        for fmt in ("TIFF", "WEBP"):  # what the message promises is really accepted
            out = io.BytesIO()
            Image.open(io.BytesIO(image_bytes())).save(out, fmt)
            assert c.post("/v1/predict", files=upload(out.getvalue())).status_code == 200


def test_operation_ids_are_stable_and_readable(runs: Path) -> None:
    with serving(runs) as c:
        schema = c.get("/openapi.json").json()
    ids = {f"{method.upper()} {path}": op["operationId"]
           for path, ops in schema["paths"].items() for method, op in ops.items()}
    assert ids == {"POST /v1/predict": "predict", "POST /v1/predict/batch": "predictBatch",
                   "POST /v1/explain": "explain", "GET /v1/model": "getModel",
                   "GET /v1/model/card": "getModelCard", "POST /v1/model/reload": "reloadModel",
                   "GET /health": "getHealth", "GET /ready": "getReadiness",
                   "GET /metrics": "getMetrics", "POST /v1/jobs": "createJob",
                   "GET /v1/jobs/{job_id}": "getJob"}


def test_every_metadata_value_the_schema_allows_is_accepted(runs: Path) -> None:
    """sex and site are enums, age a range: whatever the schema allows, the server takes."""
    with serving(runs) as c:
        schema = c.get("/openapi.json").json()
        params = {p["name"]: p["schema"]["anyOf"][0]
                  for p in schema["paths"]["/v1/predict"]["post"]["parameters"]
                  if p["name"] in ("sex", "site", "age", "top_k")}
        assert params["sex"]["enum"] == ["male", "female"]
        assert "back" in params["site"]["enum"] and "other" in params["site"]["enum"]
        assert (params["age"]["minimum"], params["age"]["maximum"]) == (0, 120)
        assert (params["top_k"]["minimum"], params["top_k"]["maximum"]) == (1, 1000)
        data = image_bytes()
        for i, site in enumerate(params["site"]["enum"]):
            query = {"site": site, "sex": params["sex"]["enum"][i % 2],
                     "age": [0, 120, 37.5][i % 3], "top_k": [1, 1000][i % 2]}
            r = c.post("/v1/predict", params=query, files=upload(data))
            assert r.status_code == 200, (query, r.text)
        for bad in ({"sex": "0000000000"}, {"age": "121"}, {"site": "elbow"}):
            assert c.post("/v1/predict", params=bad, files=upload(data)).status_code == 422
