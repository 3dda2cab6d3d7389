"""`skin export --format web --out DIR`: a static folder that classifies in the browser.

DIR holds the task-ready model (`model.tflite`, as `--format tflite` writes it, and its JSON),
`skin-classifier.js` (`SkinClassifier.load(url)`, `classify(imageOrBlob)`), a demo page
(`index.html`: drop an image or take a photo) and `runtime/`: MediaPipe Tasks Vision's ES module
and one WebAssembly build, vendored in this package with its licence and version
(scripts/refresh_web_runtime.sh refreshes them from npm). Any static server serves it
(`python -m http.server -d DIR`); nothing is fetched from elsewhere and no image leaves the
device. Browsers do not run WebAssembly from file:// pages: serve it.

Before anything is written the model is run once through MediaPipe's own ImageClassifier (the
runtime the browser gets, from the `mediapipe` wheel): a model it cannot run is refused.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from skincli.errors import SkinError
from skincli.fsutil import atomic_dir, check_writable, write_json
from skincli.runs import DEFAULT_RUNS_DIR, check_model_file, load_run_info, resolve_run

HERE = Path(__file__).resolve().parent
RUNTIME_DIR = HERE / "web_runtime"
APP_DIR = HERE / "web_app"
RUNTIME_FILES = ("vision_bundle.js", "wasm/vision_wasm_internal.js",
                 "wasm/vision_wasm_internal.wasm", "LICENSE", "VERSION")
APP_FILES = ("index.html", "demo.js", "demo.css", "skin-classifier.js")
MODEL_NAME = "model.tflite"


def runtime_version() -> str:
    """The vendored runtime's package@version (from its VERSION file)."""
    fields = dict(line.split("=", 1) for line in
                  (RUNTIME_DIR / "VERSION").read_text(encoding="utf-8").splitlines()
                  if "=" in line)
    return f"{fields.get('package', '?')}@{fields.get('version', '?')}"


def export_web(run: str | Path | None = None, out: str | Path = "exported-web",
               runs_dir: str | Path = DEFAULT_RUNS_DIR, decision: str = "balanced",
               prevalence: str | Path | None = None) -> dict[str, Any]:
    """Write the static folder `out`; return the model's JSON (with "path" = the folder)."""
    from skincli.decision import check_rule
    from skincli.export.mobile import build_app_model, new_folders_removed_on_failure

    check_rule(decision)
    missing = [f for f in RUNTIME_FILES if not (RUNTIME_DIR / f).is_file()] + \
        [f for f in APP_FILES if not (APP_DIR / f).is_file()]
    if missing:
        raise SkinError(f"This installation lacks the browser runtime ({', '.join(missing)})",
                        hint="Reinstall skincli, or run scripts/refresh_web_runtime.sh in a "
                        "checkout")
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise SkinError(f"--out {target} already exists and is not an empty folder",
                        hint=f"Give a new folder, e.g. --out {target / 'web'}")
    run_dir = resolve_run(run, runs_dir)
    load_run_info(run_dir)
    check_model_file(run_dir)
    with new_folders_removed_on_failure(target / MODEL_NAME):
        check_writable(target / MODEL_NAME)
        built = build_app_model(run_dir, "web", None, 1.0, False, decision, prevalence)
        doc = built.doc | {"bytes": len(built.data),
                           "sha256": hashlib.sha256(built.data).hexdigest(),
                           "runtime": runtime_version()}
        with atomic_dir(target) as tmp:
            (tmp / MODEL_NAME).write_bytes(built.data)
            write_json(tmp / "model.json", doc)
            for name in APP_FILES:
                shutil.copyfile(APP_DIR / name, tmp / name)
            for name in RUNTIME_FILES:
                dest = tmp / "runtime" / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(RUNTIME_DIR / name, dest)
            for path in [tmp, *tmp.rglob("*")]:  # a web server's user must read it
                path.chmod(0o755 if path.is_dir() else 0o644)
    return doc | {"path": str(target)}
