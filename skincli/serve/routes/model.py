"""/v1/model, /v1/model/card and /v1/model/reload: the served run, its card, and switching."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from skincli.runs import RUN_FILE
from skincli.serve import schemas
from skincli.serve.deps import State, answering, require_admin, require_key
from skincli.serve.errors import ApiError
from skincli.serve.model import json_safe
from skincli.serve.routes.common import error_responses

router = APIRouter(tags=["model"])


@router.get("/v1/model", operation_id="getModel", dependencies=[Depends(require_key)],
            response_model=schemas.ModelResponse,
            summary="The served run: classes, architecture, metrics, calibration",
            responses=error_responses("unauthorized", "not_ready"))
async def model_info(request: Request, state: State) -> dict[str, Any]:
    return {**answering(request, state).describe(), "serving": state.settings.public()}


@router.get("/v1/model/card", operation_id="getModelCard", dependencies=[Depends(require_key)],
            summary="The served run's model card",
            responses={200: {"content": {"application/json": {}, "text/markdown": {}},
                             "description": "model_card.json, or MODEL_CARD.md with "
                                            "format=markdown"},
                       **error_responses("unauthorized", "not_ready")})
async def model_card(request: Request, state: State, format: Annotated[
        Literal["json", "markdown"], Query(description="json or markdown")] = "json"
                     ) -> Response:
    """Intended use, data, evaluation with CIs, the triage operating point, limitations."""
    from skincli.clinical import card

    model = state.model()
    doc = await run_in_threadpool(card.build, model.run_dir, model.predictor.info)
    doc["model"].pop("config", None)  # file-system paths of the training machine
    doc["training_data"]["source"] = "(not shown by the API)"
    if format == "markdown":
        return Response(card.markdown(doc), media_type="text/markdown; charset=utf-8")
    return JSONResponse(json_safe(doc))


RunName = Annotated[str | None, Query(
    max_length=200, pattern=r"^[A-Za-z0-9._-]+$",
    description="Run name under the runs folder (default: the run configured at start-up, or "
                "runs/CURRENT)")]


@router.post("/v1/model/reload", operation_id="reloadModel",
             dependencies=[Depends(require_admin)], response_model=schemas.ReloadResponse,
             summary="Switch to another run atomically (API key required)",
             responses=error_responses("unauthorized", "forbidden", "invalid_run",
                                       "reload_in_progress"))
async def reload_model(request: Request, state: State, run: RunName = None) -> dict[str, Any]:
    """Load the run fully and warm it, then swap: requests in flight finish on the old
    model, later ones use the new one; no request sees a half-loaded model."""
    if run is not None and run.strip(".") == "":
        raise ApiError("invalid_run", f"{run!r} is not a run name")
    if run is not None:
        # A name under the runs folder only: never a folder of the working directory.
        folder = Path(state.settings.runs_dir) / run
        if not (folder / RUN_FILE).is_file():
            raise ApiError("invalid_run", f"No run {run!r} in the runs folder; still "
                           "serving the previous model")
        run = str(folder)
    previous, new = await state.reload(run)
    return {"request_id": request.scope["skin.request_id"],
            "previous": previous.ref() if previous else None, "model": new.ref(),
            "load_seconds": round(new.load_seconds, 3)}
