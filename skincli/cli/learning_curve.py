"""`skin learning-curve [SPLIT]`: train on shares of the training split and say what more data
of each class would buy (skincli.learning_curve)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from skincli import ui
from skincli.cli.common import handle_errors

HELP = ("Train on nested, lesion-grouped shares of the training split (same val and test), fit "
        "per-class learning curves, backtest them and print how many more images of each class "
        "would reach the target, as a staged collection plan. Resumable.")


def _shares(text: str) -> list[float]:
    from skincli.errors import SkinError

    try:
        values = [float(s) / (100.0 if float(s) > 1 else 1.0)
                  for s in text.split(",") if s.strip()]
    except ValueError:
        raise SkinError(f"--shares {text!r} is not a list of numbers",
                        hint="e.g. --shares 0.2,0.35,0.5,0.7,1 (or 20,35,50,70,100)") from None
    return values


def _f(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _iv(iv: list[float] | None, digits: int = 2) -> str:
    return "" if not iv else f" ({iv[0]:.{digits}f}-{iv[1]:.{digits}f})"


def _title(analysis: dict[str, Any]) -> str:
    return (f"Learning curves (shares {', '.join(f'{s:.0%}' for s in analysis['shares'])}, "
            f"{analysis['seeds']} seed(s) each; intervals 80%; backtest: fitted on shares "
            "<= 50%, predicting 100%, 95% predictive interval)")


HEADERS = ["class", "images today", "F1 today", "asymptote", "exponent", "backtest",
           "images needed for target"]


def show(analysis: dict[str, Any], markdown: bool = False) -> None:
    """The per-class table, the backtest and the plan (as Markdown for docs with `markdown`)."""
    rows = []
    for c in analysis["classes"] + [analysis["macro"]]:
        fit, bt, need = c["fit"], c["backtest"], c["required"]
        bt_text = bt["status"] if "predicted" not in bt else (
            f"{bt['status']}: {bt['predicted']:.2f} vs {bt['truth']:.2f} "
            f"(error {bt['error']:+.2f}; 95% {bt['interval95'][0]:.2f}-"
            f"{bt['interval95'][1]:.2f})")
        rows.append((c["key"], f"{c['images_today']:,.0f}", _f(c["f1_today"]),
                     _f(fit["a"]) + _iv(fit["a_interval80"]),
                     _f(fit["c"]) + _iv(fit["c_interval80"]), bt_text,
                     f"{c['target']:.2f}: {need['text']}"))
    if markdown:  # plain print: no wrapping, no markup
        print(f"{_title(analysis)}\n")
        print("| " + " | ".join(HEADERS) + " |")
        print("|" + "---|" * len(HEADERS))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        print("\nCollection plan:\n")
        for line in analysis["plan"]:
            print(f"- {line}")
        return
    ui.console.print(ui.table(_title(analysis), HEADERS, rows))
    ui.console.print("[bold]Collection plan[/]", highlight=False)
    for line in analysis["plan"]:
        ui.console.print(f"  - {line}", highlight=False)


@handle_errors
def command(
    split: Annotated[Path, typer.Argument(
        help="Split CSV written by `skin split`.", dir_okay=False)] = Path("splits/split.csv"),
    out: Annotated[Path, typer.Option(
        "--out", help="Folder for the share splits, runs, results.json, analysis.json and the "
        "plot; re-running with the same folder continues where it stopped.",
        file_okay=False)] = Path("reports/learning-curve"),
    shares: Annotated[str, typer.Option(
        "--shares", help="Training shares, comma-separated.")] = "0.2,0.35,0.5,0.7,1",
    seeds: Annotated[int, typer.Option("--seeds", help="Seeds (subsets and trainings) per "
                                       "share.")] = 2,
    target: Annotated[float, typer.Option("--target", help="Per-class F1 target.")] = 0.75,
    macro_target: Annotated[float, typer.Option("--macro-target",
                                                help="Macro F1 target.")] = 0.85,
    preset: Annotated[str | None, typer.Option(
        "--preset", help="Training preset for every share (e.g. fast).")] = None,
    arch: Annotated[str | None, typer.Option("--arch", help="Architecture.")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Head epochs.")] = None,
    fine_tune_epochs: Annotated[int | None, typer.Option(
        "--fine-tune-epochs", help="Fine-tuning epochs.")] = None,
    input_size: Annotated[int | None, typer.Option("--input-size", help="Input side.")] = None,
    patience: Annotated[int | None, typer.Option("--patience", help="Early stopping.")] = None,
    weights: Annotated[str | None, typer.Option("--weights", help="imagenet, none or a "
                                                "file.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads.")] = None,
    from_results: Annotated[Path | None, typer.Option(
        "--from-results", help="Refit from a results.json without training.",
        dir_okay=False, exists=True)] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=20,
                                           help="Bootstrap refits per curve.")] = 200,
    markdown: Annotated[bool, typer.Option(
        "--markdown", help="With --from-results: print the table and the plan as Markdown "
        "(for docs) and write nothing.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Check the split and print each share's images and lesions per "
        "class; train nothing, write nothing.")] = False,
) -> None:
    """Measure and fit learning curves."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import json

    from skincli import learning_curve as lc
    from skincli.errors import SkinError

    lc.check_targets(target, macro_target)
    if markdown and from_results is None:
        raise SkinError("--markdown prints a finished measurement",
                        hint="Add --from-results FOLDER/results.json")
    if dry_run:
        plan = lc.share_counts(split, _shares(shares), seeds)
        rows = [(c, *[f"{plan['counts'][s][c]['images']} ({plan['counts'][s][c]['lesions']})"
                      for s in plan["shares"]]) for c in plan["classes"]]
        ui.console.print(ui.table(
            f"Training images (lesions) per share, seed 0; {plan['runs']} trainings, "
            f"{plan['full_equivalents']} x the full training set in all",
            ["class", *[f"{s:.0%}" for s in plan["shares"]]], rows))
        return
    if from_results is not None:
        try:
            results = json.loads(from_results.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SkinError(f"Cannot read {from_results}: {exc}") from exc
        folder = from_results.parent if out == Path("reports/learning-curve") else out
    else:
        overrides = {"preset": preset, "arch": arch, "epochs": epochs,
                     "fine_tune_epochs": fine_tune_epochs, "input_size": input_size,
                     "patience": patience, "weights": weights, "threads": threads}
        results = lc.measure(split, out, _shares(shares), seeds, overrides,
                             progress=lambda msg: ui.console.print(msg, highlight=False))
        folder = out
    analysis = lc.analyse(results, target, macro_target, n_boot=bootstrap)
    if markdown:
        show(analysis, markdown=True)
        return
    show(analysis)
    lc.write_analysis(analysis, folder)
    ui.console.print(f"Report: {folder}/ (results.json, analysis.json, learning_curve.png)",
                     highlight=False)
