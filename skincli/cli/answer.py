"""Printing the answer-or-defer section of `skin evaluate --defer-target` (skincli.defer)."""

from __future__ import annotations

from typing import Any

from skincli import ui


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f" ({ci[0]:.3f}-{ci[1]:.3f})"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def _pci(ci: list[float] | None) -> str:
    return "" if not ci else f" ({ci[0]:.0%}-{ci[1]:.0%})"


def show_operating_point(section: dict[str, Any], run_dir: str = "") -> None:
    """The operating point fitted on validation: printed before any test figure."""
    op = section["operating_point"]
    head = (f"Answer or defer, target {op['target']:.2f} (balanced accuracy and macro F1; every "
            f"class recall >= {op['recall_floor']:.2f} and coverage >= "
            f"{op['coverage_floor']:.0%}), fitted on {op['n_val']} validation images only")
    if not op["feasible"]:
        c = op.get("closest") or {}
        ui.console.print(f"[red]{head}: infeasible[/] - no per-class thresholds reach it on "
                         f"validation (closest: coverage {_pct(c.get('coverage'))}, balanced "
                         f"accuracy {_f(c.get('balanced_accuracy'))}, macro F1 "
                         f"{_f(c.get('macro_f1'))}). Nothing stored.", highlight=False)
        return
    v = op["validation"]
    rows = [(cls, "never" if op["thresholds"][cls] is None else f"{op['thresholds'][cls]:.3f}",
             _pct(r["coverage"]), r["n_accepted"], _f(r["recall"]))
            for cls, r in v["per_class"].items()]
    ui.console.print(ui.table(
        f"{head}: answers {v['coverage']:.0%} ({v['n_accepted']} images), balanced accuracy "
        f"{v['balanced_accuracy']:.3f}, macro F1 {v['macro_f1']:.3f}",
        ["class", "threshold (predicted class)", "val coverage", "val answered", "val recall"],
        rows))
    ui.console.print(f"Operating point stored in {run_dir}/run.json: predict, the API, FHIR, the "
                     "page and the card now say answered or deferred to a dermatologist.",
                     highlight=False)


def show_curves(section: dict[str, Any]) -> None:
    """The risk-coverage tables (compact; every per-class figure is in metrics.json)."""
    for name, curve in section["curves"].items():
        classes = curve["classes"]
        rows = []
        for r in curve["levels"]:
            recalls = [(pc["recall"], c) for pc, c in zip(r["per_class"], classes)
                       if pc["n_total"]]
            covers = [(pc["coverage"], c) for pc, c in zip(r["per_class"], classes)
                      if pc["n_total"]]
            lo_r, lo_c = min(recalls, key=lambda t: t[0] if t[0] is not None else -1), \
                min(covers)
            rows.append((f"{r['target_coverage']:.0%}", r["n_accepted"],
                         _f(r["balanced_accuracy"]) + _ci(r["balanced_accuracy_ci95"]),
                         _f(r["macro_f1"]) + _ci(r["macro_f1_ci95"]),
                         f"{_f(lo_r[0])} {lo_r[1]}" if lo_r[0] is not None else
                         f"{lo_r[1]}: none answered", f"{_pct(lo_c[0])} {lo_c[1]}"))
        ui.console.print(ui.table(
            f"Risk-coverage on {name} ({curve['n']} images, {curve['n_lesions']} lesions; "
            f"surest first by {curve['score_label']}; 95% CIs over lesions)",
            ["coverage", "answered", "balanced accuracy", "macro F1", "lowest recall",
             "lowest class coverage"], rows))
        a = curve["aurc"]
        arows = [(s["label"], _f(s["aurc"]), _f(s["e_aurc"]), _f(s["augrc"]))
                 for s in a["scores"].values()]
        arows.append(("oracle (errors last)", _f(a["oracle"]["aurc"]), "0.000",
                      _f(a["oracle"]["augrc"])))
        arows.append(("random", _f(a["random"]["aurc"]), _f(a["random"]["e_aurc"]),
                      _f(a["random"]["augrc"])))
        ui.console.print(ui.table(f"Selective risk on {name} (lower is better)",
                                  ["confidence score", "AURC", "E-AURC", "AUGRC"], arows))


def show_result(section: dict[str, Any]) -> None:
    """What the validation operating point reaches on the evaluated images."""
    res = section.get("result")
    if not res:
        return
    op = section["operating_point"]
    target = op["target"]
    gap = res["gap_vs_validation"]
    verdict = ("[green]met[/] (both 95% lower bounds clear the target)" if res["met"] else
               "[red]not met[/] (a 95% lower bound is below the target)")
    ui.console.print(
        f"On {section['subset']}: answered {res['coverage']:.0%} ({res['n_accepted']} images; "
        f"validation {op['validation']['coverage']:.0%}), balanced accuracy "
        f"{res['balanced_accuracy']:.3f}{_ci(res['balanced_accuracy_ci95'])}, macro F1 "
        f"{res['macro_f1']:.3f}{_ci(res['macro_f1_ci95'])}; gap to validation: coverage "
        f"{gap['coverage']:+.3f}, balanced accuracy {gap['balanced_accuracy']:+.3f}, macro F1 "
        f"{gap['macro_f1']:+.3f}. Target {target:.2f}: {verdict}.", highlight=False)
    rows = []
    for cls, r in res["per_class"].items():
        if not r["n_total"]:
            continue
        flag = "[red]< 10 answered[/]" if cls in res["few_accepted"] else ""
        held = "" if res["recall_floor_held"].get(cls) else "[red]below floor[/]"
        rows.append((cls, f"{r['n_accepted']}/{r['n_total']}",
                     _pct(r["coverage"]) + _pci(r["coverage_ci95"]),
                     _f(r["recall"]) + _ci(r["recall_ci95"]), " ".join(x for x in (held, flag)
                                                                      if x)))
    ui.console.print(ui.table(f"Per class on {section['subset']} at the operating point (95% "
                              "CIs over lesions)",
                              ["class", "answered", "coverage", "recall", ""], rows))
