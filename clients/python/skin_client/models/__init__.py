"""Contains all the data models used in inputs/outputs"""

from .batch_item import BatchItem
from .batch_response import BatchResponse
from .class_probability import ClassProbability
from .create_job_v1_jobs_post_response_200 import CreateJobV1JobsPostResponse200
from .create_job_v1_jobs_post_response_201 import CreateJobV1JobsPostResponse201
from .error_out import ErrorOut
from .explain_response import ExplainResponse
from .explain_v1_explain_post_files_body import ExplainV1ExplainPostFilesBody
from .explain_v1_explain_post_format import ExplainV1ExplainPostFormat
from .get_job_v1_jobs_job_id_get_response_200 import GetJobV1JobsJobIdGetResponse200
from .health_response import HealthResponse
from .http_validation_error import HTTPValidationError
from .job_in import JobIn
from .model_ref import ModelRef
from .model_response import ModelResponse
from .model_response_calibration import ModelResponseCalibration
from .model_response_decision import ModelResponseDecision
from .model_response_engine_type_0 import ModelResponseEngineType0
from .model_response_metadata_inputs_type_0 import ModelResponseMetadataInputsType0
from .model_response_preprocessing import ModelResponsePreprocessing
from .model_response_serving import ModelResponseServing
from .model_response_test_metrics import ModelResponseTestMetrics
from .model_response_val_metrics import ModelResponseValMetrics
from .predict_batch_v1_predict_batch_post_body import PredictBatchV1PredictBatchPostBody
from .predict_response import PredictResponse
from .predict_v1_predict_post_files_body import PredictV1PredictPostFilesBody
from .prediction_out import PredictionOut
from .prediction_out_probabilities import PredictionOutProbabilities
from .ready_response import ReadyResponse
from .reload_response import ReloadResponse
from .triage_out import TriageOut
from .validation_error import ValidationError
from .validation_error_context import ValidationErrorContext

__all__ = (
    "BatchItem",
    "BatchResponse",
    "ClassProbability",
    "CreateJobV1JobsPostResponse200",
    "CreateJobV1JobsPostResponse201",
    "ErrorOut",
    "ExplainResponse",
    "ExplainV1ExplainPostFilesBody",
    "ExplainV1ExplainPostFormat",
    "GetJobV1JobsJobIdGetResponse200",
    "HTTPValidationError",
    "HealthResponse",
    "JobIn",
    "ModelRef",
    "ModelResponse",
    "ModelResponseCalibration",
    "ModelResponseDecision",
    "ModelResponseEngineType0",
    "ModelResponseMetadataInputsType0",
    "ModelResponsePreprocessing",
    "ModelResponseServing",
    "ModelResponseTestMetrics",
    "ModelResponseValMetrics",
    "PredictBatchV1PredictBatchPostBody",
    "PredictResponse",
    "PredictV1PredictPostFilesBody",
    "PredictionOut",
    "PredictionOutProbabilities",
    "ReadyResponse",
    "ReloadResponse",
    "TriageOut",
    "ValidationError",
    "ValidationErrorContext",
)
