"""`skin receive`: a DICOM C-STORE receiver; each dermoscopic image pushed to it is a job.

The same core as `skin predict --dicomweb` and `POST /v1/jobs` (skincli.clinical.jobs): the
image is classified, audited, and its SR stored (STOW-RS) into the study on the source named by
`receive.results_to` in the clinical configuration; the FHIR report goes to `results.fhir`.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from skincli import ui
from skincli.cli.common import handle_errors

HELP = ("Listen for DICOM C-STORE (Dermoscopic Photography, VL Photographic) and run a job for "
        "each image received (see docs/clinical.md).")


@handle_errors
def command(
    clinical_config: Annotated[Path | None, typer.Option(
        "--clinical-config", help="The sources/destinations YAML (default: "
        "$SKIN_CLINICAL_CONFIG).", dir_okay=False)] = None,
    run: Annotated[str | None, typer.Option(
        "--run", help="Run folder or name under --runs-dir (default: current/latest).")] = None,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where runs live.",
                                           file_okay=False)] = Path("runs"),
    engine: Annotated[str | None, typer.Option("--engine", help="litert or tf.")] = None,
    audit_log: Annotated[Path | None, typer.Option(
        "--audit-log", help="Hash-chained audit log (default: $SKIN_AUDIT_LOG or "
        "<runs-dir>/audit.jsonl).", dir_okay=False)] = None,
) -> None:
    """Receive images by C-STORE until interrupted."""
    from skincli.clinical import audit, config, jobs
    from skincli.clinical.dimse import StoreReceiver
    from skincli.predictor import load_predictor

    cfg = config.load(clinical_config)
    predictor = load_predictor(run, runs_dir, engine=engine, on_warning=ui.warn)
    log = audit.AuditLog(audit_log or audit.default_path(runs_dir))
    lock = threading.Lock()  # one job at a time: the model is not shared across threads

    def on_instance(raw: bytes) -> None:
        with lock:
            record, replayed = jobs.run_received(cfg, predictor, raw, audit_log=log)
        state = "ran before" if replayed else record.get("state")
        ui.err_console.print(f"job {record['id']}: {state}"
                             + (f" ({record.get('error')})" if record.get("error") else ""),
                             highlight=False)

    receiver = StoreReceiver(on_instance, ae_title=cfg.receive_ae_title,
                             host=cfg.receive_host, port=cfg.receive_port)
    receiver.start()
    ui.err_console.print(f"Listening for C-STORE as {cfg.receive_ae_title} on "
                         f"{cfg.receive_host}:{cfg.receive_port} (Ctrl-C stops)", highlight=False)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        receiver.stop()
