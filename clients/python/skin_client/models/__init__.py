"""Contains all the data models used in inputs/outputs"""

from .batch_item import BatchItem
from .batch_response import BatchResponse
from .class_probability import ClassProbability
from .create_job_response_200 import CreateJobResponse200
from .create_job_response_201 import CreateJobResponse201
from .deferral_out import DeferralOut
from .error_out import ErrorOut
from .explain_files_body import ExplainFilesBody
from .explain_format import ExplainFormat
from .explain_response import ExplainResponse
from .get_job_response_200 import GetJobResponse200
from .get_model_card_format import GetModelCardFormat
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
from .predict_batch_body import PredictBatchBody
from .predict_batch_sex_type_0 import PredictBatchSexType0
from .predict_batch_site_type_0 import PredictBatchSiteType0
from .predict_files_body import PredictFilesBody
from .predict_format import PredictFormat
from .predict_response import PredictResponse
from .predict_sex_type_0 import PredictSexType0
from .predict_site_type_0 import PredictSiteType0
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
    "CreateJobResponse200",
    "CreateJobResponse201",
    "DeferralOut",
    "ErrorOut",
    "ExplainFilesBody",
    "ExplainFormat",
    "ExplainResponse",
    "GetJobResponse200",
    "GetModelCardFormat",
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
    "PredictBatchBody",
    "PredictBatchSexType0",
    "PredictBatchSiteType0",
    "PredictFilesBody",
    "PredictFormat",
    "PredictResponse",
    "PredictSexType0",
    "PredictSiteType0",
    "PredictionOut",
    "PredictionOutProbabilities",
    "ReadyResponse",
    "ReloadResponse",
    "TriageOut",
    "ValidationError",
    "ValidationErrorContext",
)
