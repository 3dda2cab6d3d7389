from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self, TypeVar

from attrs import define as _attrs_define
from attrs import field as _attrs_field

if TYPE_CHECKING:
    from ..models.model_ref import ModelRef
    from ..models.prediction_out import PredictionOut


T = TypeVar("T", bound="PredictResponse")


@_attrs_define
class PredictResponse:
    """
    Attributes:
        request_id (str):
        model (ModelRef): Which model answered.
        latency_ms (float):
        prediction (PredictionOut): One image's calibrated prediction.
    """

    request_id: str
    model: ModelRef
    latency_ms: float
    prediction: PredictionOut
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        request_id = self.request_id

        model = self.model.to_dict()

        latency_ms = self.latency_ms

        prediction = self.prediction.to_dict()

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "request_id": request_id,
                "model": model,
                "latency_ms": latency_ms,
                "prediction": prediction,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        from ..models.model_ref import ModelRef
        from ..models.prediction_out import PredictionOut

        d = dict(src_dict)
        request_id = d.pop("request_id")

        model = ModelRef.from_dict(d.pop("model"))

        latency_ms = d.pop("latency_ms")

        prediction = PredictionOut.from_dict(d.pop("prediction"))

        predict_response = cls(
            request_id=request_id,
            model=model,
            latency_ms=latency_ms,
            prediction=prediction,
        )

        predict_response.additional_properties = d
        return predict_response

    @property
    def additional_keys(self) -> list[str]:
        return list(self.additional_properties.keys())

    def __getitem__(self, key: str) -> Any:
        return self.additional_properties[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.additional_properties[key] = value

    def __delitem__(self, key: str) -> None:
        del self.additional_properties[key]

    def __contains__(self, key: str) -> bool:
        return key in self.additional_properties
