from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..types import UNSET, Unset

if TYPE_CHECKING:
    from ..models.model_response_calibration import ModelResponseCalibration
    from ..models.model_response_decision import ModelResponseDecision
    from ..models.model_response_engine_type_0 import ModelResponseEngineType0
    from ..models.model_response_metadata_inputs_type_0 import (
        ModelResponseMetadataInputsType0,
    )
    from ..models.model_response_preprocessing import ModelResponsePreprocessing
    from ..models.model_response_serving import ModelResponseServing
    from ..models.model_response_test_metrics import ModelResponseTestMetrics
    from ..models.model_response_val_metrics import ModelResponseValMetrics


T = TypeVar("T", bound="ModelResponse")


@_attrs_define
class ModelResponse:
    """The served run's self-description.

    Attributes:
        name (str):
        version (str):
        arch (str):
        classes (list[str]):
        input_size (int):
        created (str):
        preprocessing (ModelResponsePreprocessing):
        calibration (ModelResponseCalibration):
        val_metrics (ModelResponseValMetrics):
        test_metrics (ModelResponseTestMetrics):
        split_sha256 (str):
        loaded_at (str):
        load_seconds (float):
        tta (bool):
        serving (ModelResponseServing):
        decision (ModelResponseDecision | Unset): The decision rule in force: rule, prior, weights, uncertain threshold
        engine (ModelResponseEngineType0 | None | Unset):
        metadata_inputs (ModelResponseMetadataInputsType0 | None | Unset): For a model trained with the patient's
            metadata: the values it knows per field (pass age, sex and site as query parameters of /v1/predict); null for an
            image-only model
        disclaimer (str | Unset):  Default: 'Decision support only, not a diagnosis: a clinician must confirm every
            result.'.
    """

    name: str
    version: str
    arch: str
    classes: list[str]
    input_size: int
    created: str
    preprocessing: ModelResponsePreprocessing
    calibration: ModelResponseCalibration
    val_metrics: ModelResponseValMetrics
    test_metrics: ModelResponseTestMetrics
    split_sha256: str
    loaded_at: str
    load_seconds: float
    tta: bool
    serving: ModelResponseServing
    decision: ModelResponseDecision | Unset = UNSET
    engine: ModelResponseEngineType0 | None | Unset = UNSET
    metadata_inputs: ModelResponseMetadataInputsType0 | None | Unset = UNSET
    disclaimer: str | Unset = (
        "Decision support only, not a diagnosis: a clinician must confirm every result."
    )
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from ..models.model_response_engine_type_0 import ModelResponseEngineType0
        from ..models.model_response_metadata_inputs_type_0 import (
            ModelResponseMetadataInputsType0,
        )

        name = self.name

        version = self.version

        arch = self.arch

        classes = self.classes

        input_size = self.input_size

        created = self.created

        preprocessing = self.preprocessing.to_dict()

        calibration = self.calibration.to_dict()

        val_metrics = self.val_metrics.to_dict()

        test_metrics = self.test_metrics.to_dict()

        split_sha256 = self.split_sha256

        loaded_at = self.loaded_at

        load_seconds = self.load_seconds

        tta = self.tta

        serving = self.serving.to_dict()

        decision: dict[str, Any] | Unset = UNSET
        if not isinstance(self.decision, Unset):
            decision = self.decision.to_dict()

        engine: dict[str, Any] | None | Unset
        if isinstance(self.engine, Unset):
            engine = UNSET
        elif isinstance(self.engine, ModelResponseEngineType0):
            engine = self.engine.to_dict()
        else:
            engine = self.engine

        metadata_inputs: dict[str, Any] | None | Unset
        if isinstance(self.metadata_inputs, Unset):
            metadata_inputs = UNSET
        elif isinstance(self.metadata_inputs, ModelResponseMetadataInputsType0):
            metadata_inputs = self.metadata_inputs.to_dict()
        else:
            metadata_inputs = self.metadata_inputs

        disclaimer = self.disclaimer

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "name": name,
                "version": version,
                "arch": arch,
                "classes": classes,
                "input_size": input_size,
                "created": created,
                "preprocessing": preprocessing,
                "calibration": calibration,
                "val_metrics": val_metrics,
                "test_metrics": test_metrics,
                "split_sha256": split_sha256,
                "loaded_at": loaded_at,
                "load_seconds": load_seconds,
                "tta": tta,
                "serving": serving,
            }
        )
        if decision is not UNSET:
            field_dict["decision"] = decision
        if engine is not UNSET:
            field_dict["engine"] = engine
        if metadata_inputs is not UNSET:
            field_dict["metadata_inputs"] = metadata_inputs
        if disclaimer is not UNSET:
            field_dict["disclaimer"] = disclaimer

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        from ..models.model_response_calibration import ModelResponseCalibration
        from ..models.model_response_decision import ModelResponseDecision
        from ..models.model_response_engine_type_0 import ModelResponseEngineType0
        from ..models.model_response_metadata_inputs_type_0 import (
            ModelResponseMetadataInputsType0,
        )
        from ..models.model_response_preprocessing import ModelResponsePreprocessing
        from ..models.model_response_serving import ModelResponseServing
        from ..models.model_response_test_metrics import ModelResponseTestMetrics
        from ..models.model_response_val_metrics import ModelResponseValMetrics

        d = dict(src_dict)
        name = d.pop("name")

        version = d.pop("version")

        arch = d.pop("arch")

        classes = cast(list[str], d.pop("classes"))

        input_size = d.pop("input_size")

        created = d.pop("created")

        preprocessing = ModelResponsePreprocessing.from_dict(d.pop("preprocessing"))

        calibration = ModelResponseCalibration.from_dict(d.pop("calibration"))

        val_metrics = ModelResponseValMetrics.from_dict(d.pop("val_metrics"))

        test_metrics = ModelResponseTestMetrics.from_dict(d.pop("test_metrics"))

        split_sha256 = d.pop("split_sha256")

        loaded_at = d.pop("loaded_at")

        load_seconds = d.pop("load_seconds")

        tta = d.pop("tta")

        serving = ModelResponseServing.from_dict(d.pop("serving"))

        _decision = d.pop("decision", UNSET)
        decision: ModelResponseDecision | Unset
        if isinstance(_decision, Unset):
            decision = UNSET
        else:
            decision = ModelResponseDecision.from_dict(_decision)

        def _parse_engine(data: object) -> ModelResponseEngineType0 | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, dict):
                    raise TypeError()
                engine_type_0 = ModelResponseEngineType0.from_dict(data)

                return engine_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(ModelResponseEngineType0 | None | Unset, data)

        engine = _parse_engine(d.pop("engine", UNSET))

        def _parse_metadata_inputs(
            data: object,
        ) -> ModelResponseMetadataInputsType0 | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, dict):
                    raise TypeError()
                metadata_inputs_type_0 = ModelResponseMetadataInputsType0.from_dict(
                    data
                )

                return metadata_inputs_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(ModelResponseMetadataInputsType0 | None | Unset, data)

        metadata_inputs = _parse_metadata_inputs(d.pop("metadata_inputs", UNSET))

        disclaimer = d.pop("disclaimer", UNSET)

        model_response = cls(
            name=name,
            version=version,
            arch=arch,
            classes=classes,
            input_size=input_size,
            created=created,
            preprocessing=preprocessing,
            calibration=calibration,
            val_metrics=val_metrics,
            test_metrics=test_metrics,
            split_sha256=split_sha256,
            loaded_at=loaded_at,
            load_seconds=load_seconds,
            tta=tta,
            serving=serving,
            decision=decision,
            engine=engine,
            metadata_inputs=metadata_inputs,
            disclaimer=disclaimer,
        )

        model_response.additional_properties = d
        return model_response

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
