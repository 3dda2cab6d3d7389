"""`skin evaluate [RUN ...]`: honest metrics with confidence intervals, calibration, comparison."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from skincli import ui
from skincli.cli.answer import show_curves, show_operating_point, show_result
from skincli.cli.card import show_triage
from skincli.cli.common import (
    ClassMapOpt,
    GroupOpt,
    LabelsOpt,
    MetadataOpt,
    handle_errors,
    metadata_args,
)

HELP = ("Evaluate a trained run (default: the current/latest) on its test split or any labelled "
        "folder/CSV: metrics with 95% bootstrap intervals, per-class table, weak classes, "
        "plots; --calibrate fits the temperature; two runs are compared with a paired test.")


LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy",
          "macro_f1": "macro F1", "weighted_f1": "weighted F1", "cohen_kappa": "Cohen's kappa",
          "macro_auc": "macro ROC AUC", "ece": "ECE (lower is better)"}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ci(ci: list[float] | None) -> str:
    return "-" if not ci else f"{ci[0]:.3f} to {ci[1]:.3f}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def _show_single(result: dict[str, Any]) -> None:
    run, data, m = result["run"], result["data"], result["metrics"]
    ui.console.print(f"[bold]{run['name']}[/] ({run['arch']}, model {run['version']}) on "
                     f"{data['description']}: {data['n_evaluated']} images"
                     + (" with TTA (8 flips/rotations)" if result["tta"] else ""),
                     highlight=False)
    ci = m["ci95"]
    rows = [
        ("accuracy", _fmt(m["accuracy"]), _ci(ci.get("accuracy"))),
        ("balanced accuracy", _fmt(m["balanced_accuracy"]), _ci(ci.get("balanced_accuracy"))),
        ("macro F1", _fmt(m["macro_f1"]), _ci(ci.get("macro_f1"))),
        ("weighted F1", _fmt(m["weighted_f1"]), ""),
        ("Cohen's kappa", _fmt(m["cohen_kappa"]), ""),
        ("macro ROC AUC (one-vs-rest)", _fmt(m["macro_auc"]), ""),
        ("expected calibration error", _fmt(m["ece"]), ""),
        ("log loss (NLL)", _fmt(m["nll"]), ""),
    ]
    title = "Overall" + (f" (95% CI: {m['n_boot']} bootstrap resamples)" if m["n_boot"] else "")
    ui.console.print(ui.table(title, ["metric", "value", "95% CI"], rows))
    pc_rows = [(("[red]! [/]" if r["weak"] else "") + r["class"], _fmt(r["precision"]),
                _fmt(r["recall"]), _fmt(r["f1"]), _fmt(r["auc"]), r["support"])
               for r in m["per_class"]]
    ui.console.print(ui.table("Per class", ["class", "precision", "recall", "F1", "AUC",
                                            "support"], pc_rows))
    if m["weak_classes"]:
        ui.console.print(f"[red]Weak classes[/] ({m['weak_rule']}): "
                         f"{', '.join(m['weak_classes'])}", highlight=False)
    else:
        ui.console.print(f"No weak classes ({m['weak_rule']}).", highlight=False)
    cal = result.get("calibration")
    if cal:
        ui.console.print(ui.table(
            f"Calibration (temperature fitted on {cal['n_val']} validation images)",
            ["", "before", "after"],
            [("temperature", _fmt(cal["temperature_before"]), _fmt(cal["temperature"])),
             ("validation NLL", _fmt(cal["val_nll_before"]), _fmt(cal["val_nll_after"])),
             ("validation ECE", _fmt(cal["val_ece_before"]), _fmt(cal["val_ece_after"])),
             (f"{data['subset']} ECE", _fmt(cal["eval_ece_before"]),
              _fmt(cal["eval_ece_after"]))]))
        rule = cal["uncertain"]
        ui.console.print(f"Uncertain threshold {rule['threshold']:.3f} ({rule['rule']}; "
                         f"{rule['uncertain_share']:.0%} of validation images) stored in "
                         f"{run['run_dir']}/run.json"
                         + ("; out-of-distribution reference added" if cal["reference_added"]
                            else ""), highlight=False)
    tta = result.get("tta_comparison")
    if tta:
        ui.console.print(ui.table("Test-time augmentation (gain = with - without)",
                                  ["metric", "without", "with", "gain"],
                                  [(LABELS.get(k, k), _fmt(tta["without"][k]),
                                    _fmt(tta["with"][k]), _signed(tta["gain"][k]))
                                   for k in tta["gain"]]))
    if result.get("subgroups"):
        _show_subgroups(result["subgroups"])
    show_triage(result)
    if result.get("decisions"):
        _show_decisions(result["decisions"])
    unc = result["uncertain"]
    if unc["threshold"] is not None:
        ui.console.print(f"Uncertain verdicts (top probability < {unc['threshold']:.3f}): "
                         f"{unc['share']:.0%} of images; accuracy {_fmt(unc['accuracy_uncertain'])}"
                         f" when uncertain vs {_fmt(unc['accuracy_confident'])} otherwise.",
                         highlight=False)


def _show_subgroups(sub: dict[str, Any]) -> None:
    """Macro F1 and per-class recall per sex, age band and site (from the metadata)."""
    rows = []
    for attr, items in sub["attributes"].items():
        for r in items:
            if "macro_f1" not in r:
                rows.append((attr, r["value"], r["n"], "-", "-", r.get("note", "")))
                continue
            worst = min(r["per_class_recall"].items(), key=lambda kv: kv[1]["recall"])
            flag = "[red]below overall[/]" if r["below_overall"] else ""
            rows.append((attr, r["value"], r["n"], _fmt(r["macro_f1"]), _ci(r["ci95"]),
                         f"{worst[0]} {worst[1]['recall']:.2f} (n={worst[1]['n']}) {flag}"))
    ui.console.print(ui.table(
        f"Subgroups (overall macro F1 {sub['overall_macro_f1']:.3f}; 95% CIs from "
        f"{sub['n_boot']} resamples; per-class recall in metrics.json)",
        ["attribute", "value", "images", "macro F1", "95% CI", "lowest recall"], rows))


def _show_decisions(dec: dict[str, Any]) -> None:
    """Each decision rule on the same images, side by side (value and 95% CI)."""
    rules = dec["rules"]
    if len(rules) < 2 and not dec.get("notes"):
        return

    def cell(value: float | None, ci: list[float] | None) -> str:
        return _fmt(value) + (f" ({_ci(ci)})" if ci else "")

    rows = [(label, *[cell(r[key], r["ci95"].get(key)) for r in rules])
            for key, label in (("accuracy", "accuracy"),
                               ("balanced_accuracy", "balanced accuracy"),
                               ("macro_f1", "macro F1"))]
    for c in rules[0]["per_class_recall"]:
        rows.append((f"recall {c}", *[cell(r["per_class_recall"][c]["recall"],
                                           r["per_class_recall"][c]["ci95"]) for r in rules]))
    rows.append(("uncertain share", *[
        "-" if r["uncertain_share"] is None else
        f"{r['uncertain_share']:.0%} (< {r['uncertain_threshold']:.3f})" for r in rules]))
    ui.console.print(ui.table(
        f"Decision rules on the same {dec['n']} images (95% CI; see docs/decisions.md)",
        ["metric", *[r["rule"] for r in rules]], rows))
    for note in dec.get("notes", []):
        ui.console.print(f"  {note}", highlight=False)


def _show_comparison(result: dict[str, Any]) -> None:
    cmp_ = result["comparison"]
    a, b = result["runs"]
    ma, mb = a["metrics"], b["metrics"]
    ui.console.print(f"Comparing [bold]{cmp_['a']}[/] and [bold]{cmp_['b']}[/] on the same "
                     f"{cmp_['n_images']} images ({a['data']['description']})", highlight=False)
    rows = []
    for key, label in LABELS.items():
        va, vb = ma[key], mb[key]
        ci_a, ci_b = ma["ci95"].get(key), mb["ci95"].get(key)
        rows.append((label, _fmt(va) + (f" ({_ci(ci_a)})" if ci_a else ""),
                     _fmt(vb) + (f" ({_ci(ci_b)})" if ci_b else ""),
                     _signed(vb - va) if va is not None and vb is not None else "-"))
    ui.console.print(ui.table("Side by side (95% CI)", ["metric", cmp_["a"], cmp_["b"],
                                                         "difference"], rows))
    f1_rows = [(ra["class"], _fmt(ra["f1"]), _fmt(rb["f1"]),
                _signed(rb["f1"] - ra["f1"]) if ra["f1"] is not None and rb["f1"] is not None
                else "-")
               for ra, rb in zip(ma["per_class"], _by_class(mb["per_class"], ma["classes"]))]
    ui.console.print(ui.table("Per-class F1", ["class", cmp_["a"], cmp_["b"], "difference"],
                              f1_rows))
    for res in result["runs"]:
        if res["metrics"]["weak_classes"]:
            ui.console.print(f"[red]Weak classes[/] of {res['run']['name']}: "
                             f"{', '.join(res['metrics']['weak_classes'])}", highlight=False)
    colour = "green" if cmp_["significant"] else "yellow"
    ui.console.print(f"[{colour}]Verdict:[/] {cmp_['verdict']}", highlight=False)


def _by_class(rows: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    index = {r["class"]: r for r in rows}
    return [index[c] for c in order]


@handle_errors
def command(
    runs: Annotated[list[str] | None, typer.Argument(
        help="Run folder(s) or name(s) under --runs-dir; default: the current/latest run. "
        "Two runs are compared on the same images.", show_default=False)] = None,
    data: Annotated[Path | None, typer.Option(
        "--data", help="Evaluate on any labelled folder (class folders) or CSV instead of the "
        "split.")] = None,
    split: Annotated[Path | None, typer.Option(
        "--split", help="Split file to take --subset from (default: the run's own copy, else "
        "splits/split.csv).", dir_okay=False)] = None,
    subset: Annotated[str, typer.Option(
        "--subset", help="Which part: test, val or all.")] = "test",
    calibrate: Annotated[bool, typer.Option(
        "--calibrate", help="Fit temperature scaling and the uncertain threshold on the run's "
        "validation split and store them in run.json (with the out-of-distribution reference "
        "for predict's warning, if run.json has none).")] = False,
    tta: Annotated[bool, typer.Option(
        "--tta", help="Also evaluate with test-time augmentation (8 flips/rotations) and "
        "report the gain.")] = False,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Report folder (default: reports/evaluate/<run> or "
        "reports/evaluate/<a>_vs_<b>).", file_okay=False)] = None,
    bootstrap: Annotated[int, typer.Option(
        "--bootstrap", help="Bootstrap resamples for the 95% intervals and the paired test "
        "(0 = none).")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1,
                                            help="Images per forward pass.")] = 32,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where runs live.",
                                           file_okay=False)] = Path("runs"),
    metadata: MetadataOpt = None,
    labels: LabelsOpt = None,
    group: GroupOpt = None,
    class_map: ClassMapOpt = None,
    triage_sensitivity: Annotated[float | None, typer.Option(
        "--triage-sensitivity", min=0.01, max=0.999, help="Refit the referral threshold on "
        "the validation split for this sensitivity (stored in run.json; default: keep the "
        "stored one, fitted for 0.95).")] = None,
    triage_malignant: Annotated[str | None, typer.Option(
        "--triage-malignant", help="Comma-separated classes summed into the malignancy "
        "score when refitting (default: melanoma, basal cell carcinoma, squamous cell "
        "carcinoma).")] = None,
    triage_fit: Annotated[str | None, typer.Option(
        "--triage-fit", help="Refit the referral threshold on the validation split: point "
        "(the estimate reaches the sensitivity) or lower-bound (its one-sided 95% "
        "Clopper-Pearson lower bound does; refers more).")] = None,
    defer_target: Annotated[float | None, typer.Option(
        "--defer-target", help="Answer or defer: print the risk-coverage curves and fit, on "
        "validation only, per-class thresholds at which the answered images reach this "
        "balanced accuracy and macro F1 (every class recall >= 0.75, coverage >= 20%); "
        "stored in run.json, or 'infeasible'.")] = None,
    engine: Annotated[str | None, typer.Option(
        "--engine", help="Inference engine: litert or tf (default: $SKIN_ENGINE, else "
        "litert; runs that do not convert use tf).")] = None,
) -> None:
    """Evaluate (or compare) trained runs."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from skincli import DISCLAIMER
    from skincli.evaluate import default_out, evaluate, write_report
    from skincli.fsutil import check_writable

    if out is not None:
        check_writable(out)  # before the images are read, not after
    if triage_sensitivity is not None or triage_malignant is not None or triage_fit:
        from skincli.evaluate import load_predictor, refit_triage

        for name in runs or [None]:
            refit_triage(load_predictor(name, runs_dir), triage_sensitivity, triage_malignant,
                         method=triage_fit)
    # Off the terminal a transient bar shows nothing but leaves a blank line in logs.
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=ui.err_console, transient=True,
                  disable=not ui.err_console.is_terminal) as bar:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(f"{stage} images", total=total)
            bar.update(tasks[stage], completed=done, total=total)

        result = evaluate(runs, runs_dir=runs_dir, data=data, split=split, subset=subset,
                          calibrate=calibrate, tta=tta, n_boot=bootstrap, seed=seed,
                          batch_size=batch_size, progress=progress,
                          metadata=metadata_args(metadata, labels, group, class_map),
                          engine=engine, defer_target=defer_target)
    for w in result["warnings"]:
        ui.warn(w)
    singles = result.get("runs", [result])
    for res in singles:  # the validation operating point comes before any test figure
        if res.get("defer"):
            show_operating_point(res["defer"], res["run"]["run_dir"])
    if "runs" in result:
        _show_comparison(result)
    else:
        _show_single(result)
    for res in singles:
        if res.get("defer"):
            show_curves(res["defer"])
            show_result(res["defer"])
    folder = write_report(result, out or default_out(result))
    stored = [r["run"]["name"] for r in result.get("runs", [result]) if r["stored_test_metrics"]]
    if stored:
        ui.console.print(f"Test metrics stored in run.json of {', '.join(stored)}.",
                         highlight=False)
    ui.console.print(f"Report: {folder}/ (metrics.json, confusion matrix, ROC, PR, "
                     "reliability and decision-frontier plots)", highlight=False)
    ui.console.print(f"[dim]{DISCLAIMER}[/]", highlight=False)
