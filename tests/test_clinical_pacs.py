"""Jobs by reference against a real PACS: Orthanc + DICOMweb on loopback (tests/orthanc.py).

A synthetic dermoscopic DICOM with canary patient identifiers is stored in Orthanc; a job
reads it by QIDO-RS/WADO-RS, classifies it, stores a TID 1500 SR into the same study by
STOW-RS; the SR is found again by QIDO, passes dciodvfy and reads back with highdicom. No
patient identifier reaches a job record, the audit log or a log line.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from dicomgen import PHI, SOP_UID, STUDY_UID, make_dicom, noise_rgb
from helpers_run import make_run
from orthanc import Orthanc, need, orthanc_fixture  # noqa: F401 - the fixture
from typer.testing import CliRunner

from skincli.cli import app
from skincli.clinical import audit, config, sr
from skincli.clinical.dicomweb import DicomWeb
from skincli.errors import SkinError

runner = CliRunner()
CLASSES = ["melanoma", "nevus", "vascular lesion"]
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
PASSWORD_ENV = "SKIN_TEST_PACS_PASSWORD"


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pacs-runs")
    make_run(root, classes=CLASSES, name="alpha", runs_dir=root / "runs")
    return root / "runs"


def _study(orthanc: Orthanc, study: str, *, pdf: bool = False, seed: int = 0) -> None:
    """Store one instance in a study of its own (UIDs derived from `study`)."""
    raw = make_dicom(None, None if pdf else noise_rgb(64, 64, seed=seed),
                     pdf=b"%PDF-1.4 x" if pdf else None)
    ds = pydicom.dcmread(io.BytesIO(raw))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, study + ".1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = study + ".1.1"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    orthanc.upload(buf.getvalue())


def _config(tmp_path: Path, orthanc: Orthanc, monkeypatch: pytest.MonkeyPatch,
            **extra: Any) -> Path:
    monkeypatch.setenv(PASSWORD_ENV, orthanc.password)
    doc = {"sources": {"pacs": {"url": orthanc.dicomweb, "allow_loopback": True,
                                "auth": {"type": "basic", "username": orthanc.user,
                                         "password_env": PASSWORD_ENV},
                                "retry": {"attempts": 2, "base_s": 0.05, "deadline_s": 20}}},
           "results": {"sr": True}, "jobs_dir": "jobs",
           "device": {"manufacturer": "skincli test", "device_uid": "1.2.826.0.1.3680043.10.1"},
           **extra}
    path = tmp_path / "clinical.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _predict(cfg: Path, runs: Path, *args: str) -> Any:
    return runner.invoke(app, ["predict", "--dicomweb", *args, "--clinical-config", str(cfg),
                               "--run", "alpha", "--runs-dir", str(runs), "--engine", "tf"])


def _instances(orthanc: Orthanc, study: str) -> list[dict]:
    r = orthanc.get(f"/dicom-web/studies/{study}/instances",
                    headers={"Accept": "application/dicom+json"})
    return r.json() if r.status_code == 200 and r.content else []


def test_a_job_by_reference_stores_an_sr_in_the_same_study(
        orthanc: Orthanc, runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    need("dciodvfy")
    caplog.set_level(logging.DEBUG)
    orthanc.upload(make_dicom(None, noise_rgb(64, 64, seed=3)))  # canary PHI inside
    cfg = _config(tmp_path, orthanc, monkeypatch)
    log = runs / "audit.jsonl"
    r = _predict(cfg, runs, "pacs", "--study", STUDY_UID, "--job-id", "job-1", "--json",
                 "--audit-log", str(log))
    assert r.exit_code == 0, r.output
    record = json.loads(r.output)
    assert record["state"] == "done" and not record["replayed"]
    assert record["images"][0]["sop_instance_uid"] == SOP_UID
    label = record["images"][0]["prediction"]["label"]
    assert label in CLASSES
    # QIDO finds the SR in the same study, as a new series.
    found = [i for i in _instances(orthanc, STUDY_UID) if i["00080016"]["Value"][0] == SR_CLASS]
    assert len(found) == 1
    assert found[0]["0020000E"]["Value"][0] == record["sr"]["series_instance_uid"]
    # Read it back over WADO-RS: dciodvfy reports no error, highdicom reads the finding.
    ds = pydicom.dcmread(io.BytesIO(orthanc.get(
        f"/instances/{_orthanc_id(orthanc, record['sr']['sop_instance_uid'])}/file").content))
    assert ds.VerificationFlag == "UNVERIFIED" and ds.StudyInstanceUID == STUDY_UID
    equipment = ds.ContributingEquipmentSequence[0]
    assert equipment.Manufacturer == "skincli test" and equipment.DeviceUID
    assert equipment.SoftwareVersions and equipment.ManufacturerModelName
    path = tmp_path / "sr.dcm"
    ds.save_as(path, enforce_file_format=True)
    check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    errors = [x for x in (check.stdout + check.stderr).splitlines() if x.startswith("Error")]
    assert errors == [], errors
    findings = sr.read_back(ds)
    assert findings[0]["probability"] == pytest.approx(
        record["images"][0]["prediction"]["probability"], abs=1e-6)
    # The same job id again: the stored result, nothing redone, no second SR.
    r = _predict(cfg, runs, "pacs", "--study", STUDY_UID, "--job-id", "job-1", "--json",
                 "--audit-log", str(log))
    assert r.exit_code == 0, r.output
    again = json.loads(r.output)
    assert again["replayed"] and again["images"] == record["images"]
    assert len([i for i in _instances(orthanc, STUDY_UID)
                if i["00080016"]["Value"][0] == SR_CLASS]) == 1
    assert audit.verify(log).records == 1  # one job, one audit record
    r = _predict(cfg, runs, "pacs", "--study", STUDY_UID, "--job-id", "job-1",
                 "--audit-log", str(log))
    shown = _flat(r.output)
    assert r.exit_code == 0 and "Job job-1 ran before" in shown, r.output
    assert f"{SOP_UID}: {label}" in shown and f"SR stored in study {STUDY_UID}" in shown
    # No patient identifier in the job store, the audit log or any log line.
    stored = "".join(p.read_text() for p in (tmp_path / "jobs").glob("*.json"))
    text = stored + log.read_text() + caplog.text + r.output
    for value in PHI.values():
        assert value not in text and value.split("^")[0] not in text
    assert orthanc.password not in text


def _orthanc_id(orthanc: Orthanc, sop_uid: str) -> str:
    import httpx

    r = httpx.post(orthanc.url + "/tools/lookup", content=sop_uid,
                   auth=(orthanc.user, orthanc.password), timeout=10)
    return next(x["ID"] for x in r.json() if x["Type"] == "Instance")


def test_bad_input_is_one_line_and_the_job_is_recorded(
        orthanc: Orthanc, runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(tmp_path, orthanc, monkeypatch)
    r = _predict(cfg, runs, "pcas", "--study", STUDY_UID)
    assert r.exit_code == 1 and "Unknown source 'pcas'" in _flat(r.output)
    assert "Did you mean: pacs" in _flat(r.output) and "Traceback" not in r.output
    # A study the PACS does not have.
    r = _predict(cfg, runs, "pacs", "--study", "1.2.3.999", "--job-id", "missing")
    assert r.exit_code == 1 and "no such study" in _flat(r.output), r.output
    rec = json.loads((tmp_path / "jobs" / "missing.json").read_text())
    assert rec["state"] == "failed" and rec["step"] == "fetching" and "no such" in rec["error"]
    # A study without a dermoscopic image.
    _study(orthanc, "1.2.826.0.1.3680043.8.498.77", pdf=True)
    r = _predict(cfg, runs, "pacs", "--study", "1.2.826.0.1.3680043.8.498.77")
    assert r.exit_code == 1 and "no dermoscopic" in _flat(r.output), r.output
    # Not a UID; the same job id for another study.
    r = _predict(cfg, runs, "pacs", "--study", "../../etc")
    assert r.exit_code == 1 and "not a DICOM UID" in _flat(r.output)
    r = _predict(cfg, runs, "pacs", "--study", "1.2.3.4", "--job-id", "missing")
    assert r.exit_code == 1 and "exists with other UIDs" in _flat(r.output)
    # Wrong credentials: refused, not retried, the password never shown.
    monkeypatch.setenv(PASSWORD_ENV, "wrong-secret-canary")
    r = _predict(cfg, runs, "pacs", "--study", STUDY_UID)
    assert r.exit_code == 1 and "HTTP 401" in _flat(r.output)
    assert "wrong-secret-canary" not in r.output


def test_configuration_errors_are_one_line(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "x")
    base = {"sources": {"pacs": {"url": "http://127.0.0.1:8042/dicom-web",
                                 "allow_loopback": True}}}
    cases = [
        ({**base, "destinatons": {}}, "Unknown key (top).destinatons", "destinations"),
        ({"sources": {"pacs": {"url": "http://127.0.0.1:1/", "allow_lopback": True}}},
         "sources.pacs.allow_lopback", "allow_loopback"),
        ({"sources": {"pacs": {"url": "http://169.254.169.254/"}}}, "link-local", None),
        ({"sources": {"pacs": {"url": "http://h/", "auth": {"type": "basic", "username": "u",
                                                              "pasword_env": "X"}}}},
         "pasword_env", "password_env"),
        ({"sources": {"pacs": {"url": "http://h/", "auth": {"type": "bearer",
                                                              "token_env": "NOT_SET_X"}}}},
         "NOT_SET_X", None),
        ({**base, "results": {"fhir": "ehr"}}, "not a fhir destination", None),
    ]
    for doc, message, suggestion in cases:
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(doc))
        with pytest.raises(SkinError) as err:
            config.load(path)
        assert message in str(err.value) and "\n" not in str(err.value)
        if suggestion:
            assert f"Did you mean: {suggestion}" in str(err.value)


def test_the_api_runs_jobs_by_reference(orthanc: Orthanc, runs: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    from test_serve_support import serving

    caplog.set_level(logging.DEBUG)

    study = "1.2.826.0.1.3680043.8.498.88"
    _study(orthanc, study, seed=8)
    cfg = _config(tmp_path, orthanc, monkeypatch)
    monkeypatch.setenv(config.CONFIG_ENV, str(cfg))
    with serving(runs, api_key="k-test-123", audit_log=str(tmp_path / "audit.jsonl")) as c:
        body = {"source": "pacs", "study_uid": study, "id": "api-1"}
        assert c.post("/v1/jobs", json=body).status_code == 401
        assert c.post("/v1/jobs", json={"bogus": 1}).status_code == 401  # auth first
        h = {"X-API-Key": "k-test-123"}
        r = c.post("/v1/jobs", json=body, headers=h)
        assert r.status_code == 201, r.text
        assert r.json()["state"] == "done" and r.json()["sr"]["study_instance_uid"] == study
        again = c.post("/v1/jobs", json=body, headers=h)
        assert again.status_code == 200 and again.json()["replayed"]
        assert again.json()["images"] == r.json()["images"]
        r = c.post("/v1/jobs", json={**body, "study_uid": "1.2.3"}, headers=h)
        assert r.status_code == 409 and r.json()["error"] == "job_conflict"
        r = c.post("/v1/jobs", json={**body, "url": "http://169.254.169.254/"}, headers=h)
        assert r.status_code == 422  # a URL is not something a job can carry
        assert c.get("/v1/jobs/api-1", headers=h).json()["state"] == "done"
        assert c.get("/v1/jobs/nope", headers=h).status_code == 404
    assert audit.verify(tmp_path / "audit.jsonl").records == 1
    text = caplog.text + (tmp_path / "audit.jsonl").read_text() + "".join(
        p.read_text() for p in (tmp_path / "jobs").glob("*.json"))
    for value in PHI.values():
        assert value not in text
    assert orthanc.password not in text and "k-test-123" not in text


def test_dicomweb_adapter_keeps_to_the_source(orthanc: Orthanc) -> None:
    """dicomweb-client's requests go through the outbound checks (no other host)."""
    from skincli.clinical.outbound import BasicAuth, BlockedDestination, Endpoint

    dw = DicomWeb(Endpoint("pacs", orthanc.dicomweb, allow_loopback=True,
                           auth=BasicAuth(orthanc.user, orthanc.password)))
    try:
        with pytest.raises(BlockedDestination):
            dw.client._session.get("http://169.254.169.254/latest")
    finally:
        dw.close()


