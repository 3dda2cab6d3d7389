"""/health, /ready and /metrics: what orchestrators and Prometheus ask."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from skincli.serve import schemas
from skincli.serve.deps import State, answering
from skincli.serve.errors import ApiError
from skincli.serve.metrics import CONTENT_TYPE
from skincli.serve.routes.common import error_responses

router = APIRouter(tags=["operations"])


@router.get("/health", operation_id="getHealth", response_model=schemas.HealthResponse,
            summary="Liveness: the process answers")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", operation_id="getReadiness", response_model=schemas.ReadyResponse,
            summary="Readiness: the model is loaded and warm",
            responses=error_responses("not_ready"))
async def ready(request: Request, state: State) -> dict[str, Any]:
    model = answering(request, state)
    if not state.batcher.alive:
        raise ApiError("not_ready", "The inference thread is not running",
                       headers={"Retry-After": "2"})
    return {"ready": True, "model": model.ref()}


@router.get("/metrics", operation_id="getMetrics", response_class=PlainTextResponse,
            summary="Prometheus metrics (text format 0.0.4)")
async def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
