"""Response shapes, for validation and for the OpenAPI document (with examples)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from skincli import DISCLAIMER

_MODEL_EXAMPLE = {"name": "efficientnet", "version": "efficientnet@2026-01-01T12:00:00"}


class ModelRef(BaseModel):
    """Which model answered."""

    name: str
    version: str


class ClassProbability(BaseModel):
    label: str
    probability: float


class TriageOut(BaseModel):
    """The malignancy score against the run's referral threshold."""

    malignancy_score: float = Field(description="Summed probability of the malignant classes")
    premalignant_score: float = Field(description="Probability of the pre-malignant classes")
    threshold: float = Field(description="Referral threshold fitted on validation")
    refer: bool
    decision: str = Field(description='"refer" or "no referral suggested"')
    target_sensitivity: float | None = None


class DeferralOut(BaseModel):
    """Answered, or deferred to a dermatologist, at the run's operating point."""

    status: str = Field(description='"answered" or "deferred"')
    text: str = Field(description='"answered" or "deferred to a dermatologist"')
    deferred: bool
    predicted: str = Field(description="The predicted class whose threshold applies")
    confidence: float = Field(description="Top calibrated probability")
    threshold: float | None = Field(None, description="That class's threshold (None: the "
                                    "class is never answered)")
    target: float | None = Field(None, description="Balanced accuracy and macro F1 target "
                                 "the operating point was fitted for on validation")
    validation_coverage: float | None = None
    differential: list[str] | None = Field(None, description="Deferred only: the "
                                           "class-conditional conformal set, most probable "
                                           "first")
    differential_note: str | None = None


class PredictionOut(BaseModel):
    """One image's calibrated prediction."""

    label: str = Field(description="The most probable class")
    probability: float = Field(description="Its calibrated probability")
    top_k: list[ClassProbability]
    probabilities: dict[str, float] = Field(description="Every class, calibrated, sums to 1")
    uncertain: bool = Field(description="Top probability below the run's uncertain threshold: "
                            "refer for expert review")
    decision: str = Field("balanced", description="The decision rule that produced this answer "
                          "(balanced, prevalence, macro-f1); GET /v1/model gives its prior")
    warnings: list[str] = []
    disclaimer: str = DISCLAIMER
    image_sha256: str = Field(description="SHA-256 of the uploaded bytes (what the log keeps)")
    filename: str | None = None
    triage: TriageOut | None = Field(None, description="Refer / no referral suggested (absent "
                                     "when the run has no triage operating point)")
    deferral: DeferralOut | None = Field(None, description="Answered or deferred to a "
                                         "dermatologist (absent when the run has no "
                                         "answer-or-defer operating point); never cancels a "
                                         "triage referral")


class ErrorOut(BaseModel):
    """Every error: a stable code for programs and a message for people."""

    error: str = Field(description="Stable error code, e.g. unsupported_type")
    message: str
    request_id: str

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "error": "unsupported_type", "request_id": "3f2c9a0d1b7e4c55",
        "message": "upload: not an image file (cannot identify its format)"}]})


_PREDICTION_EXAMPLE: dict[str, Any] = {
    "label": "nevus", "probability": 0.82,
    "top_k": [{"label": "nevus", "probability": 0.82},
              {"label": "melanoma", "probability": 0.11}],
    "probabilities": {"melanoma": 0.11, "nevus": 0.82, "seborrheic keratosis": 0.07},
    "uncertain": False, "decision": "balanced", "warnings": [], "disclaimer": DISCLAIMER,
    "image_sha256": "9b74c9897bac770ffc029102a200c5de" * 2, "filename": "lesion.jpg",
}


class PredictResponse(BaseModel):
    request_id: str
    model: ModelRef
    latency_ms: float
    prediction: PredictionOut

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "request_id": "3f2c9a0d1b7e4c55", "model": _MODEL_EXAMPLE, "latency_ms": 23.4,
        "prediction": _PREDICTION_EXAMPLE}]})


class BatchItem(BaseModel):
    """One file of a batch: either a prediction or an error."""

    filename: str | None = None
    prediction: PredictionOut | None = None
    error: ErrorOut | None = None


class BatchResponse(BaseModel):
    request_id: str
    model: ModelRef
    latency_ms: float
    results: list[BatchItem]

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "request_id": "3f2c9a0d1b7e4c55", "model": _MODEL_EXAMPLE, "latency_ms": 61.0,
        "results": [{"filename": "a.jpg", "prediction": _PREDICTION_EXAMPLE},
                    {"filename": "b.txt", "error": {
                        "error": "unsupported_type", "request_id": "3f2c9a0d1b7e4c55",
                        "message": "upload: not an image file (cannot identify its format)"}}]}]})


class ExplainResponse(BaseModel):
    request_id: str
    model: ModelRef
    latency_ms: float
    target: str = Field(description="The class the heat map explains")
    prediction: PredictionOut
    overlay_png_base64: str = Field(description="Heat map blended over the image, PNG")
    heatmap_png_base64: str = Field(description="The heat map alone, PNG")
    width: int
    height: int


class HealthResponse(BaseModel):
    status: str = "ok"


class ReadyResponse(BaseModel):
    ready: bool
    model: ModelRef


class ModelResponse(BaseModel):
    """The served run's self-description."""

    name: str
    version: str
    arch: str
    classes: list[str]
    input_size: int
    created: str
    preprocessing: dict[str, Any]
    calibration: dict[str, Any]
    val_metrics: dict[str, Any]
    test_metrics: dict[str, Any]
    split_sha256: str
    loaded_at: str
    load_seconds: float
    tta: bool
    decision: dict[str, Any] = Field(default_factory=dict, description="The decision rule in "
                                     "force: rule, prior, weights, uncertain threshold")
    engine: dict[str, Any] | None = None  # inference engine: name, runtime, threads
    metadata_inputs: dict[str, Any] | None = Field(
        None, description="For a model trained with the patient's metadata: the values it "
        "knows per field (pass age, sex and site as query parameters of /v1/predict); null "
        "for an image-only model")
    serving: dict[str, Any]
    disclaimer: str = DISCLAIMER


class ReloadResponse(BaseModel):
    request_id: str
    previous: ModelRef | None
    model: ModelRef
    load_seconds: float
