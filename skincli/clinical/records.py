"""What the CLI's `predict` records: audit entries and the FHIR document for its results."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from skincli.clinical import audit, dicom, fhir
from skincli.fsutil import sha256_file
from skincli.imageio import ImageError
from skincli.predictor import Prediction, Predictor


def _sha256(path: str | None) -> str:
    try:
        return sha256_file(str(path))
    except OSError:
        return ""


def audit_cli(predictor: Predictor, results: list[Prediction | ImageError],
              log_path: str | Path | None, runs_dir: str | Path = "runs") -> int:
    """Append one audit record per predicted file (raises AuditUnavailable on failure)."""
    run_id = uuid.uuid4().hex[:12]
    entries = [audit.entry(request_id=f"cli-{run_id}-{i}", caller="cli", source="cli",
                           model_version=predictor.info.version,
                           image_sha256=_sha256(r.source), prediction=r.to_dict())
               for i, r in enumerate(results) if not isinstance(r, ImageError)]
    log = audit.AuditLog(log_path or audit.default_path(runs_dir))
    return len(log.append(entries))


def fhir_document(predictor: Predictor, results: list[Prediction | ImageError]) -> dict[str, Any]:
    """One image: its Bundle. Several: one collection Bundle holding every image's resources."""
    model = fhir.model_info(predictor)
    bundles = []
    for r in results:
        if isinstance(r, ImageError):
            continue
        ref = None
        try:
            raw = Path(str(r.source)).read_bytes()
            if dicom.is_dicom(raw, str(r.source)):
                ref = dicom.read_ref(raw, str(r.source)).to_dict()
        except (OSError, ImageError):
            ref = None
        bundles.append(fhir.bundle(r.to_dict(), model, dicom=ref,
                                   image_sha256=_sha256(r.source)))
    if len(bundles) == 1:
        return bundles[0]
    return {"resourceType": "Bundle", "type": "collection",
            "timestamp": bundles[0]["timestamp"] if bundles else None,
            "entry": [e for b in bundles for e in b["entry"]]}
