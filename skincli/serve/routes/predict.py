"""/v1/predict, /v1/predict/batch and /v1/explain: images in, calibrated answers out."""

from __future__ import annotations

import asyncio
import base64
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from skincli.errors import SkinError, did_you_mean
from skincli.explain import render
from skincli.image_quality import blank_reason, is_flagged, warning_for
from skincli.imageio import ImageError
from skincli.monitor.rows import prediction_row
from skincli.serve import clinical, schemas
from skincli.serve.deps import Deadline, Patient, Source, State, TopK, answering, require_key
from skincli.serve.errors import ApiError, from_image_error
from skincli.serve.explaining import heatmap_for
from skincli.serve.model import LoadedModel, Prepared, Row
from skincli.serve.routes.common import IMAGE_ERRORS, elapsed_ms, error_responses, upload_body
from skincli.serve.state import ServerState
from skincli.serve.uploads import Upload, read_uploads

router = APIRouter(tags=["predict"], dependencies=[Depends(require_key)])


async def prepare(state: ServerState, model: LoadedModel, upload: Upload,
                  display: bool = False) -> Prepared:
    """Decode and resize one upload off the event loop; a bad image is its ApiError."""
    try:
        return await run_in_threadpool(model.prepare, upload.data, display,
                                       state.decode_budget)
    except ImageError as exc:
        state.metrics.rejected.inc(reason=exc.code)
        raise from_image_error(exc) from None


def prediction(model: LoadedModel, row: Row, top_k: int, prepared: Prepared,
               filename: str | None, subject: dict[str, str] | None = None) -> dict[str, Any]:
    """One image's answer: the verdict, its warnings, the upload's hash and name."""
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
    if subject is not None:  # what the metadata term made of the patient's record
        out["warnings"] = [*model.predictor.metadata_notes(subject), *out["warnings"]]
    return out


def record(request: Request, state: ServerState, model: LoadedModel, prepared: Prepared,
           row: Row, pred: dict[str, Any], source: str | None = None) -> None:
    """Count the answer, note it for the audit trail and queue its monitoring row."""
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
        latency_ms=elapsed_ms(request), source=source or "api",
    ), image=prepared.array.astype("uint8"), embedding=row.embedding)


Format = Annotated[Literal["json", "fhir"], Query(
    description="json, or fhir for an HL7 FHIR R4 Bundle (as Accept: application/fhir+json)")]


@router.post("/v1/predict", operation_id="predict", response_model=schemas.PredictResponse,
             summary="Classify one image", openapi_extra=upload_body(False),
             responses={**error_responses(*IMAGE_ERRORS, "not_acceptable"),
                        200: {"content": {"application/fhir+json": {}}}})
async def predict(request: Request, state: State, deadline: Deadline, subject: Patient,
                  top_k: TopK = None, format: Format = "json",
                  source: Source = None) -> dict[str, Any]:
    """One image (multipart field `file`, or the raw body): calibrated top-k classes, the
    uncertain flag, and the model that answered. `age`, `sex` and `site` feed a model
    trained with the patient's metadata."""
    # `format` is acted on by the clinical middleware; it is declared here for the schema.
    settings = state.settings
    uploads = await read_uploads(request, per_file=settings.max_upload_bytes,
                                 max_files=1, many=False)
    model = answering(request, state)
    with state.batcher.arriving() as arrival:
        prepared = await prepare(state, model, uploads[0])
        row = (await state.infer(model, [prepared.array], deadline, arrival,
                                 metadata=subject))[0]
    pred = prediction(model, row, top_k or settings.top_k, prepared, uploads[0].filename,
                      subject)
    record(request, state, model, prepared, row, pred, source)
    return {"request_id": request.scope["skin.request_id"], "model": model.ref(),
            "latency_ms": elapsed_ms(request), "prediction": pred}


@router.post("/v1/predict/batch", operation_id="predictBatch",
             response_model=schemas.BatchResponse, summary="Classify several images",
             openapi_extra=upload_body(True),
             responses=error_responses(*IMAGE_ERRORS, "too_many_files"))
