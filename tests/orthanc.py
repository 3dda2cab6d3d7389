"""A throw-away Orthanc PACS (Debian `orthanc` + `orthanc-dicomweb`, `orthanc-python`) for tests.

Orthanc has its own configuration, storage and index in a temporary folder, HTTP Basic auth
(`skin` / a random password), the DICOMweb plugin, and free ports for HTTP and DICOM.
Orthanc 1.10 has no bind-address setting, so a tiny LD_PRELOAD shim (compiled here with the
system C compiler) turns its bind to 0.0.0.0 / :: into 127.0.0.1 / ::1: it listens on
loopback only. Stopped and deleted at the end.

Missing binaries skip the tests that need them, saying why; with SKIN_REQUIRE_CLINICAL=1 (CI)
they fail instead, so CI can never pass by skipping.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serve_proc import free_port

PLUGIN_DIRS = ["/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins"]
SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
int bind(int fd, const struct sockaddr *addr, socklen_t len) {
  static int (*real)(int, const struct sockaddr *, socklen_t);
  if (!real) real = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
  if (addr && addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
    struct sockaddr_in a; memcpy(&a, addr, sizeof a);
    if (a.sin_addr.s_addr == htonl(INADDR_ANY)) a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return real(fd, (struct sockaddr *)&a, sizeof a);
  }
  if (addr && addr->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
    struct sockaddr_in6 a; memcpy(&a, addr, sizeof a);
    if (!memcmp(&a.sin6_addr, &in6addr_any, sizeof a.sin6_addr)) a.sin6_addr = in6addr_loopback;
    return real(fd, (struct sockaddr *)&a, sizeof a);
  }
  return real(fd, addr, len);
}
"""


def need(*tools: str) -> None:
    """Skip (or fail in CI) when a system tool is missing."""
    missing = [t for t in tools if shutil.which(t) is None and not Path(t).exists()]
    if missing:
        why = f"not installed: {', '.join(missing)} (apt-get install orthanc " \
              "orthanc-dicomweb orthanc-python dcmtk dicom3tools gcc)"
        if os.environ.get("SKIN_REQUIRE_CLINICAL") == "1":
            pytest.fail(why)
        pytest.skip(why)


def _plugin() -> Path | None:
    for folder in PLUGIN_DIRS:
        p = Path(folder) / "libOrthancDicomWeb.so"
        if p.exists():
            return p
    return None


# With `bearer`: the orthanc-python plugin refuses every HTTP request without this token (the
# token reaches the script through the environment, never a file or the command line).
BEARER_FILTER = """
import hmac, os
import orthanc

EXPECTED = "Bearer " + os.environ["SKIN_TEST_ORTHANC_TOKEN"]


def allowed(uri, **request):
    got = request.get("headers", {}).get("authorization", "")
    return hmac.compare_digest(got.encode(), EXPECTED.encode())


orthanc.RegisterIncomingHttpRequestFilter(allowed)
"""


class Orthanc:
    """One Orthanc on loopback: `url`, `dicomweb`, `dicom_port`, `user`, `password` (HTTP Basic),
    or with `bearer` a token every request must carry instead."""

    def __init__(self, root: Path, bearer: str | None = None) -> None:
        self.root = root
        self.bearer = bearer
        self.http_port, self.dicom_port = free_port(), free_port()
        self.user, self.password = "skin", "pw-" + secrets.token_hex(8)
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = self.url + "/dicom-web"
        self.aet = "ORTHANC"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        plugin = _plugin()
        if plugin is None:
            need("libOrthancDicomWeb.so")
        plugins = [str(plugin)]
        extra: dict = {}
        env = dict(os.environ)
        if self.bearer is not None:
            python = plugin.with_name("libOrthancPython.so")
            if not python.exists():
                need(str(python))
            script = self.root / "bearer.py"
            script.write_text(BEARER_FILTER)
            plugins.append(str(python))
            extra = {"PythonScript": str(script), "AuthenticationEnabled": False}
            env["SKIN_TEST_ORTHANC_TOKEN"] = self.bearer
        shim = self.root / "bind_loopback.so"
        src = self.root / "bind_loopback.c"
        src.write_text(SHIM)
        subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(shim), str(src), "-ldl"],
                       check=True, capture_output=True)
        config = {
            "Name": "skin-test", "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": self.aet,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
            "RegisteredUsers": {self.user: self.password},
            "Plugins": plugins,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                         "Host": f"127.0.0.1:{self.http_port}"},
            "HttpThreadsCount": 4, "ConcurrentJobs": 1, "SaveJobs": False,
            "DicomModalities": {}, "DicomCheckCalledAet": True,
            "UnknownSopClassAccepted": False, "HttpDescribeErrors": True, **extra,
        }
        cfg = self.root / "orthanc.json"
        cfg.write_text(json.dumps(config))
        env["LD_PRELOAD"] = str(shim)
        log = open(self.root / "orthanc.log", "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(["Orthanc", str(cfg)], stdout=log, stderr=log, env=env,
                                     cwd=self.root)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("Orthanc exited: "
                                   + (self.root / "orthanc.log").read_text()[-2000:])
            try:
                r = self.get("/system")
                if r.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("Orthanc did not answer within 60 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def upload(self, raw: bytes) -> dict:
        """Store one DICOM file through Orthanc's REST API (as a modality would)."""
        r = httpx.post(self.url + "/instances", content=raw, timeout=30, **self._auth())
        r.raise_for_status()
        return r.json()

    def _auth(self) -> dict:
        if self.bearer is not None:
            return {"headers": {"Authorization": f"Bearer {self.bearer}"}}
        return {"auth": (self.user, self.password)}

    def get(self, path: str, headers: dict | None = None) -> httpx.Response:
        kw = self._auth()
        kw["headers"] = {**kw.get("headers", {}), **(headers or {})}
        return httpx.get(self.url + path, timeout=30, **kw)


@pytest.fixture(scope="module", name="orthanc")
def orthanc_fixture() -> Iterator[Orthanc]:
    """One Orthanc for the module (started once: it takes a second or two)."""
    need("Orthanc", "cc")
    root = Path(tempfile.mkdtemp(prefix="skin-orthanc-"))
    server = Orthanc(root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
