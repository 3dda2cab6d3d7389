"""`skin predict --dicomweb SOURCE --study UID`: a job by reference, from the command line.

The same core as `POST /v1/jobs` (skincli.clinical.jobs): the study is read from a source named
in the clinical configuration, the results go where that configuration says, and the job's
record lands in its jobs_dir. A repeat of a --job-id prints the stored result.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from skincli import ui
from skincli.errors import SkinError


def predict_dicomweb(*, source: str, study: str | None, series: str | None,
                     instance: str | None, job_id: str | None, config_path: Path | None,
                     run: str | None, runs_dir: Path, engine: str | None,
                     audit_log: Path | None, as_json: bool) -> None:
    """Run one job by reference and print its outcome (exit 1 when it failed)."""
    from skincli.clinical import audit, config, jobs
    from skincli.predictor import load_predictor

    if not study:
        raise SkinError("--dicomweb needs --study UID", hint="Name the study to read")
    cfg = config.load(config_path)
    cfg.source(source)  # an unknown source is one line before the model loads
    req = jobs.JobRequest(source=source, study_uid=study, series_uid=series,
                          sop_instance_uid=instance, id=job_id)
    req.check()
    predictor = load_predictor(run, runs_dir, engine=engine, on_warning=ui.warn)
    log = audit.AuditLog(audit_log or audit.default_path(runs_dir))
    record, replayed = jobs.run(cfg, predictor, req, audit_log=log, caller="cli")
    if as_json:
        typer.echo(json.dumps({**record, "replayed": replayed}, indent=2))
    else:
        _show(record, replayed)
    if record.get("state") == "failed":
        raise SkinError(f"Job {record['id']} failed: {record.get('error')}",
                        hint="The job's record is in the jobs folder")


def _show(record: dict[str, Any], replayed: bool) -> None:
    if replayed:
        ui.console.print(f"Job {record['id']} ran before: its stored result "
                         f"(state {record.get('state')})", highlight=False)
    for img in record.get("images", []):
        p = img["prediction"]
        flag = ", uncertain" if p.get("uncertain") else ""
        ui.console.print(f"{img['sop_instance_uid']}: {p['label']} "
                         f"({p['probability']:.1%}{flag})", highlight=False)
    if record.get("sr"):
        ui.console.print(f"SR stored in study {record['sr']['study_instance_uid']} as series "
                         f"{record['sr']['series_instance_uid']}", highlight=False)
    if record.get("fhir"):
        reports = ", ".join(str(r.get("report")) for r in record["fhir"]["reports"])
        ui.console.print(f"FHIR: {reports} at {record['fhir']['destination']}",
                         highlight=False)
    if record.get("state") == "done":
        ui.console.print(f"Job {record['id']} done", highlight=False)
