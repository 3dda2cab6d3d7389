"""The FastAPI app factory behind `skin serve` (usable by any ASGI server).

    uvicorn --factory skincli.serve.app:create_app     # settings from SKIN_* variables

The routes live in skincli.serve.routes (one APIRouter per area), their dependencies in
skincli.serve.deps; this module wires them to the state, the middleware and the schema.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from skincli import DISCLAIMER, __version__
from skincli.serve import clinical, jobs, ratelimit
from skincli.serve.errors import ERROR_CODES, install_handlers
from skincli.serve.middleware import RequestContext
from skincli.serve.routes import ROUTERS
from skincli.serve.routes.page import STATIC_DIR, swagger_ui_dir
from skincli.serve.settings import Settings
from skincli.serve.state import ServerState

log = logging.getLogger("skincli.serve")

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


def _configure_logging() -> None:
    """Request lines to stderr, unless the host application configured logging already."""
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)


def _lifespan(state: ServerState) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Load and warm the model before the port opens; SIGHUP reloads; drain at shutdown."""

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

    return lifespan


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Settings default to the SKIN_* environment (for `uvicorn --factory`)."""
    settings = settings or Settings.from_env()
    _configure_logging()
    state = ServerState(settings)
    app = FastAPI(title="skin: skin-lesion classification API", version=__version__,
                  description=DESCRIPTION, lifespan=_lifespan(state), docs_url=None,
                  redoc_url=None, openapi_url="/openapi.json")
    app.state.skin = state
    app.state.docs_assets = swagger = swagger_ui_dir()
    install_handlers(app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST"],
                           allow_headers=["X-API-Key", "Authorization", "Content-Type",
                                          "X-Request-ID"],
                           expose_headers=["X-Request-ID", "X-Model-Name", "X-Model-Version",
                                           "X-Latency-Ms", *ratelimit.HEADERS], max_age=600)
    app.add_middleware(clinical.ClinicalMiddleware, state=state)  # audit + FHIR answers
    app.add_middleware(RequestContext, state=state)  # added last = outermost
    for router in ROUTERS:
        app.include_router(router)
    app.include_router(jobs.router)  # POST /v1/jobs: studies by reference (clinical config)
    _live_schema(app, state)
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if swagger is not None:
        app.mount("/docs-assets", StaticFiles(directory=swagger), name="docs-assets")
    ratelimit.install(app, state)  # last: inside RequestContext and CORS; wraps openapi()
    return app


def _live_schema(app: FastAPI, state: ServerState) -> None:
    """/openapi.json with what only the running server knows: /v1/explain's `target` as an
    enum of the served model's classes (rebuilt when a reload changes them) and the batch
    endpoint's file limit."""
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
            files = schema["paths"]["/v1/predict/batch"]["post"]["requestBody"]["content"][
                "multipart/form-data"]["schema"]["properties"]["files"]
            files["maxItems"] = state.settings.max_files
            cached.update(classes=classes, schema=schema)
        return cached["schema"]

    app.openapi = openapi  # type: ignore[method-assign]