async def predict_batch(request: Request, state: State, deadline: Deadline, subject: Patient,
                        top_k: TopK = None, source: Source = None) -> dict[str, Any]:
    """Several images (repeated multipart field `files`). A bad file gets its own error
    entry; the others are still classified. `age`, `sex` and `site` apply to every image
    (one patient)."""
    settings = state.settings
    uploads = await read_uploads(request, per_file=settings.max_upload_bytes,
                                 max_files=settings.max_files, many=True)
    model = answering(request, state)
    rid = request.scope["skin.request_id"]
    with state.batcher.arriving() as arrival:
        prepared = await asyncio.gather(*(prepare(state, model, up) for up in uploads),
                                        return_exceptions=True)
        good = [p for p in prepared if isinstance(p, Prepared)]
        rows = await state.infer(model, [p.array for p in good], deadline,
                                 arrival, metadata=subject) if good else []
    by_id = {id(p): r for p, r in zip(good, rows)}
    results = []
    for up, p in zip(uploads, prepared):
        if isinstance(p, Prepared):
            pred = prediction(model, by_id[id(p)], top_k or settings.top_k, p, up.filename,
                              subject)
            record(request, state, model, p, by_id[id(p)], pred, source)
            results.append({"filename": up.filename, "prediction": pred})
        elif isinstance(p, ApiError):
            results.append({"filename": up.filename, "error": {
                "error": p.code, "message": p.message, "request_id": rid}})
        else:
            raise p
    return {"request_id": rid, "model": model.ref(), "latency_ms": elapsed_ms(request),
            "results": results}


def _target_index(model: LoadedModel, target: str | None) -> int | None:
    """The class to explain (None: the predicted one); an unknown name is a 422."""
    if target is None:
        return None
    if target not in model.classes:
        raise ApiError("invalid_request", f"Unknown class {target!r}."
                       f"{did_you_mean(target, model.classes)} Classes: "
                       f"{', '.join(model.classes)}")
    return model.classes.index(target)


@router.post("/v1/explain", operation_id="explain",
             summary="Grad-CAM heat map for one image", openapi_extra=upload_body(False),
             responses={200: {"model": schemas.ExplainResponse, "content": {"image/png": {}},
                              "description": "PNG overlay (default) or JSON with base64 PNGs"},
                        **error_responses(*IMAGE_ERRORS, "not_explainable")})
async def explain(request: Request, state: State, deadline: Deadline,
                  format: Annotated[Literal["png", "json"], Query(
                      description="png: the overlay image; json: base64 PNGs plus the "
                      "prediction")] = "png",
                  target: Annotated[str | None, Query(max_length=200, description=(
                      "Class to explain (default: the predicted one)"))] = None,
                  top_k: TopK = None) -> Response:
    """Where the model looked: Grad-CAM for the predicted (or a chosen) class."""
    settings = state.settings
    uploads = await read_uploads(request, per_file=settings.max_upload_bytes,
                                 max_files=1, many=False)
    model = answering(request, state)
    target_index = _target_index(model, target)
    with state.batcher.arriving() as arrival:
        prepared = await prepare(state, model, uploads[0], display=True)
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
    pred = prediction(model, row, top_k or settings.top_k, prepared, uploads[0].filename)
    record(request, state, model, prepared, row, pred)
    if format == "png":
        return Response(drawn.overlay_png, media_type="image/png",
                        headers={"X-Explained-Class": model.classes[cls]})
    body = schemas.ExplainResponse(
        request_id=request.scope["skin.request_id"], model=schemas.ModelRef(**model.ref()),
        latency_ms=elapsed_ms(request), target=model.classes[cls],
        prediction=schemas.PredictionOut(**pred),
        overlay_png_base64=base64.b64encode(drawn.overlay_png).decode("ascii"),
        heatmap_png_base64=base64.b64encode(drawn.heatmap_png).decode("ascii"),
        width=base.shape[1], height=base.shape[0])
    return JSONResponse(body.model_dump())
