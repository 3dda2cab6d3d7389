"""Result to the EHR: the FHIR transaction through SMART Backend Services to a real FHIR server
on loopback (SEKMET, tests/fhirserver.py), after a job read from a real PACS (Orthanc)."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from dicomgen import PHI, STUDY_UID, make_dicom, noise_rgb
from fhirserver import CLIENT_ID, FhirServer, fhir_server_fixture  # noqa: F401 - fixture
from helpers_run import make_run
from orthanc import Orthanc, orthanc_fixture  # noqa: F401 - the fixture
from typer.testing import CliRunner

from skincli.cli import app
from skincli.clinical import audit, ehr, fhir, smart
from skincli.clinical.outbound import Endpoint, Outbound, OutboundError

runner = CliRunner()
CLASSES = ["melanoma", "nevus", "vascular lesion"]
PASSWORD_ENV = "SKIN_TEST_PACS_PASSWORD"
COUNTED = ("DiagnosticReport", "Observation", "Device", "Provenance", "ImagingStudy",
           "Endpoint")


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ehr-runs")
    make_run(root, classes=CLASSES, name="alpha", runs_dir=root / "runs")
    return root / "runs"


def _auth(server: FhirServer, **kw: Any) -> smart.SmartBackendAuth:
    auth = smart.SmartBackendAuth(token_url=server.token_url, client_id=CLIENT_ID,
                                  key_path=server.key, kid="skincli-1",
                                  scope="system/*.write system/*.read", **kw)
    auth.allow_loopback = True
    return auth


def _outbound(server: FhirServer, auth: Any) -> Outbound:
    return Outbound(Endpoint("ehr", server.base, allow_loopback=True, auth=auth, kind="fhir"))


def _counts(server: FhirServer) -> dict[str, int]:
    out = _outbound(server, _auth(server))
    try:
        return {t: int(out.request("GET", t, params={"_summary": "count"}).json()["total"])
                for t in COUNTED}
    finally:
        out.close()


def _config(tmp_path: Path, orthanc: Orthanc, server: FhirServer,
            monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(PASSWORD_ENV, orthanc.password)
    doc = {"sources": {"pacs": {"url": orthanc.dicomweb, "allow_loopback": True,
                                "auth": {"type": "basic", "username": orthanc.user,
                                         "password_env": PASSWORD_ENV}}},
           "destinations": {"ehr": {"type": "fhir", "url": server.base,
                                    "allow_loopback": True,
                                    "auth": {"type": "smart", "token_url": server.token_url,
                                             "client_id": CLIENT_ID,
                                             "private_key": str(server.key),
                                             "kid": "skincli-1",
                                             "scope": "system/*.write system/*.read"}}},
           "results": {"fhir": "ehr"}, "jobs_dir": "jobs"}
    path = tmp_path / "clinical.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_job_posts_its_bundle_once(orthanc: Orthanc, fhir_server: FhirServer, runs: Path,
                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    orthanc.upload(make_dicom(None, noise_rgb(64, 64, seed=4)))
    cfg = _config(tmp_path, orthanc, fhir_server, monkeypatch)
    log = tmp_path / "audit.jsonl"
    args = ["predict", "--dicomweb", "pacs", "--study", STUDY_UID, "--job-id", "ehr-1",
            "--clinical-config", str(cfg), "--run", "alpha", "--runs-dir", str(runs),
            "--engine", "tf", "--audit-log", str(log), "--json"]
    before = _counts(fhir_server)
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    record = json.loads(r.output)
    assert record["state"] == "done", record
    report = record["fhir"]["reports"][0]
    assert report["created"] and report["report"].startswith("DiagnosticReport/")
    after = _counts(fhir_server)
    assert {t: after[t] - before[t] for t in COUNTED} == {t: 1 for t in COUNTED}
    # The stored report is the job's, linked to the study and its WADO-RS endpoint.
    out = _outbound(fhir_server, _auth(fhir_server))
    doc = out.request("GET", report["report"]).json()
    assert {"system": ehr.JOB_SYSTEM, "value": "ehr-1"} in doc["identifier"]
    study = out.request("GET", doc["imagingStudy"][0]["reference"]).json()
    assert study["identifier"][0]["value"] == f"urn:oid:{STUDY_UID}"
    endpoint = out.request("GET", study["endpoint"][0]["reference"]).json()
    assert endpoint["address"] == orthanc.dicomweb
    out.close()
    # The job run again from scratch (its record gone): the EHR gains nothing.
    for p in (tmp_path / "jobs").glob("ehr-1.*"):
        p.unlink()
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["fhir"]["reports"][0]["created"] is False
    assert _counts(fhir_server) == after
    # Tokens and PHI stay out of the job records, the audit log and the logs.
    token = _auth(fhir_server).token()
    text = "".join(p.read_text() for p in (tmp_path / "jobs").glob("*.json")) + \
        log.read_text() + caplog.text + r.output
    assert token not in text and token.split(".")[2] not in text
    assert orthanc.password not in text and "PRIVATE KEY" not in text
    for value in PHI.values():
        assert value not in text
    assert audit.verify(log).ok


def test_without_a_token_the_server_refuses(fhir_server: FhirServer) -> None:
    pred = {"label": "nevus", "probability": 0.6, "probabilities": {"nevus": 0.6},
            "uncertain": False, "warnings": []}
    bundle = ehr.transaction(fhir.bundle(pred, {"name": "a", "version": "v"}), "no-token")
    r = httpx.post(fhir_server.base, json=bundle, timeout=10)
    assert r.status_code == 401
    out = _outbound(fhir_server, None)
    with pytest.raises(OutboundError) as err:
        ehr.post(out, bundle, "no-token")
    assert err.value.status == 401 and "Authentication required" in str(err.value)


def test_the_client_assertion_follows_smart_backend_services(fhir_server: FhirServer) -> None:
    key = smart.load_key(fhir_server.key, "RS384")
    tokens = [smart.client_assertion(key, "RS384", "kid-9", CLIENT_ID, fhir_server.token_url)
              for _ in range(2)]

    def part(jwt: str, i: int) -> dict[str, Any]:
        raw = jwt.split(".")[i]
        return json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))

    header, claims = part(tokens[0], 0), part(tokens[0], 1)
    assert header == {"alg": "RS384", "kid": "kid-9", "typ": "JWT"}
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["aud"] == fhir_server.token_url
    assert 0 < claims["exp"] - claims["iat"] <= 300
    assert part(tokens[1], 1)["jti"] != claims["jti"]
    # The same assertion twice: the server refuses the replayed jti.
    form = {"grant_type": "client_credentials", "scope": "system/*.read",
            "client_assertion_type": smart.ASSERTION_TYPE, "client_assertion": tokens[1]}
    assert httpx.post(fhir_server.token_url, data=form, timeout=10).status_code == 200
    r = httpx.post(fhir_server.token_url, data=form, timeout=10)
    assert r.status_code == 401 and "jti" in r.text


def test_the_token_is_cached_and_refreshed_once_on_401(fhir_server: FhirServer) -> None:
    auth = _auth(fhir_server)
    out = _outbound(fhir_server, auth)
    try:
        out.request("GET", "Device", params={"_summary": "count"})
        out.request("GET", "Device", params={"_summary": "count"})
        assert auth.fetched == 1
        auth._token = "expired-" + "x" * 20  # as if the server had revoked it
        out.request("GET", "Device", params={"_summary": "count"})
        assert auth.fetched == 2
    finally:
        out.close()


def test_a_wrong_key_is_one_line_without_secrets(fhir_server: FhirServer,
                                                tmp_path: Path) -> None:
    from fhirserver import _rsa_key

    other = tmp_path / "other.pem"
    _rsa_key(other)
    auth = smart.SmartBackendAuth(token_url=fhir_server.token_url, client_id=CLIENT_ID,
                                  key_path=other, kid="k")
    auth.allow_loopback = True
    with pytest.raises(OutboundError) as err:
        auth.token()
    message = str(err.value)
    assert "SMART token request refused" in message and "invalid_client" in message
    assert "\n" not in message and "eyJ" not in message  # no JWT in the message
    with pytest.raises(Exception, match="does not fit alg ES384"):
        smart.load_key(other, "ES384")


def test_a_refused_bundle_is_summarised_in_one_line(fhir_server: FhirServer) -> None:
    out = _outbound(fhir_server, _auth(fhir_server))
    bad = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Observation",
                                               "status": "not-a-status"},
         "request": {"method": "POST", "url": "Observation"}}]}
    try:
        with pytest.raises(OutboundError) as err:
            out.request("POST", "", json=bad)
    finally:
        out.close()
    assert err.value.status in (400, 422) and "\n" not in str(err.value)
    assert "HTTP" in str(err.value) and "Not retried" in str(err.value)


def test_an_ehr_that_refuses_fails_the_job_in_one_line(
        orthanc: Orthanc, fhir_server: FhirServer, runs: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    orthanc.upload(make_dicom(None, noise_rgb(64, 64, seed=4)))
    cfg = _config(tmp_path, orthanc, fhir_server, monkeypatch)
    doc = yaml.safe_load(cfg.read_text())
    doc["destinations"]["ehr"]["auth"]["client_id"] = "not-registered"
    cfg.write_text(yaml.safe_dump(doc))
    before = _counts(fhir_server)
    r = runner.invoke(app, ["predict", "--dicomweb", "pacs", "--study", STUDY_UID,
                            "--job-id", "ehr-refused", "--clinical-config", str(cfg),
                            "--run", "alpha", "--runs-dir", str(runs), "--engine", "tf",
                            "--audit-log", str(tmp_path / "audit.jsonl")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "invalid_client" in _flat(r.output) and "Unknown client_id" in _flat(r.output)
    record = json.loads((tmp_path / "jobs" / "ehr-refused.json").read_text())
    assert record["state"] == "failed" and record["step"] == "sending FHIR"
    assert "invalid_client" in record["error"]
    assert _counts(fhir_server) == before


def test_es384_assertions_verify(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    key = ec.generate_private_key(ec.SECP384R1())
    path = tmp_path / "ec.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    jwt = smart.client_assertion(smart.load_key(path, "ES384"), "ES384", "k", "c",
                                 "https://ehr.example/token")
    head, body, sig = jwt.split(".")
    raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    assert len(raw) == 96
    der = encode_dss_signature(int.from_bytes(raw[:48], "big"), int.from_bytes(raw[48:], "big"))
    key.public_key().verify(der, f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA384()))
    with pytest.raises(Exception, match="does not fit alg RS384"):
        smart.load_key(path, "RS384")
