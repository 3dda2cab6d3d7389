from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..types import UNSET, Unset

T = TypeVar("T", bound="TriageOut")


@_attrs_define
class TriageOut:
    """The malignancy score against the run's referral threshold.

    Attributes:
        malignancy_score (float): Summed probability of the malignant classes
        premalignant_score (float): Probability of the pre-malignant classes
        threshold (float): Referral threshold fitted on validation
        refer (bool):
        decision (str): "refer" or "no referral suggested"
        target_sensitivity (float | None | Unset):
    """

    malignancy_score: float
    premalignant_score: float
    threshold: float
    refer: bool
    decision: str
    target_sensitivity: float | None | Unset = UNSET
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        malignancy_score = self.malignancy_score

        premalignant_score = self.premalignant_score

        threshold = self.threshold

        refer = self.refer

        decision = self.decision

        target_sensitivity: float | None | Unset
        if isinstance(self.target_sensitivity, Unset):
            target_sensitivity = UNSET
        else:
            target_sensitivity = self.target_sensitivity

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "malignancy_score": malignancy_score,
                "premalignant_score": premalignant_score,
                "threshold": threshold,
                "refer": refer,
                "decision": decision,
            }
        )
        if target_sensitivity is not UNSET:
            field_dict["target_sensitivity"] = target_sensitivity

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        d = dict(src_dict)
        malignancy_score = d.pop("malignancy_score")

        premalignant_score = d.pop("premalignant_score")

        threshold = d.pop("threshold")

        refer = d.pop("refer")

        decision = d.pop("decision")

        def _parse_target_sensitivity(data: object) -> float | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(float | None | Unset, data)

        target_sensitivity = _parse_target_sensitivity(
            d.pop("target_sensitivity", UNSET)
        )

        triage_out = cls(
            malignancy_score=malignancy_score,
            premalignant_score=premalignant_score,
            threshold=threshold,
            refer=refer,
            decision=decision,
            target_sensitivity=target_sensitivity,
        )

        triage_out.additional_properties = d
        return triage_out

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
