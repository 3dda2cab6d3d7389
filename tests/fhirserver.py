"""A throw-away FHIR R4 server for tests: SEKMET (PyPI `sekmet-fhir`, pinned in the `test-ehr`
extra; a test double, not a dependency) on loopback with SMART Backend Services.

SEKMET is a FastAPI + SQLite FHIR server whose token endpoint verifies the client's signed JWT
assertion (the registered public key, exp at most 5 minutes ahead, jti never reused) and whose
/fhir routes refuse requests without a valid token. Started with uvicorn on 127.0.0.1 on a free
port, with its own settings and database in a temporary folder; stopped at the end.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from serve_proc import free_port

CLIENT_ID = "skincli-test"


def _rsa_key(path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub = path.with_suffix(".pub.pem")
    pub.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return pub


class FhirServer:
    """SEKMET on loopback: `base` (…/fhir), `token_url`, the client's `key` (RSA PEM)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base = self.url + "/fhir"
        self.token_url = self.url + "/auth/token"
        self.key = root / "secrets" / "client.pem"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.key.parent.mkdir(parents=True)
        pub = _rsa_key(self.key)
        settings = {
            "base_url": self.base, "host": "127.0.0.1", "port": self.port,
            "data_dir": str(self.root / "data"),
            "server_auth": {"types": ["smart"], "token_lifetime": 300,
                            "smart_clients": [{"client_id": CLIENT_ID,
                                               "public_key_path": str(pub),
                                               "scopes": "system/*.*"}]},
            "simulator": {"enabled": False}, "log_inbound": False,
            "own_private_key_path": str(self.root / "data" / "own.pem"),
        }
        cfg = self.root / "settings.yaml"
        cfg.write_text(yaml.safe_dump(settings))
        log = open(self.root / "server.log", "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "sekmet.main:app_factory",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
            stdout=log, stderr=log, cwd=self.root, env={**os.environ, "SEKMET_CONFIG": str(cfg)})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the FHIR server exited: "
                                   + (self.root / "server.log").read_text()[-2000:])
            try:
                if httpx.get(self.base + "/metadata", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("the FHIR server did not answer within 60 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module", name="fhir_server")
def fhir_server_fixture() -> Iterator[FhirServer]:
    """One SEKMET FHIR server for the module."""
    if importlib.util.find_spec("sekmet") is None:
        why = "sekmet-fhir is not installed (pip install -e .[test-ehr])"
        if os.environ.get("SKIN_REQUIRE_CLINICAL") == "1":
            pytest.fail(why)
        pytest.skip(why)
    root = Path(tempfile.mkdtemp(prefix="skin-fhir-"))
    server = FhirServer(root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
