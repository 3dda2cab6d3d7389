from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self, TypeVar, cast

from attrs import define as _attrs_define

from ..types import UNSET, Unset

T = TypeVar("T", bound="JobIn")


@_attrs_define
class JobIn:
    """A job by reference: a configured source and the UIDs to read.

    Attributes:
        source (str): A source name from the configuration
        study_uid (str):
        series_uid (None | str | Unset):
        sop_instance_uid (None | str | Unset):
        id (None | str | Unset): Client job id (idempotency key); generated when absent
    """

    source: str
    study_uid: str
    series_uid: None | str | Unset = UNSET
    sop_instance_uid: None | str | Unset = UNSET
    id: None | str | Unset = UNSET

    def to_dict(self) -> dict[str, Any]:
        source = self.source

        study_uid = self.study_uid

        series_uid: None | str | Unset
        if isinstance(self.series_uid, Unset):
            series_uid = UNSET
        else:
            series_uid = self.series_uid

        sop_instance_uid: None | str | Unset
        if isinstance(self.sop_instance_uid, Unset):
            sop_instance_uid = UNSET
        else:
            sop_instance_uid = self.sop_instance_uid

        id: None | str | Unset
        if isinstance(self.id, Unset):
            id = UNSET
        else:
            id = self.id

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "source": source,
                "study_uid": study_uid,
            }
        )
        if series_uid is not UNSET:
            field_dict["series_uid"] = series_uid
        if sop_instance_uid is not UNSET:
            field_dict["sop_instance_uid"] = sop_instance_uid
        if id is not UNSET:
            field_dict["id"] = id

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        d = dict(src_dict)
        source = d.pop("source")

        study_uid = d.pop("study_uid")

        def _parse_series_uid(data: object) -> None | str | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(None | str | Unset, data)

        series_uid = _parse_series_uid(d.pop("series_uid", UNSET))

        def _parse_sop_instance_uid(data: object) -> None | str | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(None | str | Unset, data)

        sop_instance_uid = _parse_sop_instance_uid(d.pop("sop_instance_uid", UNSET))

        def _parse_id(data: object) -> None | str | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(None | str | Unset, data)

        id = _parse_id(d.pop("id", UNSET))

        job_in = cls(
            source=source,
            study_uid=study_uid,
            series_uid=series_uid,
            sop_instance_uid=sop_instance_uid,
            id=id,
        )

        return job_in
