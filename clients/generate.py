"""Regenerate the typed API clients from the live OpenAPI schema (no server, no network).

    python clients/generate.py           # rewrite clients/openapi.json and both clients
    python clients/generate.py --check   # exit 1 if any generated file differs (CI runs this)

The schema comes from the app factory of this checkout with default settings, so it is what
`skin serve` publishes at /openapi.json. Generated:

- clients/openapi.json: the schema itself;
- clients/typescript/src/schema.d.ts: openapi-typescript's types (needs `npm ci --prefix
  clients/typescript` first);
- clients/python/skin_client/: openapi-python-client's package. The generator and the ruff that
  formats its output are pinned and installed once into clients/python/.generator (a venv), so
  the output depends on this file, not on the tools a developer happens to have.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CLIENTS = Path(__file__).resolve().parent
ROOT = CLIENTS.parent
TS = CLIENTS / "typescript"
PY = CLIENTS / "python"
GENERATOR_VENV = PY / ".generator"
PY_TOOLS = ["openapi-python-client==0.29.1", "ruff==0.17.6"]
# What this script writes, relative to clients/ (a folder is compared file by file).
OUTPUTS = ["openapi.json", "typescript/src/schema.d.ts", "python/skin_client"]


class GenerateError(Exception):
    """A missing tool or a failed generator: one line for the user."""


def live_schema() -> dict:
    """The OpenAPI schema of this checkout's app, with default settings and no model loaded."""
    sys.path.insert(0, str(ROOT))
    from skincli.serve.app import create_app
    from skincli.serve.settings import Settings

    with tempfile.TemporaryDirectory() as empty:  # no runs: the schema names no classes
        app = create_app(Settings(runs_dir=empty, no_log=True))
        return app.openapi()


def _run(cmd: list[str], what: str, cwd: Path | None = None,
         env: dict[str, str] | None = None) -> None:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise GenerateError(f"{what} failed: " + " | ".join(tail))


def typescript_types(schema_file: Path, out: Path) -> None:
    cli = TS / "node_modules" / "openapi-typescript" / "bin" / "cli.js"
    if not cli.is_file():
        raise GenerateError("openapi-typescript is not installed: run "
                            "`npm ci --prefix clients/typescript` first")
    if shutil.which("node") is None:
        raise GenerateError("node is not installed (Node.js 20 or later is needed)")
    out.parent.mkdir(parents=True, exist_ok=True)
    _run(["node", str(cli), str(schema_file), "-o", str(out)], "openapi-typescript")


def _generator_bin() -> Path:
    """The pinned openapi-python-client (and ruff) in their own venv, installed on first use."""
    bin_dir = GENERATOR_VENV / ("Scripts" if os.name == "nt" else "bin")
    stamp = GENERATOR_VENV / "tools.txt"
    if not stamp.is_file() or stamp.read_text().split() != PY_TOOLS:
        print(f"installing {' '.join(PY_TOOLS)} into {GENERATOR_VENV.relative_to(ROOT)}",
              file=sys.stderr)
        _run([sys.executable, "-m", "venv", "--clear", str(GENERATOR_VENV)], "python -m venv")
        _run([str(bin_dir / "python"), "-m", "pip", "install", "-q",
              "--disable-pip-version-check", *PY_TOOLS], "pip install " + " ".join(PY_TOOLS))
        stamp.write_text("\n".join(PY_TOOLS) + "\n")
    return bin_dir


def python_package(schema_file: Path, out: Path) -> None:
    bin_dir = _generator_bin()
    work = out.parent / "opc"
    # Its post hooks call `ruff`: the venv's pinned one comes first on PATH.
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    _run([str(bin_dir / "openapi-python-client"), "generate", "--path", str(schema_file),
          "--output-path", str(work), "--meta", "none", "--overwrite",
          "--config", str(PY / "openapi-python-client.yaml")], "openapi-python-client", env=env)
    shutil.rmtree(work / ".ruff_cache", ignore_errors=True)
    work.rename(out)


def generate(into: Path) -> None:
    """Write every output under `into` (laid out like clients/)."""
    schema_file = into / "openapi.json"
    schema_file.write_text(json.dumps(live_schema(), indent=2, ensure_ascii=False) + "\n",
                           encoding="utf-8")
    typescript_types(schema_file, into / "typescript" / "src" / "schema.d.ts")
    (into / "python").mkdir()
    python_package(schema_file, into / "python" / "skin_client")


def _files(path: Path) -> set[str]:
    if path.is_file():
        return {""}
    if not path.is_dir():
        return set()
    return {str(p.relative_to(path)) for p in path.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def differences(fresh: Path) -> list[str]:
    """Outputs whose committed copy differs from the fresh one (added, removed or changed)."""
    out = []
    for rel in OUTPUTS:
        new, old = fresh / rel, CLIENTS / rel
        for name in sorted(_files(new) | _files(old)):
            a, b = (new / name if name else new), (old / name if name else old)
            if not (a.is_file() and b.is_file() and filecmp.cmp(a, b, shallow=False)):
                out.append(str(Path("clients", rel, name)))
    return out


def install(fresh: Path) -> None:
    """Replace the committed outputs with the fresh ones (each folder swapped whole)."""
    for rel in OUTPUTS:
        new, old = fresh / rel, CLIENTS / rel
        old.parent.mkdir(parents=True, exist_ok=True)
        if new.is_dir():
            staged = old.with_name(old.name + ".new")
            shutil.rmtree(staged, ignore_errors=True)
            shutil.copytree(new, staged)
            shutil.rmtree(old, ignore_errors=True)
            staged.rename(old)
        else:
            staged = old.with_name(old.name + ".new")
            shutil.copyfile(new, staged)
            staged.replace(old)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a generated file is stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        try:
            generate(fresh)
        except GenerateError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        stale = differences(fresh)
        if args.check:
            if stale:
                print("The generated API clients are stale (the API changed); regenerate them "
                      "with `python clients/generate.py` and commit:\n  " + "\n  ".join(stale),
                      file=sys.stderr)
                return 1
            print("API clients match the schema")
            return 0
        install(fresh)
        print(f"regenerated {len(stale)} file(s)" if stale else "API clients already current")
        return 0


if __name__ == "__main__":
    sys.exit(main())
