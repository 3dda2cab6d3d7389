from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..types import UNSET, Unset

T = TypeVar("T", bound="DeferralOut")


@_attrs_define
class DeferralOut:
    """Answered, or deferred to a dermatologist, at the run's operating point.

    Attributes:
        status (str): "answered" or "deferred"
        text (str): "answered" or "deferred to a dermatologist"
        deferred (bool):
        predicted (str): The predicted class whose threshold applies
        confidence (float): Top calibrated probability
        threshold (float | None | Unset): That class's threshold (None: the class is never answered)
        target (float | None | Unset): Balanced accuracy and macro F1 target the operating point was fitted for on
            validation
        validation_coverage (float | None | Unset):
        differential (list[str] | None | Unset): Deferred only: the class-conditional conformal set, most probable first
        differential_note (None | str | Unset):
    """

    status: str
    text: str
    deferred: bool
    predicted: str
    confidence: float
    threshold: float | None | Unset = UNSET
    target: float | None | Unset = UNSET
    validation_coverage: float | None | Unset = UNSET
    differential: list[str] | None | Unset = UNSET
    differential_note: None | str | Unset = UNSET
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        status = self.status

        text = self.text

        deferred = self.deferred

        predicted = self.predicted

        confidence = self.confidence

        threshold: float | None | Unset
        if isinstance(self.threshold, Unset):
            threshold = UNSET
        else:
            threshold = self.threshold

        target: float | None | Unset
        if isinstance(self.target, Unset):
            target = UNSET
        else:
            target = self.target

        validation_coverage: float | None | Unset
        if isinstance(self.validation_coverage, Unset):
            validation_coverage = UNSET
        else:
            validation_coverage = self.validation_coverage

        differential: list[str] | None | Unset
        if isinstance(self.differential, Unset):
            differential = UNSET
        elif isinstance(self.differential, list):
            differential = self.differential

        else:
            differential = self.differential

        differential_note: None | str | Unset
        if isinstance(self.differential_note, Unset):
            differential_note = UNSET
        else:
            differential_note = self.differential_note

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "status": status,
                "text": text,
                "deferred": deferred,
                "predicted": predicted,
                "confidence": confidence,
            }
        )
        if threshold is not UNSET:
            field_dict["threshold"] = threshold
        if target is not UNSET:
            field_dict["target"] = target
        if validation_coverage is not UNSET:
            field_dict["validation_coverage"] = validation_coverage
        if differential is not UNSET:
            field_dict["differential"] = differential
        if differential_note is not UNSET:
            field_dict["differential_note"] = differential_note

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        d = dict(src_dict)
        status = d.pop("status")

        text = d.pop("text")

        deferred = d.pop("deferred")

        predicted = d.pop("predicted")

        confidence = d.pop("confidence")

        def _parse_threshold(data: object) -> float | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(float | None | Unset, data)

        threshold = _parse_threshold(d.pop("threshold", UNSET))

        def _parse_target(data: object) -> float | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(float | None | Unset, data)

        target = _parse_target(d.pop("target", UNSET))

        def _parse_validation_coverage(data: object) -> float | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(float | None | Unset, data)

        validation_coverage = _parse_validation_coverage(
            d.pop("validation_coverage", UNSET)
        )

        def _parse_differential(data: object) -> list[str] | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, list):
                    raise TypeError()
                differential_type_0 = cast(list[str], data)

                return differential_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(list[str] | None | Unset, data)

        differential = _parse_differential(d.pop("differential", UNSET))

        def _parse_differential_note(data: object) -> None | str | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(None | str | Unset, data)

        differential_note = _parse_differential_note(d.pop("differential_note", UNSET))

        deferral_out = cls(
            status=status,
            text=text,
            deferred=deferred,
            predicted=predicted,
            confidence=confidence,
            threshold=threshold,
            target=target,
            validation_coverage=validation_coverage,
            differential=differential,
            differential_note=differential_note,
        )

        deferral_out.additional_properties = d
        return deferral_out

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
