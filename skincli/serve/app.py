"""The FastAPI app factory behind `skin serve` (usable by any ASGI server).

    uvicorn --factory skincli.serve.app:create_app     # settings from SKIN_* variables
"""

from __future__ import annotations

import asyncio
import base64
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
)
from fastapi.security import APIKeyHeader, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from skincli import DISCLAIMER, __version__
from skincli.errors import SkinError, did_you_mean
from skincli.explain import render
from skincli.image_quality import blank_reason, is_flagged, warning_for
from skincli.imageio import ImageError
from skincli.monitor.rows import prediction_row
from skincli.runs import RUN_FILE
from skincli.serve import clinical, schemas
from skincli.serve.auth import HEADER
from skincli.serve.errors import ERROR_CODES, ApiError, from_image_error, install_handlers
from skincli.serve.explaining import heatmap_for
from skincli.serve.metrics import CONTENT_TYPE
from skincli.serve.middleware import RequestContext
from skincli.serve.model import LoadedModel, Prepared, Row
from skincli.serve.settings import Settings
from skincli.serve.state import ServerState
from skincli.serve.uploads import Upload, read_uploads

log = logging.getLogger("skincli.serve")

STATIC_DIR = Path(str(resources.files("skincli") / "static"))

_ERRORS_DOC = "\n".join(f"- `{code}` ({status}): {text}"
                        for code, (status, text) in ERROR_CODES.items())
DESCRIPTION = f"""Calibrated skin-lesion classification of dermoscopic images.

{DISCLAIMER}

Every response carries `X-Request-ID` (an incoming one is kept), `X-Model-Name`,
`X-Model-Version` and `X-Latency-Ms`. Every error is JSON
`{{"error": code, "message": text, "request_id": id}}` with one of these stable codes:

{_ERRORS_DOC}

When the server has API keys, `/v1/*` needs `X-API-Key: <key>` (or `Authorization: Bearer`).
"""


def _upload_body(many: bool, max_files: int = 1) -> dict[str, Any]:
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


def _error_responses(*codes: str) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        status, text = ERROR_CODES[code]
        entry = out.setdefault(status, {"model": schemas.ErrorOut, "description": ""})
        entry["description"] = (entry["description"] + "; " if entry["description"] else "") + \
            f"`{code}`: {text}"
    return out


_IMAGE_ERRORS = ("invalid_request", "missing_file", "empty", "corrupt", "unsupported_type",
                 "payload_too_large", "too_many_pixels", "unauthorized", "overloaded", "timeout")


