"""Clinical formats: DICOM in, FHIR R4 out, triage, the audit chain, the model card."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dicomgen import (
    DERMOSCOPIC,
    PHI,
    SERIES_UID,
    SOP_UID,
    STUDY_UID,
    VL_PHOTO,
    make_dicom,
    noise_rgb,
)
from helpers_run import make_run
from imagegen import make_image
from typer.testing import CliRunner

from skincli.cli import app
from skincli.clinical import audit, triage
from skincli.imageio import ImageError, load_rgb
from skincli.runs import load_run_info, update_run_info

runner = CliRunner()
CLASSES = ["melanoma", "nevus", "vascular lesion"]
# fhir.resources 8 has R4B (4.3.0), the R4 line; its default package is R5.
R4 = pytest.importorskip("fhir.resources.R4B")


def _flat(text: str) -> str:
    return " ".join(text.split())


def validate_bundle(doc: dict[str, Any]) -> dict[str, Any]:
    """Validate the Bundle and each resource with fhir.resources (R4B); return by type."""
    from fhir.resources.R4B import get_fhir_model_class
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(doc)
    out = {}
    for e in doc["entry"]:
        res = e["resource"]
        get_fhir_model_class(res["resourceType"]).model_validate(res)
        out[res["resourceType"]] = res
    return out


# --- DICOM in ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sop,modality", [(DERMOSCOPIC, "DMS"), (VL_PHOTO, "XC")])
@pytest.mark.parametrize("monochrome", [False, True])
@pytest.mark.parametrize("compress", [False, True])
def test_dicom_decodes_like_the_source(sop: str, modality: str, monochrome: bool,
                                       compress: bool) -> None:
    px = noise_rgb(48, 40, seed=2)
    raw = make_dicom(None, px, sop_class=sop, modality=modality, monochrome=monochrome,
                     compress=compress)
    arr = load_rgb(raw)
    want = np.repeat(px[:, :, :1], 3, axis=2) if monochrome else px
    assert arr.shape == (40, 48, 3) and arr.dtype == np.uint8
    # Uncompressed is exact; JPEG baseline is lossy but close.
    assert np.abs(arr.astype(int) - want).mean() < (4.0 if compress else 1e-9)


def test_dicom_file_by_suffix_and_magic(tmp_path: Path) -> None:
    path = tmp_path / "lesion.dcm"
    make_dicom(path, noise_rgb())
    assert load_rgb(path).shape == (40, 48, 3)
    from skincli.imageio import is_image_file

    assert is_image_file(path)


def _error(raw: bytes, name: str | None = None) -> ImageError:
    with pytest.raises(ImageError) as info:
        load_rgb(raw if name is None else raw)
    return info.value


def test_bad_dicoms_get_one_line_errors_without_phi() -> None:
    px = noise_rgb()
    good = make_dicom(None, px)
    syntax_changed = make_dicom(None, px, compress=True, syntax_uid="1.2.840.10008.1.2.4.90")
    cases = {
        "no pixel data": (make_dicom(None, None), "invalid_image", "no Pixel Data"),
        "pdf": (make_dicom(None, pdf=b"%PDF-1.4 fake"), "unsupported_type", "Encapsulated PDF"),
        "preamble": (good[:128] + b"XXXX" + good[132:], "corrupt", "no 'DICM' marker"),
        "multi-frame": (make_dicom(None, px, frames=3), "unsupported_type", "3 frames"),
        "syntax": (syntax_changed, "unsupported_type", "1.2.840.10008.1.2.4.90"),
    }
    for what, (raw, code, text) in cases.items():
        err = _error(raw)
        assert err.code == code, what
        assert text in str(err), (what, str(err))
        assert "\n" not in str(err)
        for value in PHI.values():
            assert value not in str(err), (what, value)


# --- triage -----------------------------------------------------------------------------------

def test_triage_threshold_meets_target_sensitivity() -> None:
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 3, n)
    probs = rng.dirichlet([1, 1, 1], n)
    probs[y == 0, 0] += 0.6  # melanoma cases score higher, with overlap
    probs /= probs.sum(axis=1, keepdims=True)
    rec = triage.fit(probs, y, CLASSES, target=0.95)
    assert rec["malignant"] == ["melanoma"] and rec["threshold"] is not None
    s = probs[:, 0]
    sens = (s[y == 0] >= rec["threshold"]).mean()
    assert sens >= 0.95
    # The highest such threshold: one step higher would miss the target.
    pos = np.sort(s[y == 0])
    higher = pos[pos >= rec["threshold"]][1]
    assert (pos >= higher).mean() < 0.95
    assert rec["validation"]["sensitivity"] == pytest.approx(sens)
    lo, hi = rec["validation"]["sensitivity_ci95"]
    assert lo < sens <= hi


def test_wilson_interval_known_value() -> None:
    lo, hi = triage.wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert triage.wilson(0, 0) is None


def test_melanoma_predicted_as_nevus_is_still_referred() -> None:
    rec = {"threshold": 0.12, "malignant": ["melanoma"], "premalignant": [],
           "target_sensitivity": 0.95}
    out = triage.assess(rec, {"melanoma": 0.15, "nevus": 0.82, "vascular lesion": 0.03})
    assert out["refer"] is True and out["decision"] == "refer"
    out = triage.assess(rec, {"melanoma": 0.05, "nevus": 0.92, "vascular lesion": 0.03})
    assert out["decision"] == "no referral suggested"
    assert triage.assess(None, {"melanoma": 1.0}) is None


def test_triage_grouping_is_configurable_and_checked() -> None:
    g = triage.grouping(["melanoma", "actinic keratosis", "nevus"])
    assert g.malignant == ["melanoma"] and g.premalignant == ["actinic keratosis"]
    g = triage.grouping(["melanoma", "nevus"], "nevus, melanoma")
    assert g.malignant == ["nevus", "melanoma"]
    from skincli.errors import SkinError

    with pytest.raises(SkinError, match="not classes of the run"):
        triage.grouping(["melanoma", "nevus"], "melanomma")


# --- the audit chain -------------------------------------------------------------------------

def _pred(label: str = "nevus") -> dict[str, Any]:
    return {"label": label, "probability": 0.8, "uncertain": False, "triage": None}


def test_audit_chain_verifies_and_names_the_first_broken_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = audit.AuditLog(path)
    for i in range(5):
        log.append([audit.entry(request_id=f"r{i}", caller="cli", source="cli",
                                model_version="m", image_sha256="0" * 64,
                                prediction=_pred())])
    r = runner.invoke(app, ["audit", "verify", str(path)])
    assert r.exit_code == 0, r.output
    assert "5 records, chain intact" in _flat(r.output)
    raw = bytearray(path.read_bytes())
    third = raw.index(b'"r2"')
    raw[third + 2] = ord("X")  # one byte of record 3 (line 3)
    path.write_bytes(bytes(raw))
    r = runner.invoke(app, ["audit", "verify", str(path)])
    assert r.exit_code == 1
    assert "line 3 (seq 2) is broken" in _flat(r.output) and "Traceback" not in r.output
    # Deleting a record breaks the link of the next one.
    lines = (tmp_path / "audit.jsonl").read_bytes().splitlines(keepends=True)
    log2 = tmp_path / "b.jsonl"
    audit.AuditLog(log2).append([audit.entry(request_id=f"x{i}", caller="c", source="cli",
                                             model_version="m", image_sha256="",
                                             prediction=_pred()) for i in range(3)])
    kept = log2.read_bytes().splitlines(keepends=True)
    log2.write_bytes(kept[0] + kept[2])
    res = audit.verify(log2)
    assert not res.ok and res.first_bad_line == 2 and "sequence" in res.reason
    assert lines


def test_audit_refuses_unknown_fields_and_never_stores_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        audit.AuditLog(tmp_path / "a.jsonl").append([{"time": "t", "patient": "x"}])
    assert audit.key_id("secret-key-123").startswith("key-")
    assert "secret" not in audit.key_id("secret-key-123")
    assert audit.key_id(None) == "anonymous"


# --- the API ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clinical")
    runs = root / "runs"
    make_run(root, classes=CLASSES, name="alpha", runs_dir=runs)
    rec = {"threshold": 0.2, "malignant": ["melanoma"], "premalignant": [],
           "count_premalignant": False, "target_sensitivity": 0.95, "source": "test"}
    info = load_run_info(runs / "alpha")
    update_run_info(runs / "alpha", extra={**info.extra, "triage": rec},
                    test_metrics={"accuracy": 0.61, "macro_f1": 0.5})
    return runs


def _serve(runs: Path, **kw: Any) -> Any:
    from test_serve_support import serving

    return serving(runs, **kw)


def test_dicom_round_trip_to_fhir_and_audit(runs: Path, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    raw = make_dicom(None, noise_rgb(64, 64, seed=5))
    with _serve(runs, audit_log=str(log)) as c:
        r = c.post("/v1/predict?format=fhir", content=raw,
                   headers={"Content-Type": "application/dicom"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/fhir+json")
        doc = r.json()
        r2 = c.post("/v1/predict", files={"file": ("x.dcm", raw, "application/dicom")},
                    headers={"Accept": "application/fhir+json"})
        assert r2.status_code == 200 and r2.json()["resourceType"] == "Bundle"
        plain = c.post("/v1/predict", content=raw,
                       headers={"Content-Type": "application/dicom"}).json()
    res = validate_bundle(doc)
    assert set(res) == {"DiagnosticReport", "Observation", "Device", "Provenance"}
    obs, rep, dev = res["Observation"], res["DiagnosticReport"], res["Device"]
    assert obs["status"] == rep["status"] == "preliminary"
    for r_ in (obs, rep, dev):
        assert r_["meta"]["security"][0]["code"] == "AIAST"
    pred = plain["prediction"]
    top = obs["valueCodeableConcept"]["coding"]
    assert top[-1]["code"] == pred["label"]
    if pred["label"] == "melanoma":
        assert top[0] == {"system": "http://snomed.info/sct", "code": "372244006",
                          "display": "Malignant melanoma"}
    probs = {c["code"]["coding"][-1]["code"]: c["valueQuantity"]["value"]
             for c in obs["component"] if "valueQuantity" in c
             and c["code"]["coding"][-1]["code"] in CLASSES}
    assert probs == pytest.approx(pred["probabilities"], abs=1e-6)
    codes = {c["code"]["coding"][0]["code"] for c in obs["component"]}
    assert {"uncertain", "malignancy-score", "referral-threshold", "triage-decision"} <= codes
    assert obs["derivedFrom"][0]["identifier"]["value"] == f"urn:oid:{STUDY_UID}"
    assert SERIES_UID in obs["derivedFrom"][0]["display"]
    assert SOP_UID in obs["derivedFrom"][0]["display"]
    assert obs["device"]["reference"] == next(e["fullUrl"] for e in doc["entry"]
                                              if e["resource"]["resourceType"] == "Device")
    assert dev["version"][0]["value"] == "alpha@2026-01-01T00:00:00"
    assert any(p.get("valueQuantity", [{}])[0].get("value") == 0.61 for p in dev["property"])
    rule = next(p for p in dev["property"] if p["type"]["coding"][0]["code"] == "decision-rule")
    assert rule["valueCode"][0]["text"].startswith("balanced")
    assert pred["triage"]["decision"] in ("refer", "no referral suggested")
    assert pred["triage"]["decision"] in rep["conclusion"]
    assert "subject" not in obs and "subject" not in rep
    # All three answers are in the chain, which verifies, and fails after one changed byte.
    result = audit.verify(log)
    assert result.ok and result.records == 3
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert rows[0]["request_id"] == r.headers["x-request-id"]
    assert rows[0]["result"]["label"] == pred["label"] and rows[0]["triage"]["decision"]
    assert runner.invoke(app, ["audit", "verify", str(log)]).exit_code == 0
    data = bytearray(log.read_bytes())
    data[data.index(b'"probability":') + 15] ^= 1
    log.write_bytes(bytes(data))
    r = runner.invoke(app, ["audit", "verify", str(log)])
    assert r.exit_code == 1 and "line 1" in _flat(r.output)


def test_bad_clinical_requests(runs: Path, tmp_path: Path) -> None:
    from test_serve_api import assert_error

    px = noise_rgb()
    good = make_dicom(None, px)
    with _serve(runs, audit_log=str(tmp_path / "a.jsonl")) as c:
        dcm = {"Content-Type": "application/dicom"}
        assert_error(c.post("/v1/predict", content=make_dicom(None, None), headers=dcm),
                     422, "invalid_image")
        assert_error(c.post("/v1/predict", content=make_dicom(None, pdf=b"%PDF-1.4 x"),
                            headers=dcm), 415, "unsupported_type")
        assert_error(c.post("/v1/predict", content=good[:128] + b"XXXX" + good[132:],
                            headers=dcm), 422, "corrupt")
        files = [("files", ("a.dcm", good, "application/dicom"))]
        body = assert_error(c.post("/v1/predict/batch?format=fhir", files=files), 422,
                            "invalid_request")
        assert "one image" in body["message"]
        assert_error(c.post("/v1/predict", content=good, headers={**dcm, "Accept": "text/html"}),
                     406, "not_acceptable")
        assert_error(c.post("/v1/predict?format=xml", content=good, headers=dcm), 422,
                     "invalid_request")
        ok = c.post("/v1/predict", content=good,
                    headers={**dcm, "Accept": "text/html, application/json;q=0.5"})
        assert ok.status_code == 200 and "prediction" in ok.json()
    assert audit.verify(tmp_path / "a.jsonl").records == 1  # only the answered one


def test_no_answer_without_an_audit_record(runs: Path, tmp_path: Path) -> None:
    from test_serve_api import assert_error

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the log's folder should be")
    with _serve(runs, audit_log=str(blocked / "audit.jsonl")) as c:
        body = assert_error(c.post("/v1/predict", content=make_dicom(None, noise_rgb()),
                                   headers={"Content-Type": "application/dicom"}),
                            503, "audit_unavailable")
        assert "not released" in body["message"]
        assert "probabilities" not in body["message"]


def test_phi_never_reaches_logs_or_stores(runs: Path, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    import time

    store = tmp_path / "predictions.db"
    log = tmp_path / "audit.jsonl"
    raw = make_dicom(None, noise_rgb(seed=9))
    bad = make_dicom(None, None)
    caplog.set_level(logging.DEBUG)
    with _serve(runs, audit_log=str(log), no_log=False, store=f"sqlite:///{store}") as c:
        for body in (raw, bad):
            c.post("/v1/predict", content=body, headers={"Content-Type": "application/dicom"})
        c.post("/v1/predict?format=fhir", files={"file": ("lesion.dcm", raw, "application/dicom")})
        deadline = time.monotonic() + 10
        while c.app.state.skin.predlog.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert store.is_file()
    with sqlite3.connect(store) as db:
        n = db.execute("select count(*) from predictions").fetchone()[0]
    assert n == 2
    texts = {"log": caplog.text, "store": store.read_bytes().decode("latin-1"),
             "audit": log.read_text()}
    for where, text in texts.items():
        for value in PHI.values():
            assert value not in text, (where, value)
            assert value.split("^")[0] not in text, (where, value)


def test_model_card_endpoint(runs: Path, tmp_path: Path) -> None:
    with _serve(runs, audit_log=str(tmp_path / "a.jsonl")) as c:
        card = c.get("/v1/model/card")
        assert card.status_code == 200, card.text
        body = card.json()
        assert body["model"]["version"] == "alpha@2026-01-01T00:00:00"
        assert "config" not in body["model"]
        md = c.get("/v1/model/card?format=markdown")
        assert md.headers["content-type"].startswith("text/markdown")
        assert "## Intended use" in md.text and "refer" in md.text.lower()
        assert c.get("/").status_code == 200
        assert "/v1/model/card" in c.get("/").text
        assert "renderTriage" in c.get("/static/app.js").text


# --- the CLI: predict --fhir, card, evaluate -------------------------------------------------

@pytest.fixture()
def trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny run with its own split (train/val/test images), trained before triage existed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKIN_STORE", str(tmp_path / "store.db"))
    files: dict[str, dict[str, list[Path]]] = {}
    k = 0
    for part, n in (("train", 6), ("val", 6), ("test", 6)):
        files[part] = {}
        for ci, cls in enumerate(CLASSES):
            files[part][cls] = [make_image(tmp_path / "data" / part / cls / f"{j}.png",
                                           color=((200, 60, 60), (60, 160, 70),
                                                  (70, 90, 200))[ci], seed=(k := k + 1))
                                for j in range(n)]
    return make_run(tmp_path, classes=CLASSES, name="tiny", split_files=files)


def test_predict_fhir_and_cli_audit(trained: Path, tmp_path: Path) -> None:
    dcm = tmp_path / "lesion.dcm"
    make_dicom(dcm, noise_rgb(seed=4))
    out = tmp_path / "out.fhir.json"
    r = runner.invoke(app, ["predict", str(dcm), "--fhir", str(out), "--no-log"])
    assert r.exit_code == 0, r.output
    res = validate_bundle(json.loads(out.read_text()))
    assert res["Observation"]["derivedFrom"][0]["identifier"]["value"] == f"urn:oid:{STUDY_UID}"
    log = tmp_path / "runs" / "audit.jsonl"
    result = audit.verify(log)
    assert result.ok and result.records == 1
    row = json.loads(log.read_text())
    assert row["caller"] == "cli" and row["source"] == "cli"
    for value in PHI.values():
        assert value not in log.read_text() and value not in out.read_text()


def test_card_fits_triage_on_first_need_and_writes_a_readable_card(trained: Path) -> None:
    assert "triage" not in load_run_info(trained).extra
    r = runner.invoke(app, ["card", "tiny"])
    assert r.exit_code == 0, r.output
    rec = load_run_info(trained).extra["triage"]
    assert rec["threshold"] is not None and rec["malignant"] == ["melanoma"]
    assert rec["n_val"] == 18 and rec["n_val_positive"] == 6
    md = (trained / "MODEL_CARD.md").read_text()
    for section in ("## Model details", "## Intended use", "## Out of scope",
                    "## Training data", "## Evaluation", "### Triage operating point",
                    "### Decision rule", "## Known limitations", "## Clinical coding"):
        assert section in md, section
    assert "| melanoma | 6 | 6 | 6 |" in md  # counts per class and split
    assert "Classes the model never saw" in md and "basal cell carcinoma" in md
    assert "Low-support classes" in md
    card = json.loads((trained / "model_card.json").read_text())
    assert card["evaluation"]["triage"]["threshold"] == rec["threshold"]
    assert card["model"]["model_sha256"] and len(card["model"]["model_sha256"]) == 64


def test_evaluate_reports_triage_with_cis(trained: Path) -> None:
    r = runner.invoke(app, ["evaluate", "tiny", "--bootstrap", "0"])
    assert r.exit_code == 0, r.output
    text = _flat(r.output)
    assert "Triage (refer when malignancy score >=" in text
    assert "sensitivity" in text and "95% CI" in text
    tri = load_run_info(trained).extra["triage"]
    assert tri["test"]["positives"] == 6 and tri["test"]["n"] == 18
    r = runner.invoke(app, ["evaluate", "tiny", "--bootstrap", "0", "--triage-sensitivity",
                            "0.5"])
    assert r.exit_code == 0, r.output
    assert load_run_info(trained).extra["triage"]["target_sensitivity"] == 0.5


def test_card_states_metadata_label_provenance() -> None:
    from skincli.clinical.card import _label_provenance

    meta = {"layout": "kaggle", "metadata": {
        "path": "/data/isic9_metadata.csv", "format": "isic-archive", "sha256": "ab" * 32,
        "labels": "metadata", "group": "lesion", "disagreements": 158,
        "emptied_classes": ["seborrheic keratosis"]}}
    text = _label_provenance(meta)
    assert "isic9_metadata.csv" in text and "158 folder labels" in text
    assert "seborrheic keratosis" in text and "abababab" in text
    meta["metadata"]["labels"] = "folder"
    assert "used for groups only" in _label_provenance(meta)
    assert _label_provenance({"layout": "folders"}) == "class folder names"
