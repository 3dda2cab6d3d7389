"""`skin card [RUN]`: write MODEL_CARD.md and model_card.json into the run folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from skincli import ui
from skincli.cli.common import handle_errors

HELP = ("Write the run's model card (MODEL_CARD.md + model_card.json, in the run folder): "
        "intended use, training data, evaluation with CIs, the triage operating point "
        "(fitted on the validation split first if the run has none), limitations, coding.")


def show_triage(result: dict[str, Any]) -> None:
    """`skin evaluate`'s triage lines: sensitivity and specificity at the stored threshold."""
    tri = result.get("triage")
    if not tri:
        return
    if not tri.get("available"):
        ui.console.print(f"Triage: no operating point ({tri.get('reason', 'not fitted')}).",
                         highlight=False)
        return
    rec = tri["record"]

    def pct(v: float | None, ci: list[float] | None) -> str:
        if v is None:
            return "n/a"
        return f"{v:.1%}" + (f" (95% CI {ci[0]:.1%} to {ci[1]:.1%})" if ci else "")

    ui.console.print(
        f"Triage (refer when malignancy score >= {tri['threshold']:.3f}, fitted on validation "
        f"for {rec['target_sensitivity']:.0%} sensitivity; malignant: "
        f"{', '.join(rec['malignant'])}): on {tri['n']} {tri['subset']} images, sensitivity "
        f"{pct(tri['sensitivity'], tri['sensitivity_ci95'])}, specificity "
        f"{pct(tri['specificity'], tri['specificity_ci95'])}, referral rate "
        f"{tri['referral_rate']:.0%}.", highlight=False)
    if tri.get("target_check"):
        words = {"held": "holds (one-sided 95% lower bound {lo:.1%} >= target)",
                 "point only": "met by the point estimate only (lower bound {lo:.1%})",
                 "missed": "missed (lower bound {lo:.1%})"}[tri["target_check"]]
        fit = "lower confidence bound" if rec.get("fit") == "lower-bound" else "point estimate"
        ui.console.print(f"  Target sensitivity {rec['target_sensitivity']:.0%} on these "
                         f"images: {words.format(lo=tri['sensitivity_lower95'] or 0.0)}; "
                         f"threshold fitted on the validation {fit}.", highlight=False)


@handle_errors
def command(
    run: Annotated[str | None, typer.Argument(
        help="Run folder or name under --runs-dir (default: the current/latest run).",
        show_default=False)] = None,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where runs live.",
                                           file_okay=False)] = Path("runs"),
) -> None:
    """Write a run's model card."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from skincli.clinical import card
    from skincli.clinical.triage import record_of
    from skincli.fsutil import check_writable
    from skincli.runs import load_run_info, resolve_run

    run_dir = resolve_run(run, runs_dir)
    info = load_run_info(run_dir)
    check_writable(run_dir / card.CARD_MD, "RUN")
    if record_of(info) is None:  # trained before triage existed: fit it now, once
        from skincli.evaluate import ensure_triage, load_predictor

        predictor = load_predictor(run_dir, runs_dir)
        rec = ensure_triage(predictor)
        info = predictor.info
        if rec and rec.get("threshold") is not None:
            ui.console.print(f"Triage threshold {rec['threshold']:.3f} fitted on the validation "
                             f"split and stored in {run_dir}/run.json", highlight=False)
        else:
            ui.warn(f"no triage operating point: {(rec or {}).get('reason', 'unknown')}")
    md, js = card.write(run_dir, info)
    ui.console.print(f"Wrote {md} and {js}", highlight=False)
