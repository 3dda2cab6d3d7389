"""`skin predict IMAGE... | FOLDER`: calibrated top-k predictions, in batches, per-file errors."""

from __future__ import annotations

import csv
import io
import json
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from skincli import DISCLAIMER, ui
from skincli.cli.common import handle_errors
from skincli.defer import describe as describe_op
from skincli.defer import record_of as defer_record_of
from skincli.errors import SkinError
from skincli.imageio import ImageError, is_image_file

if TYPE_CHECKING:  # imported when the command runs: `skin --help` stays fast
    from skincli.predictor import Predictor

HELP = ("Classify images or folders of images with a trained run (default: the current/latest): "
        "top-k calibrated probabilities, an uncertain verdict, out-of-distribution warnings; "
        "--json/--csv for machines, --explain for Grad-CAM heat maps.")

def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given, folders as their image files (recursively, sorted, hidden ones skipped)."""
    out: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and is_image_file(p)
                           and not any(part.startswith(".") for part in
                                       p.relative_to(item).parts))
            if not found:
                ui.warn(f"{item}: no image files (.jpg, .jpeg, .png, .bmp) in this folder")
            out.extend(found)
        else:
            out.append(item)  # a missing file is reported per file by the predictor
    return out


def error_dict(exc: ImageError) -> dict[str, str]:
    """A per-file error as data (the file name is the start of the message)."""
    text = str(exc)
    file = text.split(": ", 1)[0]
    return {"file": file, "code": exc.code, "error": text}


def build_document(predictor: Predictor, results: list[Any], tta: bool,
                   explanations: dict[int, str]) -> dict[str, Any]:
    """The JSON document: model, disclaimer, predictions, errors, summary."""
    preds, errors = [], []
    for i, r in enumerate(results):
        if isinstance(r, ImageError):
            errors.append(error_dict(r))
        else:
            d = r.to_dict()
            d["decision"] = r.decision
            if i in explanations:
                d["explanation"] = explanations[i]
            preds.append(d)
    decision = getattr(predictor, "decision", None)
    op = defer_record_of(predictor.info)
    return {
        "model": predictor.model_summary(),
        "decision": decision.summary() if decision is not None else {"rule": "balanced"},
        **({"operating_point": {"target": op["target"], "thresholds": op["thresholds"],
                                "validation_coverage": op["validation"]["coverage"],
                                "description": describe_op(op)}} if op else {}),
        "disclaimer": DISCLAIMER,
        "tta": tta,
        "predictions": preds,
        "errors": errors,
        "summary": {"images": len(results), "predicted": len(preds), "failed": len(errors),
                    "uncertain": sum(bool(p["uncertain"]) for p in preds)},
    }


def document_csv(doc: dict[str, Any]) -> str:
    """One CSV row per file (predicted or failed), each with the model and the disclaimer."""
    classes = doc["model"]["classes"]
    cols = (["file", "status", "label", "probability", "uncertain", "top_k"]
            + [f"p_{c}" for c in classes] + ["warnings", "error", "explanation", "decision",
                                             "model", "disclaimer"])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    model = doc["model"]["version"]
    rule = doc["decision"]["rule"]
    for p in doc["predictions"]:
        row = {"file": p.get("file", ""), "status": "ok", "label": p["label"],
               "probability": p["probability"], "uncertain": p["uncertain"],
               "top_k": "; ".join(f"{t['label']}:{t['probability']:.4f}" for t in p["top_k"]),
               "warnings": " | ".join(p["warnings"]), "error": "",
               "explanation": p.get("explanation", ""), "decision": rule, "model": model,
               "disclaimer": doc["disclaimer"]}
        row.update({f"p_{c}": p["probabilities"][c] for c in classes})
        w.writerow(row)
    for e in doc["errors"]:
        w.writerow({"file": e["file"], "status": f"error:{e['code']}", "error": e["error"],
                    "model": model, "disclaimer": doc["disclaimer"]})
    return buf.getvalue()


def _unique_png(folder: Path, stem: str, used: set[str]) -> Path:
    name, k = f"{stem}_gradcam.png", 2
    while name in used:
        name, k = f"{stem}_{k}_gradcam.png", k + 1
    used.add(name)
    return folder / name


def write_explanations(predictor: Predictor, results: list[Any], folder: Path,
                       batch_size: int) -> dict[int, str]:
    """Grad-CAM overlays of each prediction's class, one PNG per predicted image."""
    from skincli.explain import GradCamExplainer, decode_side, explain, save_overlay
    from skincli.imageio import open_image

    explainer = GradCamExplainer(predictor.model)
    index = {c: i for i, c in enumerate(predictor.classes)}
    todo = [i for i, r in enumerate(results) if not isinstance(r, ImageError)]
    out: dict[int, str] = {}
    used: set[str] = set()
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        arrays = predictor.read_images([results[i].source for i in chunk])
        batch = np.stack(arrays).astype(np.float32)
        cams = explain(predictor, batch, [index[results[i].label] for i in chunk], explainer)
        for i, cam in zip(chunk, cams):
            # Decoded as the server decodes an upload, so the picture is the API's.
            original = open_image(results[i].source, max_pixels=predictor.max_pixels,
                                  target=decode_side(predictor.input_size))
            path = _unique_png(folder, Path(results[i].source).stem, used)
            save_overlay(path, np.asarray(original, dtype=np.uint8), cam)
            out[i] = str(path)
    return out


