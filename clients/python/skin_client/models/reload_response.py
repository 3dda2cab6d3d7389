from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field

if TYPE_CHECKING:
    from ..models.model_ref import ModelRef


T = TypeVar("T", bound="ReloadResponse")


@_attrs_define
class ReloadResponse:
    """
    Attributes:
        request_id (str):
        previous (ModelRef | None):
        model (ModelRef): Which model answered.
        load_seconds (float):
    """

    request_id: str
    previous: ModelRef | None
    model: ModelRef
    load_seconds: float
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from ..models.model_ref import ModelRef

        request_id = self.request_id

        previous: dict[str, Any] | None
        if isinstance(self.previous, ModelRef):
            previous = self.previous.to_dict()
        else:
            previous = self.previous

        model = self.model.to_dict()

        load_seconds = self.load_seconds

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "request_id": request_id,
                "previous": previous,
                "model": model,
                "load_seconds": load_seconds,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        from ..models.model_ref import ModelRef

        d = dict(src_dict)
        request_id = d.pop("request_id")

        def _parse_previous(data: object) -> ModelRef | None:
            if data is None:
                return data
            try:
                if not isinstance(data, dict):
                    raise TypeError()
                previous_type_0 = ModelRef.from_dict(data)

                return previous_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(ModelRef | None, data)

        previous = _parse_previous(d.pop("previous"))

        model = ModelRef.from_dict(d.pop("model"))

        load_seconds = d.pop("load_seconds")

        reload_response = cls(
            request_id=request_id,
            previous=previous,
            model=model,
            load_seconds=load_seconds,
        )

        reload_response.additional_properties = d
        return reload_response

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
