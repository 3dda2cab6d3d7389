from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..types import UNSET, Unset

if TYPE_CHECKING:
    from ..models.class_probability import ClassProbability
    from ..models.deferral_out import DeferralOut
    from ..models.prediction_out_probabilities import PredictionOutProbabilities
    from ..models.triage_out import TriageOut


T = TypeVar("T", bound="PredictionOut")


@_attrs_define
class PredictionOut:
    """One image's calibrated prediction.

    Attributes:
        label (str): The most probable class
        probability (float): Its calibrated probability
        top_k (list[ClassProbability]):
        probabilities (PredictionOutProbabilities): Every class, calibrated, sums to 1
        uncertain (bool): Top probability below the run's uncertain threshold: refer for expert review
        image_sha256 (str): SHA-256 of the uploaded bytes (what the log keeps)
        decision (str | Unset): The decision rule that produced this answer (balanced, prevalence, macro-f1); GET
            /v1/model gives its prior Default: 'balanced'.
        warnings (list[str] | Unset):
        disclaimer (str | Unset):  Default: 'Decision support only, not a diagnosis: a clinician must confirm every
            result.'.
        filename (None | str | Unset):
        triage (None | TriageOut | Unset): Refer / no referral suggested (absent when the run has no triage operating
            point)
        deferral (DeferralOut | None | Unset): Answered or deferred to a dermatologist (absent when the run has no
            answer-or-defer operating point); never cancels a triage referral
    """

    label: str
    probability: float
    top_k: list[ClassProbability]
    probabilities: PredictionOutProbabilities
    uncertain: bool
    image_sha256: str
    decision: str | Unset = "balanced"
    warnings: list[str] | Unset = UNSET
    disclaimer: str | Unset = (
        "Decision support only, not a diagnosis: a clinician must confirm every result."
    )
    filename: None | str | Unset = UNSET
    triage: None | TriageOut | Unset = UNSET
    deferral: DeferralOut | None | Unset = UNSET
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from ..models.deferral_out import DeferralOut
        from ..models.triage_out import TriageOut

        label = self.label

        probability = self.probability

        top_k = []
        for top_k_item_data in self.top_k:
            top_k_item = top_k_item_data.to_dict()
            top_k.append(top_k_item)

        probabilities = self.probabilities.to_dict()

        uncertain = self.uncertain

        image_sha256 = self.image_sha256

        decision = self.decision

        warnings: list[str] | Unset = UNSET
        if not isinstance(self.warnings, Unset):
            warnings = self.warnings

        disclaimer = self.disclaimer

        filename: None | str | Unset
        if isinstance(self.filename, Unset):
            filename = UNSET
        else:
            filename = self.filename

        triage: dict[str, Any] | None | Unset
        if isinstance(self.triage, Unset):
            triage = UNSET
        elif isinstance(self.triage, TriageOut):
            triage = self.triage.to_dict()
        else:
            triage = self.triage

        deferral: dict[str, Any] | None | Unset
        if isinstance(self.deferral, Unset):
            deferral = UNSET
        elif isinstance(self.deferral, DeferralOut):
            deferral = self.deferral.to_dict()
        else:
            deferral = self.deferral

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "label": label,
                "probability": probability,
                "top_k": top_k,
                "probabilities": probabilities,
                "uncertain": uncertain,
                "image_sha256": image_sha256,
            }
        )
        if decision is not UNSET:
            field_dict["decision"] = decision
        if warnings is not UNSET:
            field_dict["warnings"] = warnings
        if disclaimer is not UNSET:
            field_dict["disclaimer"] = disclaimer
        if filename is not UNSET:
            field_dict["filename"] = filename
        if triage is not UNSET:
            field_dict["triage"] = triage
        if deferral is not UNSET:
            field_dict["deferral"] = deferral

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        from ..models.class_probability import ClassProbability
        from ..models.deferral_out import DeferralOut
        from ..models.prediction_out_probabilities import PredictionOutProbabilities
        from ..models.triage_out import TriageOut

        d = dict(src_dict)
        label = d.pop("label")

        probability = d.pop("probability")

        top_k = []
        _top_k = d.pop("top_k")
        for top_k_item_data in _top_k:
            top_k_item = ClassProbability.from_dict(top_k_item_data)

            top_k.append(top_k_item)

        probabilities = PredictionOutProbabilities.from_dict(d.pop("probabilities"))

        uncertain = d.pop("uncertain")

        image_sha256 = d.pop("image_sha256")

        decision = d.pop("decision", UNSET)

        warnings = cast(list[str], d.pop("warnings", UNSET))

        disclaimer = d.pop("disclaimer", UNSET)

        def _parse_filename(data: object) -> None | str | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(None | str | Unset, data)

        filename = _parse_filename(d.pop("filename", UNSET))

        def _parse_triage(data: object) -> None | TriageOut | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, dict):
                    raise TypeError()
                triage_type_0 = TriageOut.from_dict(data)

                return triage_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(None | TriageOut | Unset, data)

        triage = _parse_triage(d.pop("triage", UNSET))

        def _parse_deferral(data: object) -> DeferralOut | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, dict):
                    raise TypeError()
                deferral_type_0 = DeferralOut.from_dict(data)

                return deferral_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(DeferralOut | None | Unset, data)

        deferral = _parse_deferral(d.pop("deferral", UNSET))

        prediction_out = cls(
            label=label,
            probability=probability,
            top_k=top_k,
            probabilities=probabilities,
            uncertain=uncertain,
            image_sha256=image_sha256,
            decision=decision,
            warnings=warnings,
            disclaimer=disclaimer,
            filename=filename,
            triage=triage,
            deferral=deferral,
        )

        prediction_out.additional_properties = d
        return prediction_out

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
