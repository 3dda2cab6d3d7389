"""The 'done when' round trip on a real image: an isic9 JPEG wrapped as a DICOM dermoscopic
image by pydicom, posted to the API, answered as a FHIR R4 Bundle that validates, recorded in
an audit chain that `skin audit verify` accepts and rejects after one changed byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dicomgen import PHI, STUDY_UID, make_dicom
from helpers_run import make_run
from typer.testing import CliRunner

DATA = Path("/work/shared/data/isic9")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not DATA.is_dir(), reason="needs /work/shared/data/isic9")]
CLASSES = ["actinic keratosis", "basal cell carcinoma", "melanoma", "nevus"]


def test_real_dermoscopic_dicom_round_trip(tmp_path: Path) -> None:
    from fhir.resources.R4B import get_fhir_model_class
    from fhir.resources.R4B.bundle import Bundle
    from test_serve_support import serving

    from skincli.cli import app
    from skincli.runs import load_run_info, update_run_info

    jpeg = sorted((DATA / "Train" / "melanoma").glob("*.jpg"))[0].read_bytes()
    raw = make_dicom(None, jpeg=jpeg)  # the JPEG stream as is: JPEG baseline, YBR_FULL_422
    runs = tmp_path / "runs"
    make_run(tmp_path, classes=CLASSES, name="real", runs_dir=runs, input_size=64)
    info = load_run_info(runs / "real")
    update_run_info(runs / "real", extra={**info.extra, "triage": {
        "threshold": 0.3, "malignant": ["basal cell carcinoma", "melanoma"],
        "premalignant": ["actinic keratosis"], "target_sensitivity": 0.95}})
    log = tmp_path / "audit.jsonl"
    with serving(runs, run="real", audit_log=str(log)) as c:
        r = c.post("/v1/predict", content=raw, headers={
            "Content-Type": "application/dicom", "Accept": "application/fhir+json"})
    assert r.status_code == 200, r.text
    doc = r.json()
    Bundle.model_validate(doc)
    kinds = {}
    for e in doc["entry"]:
        get_fhir_model_class(e["resource"]["resourceType"]).model_validate(e["resource"])
        kinds[e["resource"]["resourceType"]] = e["resource"]
    obs = kinds["Observation"]
    assert obs["derivedFrom"][0]["identifier"]["value"] == f"urn:oid:{STUDY_UID}"
    assert "triage" in json.dumps(obs) or any(
        c["code"]["coding"][0]["code"] == "triage-decision" for c in obs["component"])
    for value in PHI.values():
        assert value not in r.text and value not in log.read_text()
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", "verify", str(log)])
    assert ok.exit_code == 0, ok.output
    data = bytearray(log.read_bytes())
    data[len(data) // 2] ^= 0x01
    log.write_bytes(bytes(data))
    bad = runner.invoke(app, ["audit", "verify", str(log)])
    assert bad.exit_code == 1 and "broken" in bad.output
