"""Input by push: a DIMSE C-STORE receiver (pynetdicom) for dermoscopic photographs.

Only Dermoscopic Photography Image Storage (1.2.840.10008.5.1.4.1.1.77.1.7) and VL
Photographic Image Storage are negotiated, explicitly, in the transfer syntaxes the decoder
reads (implicit/explicit VR little endian, JPEG baseline); any other SOP class is refused at
association time. The called AE title must match. Each received instance is handed to
`on_instance(raw_part10_bytes)`; its answer decides the C-STORE status: 0x0000 when the job
ran (or ran before), 0xC000 "cannot understand" for an instance the job refused, 0xA700 "out of
resources" for anything else. Nothing from the dataset is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from skincli.clinical.dicom import DERMOSCOPIC_PHOTOGRAPHY, VL_PHOTOGRAPHIC
from skincli.errors import SkinError

log = logging.getLogger("skincli.dimse")
# pynetdicom logs dataset summaries at debug level: keep them out.
logging.getLogger("pynetdicom").setLevel(logging.WARNING)

SOP_CLASSES = (DERMOSCOPIC_PHOTOGRAPHY, VL_PHOTOGRAPHIC)
TRANSFER_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50")
SUCCESS, CANNOT_UNDERSTAND, OUT_OF_RESOURCES = 0x0000, 0xC000, 0xA700


class StoreReceiver:
    """A C-STORE SCP: `start()` listens (in a background thread), `stop()` closes it."""

    def __init__(self, on_instance: Callable[[bytes], Any], *, ae_title: str = "SKINCLI",
                 host: str = "127.0.0.1", port: int = 11112) -> None:
        self.on_instance = on_instance
        self.ae_title, self.host, self.port = ae_title, host, int(port)
        self._server: Any = None
        self.received = 0

    def _handle(self, event: Any) -> int:
        try:
            raw = event.encoded_dataset()
        except Exception:  # a dataset pynetdicom cannot encode back: not ours to read
            return CANNOT_UNDERSTAND
        self.received += 1
        try:
            self.on_instance(raw)
        except SkinError as exc:
            log.warning("C-STORE refused: %s", exc)
            return CANNOT_UNDERSTAND
        except Exception as exc:
            log.error("C-STORE failed: %s", type(exc).__name__)
            return OUT_OF_RESOURCES
        return SUCCESS

    def start(self) -> None:
        """Listen on host:port (raises SkinError when the port cannot be opened)."""
        from pynetdicom import AE, evt

        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True
        for sop in SOP_CLASSES:
            ae.add_supported_context(sop, list(TRANSFER_SYNTAXES))
        try:
            self._server = ae.start_server((self.host, self.port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._handle)])
        except OSError as exc:
            raise SkinError(f"Cannot listen for DICOM on {self.host}:{self.port}: "
                            f"{exc.strerror or exc}", hint="Choose another receive.port") from None

    def stop(self) -> None:
        """Stop listening (associations in progress are closed)."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