def log_predictions(predictor: Predictor, results: list[Any], store_url: str | None,
                    source: str | None = None) -> int:
    """Append the predictions to the monitoring store.

    `source` names where the images came from (a clinic, a data source); default "cli".
    """
    from skincli.fsutil import sha256_file
    from skincli.monitor.rows import prediction_row
    from skincli.monitor.store import open_store, summarize_embedding

    run_id = uuid.uuid4().hex[:12]
    now = time.time()
    rows = []
    for i, r in enumerate(results):
        if isinstance(r, ImageError):
            continue
        try:
            sha = sha256_file(r.source)
        except OSError:
            sha = ""
        rows.append(prediction_row(
            request_id=f"cli-{run_id}-{i}", model_version=predictor.info.version,
            image_sha256=sha, predicted=r.label, probabilities=r.calibrated or r.probabilities,
            top_probability=r.probability, uncertain=r.uncertain,
            latency_ms=r.meta.get("latency_ms"), source=source or "cli",
            image_stats=r.meta.get("image_stats"), when=now,
            embedding=None if r.embedding is None else summarize_embedding(r.embedding)))
    if rows:
        store = open_store(store_url)
        try:
            store.log(rows)
        finally:
            store.close()
    return len(rows)


def _stats_hook() -> Any:
    from skincli.monitor.store import image_stats

    def hook(arr: np.ndarray) -> dict[str, Any]:
        try:
            return {"image_stats": image_stats(arr)}
        except Exception:  # monitoring extras must never stop a prediction
            return {}

    return hook


def _short_names(files: list[str]) -> dict[str, str]:
    """Paths relative to the folder they share, so the table shows the part that differs."""
    if len(files) < 2:
        return {f: f for f in files}
    try:
        common = os.path.commonpath([os.path.abspath(os.path.dirname(f)) for f in files])
    except ValueError:  # different drives
        return {f: f for f in files}
    return {f: os.path.relpath(os.path.abspath(f), common) for f in files}


def _show_table(doc: dict[str, Any], top_k: int) -> None:
    rows = []
    names = _short_names([p.get("file", "") for p in doc["predictions"]])
    for p in doc["predictions"]:
        top = ", ".join(f"{t['label']} {t['probability']:.1%}" for t in p["top_k"][:top_k])
        verdict = "[yellow]uncertain[/]" if p["uncertain"] else "confident"
        tri = p.get("triage")
        if tri:  # the referral suggestion, whatever the top class says
            verdict += (f"; [bold red]refer[/] (malignancy {tri['malignancy_score']:.0%} >= "
                        f"{tri['threshold']:.0%})" if tri["refer"] else
                        f"; no referral suggested (malignancy {tri['malignancy_score']:.0%})")
        dfr = p.get("deferral")
        if dfr:  # the run's answer-or-defer operating point; a referral above still stands
            verdict += ("; answered" if not dfr["deferred"] else
                        "; [bold yellow]deferred to a dermatologist[/]"
                        + (f" (differential: {', '.join(dfr['differential'])})"
                           if dfr.get("differential") else ""))
        rows.append((names.get(p.get("file", ""), ""), top, verdict, "; ".join(p["warnings"])))
    m = doc["model"]
    ui.console.print(ui.table(f"Predictions by {m['name']} (model {m['version']}, decision "
                              f"{doc['decision']['rule']})",
                              ["file", f"top {top_k} (calibrated probability)", "verdict",
                               "notes"], rows))
    if doc.get("operating_point"):
        ui.console.print(f"Answer or defer: the model {doc['operating_point']['description']}.",
                         highlight=False)