def test_c_store_push_runs_a_job_and_the_sr_reaches_the_pacs(
        orthanc: Orthanc, runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dcmsend (DCMTK) pushes a dermoscopic image; the SR lands in its study on Orthanc."""
    need("dcmsend")
    from serve_proc import free_port

    from skincli.clinical import jobs
    from skincli.clinical.dimse import StoreReceiver
    from skincli.evaluate import load_predictor

    port = free_port()
    path = _config(tmp_path, orthanc, monkeypatch,
                   receive={"ae_title": "SKINTEST", "port": port, "results_to": "pacs"})
    cfg = config.load(path)
    predictor = load_predictor("alpha", runs, engine="tf")
    log = audit.AuditLog(tmp_path / "audit.jsonl")
    done: list[dict] = []

    def on_instance(raw: bytes) -> None:
        done.append(jobs.run_received(cfg, predictor, raw, audit_log=log)[0])

    study = "1.2.826.0.1.3680043.8.498.99"
    _study(orthanc, study, seed=9)  # the PACS has the study (the SR joins it)
    dcm = tmp_path / "push.dcm"
    dcm.write_bytes(orthanc.get(f"/instances/{_orthanc_id(orthanc, study + '.1.1')}/file"
                                ).content)
    receiver = StoreReceiver(on_instance, ae_title="SKINTEST", port=port)
    receiver.start()
    try:
        def send(file: Path, aet: str = "SKINTEST") -> subprocess.CompletedProcess:
            return subprocess.run(["dcmsend", "127.0.0.1", str(port), str(file), "-aec", aet],
                                  capture_output=True, text=True, timeout=60)

        assert send(dcm).returncode == 0
        assert len(done) == 1 and done[0]["state"] == "done", done
        srs = [i for i in _instances(orthanc, study) if i["00080016"]["Value"][0] == SR_CLASS]
        assert [s["0020000E"]["Value"][0] for s in srs] == [done[0]["sr"]["series_instance_uid"]]
        assert send(dcm).returncode == 0  # the same instance again: answered, not redone
        assert done[1] == done[0]
        assert len([i for i in _instances(orthanc, study)
                    if i["00080016"]["Value"][0] == SR_CLASS]) == 1
        # Other SOP classes and other called AE titles are refused at association time.
        pdf = tmp_path / "doc.dcm"
        make_dicom(pdf, pdf=b"%PDF-1.4 x")
        out = send(pdf)
        assert "No Acceptable Presentation Contexts" in out.stdout + out.stderr
        out = send(dcm, aet="SOMEONE")
        assert "rejected" in (out.stdout + out.stderr).lower(), out.stdout + out.stderr
        assert receiver.received == 2
    finally:
        receiver.stop()
    assert audit.verify(tmp_path / "audit.jsonl").records == 1


@pytest.fixture(scope="module")
def bearer_pacs() -> Any:
    """An Orthanc that answers only requests carrying its bearer token (orthanc-python)."""
    import secrets
    import shutil
    import tempfile

    need("Orthanc", "cc")
    root = Path(tempfile.mkdtemp(prefix="skin-orthanc-bearer-"))
    server = Orthanc(root, bearer="tok-" + secrets.token_hex(12))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_a_source_with_a_bearer_token(bearer_pacs: Orthanc, runs: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    assert httpx.get(bearer_pacs.url + "/system", timeout=10).status_code in (401, 403)
    study = "1.2.826.0.1.3680043.8.498.55"
    _study(bearer_pacs, study, seed=5)
    monkeypatch.setenv("SKIN_TEST_PACS_TOKEN", bearer_pacs.bearer)
    doc = {"sources": {"pacs": {"url": bearer_pacs.dicomweb, "allow_loopback": True,
                                "auth": {"type": "bearer", "token_env": "SKIN_TEST_PACS_TOKEN"},
                                "retry": {"attempts": 1}}},
           "results": {"sr": True}, "jobs_dir": "jobs"}
    cfg = tmp_path / "bearer.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    r = _predict(cfg, runs, "pacs", "--study", study, "--job-id", "b-1", "--json",
                 "--audit-log", str(tmp_path / "audit.jsonl"))
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["state"] == "done"
    assert len([i for i in _instances(bearer_pacs, study)
                if i["00080016"]["Value"][0] == SR_CLASS]) == 1
    monkeypatch.setenv("SKIN_TEST_PACS_TOKEN", "tok-wrong-canary")
    r = _predict(cfg, runs, "pacs", "--study", study, "--job-id", "b-2")
    assert r.exit_code == 1 and "refused with HTTP" in _flat(r.output)
    text = r.output + (tmp_path / "jobs" / "b-2.json").read_text() + \
        (tmp_path / "jobs" / "b-1.json").read_text()
    assert "tok-wrong-canary" not in text and bearer_pacs.bearer not in text


def test_a_heat_map_beside_the_sr_says_not_for_diagnosis(
        orthanc: Orthanc, runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need("dciodvfy")
    study = "1.2.826.0.1.3680043.8.498.66"
    _study(orthanc, study, seed=6)
    cfg = _config(tmp_path, orthanc, monkeypatch, results={"sr": True, "heatmap": True})
    r = _predict(cfg, runs, "pacs", "--study", study, "--json",
                 "--audit-log", str(tmp_path / "audit.jsonl"))
    assert r.exit_code == 0, r.output
    record = json.loads(r.output)
    sc = [i for i in _instances(orthanc, study)
          if i["00080016"]["Value"][0] == "1.2.840.10008.5.1.4.1.1.7"]
    assert len(sc) == 1 and record["heatmap"]["instances"] == 1
    ds = pydicom.dcmread(io.BytesIO(orthanc.get(
        f"/instances/{_orthanc_id(orthanc, sc[0]['00080018']['Value'][0])}/file").content))
    assert "NOT FOR DIAGNOSIS" in ds.SeriesDescription and "NOT FOR DIAGNOSIS" in ds.ImageComments
    assert ds.StudyInstanceUID == study and ds.Rows == 64 and ds.SamplesPerPixel == 3
    path = tmp_path / "sc.dcm"
    ds.save_as(path, enforce_file_format=True)
    check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    errors = [x for x in (check.stdout + check.stderr).splitlines() if x.startswith("Error")]
    assert errors == [], errors


def test_skin_receive_as_a_process(orthanc: Orthanc, runs: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`skin receive` listens, runs a job per pushed image, and stops cleanly on SIGTERM."""
    need("dcmsend")
    import os
    import signal
    import sys
    import time

    from serve_proc import free_port

    port = free_port()
    study = "1.2.826.0.1.3680043.8.498.44"
    _study(orthanc, study, seed=4)
    dcm = tmp_path / "push.dcm"
    dcm.write_bytes(orthanc.get(f"/instances/{_orthanc_id(orthanc, study + '.1.1')}/file"
                                ).content)
    cfg = _config(tmp_path, orthanc, monkeypatch,
                  receive={"ae_title": "SKINPROC", "port": port, "results_to": "pacs"})
    err = open(tmp_path / "receive.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "skincli", "receive", "--clinical-config", str(cfg),
         "--run", "alpha", "--runs-dir", str(runs), "--engine", "tf",
         "--audit-log", str(tmp_path / "audit.jsonl")],
        stdout=err, stderr=err, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        deadline = time.monotonic() + 120
        while b"Listening" not in (tmp_path / "receive.log").read_bytes():
            assert proc.poll() is None, (tmp_path / "receive.log").read_text()
            assert time.monotonic() < deadline, "skin receive did not start"
            time.sleep(0.2)
        out = subprocess.run(["dcmsend", "127.0.0.1", str(port), str(dcm), "-aec",
                              "SKINPROC"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        records = list((tmp_path / "jobs").glob("cstore-*.json"))
        assert len(records) == 1 and json.loads(records[0].read_text())["state"] == "done"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
            err.close()
    assert proc.returncode == 0, (tmp_path / "receive.log").read_text()
    log = (tmp_path / "receive.log").read_text()
    assert "done" in log and orthanc.password not in log
    for value in PHI.values():
        assert value not in log
