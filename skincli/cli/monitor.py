"""`skin monitor`: operations, drift and labelled performance of the model in production;
`skin monitor label` attaches ground truth; `skin monitor retrain` trains and maybe promotes a
challenger."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from skincli import ui
from skincli.cli.common import (
    ClassMapOpt,
    GroupOpt,
    LabelsOpt,
    MetadataOpt,
    handle_errors,
    metadata_args,
)
from skincli.errors import SkinError

HELP = ("Watch the model in production: volume, latency, class mix and confidence per window; "
        "drift against the run's validation data; performance on labelled feedback.")

app = typer.Typer(
    help=HELP + " Run from cron with --check: exit code 2 when a threshold is crossed.",
    invoke_without_command=True,
    no_args_is_help=False,
    rich_markup_mode="rich",
)

StoreOpt = Annotated[
    str | None,
    typer.Option("--store", help="Prediction store: sqlite:///runs/predictions.db (default; "
                 "or $SKIN_STORE), a file path, or postgresql://user@host/db."),
]
RunsDirOpt = Annotated[Path, typer.Option("--runs-dir", help="Folder holding the runs.")]


def _store_url(ctx: typer.Context, store: str | None) -> str:
    """A subcommand's --store, else the group's --store, else $SKIN_STORE / the default."""
    from skincli.monitor.store import default_store_url

    if store:
        return store
    parent = ctx.parent.params.get("store") if ctx.parent is not None else None
    return parent or default_store_url()


def _open_existing(url: str, runs_dir: Path | None = None) -> Any:
    from skincli.monitor.predlog import journal_path, replay_journal
    from skincli.monitor.store import SqliteStore, open_store

    if runs_dir is not None:
        # Rows `skin serve` spooled while the store was locked or down belong in the report.
        try:
            n = replay_journal(url, journal_path(runs_dir))
        except Exception as exc:
            ui.warn(f"could not replay the prediction journal in {runs_dir}: {exc}")
        else:
            if n:
                ui.err_console.print(f"Wrote {n} journaled predictions to the store.",
                                     highlight=False)
    store = open_store(url)
    if isinstance(store, SqliteStore) and not store.path.exists():
        raise SkinError(f"No predictions logged yet: {store.path} does not exist",
                        hint="`skin predict` and `skin serve` create it; or pass --store")
    return store


@app.callback()
@handle_errors
def report(
    ctx: typer.Context,
    run: Annotated[str | None, typer.Option("--run", help="Run whose model and reference to "
                                            "check (default: the current or latest run).")
                   ] = None,
    window: Annotated[str, typer.Option("--window", help="Window length: day, week, hour, or "
                                        "a multiple such as 6h or 2d (UTC).")] = "day",
    last: Annotated[int, typer.Option("--last", min=1, help="How many windows the report "
                                      "covers, ending now.")] = 14,
    check: Annotated[bool, typer.Option("--check", help="Print only alerts; exit 2 when any "
                                        "threshold is crossed, 0 otherwise (for cron/CI).")
                     ] = False,
    out: Annotated[Path, typer.Option("--out", help="Report folder (report.json and PNG plots; "
                                      "replaced atomically).")] = Path("reports/monitor"),
    store: StoreOpt = None,
    runs_dir: RunsDirOpt = Path("runs"),
    alpha: Annotated[float, typer.Option("--alpha", min=1e-6, max=0.5,
                                         help="Significance level of each drift test.")
                     ] = 0.01,
    psi: Annotated[float, typer.Option("--psi", min=0.0, help="PSI above this is prediction-"
                                       "mix drift (0.1 moderate, 0.2 significant).")] = 0.2,
    min_samples: Annotated[int, typer.Option("--min-samples", min=2, help="Fewer predictions "
                                             "in the window than this: no drift verdict.")
                           ] = 50,
    min_labels: Annotated[int, typer.Option("--min-labels", min=1, help="Fewer labelled "
                                            "predictions than this: no performance verdict.")
                          ] = 30,
    f1_tolerance: Annotated[float, typer.Option("--f1-tolerance", min=0.0, help="Alert when "
                                                "the 95% CI of labelled macro F1 lies wholly "
                                                "this far below the test macro F1.")] = 0.05,
    permutations: Annotated[int, typer.Option("--permutations", min=20, help="Permutations "
                                              "of the embedding MMD test.")] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Seed of permutations and bootstraps.")
                    ] = 0,
    rebuild_reference: Annotated[bool, typer.Option("--rebuild-reference", help="Recompute "
                                                    "runs/<run>/reference.json.")] = False,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write PNG plots.")
                     ] = True,
    prevalence: Annotated[Path | None, typer.Option(
        "--prevalence", dir_okay=False, help="The class prior the deployment answers with "
        "(as given to `skin serve --prevalence`): the reference for the label-shift alert "
        "(default: the training prior).")] = None,
    shift_threshold: Annotated[float, typer.Option(
        "--shift-threshold", min=0.0, max=1.0, help="Alert when a class's estimated "
        "prevalence moves more than this from the reference (and the reference is outside "
        "its 95% CI).")] = 0.10,
    suggest_prevalence: Annotated[Path | None, typer.Option(
        "--suggest-prevalence", dir_okay=False, help="Write the estimated class prevalence "
        "as a YAML file that `skin serve --prevalence` and `skin predict --prevalence` "
        "read.")] = None,
) -> None:
    """Report on the model in production (the default action of `skin monitor`)."""
    if ctx.invoked_subcommand is not None:
        return  # `skin monitor label|retrain`: the group's options only pass --store down
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from skincli.fsutil import check_writable
    from skincli.monitor.drift import Thresholds
    from skincli.monitor.reference import get_reference
    from skincli.monitor.report import build_report, parse_window, write_report
    from skincli.runs import load_run_info, resolve_run

    win = parse_window(window)
    check_writable(out)
    if suggest_prevalence is not None:
        check_writable(suggest_prevalence, "--suggest-prevalence")
    th = Thresholds(alpha=alpha, psi=psi, min_samples=min_samples, min_labels=min_labels,
                    f1_tolerance=f1_tolerance, n_permutations=permutations, seed=seed)
    run_dir = resolve_run(run, runs_dir)
    info = load_run_info(run_dir)
    url = _store_url(ctx, store)
    db = _open_existing(url, runs_dir)
    now = time.time()
    since = min(win.start(now) - (last - 1) * win.seconds, now - win.seconds)
    try:
        df = db.predictions(since=since)
    finally:
        db.close()

    reference = None
    ref_note = None
    try:
        if not check:
            with ui.console.status(f"Loading the drift reference of {run_dir.name} ..."):
                reference = get_reference(run_dir, rebuild=rebuild_reference)
        else:
            reference = get_reference(run_dir, rebuild=rebuild_reference)
    except SkinError as exc:
        ref_note = f"drift tests skipped: {exc}"
    rep = build_report(df, info, reference, win, last=last, now=now, th=th,
                       store_url=getattr(db, "url", url))
    if ref_note:
        rep.notes.insert(0, ref_note)
    from skincli.monitor.labelshift import label_shift_for_run

    shift, prior_warnings = label_shift_for_run(
        df, info, run_dir, win.seconds, now, prevalence=prevalence, threshold=shift_threshold,
        min_samples=min_samples, seed=seed)
    rep.label_shift = shift
    rep.notes.extend(prior_warnings)
    if shift["alert"]:
        rep.alerts.append(f"label_shift: {shift['detail']}")
    elif shift["status"] == "not_converged":
        rep.notes.append(f"label shift: {shift['detail']}")
    folder = write_report(rep, out, plots=plots)
    if suggest_prevalence is not None:
        _suggest(shift, suggest_prevalence, info, win.name)

    if check:
        for note in rep.notes:
            ui.warn(note)
        for alert in rep.alerts:
            ui.console.print(f"ALERT {alert}", highlight=False, soft_wrap=True)
        if rep.alerts:
            raise typer.Exit(code=2)
        ui.console.print(f"ok: {rep.drift['current']['n']} predictions of {info.version} in the "
                         f"last {win.name}, no threshold crossed (report in {folder})",
                         highlight=False, soft_wrap=True)
        return
    _print_report(rep, folder, plots)


def _suggest(shift: dict[str, Any], path: Path, info: Any, window: str) -> None:
    """Write the EM estimate as a prior file, or say in one line why there is none."""
    from skincli.decision import write_prior
    from skincli.monitor.labelshift import suggested_prior

    prior = suggested_prior(shift)
    if prior is None:
        raise SkinError(f"No prevalence suggested: {shift['detail']}",
                        hint="Wait for more predictions or use a longer --window")
    ci = shift.get("ci95") or {}
    comment = (f"Class prevalence estimated by `skin monitor` (EM, Saerens et al. 2002) from "
               f"{shift['n']} predictions of {info.version} in the last {window}.\n"
               + "\n".join(f"{c}: 95% CI {ci[c][0]:.3f}-{ci[c][1]:.3f}" for c in ci)
               + "\nUse: skin serve --decision prevalence --prevalence THIS_FILE")
    write_prior(path, prior, comment=comment)
    ui.console.print(f"Suggested prevalence written to {path}", highlight=False)


def _show_label_shift(shift: dict[str, Any], window: str) -> None:
    if not shift:
        return
    c = ui.console
    est = shift.get("estimate")
    if est:
        refs = shift["references"]
        ci = shift.get("ci95") or {}
        rows = [[k, f"{v:.1%}", f"{ci[k][0]:.1%}-{ci[k][1]:.1%}" if k in ci else "-",
                 *[f"{r[k]:.1%}" for r in refs.values()]] for k, v in est.items()]
        c.print(ui.table(f"Class prevalence of the last {window} (EM on {shift['n']} "
                         "predictions)", ["class", "estimated", "95% CI", *refs], rows))
    style = "bold red" if shift["alert"] else ("yellow" if shift["status"] != "ok" else "green")
    c.print(f"Label shift: [{style}]{shift['status']}[/] — {shift['detail']}", highlight=False,
            soft_wrap=True)


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _print_report(rep: Any, folder: Path, plots: bool = True) -> None:
    c = ui.console
    c.print(f"[bold]Model[/] {rep.model_version}   [bold]store[/] {rep.store}   "
            f"[bold]period[/] {rep.period['start']} .. {rep.period['end']}", highlight=False)
    rows = []
    daily = rep.window in ("day", "week") or rep.window.endswith(("d", "w"))
    for w in rep.windows:
        lat = w["latency_ms"]
        start = w["start"][:10] if daily else w["start"][5:16].replace("T", " ")
        rows.append([start, w["n"], _fmt(lat["p50"], 1), _fmt(lat["p95"], 1), _fmt(lat["p99"], 1),
                     "-" if w["uncertain_share"] is None else f"{w['uncertain_share']:.1%}",
                     _fmt(w["mean_confidence"]), w["n_labelled"]])
    c.print(ui.table(f"Per {rep.window} (UTC)", ["start", "n", "p50 ms", "p95 ms", "p99 ms",
                                                 "uncertain", "confidence", "labelled"], rows))

    results = rep.drift["results"]
    shares = next((r["extra"] for r in results if r["name"] == "prediction_psi"
                   and r.get("extra")), None)
    if shares:
        c.print(ui.table(f"Predicted class mix: reference vs last {rep.window}",
                         ["class", "reference", "current"],
                         [[k, f"{shares['reference_share'][k]:.1%}",
                           f"{shares['current_share'].get(k, 0):.1%}"]
                          for k in shares["reference_share"]]))
    if results:
        style = {"ok": "green", "drift": "bold red"}
        drows = [[r["name"], _fmt(r["statistic"], 4), _fmt(r["p_value"], 4),
                  f"{'p <' if r['threshold_kind'] == 'alpha' else '>'} {r['threshold']:g}",
                  f"[{style.get(r['verdict'], 'yellow')}]{r['verdict']}[/]"] for r in results]
        ref = rep.drift.get("reference") or {}
        c.print(ui.table(f"Drift: last {rep.window} ({rep.drift['current']['n']} predictions) "
                         f"vs {ref.get('source', 'reference')} ({ref.get('n')} images)",
                         ["test", "statistic", "p-value", "drift if", "verdict"], drows))
        for r in results:
            c.print(f"  {r['name']}: {r['detail']}", highlight=False, soft_wrap=True)
    per_source = rep.drift.get("per_source") or {}
    if per_source:
        c.print(ui.table(f"Drift per source: last {rep.window}", ["source", "predictions"]
                         + [r["name"] for r in next(iter(per_source.values()))["results"]],
                         [[name, v["n"], *[r["verdict"] for r in v["results"]]]
                          for name, v in per_source.items()]))

    perf = rep.performance
    overall = perf["overall"]
    test = perf["test"]
    if overall["n"]:
        ci = overall["macro_f1_ci"] or [None, None]
        prow = [["macro F1", overall["n"], _fmt(overall["macro_f1"]),
                 f"{_fmt(ci[0])}-{_fmt(ci[1])}", _fmt(test.get("macro_f1"))]]
        for name, r in overall["per_class_recall"].items():
            rci = r["ci"] or [None, None]
            prow.append([f"recall {name}", r["support"], _fmt(r["recall"]),
                         f"{_fmt(rci[0])}-{_fmt(rci[1])}", _fmt(test["recall"].get(name))])
        c.print(ui.table("Performance on labelled feedback", ["metric", "n", "value", "95% CI",
                                                              "test"], prow))
    c.print(f"Performance: {perf['verdict']} — {perf['reason']}", highlight=False,
            soft_wrap=True)
    _show_label_shift(rep.label_shift, rep.window)
    for note in rep.notes:
        ui.warn(note)
    if rep.alerts:
        names = [a.split(":", 1)[0] for a in rep.alerts]
        c.print(f"[bold red]ALERT[/] {len(names)} threshold(s) crossed: {', '.join(names)} "
                "(`skin monitor --check` exits 2)", highlight=False, soft_wrap=True)
    else:
        c.print("[green]No threshold crossed.[/]")
    c.print(f"Report: {folder}/report.json{' and PNG plots' if plots else ''}",
            highlight=False)


@app.command("label", help="Attach confirmed diagnoses: a CSV with image_sha256 (or path: the "
             "file is hashed) and label/diagnosis columns.")
@handle_errors
def label(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="CSV: image_sha256 or path, and label.",
                                         dir_okay=False)],
    store: StoreOpt = None,
) -> None:
    """Attach ground truth from pathology to logged predictions."""
    from skincli.monitor.labels import read_label_csv
    from skincli.monitor.store import open_store

    labels = read_label_csv(file)
    for problem in labels.problems:
        ui.warn(f"{file}: {problem}")
    if labels.skipped > len(labels.problems):
        ui.warn(f"{file}: {labels.skipped - len(labels.problems)} more rows skipped")
    if not labels.mapping:
        raise SkinError(f"No usable label in {file} ({labels.rows} rows)",
                        hint="Each row needs an image hash or readable path and a label")
    db = open_store(_store_url(ctx, store))
    try:
        matched = db.add_labels(labels.mapping)
    finally:
        db.close()
    n = len(labels.mapping)
    ui.console.print(ui.table(f"Labels from {file.name}", ["", "images"], [
        ["rows read", labels.rows], ["labels stored", n],
        ["matched logged predictions", matched], ["not seen yet (kept for later)", n - matched],
        ["rows skipped", labels.skipped], ["conflicting duplicates (last wins)",
                                           labels.conflicts]]))
    if matched == 0:
        ui.warn("none of these images has a logged prediction yet; check the hashes are of "
                "the uploaded files")
    _warn_unknown_labels(ctx, set(labels.mapping.values()))


def _warn_unknown_labels(ctx: typer.Context, found: set[str]) -> None:
    """A label the model cannot predict is usually a typo; it would count as a miss."""
    from skincli.errors import did_you_mean
    from skincli.runs import load_run_info, resolve_run

    params = ctx.parent.params if ctx.parent is not None else {}
    try:
        info = load_run_info(resolve_run(params.get("run"), params.get("runs_dir") or "runs"))
    except SkinError:
        return  # no run to compare with: labels are still stored
    unknown = sorted(found - set(info.classes))
    if unknown:
        ui.warn(f"label(s) not among the classes of run {info.name}: "
                f"{', '.join(repr(u) for u in unknown[:5])}"
                f"{' ...' if len(unknown) > 5 else ''}; `skin monitor` counts them as "
                f"misses.{did_you_mean(unknown[0], info.classes)} Fix the CSV and label again "
                "(the last label of an image wins)")


@app.command("retrain", help="Merge newly labelled images into the champion's data (dedup by "
             "hash, never into its test split), train a challenger with the champion's config, "
             "evaluate both on the same held-out test images, and promote the challenger only "
             "if its macro F1 is better by --margin. Every step goes to runs/retrain-log.jsonl.")
@handle_errors
def retrain(
    data: Annotated[Path, typer.Option("--data", help="New labelled images: class folders, "
                                       "or a CSV with path and label columns.")],
    run: Annotated[str | None, typer.Option("--run", help="Champion run (default: the "
                                            "current or latest run).")] = None,
    margin: Annotated[float, typer.Option("--margin", help="Promote only if the challenger's "
                                          "held-out macro F1 is higher by at least this.")
                      ] = 0.01,
    runs_dir: RunsDirOpt = Path("runs"),
    seed: Annotated[int, typer.Option("--seed", help="Seed of the train/val assignment of "
                                      "new images.")] = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only merge and report the data; "
                                          "no training, no promotion.")] = False,
    metadata: MetadataOpt = None,
    labels: LabelsOpt = None,
    group: GroupOpt = None,
    class_map: ClassMapOpt = None,
) -> None:
    """Train a challenger on old + new data and promote it only if it is better."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from skincli.monitor.retrain import retrain as run_retrain

    if not data.exists():
        raise SkinError(f"--data {data} does not exist",
                        hint="Pass a folder of class folders or a CSV with path and label columns")
    def progress(message: str) -> None:
        ui.console.print(message, highlight=False, soft_wrap=True)

    result = run_retrain(data, champion=run, runs_dir=runs_dir, margin=margin, seed=seed,
                         dry_run=dry_run, progress=progress,
                         metadata=metadata_args(metadata, labels, group, class_map))
    d = result.data
    ui.console.print(ui.table("New data", ["", "images"], [
        ["found", d["found"]], ["unreadable", d["unreadable"]],
        ["already in the data set (same bytes)", d["duplicate_existing"]],
        ["look like held-out test images (perceptual hash)", d["near_duplicate_test"]],
        ["another photograph of a test lesion (metadata)", d.get("same_lesion_test", 0)],
        ["duplicates within the new data", d["duplicate_new"]],
        ["class not known to the champion", d["unknown_class"]],
        ["added to train", d["added_train"]], ["added to val", d["added_val"]]]))
    if result.decision is None:
        ui.console.print(f"Dry run: merged split written to {result.split_path}; nothing trained.",
                         highlight=False)
        return
    ev = result.evaluation
    ui.console.print(ui.table(f"Held-out test ({ev['n']} images, the champion's test split)",
                              ["model", "run", "macro F1"], [
                                  ["champion", result.champion, ev["champion"]["macro_f1"]],
                                  ["challenger", result.challenger or "-",
                                   ev["challenger"]["macro_f1"]]]))
    colour = "green" if result.promoted else "yellow"
    ui.console.print(f"[{colour}]{'PROMOTED' if result.promoted else 'NOT PROMOTED'}[/]: "
                     f"{result.reason}", highlight=False, soft_wrap=True)
    ui.console.print(f"Log: {result.log_path}", highlight=False)
