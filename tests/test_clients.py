"""The generated API clients (clients/) against a real `skin serve` on loopback.

One server with two API keys, `--rate-limit 4/minute` and `--max-upload-mb 0.05`: the Python
client (openapi-python-client) and the TypeScript one (openapi-typescript + openapi-fetch, run
by Node) each read typed fields (`label`, `triage.refer`) and typed errors (401, 413, 429).
Operations are looked up by method and path, so these tests do not depend on operation ids.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from serve_proc import Served, serve_process
from test_serve_support import image_bytes

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = ROOT / "clients"
TS = CLIENTS / "typescript"
CLASSES = ["melanoma", "nevus", "vascular lesion"]
KEYS = {"python": "py-key-0123456789", "node": "node-key-0123456789"}
RATE = 4


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from helpers_run import make_run

    from skincli.runs import load_run_info, update_run_info

    root = tmp_path_factory.mktemp("clients")
    runs = root / "runs"
    make_run(root, classes=CLASSES, name="alpha", runs_dir=runs)
    triage = {"threshold": 0.2, "malignant": ["melanoma"], "premalignant": [],
              "count_premalignant": False, "target_sensitivity": 0.95, "source": "test"}
    update_run_info(runs / "alpha", extra={**load_run_info(runs / "alpha").extra,
                                           "triage": triage})
    keys = root / "keys.txt"
    keys.write_text("\n".join(KEYS.values()) + "\n")
    with serve_process(runs, "alpha", "--api-keys-file", str(keys), "--rate-limit",
                       f"{RATE}/minute", "--max-upload-mb", "0.05", cwd=root,
                       env={"PYTHONPATH": str(ROOT)}) as server:
        yield server


@pytest.fixture(scope="module")
def lesion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "lesion.png"
    path.write_bytes(image_bytes((64, 48), seed=4))
    return path


# --- Python --------------------------------------------------------------------------------------

def _operation(method: str, path: str) -> ModuleType:
    """The generated module for METHOD PATH, whatever its operation id made it be called."""
    api = CLIENTS / "python" / "skin_client" / "api"
    for file in sorted(api.rglob("*.py")):
        text = file.read_text()
        if f'"method": "{method}",' in text and f'"url": "{path}",' in text:
            name = ".".join(file.relative_to(CLIENTS / "python").with_suffix("").parts)
            return importlib.import_module(name)
    raise AssertionError(f"no generated operation for {method.upper()} {path}")


def _multipart_class(module: ModuleType) -> Any:
    """The generated multipart body class of an upload operation."""
    hints = typing.get_type_hints(module._get_kwargs)
    return next(t for t in typing.get_args(hints["body"]) if hasattr(t, "to_multipart"))


@pytest.mark.skipif(sys.version_info < (3, 11), reason="the generated client needs Python 3.11")
def test_python_client_reads_typed_fields_and_errors(served: Served, lesion: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(CLIENTS / "python"))  # the package as generated, not installed
    from skin_client import AuthenticatedClient  # type: ignore[import-not-found]
    from skin_client.models import ErrorOut, ModelResponse, PredictResponse
    from skin_client.types import File

    predict = _operation("post", "/v1/predict")
    model = _operation("get", "/v1/model")
    client = AuthenticatedClient(base_url=served.url, token=KEYS["python"])  # Bearer

    info = model.sync_detailed(client=client)
    assert isinstance(info.parsed, ModelResponse), info.content
    assert info.parsed.classes == CLASSES
    assert info.parsed.serving.additional_properties["rate_limit"] == f"{RATE}/minute"

    def image() -> Any:
        return File(payload=io.BytesIO(lesion.read_bytes()), file_name=lesion.name,
                    mime_type="image/png")

    body = _multipart_class(predict)(file=image())
    answer = predict.sync_detailed(client=client, body=body, top_k=2)
    assert isinstance(answer.parsed, PredictResponse), answer.content
    prediction = answer.parsed.prediction
    assert prediction.label in CLASSES and 0 < prediction.probability <= 1
    assert isinstance(prediction.triage.refer, bool)
    assert prediction.triage.threshold == pytest.approx(0.2)
    assert [c.label for c in prediction.top_k][0] == prediction.label
    assert prediction.filename == "lesion.png"

    big = File(payload=io.BytesIO(b"\0" * 60_000), mime_type="image/png")
    too_big = predict.sync_detailed(client=client, body=big)  # the raw-body form
    assert too_big.status_code == 413
    assert isinstance(too_big.parsed, ErrorOut) and too_big.parsed.error == "payload_too_large"

    stranger = AuthenticatedClient(base_url=served.url, token="not-a-key",
                                   auth_header_name="X-API-Key", prefix="")
    denied = predict.sync_detailed(client=stranger, body=image())
    assert denied.status_code == 401
    assert isinstance(denied.parsed, ErrorOut) and denied.parsed.error == "unauthorized"

    used = 3
    codes = []
    while True:  # the rest of the allowance, then one refusal
        r = predict.sync_detailed(client=client, body=image())
        codes.append(r.status_code)
        used += 1
        if used > RATE:
            break
    assert codes == [200] * (RATE - 3) + [429]
    assert isinstance(r.parsed, ErrorOut) and r.parsed.error == "rate_limited"
    assert int(r.headers["Retry-After"]) >= 1 and r.headers["RateLimit-Remaining"] == "0"


# --- TypeScript ----------------------------------------------------------------------------------

def test_typescript_client_reads_typed_fields_and_errors(served: Served, lesion: Path) -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    tsc = TS / "node_modules" / "typescript" / "bin" / "tsc"
    if not tsc.is_file():
        pytest.skip("run `npm ci --prefix clients/typescript` first")
    # Building is also the type check: test/live.ts assigns typed fields to annotated names.
    build = subprocess.run(["node", str(tsc), "-p", str(TS)], capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    run = subprocess.run(["node", str(TS / "dist" / "test" / "live.js")], capture_output=True,
                         text=True, timeout=120,
                         env={**os.environ, "SKIN_URL": served.url, "SKIN_KEY": KEYS["node"],
                              "SKIN_IMAGE": str(lesion)})
    assert run.returncode == 0, run.stdout + run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["label"] in CLASSES and isinstance(seen["refer"], bool)
    assert (seen["e401"], seen["e413"], seen["e429"]) == ("unauthorized", "payload_too_large",
                                                          "rate_limited")
    assert seen["retry_after"] >= 1 and seen["batch"] == 2


# --- the staleness check -------------------------------------------------------------------------

def test_check_reports_any_difference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`generate.py --check` compares every output file: a changed, a missing and an extra file
    are each reported; identical copies are not."""
    spec = importlib.util.spec_from_file_location("clients_generate", CLIENTS / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    committed = tmp_path / "committed"
    fresh = tmp_path / "fresh"
    for root in (committed, fresh):
        (root / "typescript" / "src").mkdir(parents=True)
        (root / "python" / "skin_client" / "api").mkdir(parents=True)
        (root / "openapi.json").write_text('{"openapi": "3.1.0"}\n')
        (root / "typescript" / "src" / "schema.d.ts").write_text("export interface paths {}\n")
        (root / "python" / "skin_client" / "api" / "a.py").write_text("A = 1\n")
        (root / "python" / "skin_client" / "b.py").write_text("B = 1\n")
    monkeypatch.setattr(gen, "CLIENTS", committed)
    assert gen.differences(fresh) == []
    (fresh / "typescript" / "src" / "schema.d.ts").write_text("export interface paths {x: 1}\n")
    (fresh / "python" / "skin_client" / "b.py").unlink()
    (fresh / "python" / "skin_client" / "api" / "c.py").write_text("C = 1\n")
    assert gen.differences(fresh) == [
        "clients/typescript/src/schema.d.ts", "clients/python/skin_client/api/c.py",
        "clients/python/skin_client/b.py"]
