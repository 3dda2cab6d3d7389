"""DICOMweb by reference: QIDO-RS to find a study's images, WADO-RS to fetch them, STOW-RS to
store results, with `dicomweb-client` speaking the protocol.

Every byte dicomweb-client sends goes through `outbound.Outbound` (a requests transport
adapter): only the configured source's host, same-origin redirects, bounded retries, the
source's auth header added there and nowhere else (so the library's own debug logging of
request headers never sees a secret).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from skincli.clinical.dicom import DERMOSCOPIC_PHOTOGRAPHY, VL_PHOTOGRAPHIC
from skincli.clinical.outbound import BlockedDestination, Endpoint, Outbound, OutboundError
from skincli.errors import SkinError

# What a job reads: dermoscopic photographs first, VL photographs when a study has none.
IMAGE_CLASSES = (DERMOSCOPIC_PHOTOGRAPHY, VL_PHOTOGRAPHIC)
_SOP_CLASS, _SERIES, _SOP = "00080016", "0020000E", "00080018"
MAX_IMAGES = 16


@dataclass(frozen=True)
class InstanceRef:
    """One instance of the study, by UIDs only."""

    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str


def _adapter(out: Outbound) -> Any:
    import requests
    from requests.adapters import BaseAdapter
    from requests.structures import CaseInsensitiveDict

    class OutboundAdapter(BaseAdapter):
        def send(self, request: Any, stream: bool = False, timeout: Any = None,
                 verify: Any = True, cert: Any = None, proxies: Any = None) -> Any:
            base = out.endpoint.url
            url = str(request.url)
            if not url.startswith(base):
                raise BlockedDestination(f"Endpoint {out.endpoint.name!r}: a URL outside the "
                                         "configured base", hint="Only configured endpoints "
                                         "are called")
            headers = {k: v for k, v in request.headers.items()
                       if k.lower() not in ("host", "content-length", "authorization")}
            body = request.body.encode() if isinstance(request.body, str) else request.body
            resp = out.request(str(request.method), url[len(base):], headers=headers,
                               content=body)
            r = requests.Response()
            r.status_code = resp.status_code
            r.headers = CaseInsensitiveDict(dict(resp.headers))
            r._content = resp.content
            r.url, r.request, r.reason = url, request, resp.reason_phrase
            r.encoding = resp.encoding
            return r

        def close(self) -> None:
            out.close()

    return OutboundAdapter()


class DicomWeb:
    """A DICOMweb source or destination (QIDO-RS, WADO-RS, STOW-RS) by its configured name."""

    def __init__(self, endpoint: Endpoint) -> None:
        import requests
        from dicomweb_client.api import DICOMwebClient

        self.endpoint = endpoint
        self.out = Outbound(endpoint)
        session = requests.Session()
        session.trust_env = False
        adapter = _adapter(self.out)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        self.client = DICOMwebClient(endpoint.url.rstrip("/"), session=session)
        self.client.set_http_retry_params(retry=False)  # Outbound retries, under a deadline

    def close(self) -> None:
        """Close the connections."""
        self.out.close()

    def instances(self, study: str, series: str | None = None,
                  sop_instance: str | None = None) -> list[InstanceRef]:
        """QIDO-RS: the study's instances (optionally one series / one instance)."""
        filters = {_SOP: sop_instance} if sop_instance else None
        found = self.client.search_for_instances(
            study_instance_uid=study, series_instance_uid=series,
            fields=[_SOP_CLASS, _SERIES, _SOP], search_filters=filters)
        out = []
        for item in found or []:
            def value(tag: str, item: dict = item) -> str:
                vals = (item.get(tag) or {}).get("Value") or [""]
                return str(vals[0])
            out.append(InstanceRef(value(_SERIES) or (series or ""), value(_SOP),
                                   value(_SOP_CLASS)))
        return out

    def images(self, study: str, series: str | None = None,
               sop_instance: str | None = None) -> list[InstanceRef]:
        """The study's dermoscopic images (else its VL photographs); one line error if none."""
        found = self.instances(study, series, sop_instance)
        if not found:
            raise SkinError(f"Source {self.endpoint.name!r} has no such study/series/instance",
                            hint="Check the UIDs the job names")
        for wanted in IMAGE_CLASSES:
            chosen = [i for i in found if i.sop_class_uid == wanted]
            if chosen:
                return chosen[:MAX_IMAGES]
        raise SkinError(f"The study holds {len(found)} instance(s) but no dermoscopic or "
                        "VL photographic image", hint="Name a study with a dermoscopic "
                        "photograph (SOP class 1.2.840.10008.5.1.4.1.1.77.1.7)")

    def retrieve(self, study: str, ref: InstanceRef) -> bytes:
        """WADO-RS: one instance as a DICOM Part 10 file (bytes kept in memory only)."""
        ds = self.client.retrieve_instance(study, ref.series_uid, ref.sop_instance_uid)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    def retrieve_dataset(self, study: str, ref: InstanceRef) -> Any:
        """WADO-RS: one instance as a pydicom Dataset."""
        return self.client.retrieve_instance(study, ref.series_uid, ref.sop_instance_uid)

    def store(self, datasets: list[Any], study: str) -> None:
        """STOW-RS: store datasets into `study`; one line error if the server refuses any."""
        try:
            result = self.client.store_instances(datasets, study_instance_uid=study)
        except OutboundError:
            raise
        failed = (result or {}).get("00081198", {}).get("Value") if result else None
        if failed:
            raise OutboundError(f"{self.endpoint.name}: STOW-RS refused {len(failed)} "
                                "instance(s)", hint="The PACS's log says why")