def _configure_logging() -> None:
    """Request lines to stderr, unless the host application configured logging already."""
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Settings default to the SKIN_* environment (for `uvicorn --factory`)."""
    settings = settings or Settings.from_env()
    _configure_logging()
    state = ServerState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(state.start)  # load + warm; the port opens only after this
        loop = asyncio.get_running_loop()
        hup = False
        try:
            loop.add_signal_handler(signal.SIGHUP,
                                    lambda: loop.create_task(state.reload_from_signal()))
            hup = True
        except (NotImplementedError, RuntimeError, ValueError, AttributeError):
            pass  # not the main thread (tests) or no SIGHUP on this platform
        try:
            yield
        finally:
            if hup:
                loop.remove_signal_handler(signal.SIGHUP)
            # Uvicorn has already waited for in-flight requests; finish queued work and flush.
            await run_in_threadpool(state.stop)

    app = FastAPI(title="skin: skin-lesion classification API", version=__version__,
                  description=DESCRIPTION, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json")
    app.state.skin = state
    install_handlers(app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST"],
                           allow_headers=["X-API-Key", "Authorization", "Content-Type",
                                          "X-Request-ID"],
                           expose_headers=["X-Request-ID", "X-Model-Name", "X-Model-Version",
                                           "X-Latency-Ms"], max_age=600)
    app.add_middleware(clinical.ClinicalMiddleware, state=state)  # audit + FHIR answers
    app.add_middleware(RequestContext, state=state)  # added last = outermost
    swagger = swagger_ui_dir()
    _routes(app, state, docs=swagger is not None)
    app.include_router(clinical.router)
    _enum_classes_in_schema(app, state)
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if swagger is not None:
        app.mount("/docs-assets", StaticFiles(directory=swagger), name="docs-assets")
    return app


def _enum_classes_in_schema(app: FastAPI, state: ServerState) -> None:
    """Make /v1/explain's `target` an enum of the served model's classes in /openapi.json,
    rebuilt when a reload changes the classes."""
    try:  # before start-up, the classes the configured run declares (best effort)
        from skincli.runs import load_run_info, resolve_run

        startup = list(load_run_info(resolve_run(state.settings.run,
                                                 state.settings.runs_dir)).classes)
    except Exception:
        startup = []
    cached: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        model = state.holder.current
        classes = model.classes if model is not None else startup
        if cached.get("classes") != classes:
            app.openapi_schema = None
            schema = FastAPI.openapi(app)
            for param in schema["paths"]["/v1/explain"]["post"].get("parameters", []):
                if param.get("name") == "target" and classes:
                    param["schema"] = {"anyOf": [{"type": "string", "enum": list(classes)},
                                                 {"type": "null"}], "title": "Target"}
            cached.update(classes=classes, schema=schema)
        return cached["schema"]

    app.openapi = openapi  # type: ignore[method-assign]


def swagger_ui_dir() -> Path | None:
    """Swagger UI 5's files from the fastapi-offline package, so /docs works offline."""
    try:
        folder = Path(str(resources.files("fastapi_offline") / "static"))
    except ModuleNotFoundError:
        return None
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>skin API: interactive documentation</title>
<link rel="stylesheet" href="/docs-assets/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs-assets/favicon.png">
</head><body><div id="swagger-ui"></div>
<script src="/docs-assets/swagger-ui-bundle.js"></script>
<script src="/static/docs.js"></script>
</body></html>
"""


def _elapsed_ms(request: Request) -> float:
    return round((time.perf_counter() - request.scope["skin.start"]) * 1000, 1)


def _prediction(model: LoadedModel, row: Row, top_k: int, prepared: Prepared,
                filename: str | None) -> dict[str, Any]:
    verdict = model.predictor.verdicts(row.probabilities[None, :], top_k=top_k)[0]
    verdict.warnings.extend(w for w in row.warnings if w not in verdict.warnings)
    if not is_flagged(verdict.warnings):  # the model input cannot tell a tiny upload
        reason = blank_reason(prepared.array, (prepared.width, prepared.height))
        if reason:
            verdict.warnings.append(warning_for(reason))
    # Nothing to classify: the verdict is uncertain whatever the probabilities say.
    verdict.uncertain = verdict.uncertain or is_flagged(verdict.warnings)
    out = verdict.to_dict()
    out["decision"] = verdict.decision
    out.pop("model", None)
    out.pop("embedding", None)
    out["image_sha256"] = prepared.sha256
    out["filename"] = filename
    return out


# Declared in the OpenAPI schema so /docs can authorise; checked by KeyChecker, not by these.
_API_KEY = APIKeyHeader(name=HEADER, auto_error=False, scheme_name="ApiKey",
                        description="An API key of the server (when it has keys)")
_BEARER = HTTPBearer(auto_error=False, scheme_name="Bearer",
                     description="The same API key as a bearer token")


def _routes(app: FastAPI, state: ServerState, *, docs: bool) -> None:
    settings = state.settings

    # Dependencies run before FastAPI validates the query, so a caller without a key gets
    # 401 whatever its parameters (not a 422 that tells it which parameters exist).
    def require_key(request: Request, _key: str | None = Security(_API_KEY),
                    _bearer: Any = Security(_BEARER)) -> None:
        state.keys.require(request)

    def require_admin(request: Request, _key: str | None = Security(_API_KEY),
                      _bearer: Any = Security(_BEARER)) -> None:
        state.keys.require(request, always=True)

    keyed = [Depends(require_key)]

    def begin(request: Request) -> float:
        """The request's deadline (auth ran already, as a dependency)."""
        return request.scope["skin.start"] + settings.timeout_s

    def answering(request: Request) -> LoadedModel:
        """The model this request uses from now on; the response headers name this one."""
        model = state.model()
        request.scope["skin.model"] = model
        return model

    async def prepare(model: LoadedModel, upload: Upload, display: bool = False) -> Prepared:
        try:
            return await run_in_threadpool(model.prepare, upload.data, display,
                                           state.decode_budget)
        except ImageError as exc:
            state.metrics.rejected.inc(reason=exc.code)
            raise from_image_error(exc) from None

    def record(request: Request, model: LoadedModel, prepared: Prepared, row: Row,
               pred: dict[str, Any]) -> None:
        state.metrics.predictions.inc(label=pred["label"])
        if pred["uncertain"]:
            state.metrics.uncertain.inc()
        index = len(request.scope["skin.images"])
        request.scope["skin.images"].append(prepared.sha256)
        clinical.note_prediction(request, model, prepared, pred)
        if not state.predlog.enabled:
            return
        rid = request.scope["skin.request_id"]
        # The image statistics and the embedding summary are added off the request path.
        state.predlog.submit(prediction_row(
            request_id=rid, row_key=f"{rid}:{index}", model_version=model.version,
            image_sha256=prepared.sha256, predicted=pred["label"],
            probabilities=dict(zip(model.classes, row.probabilities.tolist())),
            top_probability=pred["probability"], uncertain=pred["uncertain"],
            latency_ms=_elapsed_ms(request), source="api",
        ), image=prepared.array.astype("uint8"), embedding=row.embedding)

    top_k_query = Query(None, ge=1, le=1000, description="How many classes to list "
                        f"(default {settings.top_k})")
    age_query = Query(None, max_length=10, description="The patient's age in years (used by "
                      "models trained with --use-metadata; otherwise ignored, with a warning)")
    sex_query = Query(None, max_length=10, description="male or female (as age)")
    site_query = Query(None, max_length=60, description="Anatomical site, e.g. back, face, "
                       "lower extremity (as age)")

    def patient(age: str | None, sex: str | None, site: str | None) -> dict[str, str] | None:
        """The request's metadata record, or None when it gives none (422 if malformed)."""
        if not any(v not in (None, "") for v in (age, sex, site)):
            return None
        from skincli.metahead import parse_inputs

        try:
            return parse_inputs(age, sex, site)
        except SkinError as exc:
            raise ApiError("invalid_request", f"{exc.message}; {exc.hint}") from None

    def with_notes(model: LoadedModel, pred: dict[str, Any],
                   subject: dict[str, str] | None) -> dict[str, Any]:
        if subject is not None:
            notes = model.predictor.metadata_notes(subject)
            pred["warnings"] = [*notes, *pred["warnings"]]
        return pred

    @app.post("/v1/predict", dependencies=keyed, response_model=schemas.PredictResponse,
              tags=["predict"],
              summary="Classify one image", openapi_extra=_upload_body(False),
              responses=_error_responses(*_IMAGE_ERRORS))
    async def predict(request: Request, top_k: int | None = top_k_query,
                      age: str | None = age_query, sex: str | None = sex_query,
                      site: str | None = site_query) -> dict[str, Any]:
        """One image (multipart field `file`, or the raw body): calibrated top-k classes, the
        uncertain flag, and the model that answered. `age`, `sex` and `site` feed a model
        trained with the patient's metadata."""
        deadline = begin(request)
        subject = patient(age, sex, site)
        uploads = await read_uploads(request, per_file=settings.max_upload_bytes,
                                     max_files=1, many=False)
        model = answering(request)
        with state.batcher.arriving() as arrival:
            prepared = await prepare(model, uploads[0])
            row = (await state.infer(model, [prepared.array], deadline, arrival,
                                     metadata=subject))[0]
        pred = with_notes(model, _prediction(model, row, top_k or settings.top_k, prepared,
                                             uploads[0].filename), subject)
        record(request, model, prepared, row, pred)
        return {"request_id": request.scope["skin.request_id"], "model": model.ref(),
                "latency_ms": _elapsed_ms(request), "prediction": pred}

    @app.post("/v1/predict/batch", dependencies=keyed, response_model=schemas.BatchResponse,
              tags=["predict"], summary="Classify several images",
              openapi_extra=_upload_body(True, settings.max_files),
              responses=_error_responses(*_IMAGE_ERRORS, "too_many_files"))
    async def predict_batch(request: Request, top_k: int | None = top_k_query,
                            age: str | None = age_query, sex: str | None = sex_query,
                            site: str | None = site_query) -> dict[str, Any]:
        """Several images (repeated multipart field `files`). A bad file gets its own error
        entry; the others are still classified. `age`, `sex` and `site` apply to every image
        (one patient)."""
        deadline = begin(request)
        subject = patient(age, sex, site)
        uploads = await read_uploads(request, per_file=settings.max_upload_bytes,
                                     max_files=settings.max_files, many=True)
        model = answering(request)
        rid = request.scope["skin.request_id"]
        with state.batcher.arriving() as arrival:
            prepared = await asyncio.gather(*(prepare(model, up) for up in uploads),
                                            return_exceptions=True)
            good = [p for p in prepared if isinstance(p, Prepared)]
            rows = await state.infer(model, [p.array for p in good], deadline,
                                     arrival, metadata=subject) if good else []
        by_id = {id(p): r for p, r in zip(good, rows)}
        results = []
        for up, p in zip(uploads, prepared):
            if isinstance(p, Prepared):
                pred = with_notes(model, _prediction(model, by_id[id(p)],
                                                     top_k or settings.top_k, p, up.filename),
                                  subject)
                record(request, model, p, by_id[id(p)], pred)
                results.append({"filename": up.filename, "prediction": pred})
            elif isinstance(p, ApiError):
                results.append({"filename": up.filename, "error": {
                    "error": p.code, "message": p.message, "request_id": rid}})
            else:
                raise p
        return {"request_id": rid, "model": model.ref(), "latency_ms": _elapsed_ms(request),
                "results": results}

    @app.post("/v1/explain", dependencies=keyed, tags=["predict"],
              summary="Grad-CAM heat map for one image",
              openapi_extra=_upload_body(False),
              responses={200: {"model": schemas.ExplainResponse,
                               "content": {"image/png": {}},
                               "description": "PNG overlay (default) or JSON with base64 PNGs"},
                  **_error_responses(*_IMAGE_ERRORS, "not_explainable")})
    async def explain(request: Request,
                      format: Literal["png", "json"] = Query(
                          "png", description="png: the overlay image; json: base64 PNGs plus "
                          "the prediction"),
                      target: str | None = Query(None, max_length=200, description=(
                          "Class to explain (default: the predicted one)")),
                      top_k: int | None = top_k_query) -> Response:
        """Where the model looked: Grad-CAM for the predicted (or a chosen) class."""
        deadline = begin(request)
        uploads = await read_uploads(request, per_file=settings.max_upload_bytes,
                                     max_files=1, many=False)
        model = answering(request)
        target_index = None
        if target is not None:
            if target not in model.classes:
                raise ApiError("invalid_request", f"Unknown class {target!r}."
                               f"{did_you_mean(target, model.classes)} Classes: "
                               f"{', '.join(model.classes)}")
            target_index = model.classes.index(target)
        with state.batcher.arriving() as arrival:
            prepared = await prepare(model, uploads[0], display=True)
            row = (await state.infer(model, [prepared.array], deadline, arrival))[0]
        # TF work stays on the inference thread; the overlay is drawn off the event loop.
        try:
            cam, cls = await state.call(
                lambda: heatmap_for(model.predictor, prepared.array, target_index), deadline)
        except SkinError as exc:
            raise ApiError("not_explainable", f"No heat map for this model: {exc}") from None
        base = prepared.display
        assert base is not None
        drawn = await run_in_threadpool(render, cam, base, cls)
        pred = _prediction(model, row, top_k or settings.top_k, prepared, uploads[0].filename)
        record(request, model, prepared, row, pred)
        if format == "png":
            return Response(drawn.overlay_png, media_type="image/png",
                            headers={"X-Explained-Class": model.classes[cls]})
        body = schemas.ExplainResponse(
            request_id=request.scope["skin.request_id"], model=schemas.ModelRef(**model.ref()),
            latency_ms=_elapsed_ms(request), target=model.classes[cls],
            prediction=schemas.PredictionOut(**pred),
            overlay_png_base64=base64.b64encode(drawn.overlay_png).decode("ascii"),
            heatmap_png_base64=base64.b64encode(drawn.heatmap_png).decode("ascii"),
            width=base.shape[1], height=base.shape[0])
        return JSONResponse(body.model_dump())

    @app.get("/health", response_model=schemas.HealthResponse, tags=["operations"],
             summary="Liveness: the process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", response_model=schemas.ReadyResponse, tags=["operations"],
             summary="Readiness: the model is loaded and warm",
             responses=_error_responses("not_ready"))
    async def ready(request: Request) -> dict[str, Any]:
        model = answering(request)
        if not state.batcher.alive:
            raise ApiError("not_ready", "The inference thread is not running",
                           headers={"Retry-After": "2"})
        return {"ready": True, "model": model.ref()}

    @app.get("/v1/model", dependencies=keyed, response_model=schemas.ModelResponse, tags=["model"],
             summary="The served run: classes, architecture, metrics, calibration",
             responses=_error_responses("unauthorized", "not_ready"))
    async def model_info(request: Request) -> dict[str, Any]:
        begin(request)
        return {**answering(request).describe(), "serving": settings.public()}

    @app.post("/v1/model/reload", dependencies=[Depends(require_admin)],
              response_model=schemas.ReloadResponse, tags=["model"],
              summary="Switch to another run atomically (API key required)",
              responses=_error_responses("unauthorized", "forbidden", "invalid_run",
                                         "reload_in_progress"))
    async def reload(request: Request, run: str | None = Query(
            None, max_length=200, pattern=r"^[A-Za-z0-9._-]+$",
            description="Run name under the runs folder (default: the run configured at "
                        "start-up, or runs/CURRENT)")) -> dict[str, Any]:
        """Load the run fully and warm it, then swap: requests in flight finish on the old
        model, later ones use the new one; no request sees a half-loaded model."""
        if run is not None and run.strip(".") == "":
            raise ApiError("invalid_run", f"{run!r} is not a run name")
        if run is not None:
            # A name under the runs folder only: never a folder of the working directory.
            folder = Path(settings.runs_dir) / run
            if not (folder / RUN_FILE).is_file():
                raise ApiError("invalid_run", f"No run {run!r} in the runs folder; still "
                               "serving the previous model")
            run = str(folder)
        previous, new = await state.reload(run)
        return {"request_id": request.scope["skin.request_id"],
                "previous": previous.ref() if previous else None, "model": new.ref(),
                "load_seconds": round(new.load_seconds, 3)}

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"],
             summary="Prometheus metrics (text format 0.0.4)")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        if not docs:  # looked up once, when the app was built
            raise ApiError("not_found", "Swagger UI is not installed: pip install "
                           "fastapi-offline (the schema is at /openapi.json)")
        # Swagger UI sets inline styles and data: images; scripts stay 'self' only.
        return HTMLResponse(DOCS_PAGE, headers={
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                       "style-src 'self' 'unsafe-inline'; script-src 'self'; "
                                       "connect-src 'self'; frame-ancestors 'none'",
            "Referrer-Policy": "no-referrer"})

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        page = STATIC_DIR / "index.html"
        if not page.is_file():
            raise ApiError("not_found", "The web page is not installed")
        return FileResponse(page, media_type="text/html", headers={
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                                       "style-src 'self'; script-src 'self'; "
                                       "connect-src 'self'; frame-ancestors 'none'",
            "Referrer-Policy": "no-referrer"})