def _metadata_records(path: Path, paths: list[Path]) -> list[dict[str, str]]:
    """Per image {sex, age_band, site} from a metadata CSV; images without a row get {}."""
    from skincli.data.metadata import image_id, load_metadata
    from skincli.metahead import parse_inputs

    meta = load_metadata(path, require_diagnosis=False)
    table = meta.table  # one row per lower-case image id
    out: list[dict[str, str]] = []
    missing = 0
    for p in paths:
        key = image_id(p.name)
        if key not in table.index:
            missing += 1
            out.append({})
            continue
        row = table.loc[key]
        try:
            out.append(parse_inputs(row["age"] or None, row["sex"] or None, row["site"] or None))
        except SkinError as exc:
            raise SkinError(f"{path}, image {row['image_id']}: {exc.message}",
                            hint=f"Fix that row of {path.name}") from None
    if missing:
        ui.warn(f"{missing} of {len(paths)} images have no row in {path.name}: they are "
                "answered from the image alone")
    return out


def _checked_inputs(inputs: list[Path], outputs: dict[str, Path | None],
                    explain_dir: Path | None) -> list[Path]:
    """The image paths to predict; fails before the model loads when there is nothing to do
    or an output (option -> path) cannot be written."""
    from skincli.fsutil import check_writable

    paths = expand_inputs(inputs)
    if not paths:
        raise SkinError("No images to predict",
                        hint="Pass image files or folders holding .jpg/.jpeg/.png/.bmp files")
    missing = [p for p in paths if not p.exists()]
    if len(missing) == len(paths):  # nothing to do: say so before loading the model
        shown = ", ".join(str(p) for p in missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise SkinError(f"{shown} does not exist" if len(missing) == 1 else
                        f"None of the {len(missing)} inputs exist ({shown})",
                        hint="Check the path(s); folders are searched for images recursively")
    for option, target in outputs.items():
        if target is not None:
            check_writable(target, option)
    if explain_dir is not None:
        check_writable(explain_dir / "x.png", "--explain-dir")
    return paths


def _predict_with_bar(predictor: Predictor, paths: list[Path], show_bar: bool,
                      metadata: list[dict[str, str]] | None, **options: Any) -> list[Any]:
    """predictor.predict_paths with a progress bar on the terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(TextColumn("predicting"), BarColumn(), MofNCompleteColumn(),
                  console=ui.err_console, transient=True, disable=not show_bar) as bar:
        task = bar.add_task("predict", total=len(paths))
        return list(predictor.predict_paths(
            [str(p) for p in paths], progress=lambda done, total: bar.update(
                task, completed=done), metadata=metadata, **options))


@handle_errors
def command(
    inputs: Annotated[list[Path] | None, typer.Argument(
        help="Image files and/or folders (searched recursively).", show_default=False)] = None,
    run: Annotated[str | None, typer.Option(
        "--run", help="Run folder or name under --runs-dir (default: current/latest).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Classes to show per image.")] = 3,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print one JSON document on stdout instead of the table.")] = False,
    json_out: Annotated[Path | None, typer.Option(
        "--json-out", help="Also write the JSON document to this file.", dir_okay=False)] = None,
    csv_out: Annotated[Path | None, typer.Option(
        "--csv", help="Also write one CSV row per file to this path.", dir_okay=False)] = None,
    tta: Annotated[bool, typer.Option(
        "--tta", help="Average over 8 flips/rotations (slower, often a little better).")] = False,
    do_explain: Annotated[bool, typer.Option(
        "--explain", help="Save a Grad-CAM heat map PNG per image.")] = False,
    explain_dir: Annotated[Path | None, typer.Option(
        "--explain-dir", help="Folder for heat maps (default: gradcam/ beside --csv/--json-out, "
        "else reports/predict/gradcam).", file_okay=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1,
                                            help="Images per forward pass.")] = 32,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where runs live.",
                                           file_okay=False)] = Path("runs"),
    no_log: Annotated[bool, typer.Option(
        "--no-log", help="Do not record these predictions in the monitoring store.")] = False,
    store: Annotated[str | None, typer.Option(
        "--store", help="Monitoring store URL (default: $SKIN_STORE or "
        "sqlite:///runs/predictions.db).")] = None,
    source: Annotated[str | None, typer.Option(
        "--source", metavar="NAME", help="Where these images come from (a clinic or data "
        "source, as named in `skin split`): logged with each prediction (default: cli).")]
    = None,
    fhir_out: Annotated[Path | None, typer.Option(
        "--fhir", help="Also write the results as an HL7 FHIR R4 Bundle (JSON) to this file.",
        dir_okay=False)] = None,
    audit_log: Annotated[Path | None, typer.Option(
        "--audit-log", help="Hash-chained audit log every prediction is recorded in "
        "(default: $SKIN_AUDIT_LOG or <runs-dir>/audit.jsonl).", dir_okay=False)] = None,
    decision: Annotated[str, typer.Option(
        "--decision", help="Decision rule: balanced (every class counted equally), prevalence "
        "(re-weighted to the training prior or --prevalence), macro-f1 (offsets fitted on "
        "validation). See docs/decisions.md.")] = "balanced",
    prevalence: Annotated[Path | None, typer.Option(
        "--prevalence", help="With --decision prevalence: the clinic's class prior (YAML "
        "class: value, or CSV class,prevalence; e.g. from `skin monitor "
        "--suggest-prevalence`).", dir_okay=False)] = None,
    engine: Annotated[str | None, typer.Option(
        "--engine", help="Inference engine: litert or tf (default: $SKIN_ENGINE, else "
        "litert; runs that do not convert use tf).")] = None,
    age: Annotated[float | None, typer.Option(
        "--age", help="The patient's age in years, for a model trained with --use-metadata "
        "(applies to every image given).")] = None,
    sex: Annotated[str | None, typer.Option(
        "--sex", help="male or female (as --age).")] = None,
    site: Annotated[str | None, typer.Option(
        "--site", help="Anatomical site, e.g. back, face, lower extremity (as --age).")] = None,
    metadata_file: Annotated[Path | None, typer.Option(
        "--metadata", help="Per-image age, sex and site from a metadata CSV (ISIC archive "
        "export, HAM10000_metadata.csv or ISIC challenge metadata), joined by file name; for a "
        "model trained with --use-metadata.", dir_okay=False)] = None,
    dicomweb: Annotated[str | None, typer.Option(
        "--dicomweb", help="Read the images from this configured DICOMweb source instead of "
        "files (with --study; see docs/clinical.md).")] = None,
    study: Annotated[str | None, typer.Option("--study", help="With --dicomweb: the Study "
                                              "Instance UID.")] = None,
    series: Annotated[str | None, typer.Option("--series", help="With --dicomweb: only this "
                                               "series.")] = None,
    instance: Annotated[str | None, typer.Option("--instance", help="With --dicomweb: only "
                                                 "this SOP instance.")] = None,
    job_id: Annotated[str | None, typer.Option("--job-id", help="With --dicomweb: the job's "
                                               "id (a repeat prints the stored result).")] = None,
    clinical_config: Annotated[Path | None, typer.Option(
        "--clinical-config", help="With --dicomweb: the sources/destinations YAML (default: "
        "$SKIN_CLINICAL_CONFIG).", dir_okay=False)] = None,
) -> None:
    """Predict images."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if dicomweb is not None:
        from skincli.cli.dicomweb import predict_dicomweb

        return predict_dicomweb(source=dicomweb, study=study, series=series, instance=instance,
                                job_id=job_id, config_path=clinical_config, run=run,
                                runs_dir=runs_dir, engine=engine, audit_log=audit_log,
                                as_json=as_json)
    inputs = inputs or []
    from skincli.decision import check_rule
    from skincli.engines.base import resolve_engine_name
    from skincli.fsutil import write_json, write_text
    from skincli.predictor import load_predictor

    rule = check_rule(decision)  # a typo is one line before anything slow
    if prevalence is not None and rule != "prevalence":
        raise SkinError(f"--prevalence applies to --decision prevalence, not {rule}",
                        hint="Add --decision prevalence")
    resolve_engine_name(engine)  # an unknown engine is one line before anything slow
    from skincli.metahead import parse_inputs

    record = (parse_inputs(age, sex, site) if any(v is not None for v in (age, sex, site))
              else None)
    if record is not None and metadata_file is not None:
        raise SkinError("--metadata gives each image its own age, sex and site; it does not "
                        "combine with --age/--sex/--site", hint="Use one or the other")

    paths = _checked_inputs(inputs, {"--json-out": json_out, "--csv": csv_out,
                                     "--fhir": fhir_out}, explain_dir)
    predictor = load_predictor(run, runs_dir, engine=engine, on_warning=ui.warn)
    if rule != "balanced":
        from skincli.evaluate import resolve_decision  # fitting needs the evaluation stack

        with ui.err_console.status(f"Preparing the {rule} decision rule..."):
            chosen = resolve_decision(predictor, rule, prevalence, batch_size=batch_size)
        for message in chosen.warnings:
            ui.warn(message)
        predictor.set_decision(chosen)
    # One record per image: from the file, or the --age/--sex/--site for every image.
    per_image = (_metadata_records(metadata_file, paths) if metadata_file is not None
                 else None if record is None else [record] * len(paths))
    # Off the terminal a transient bar shows nothing but leaves a blank line in logs.
    show_bar = len(paths) > batch_size and not as_json and ui.err_console.is_terminal
    results = _predict_with_bar(predictor, paths, show_bar, per_image, batch_size=batch_size,
                                tta=tta, top_k=top_k, image_hook=None if no_log else _stats_hook())
    n_ok = sum(not isinstance(r, ImageError) for r in results)
    explanations: dict[int, str] = {}
    if do_explain and n_ok:
        folder = explain_dir or ((csv_out or json_out).parent / "gradcam"
                                 if (csv_out or json_out) else Path("reports/predict/gradcam"))
        explanations = write_explanations(predictor, results, folder, batch_size)
    doc = build_document(predictor, results, tta, explanations)
    if record is not None:
        doc["metadata"] = record  # what the metadata term (if the run has one) was given
    elif per_image is not None:
        paths_index = {str(p): i for i, p in enumerate(paths)}
        for pred in doc["predictions"]:
            pred["metadata"] = per_image[paths_index[pred["file"]]]
    from skincli.clinical.records import audit_cli, fhir_document

    # The audit record comes first: no result is shown or written without it.
    audit_cli(predictor, results, audit_log, runs_dir)
    if fhir_out and n_ok:
        write_json(fhir_out, fhir_document(predictor, results))
    if not no_log and n_ok:
        try:
            log_predictions(predictor, results, store, source)
        except Exception as exc:  # monitoring must never break a prediction
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            ui.warn(f"predictions were not logged to the monitoring store ({first}); "
                    "use --no-log to skip logging")
    if json_out:
        write_json(json_out, doc)
    if csv_out:
        write_text(csv_out, document_csv(doc))
    _show(doc, len(results), top_k, as_json, json_out, csv_out, fhir_out, explanations)


def _show(doc: dict[str, Any], n_results: int, top_k: int, as_json: bool,
          json_out: Path | None, csv_out: Path | None, fhir_out: Path | None,
          explanations: dict[int, str]) -> None:
    """The table (or the JSON document) and what was written; the errors last."""
    n_ok = len(doc["predictions"])
    if n_ok == 0 and n_results == 1 and not (as_json or json_out or csv_out):
        # One file, one reason: say it in the error line itself.
        raise SkinError(f"Cannot predict {doc['errors'][0]['error']}",
                        hint="Pass a JPEG, PNG or BMP image")
    for e in doc["errors"]:
        ui.warn(f"skipped {e['error']}")
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    elif not n_ok:  # nothing predicted: only where the error rows went, then the error
        for target in (json_out, csv_out):
            if target:
                ui.console.print(f"Wrote {target}", highlight=False)
    else:
        _show_table(doc, top_k)
        m = doc["model"]
        ui.console.print(f"Model: {m['name']} ({m['arch']}, version {m['version']}, "
                         f"temperature {m['temperature']:.3g}); decision rule "
                         f"{doc['decision']['rule']}", highlight=False)
        for target in (json_out, csv_out, fhir_out):
            if target:
                ui.console.print(f"Wrote {target}", highlight=False)
        if explanations:
            folder_shown = Path(next(iter(explanations.values()))).parent
            ui.console.print(f"Heat maps: {folder_shown}/", highlight=False)
        ui.console.print(f"[bold]{DISCLAIMER}[/]", highlight=False)
    if doc["errors"]:
        if n_ok:
            ui.warn(f"{len(doc['errors'])} of {n_results} file(s) could not be read "
                    "(listed above); the others were predicted")
        else:
            raise SkinError(f"None of the {n_results} file(s) could be read (reasons above)",
                            hint="Check they are JPEG/PNG/BMP images")
