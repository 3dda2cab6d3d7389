"""Answer-or-defer and triage fits over several trained runs (e.g. the 5 lesion-grouped splits).

    python benchmarks/defer_triage.py /work/bench/acc/runs/default-seed{0,1,2,3,4} \
        --target 0.85 --also-target 0.80 0.75 --out benchmarks/measured/isic9-defer-triage.json
    python benchmarks/defer_triage.py --report benchmarks/measured/isic9-defer-triage.json

For each run, on its own split (nothing in the run folder is changed):

- the answer-or-defer operating point fitted on validation only (skincli.defer) and what it
  reaches on test: coverage, balanced accuracy, macro F1 with lesion-bootstrap 95% CIs, "met"
  on the lower bounds, per-class coverage and recall;
- the triage referral threshold fitted on validation both ways (point estimate, and the
  one-sided 95% Clopper-Pearson lower bound) and, for each, test sensitivity, specificity and
  referral rate, with the validation referral rate it costs.

The report prints one table per question (mean over runs, and pooled triage counts).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def _arrays(predictor: Any, subset: str) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    from skincli.evaluate import lesion_groups, load_eval_set, score

    eval_set = load_eval_set(predictor.run_dir, predictor.classes, subset=subset)
    scored = score(predictor, eval_set)
    probs = scored.probs(float(predictor.info.temperature or 1.0), False)
    return probs, scored.y, lesion_groups(eval_set, scored.filepaths)


def run_arrays(run_dir: Path) -> tuple[list[str], tuple[Any, ...], tuple[Any, ...]]:
    """A run's classes and its validation and test outputs (the slow part: read once)."""
    from skincli.predictor import Predictor

    predictor = Predictor.from_run(run_dir)
    return list(predictor.classes), _arrays(predictor, "val"), _arrays(predictor, "test")


def measure_run(run_dir: Path, target: float, sensitivity: float, n_boot: int,
                arrays: tuple[list[str], tuple[Any, ...], tuple[Any, ...]] | None = None
                ) -> dict[str, Any]:
    """Both questions for one run (`arrays` from run_arrays, to score several targets)."""
    from skincli.clinical import triage
    from skincli.defer import evaluation_section

    classes, val, test = arrays or run_arrays(run_dir)
    section = evaluation_section(val, test, classes, target, "test", n_boot=n_boot)
    op = section["operating_point"]
    out: dict[str, Any] = {"run": str(run_dir), "classes": classes, "target": target,
                           "feasible": op["feasible"]}
    if op["feasible"]:
        res = section["result"]
        out["validation"] = {k: op["validation"][k] for k in
                             ("coverage", "balanced_accuracy", "macro_f1")}
        out["test"] = {k: res[k] for k in (
            "coverage", "n_accepted", "balanced_accuracy", "balanced_accuracy_ci95",
            "macro_f1", "macro_f1_ci95", "met", "few_accepted")}
        out["per_class"] = {c: {k: r[k] for k in ("coverage", "recall", "n_accepted",
                                                  "n_total")}
                            for c, r in res["per_class"].items()}
        out["thresholds"] = op["thresholds"]
    else:
        out["closest"] = op["closest"]
    out["aurc_test"] = section["curves"]["test"]["aurc"]
    fits = {}
    for method in ("point", "lower-bound"):
        try:
            rec = triage.fit(val[0], val[1], classes, sensitivity, method=method)
        except Exception as exc:  # e.g. too few malignant validation images for the bound
            fits[method] = {"error": str(exc)}
            continue
        if rec.get("threshold") is None:
            fits[method] = {"error": rec.get("reason", "not fitted")}
            continue
        names = rec["malignant"]
        s = triage.scores(test[0], classes, names)
        positive = np.isin(test[1], [classes.index(c) for c in names])
        fits[method] = {"threshold": rec["threshold"],
                        "validation": rec["validation"],
                        "test": triage.operating_point(s, positive, rec["threshold"])}
    out["triage"] = fits
    return out


def _mean_sd(values: list[float]) -> str:
    v = np.array([x for x in values if x is not None], dtype=float)
    if not v.size:
        return "-"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if v.size > 1 else f"{v.mean():.3f}"


def report(data: dict[str, Any], markdown: bool = False) -> str:
    """Tables over the runs."""
    runs = data["runs"]
    lines = []
    sep = " | "

    def row(cells: list[str]) -> str:
        return ("| " + sep.join(cells) + " |") if markdown else "  ".join(cells)

    feasible = [r for r in runs if r["feasible"]]
    lines.append(f"Answer or defer at {data['target']:.2f}: feasible on validation for "
                 f"{len(feasible)} of {len(runs)} runs; met on test (95% lower bounds) for "
                 f"{sum(r['test']['met'] for r in feasible)}.")
    lines.append(row(["run", "val coverage", "test coverage", "test balanced acc. (95% CI)",
                      "test macro F1 (95% CI)", "met", "classes < 10 answered"]))
    if markdown:
        lines.append("|---" * 7 + "|")
    for r in runs:
        name = Path(r["run"]).name
        if not r["feasible"]:
            c = r["closest"]
            lines.append(row([name, "infeasible", f"(closest: coverage {c['coverage']:.0%}, "
                              f"BA {c['balanced_accuracy']:.3f}, F1 {c['macro_f1']:.3f})",
                              "", "", "", ""]))
            continue
        t = r["test"]
        lines.append(row([name, f"{r['validation']['coverage']:.0%}", f"{t['coverage']:.0%}",
                          f"{t['balanced_accuracy']:.3f} ({t['balanced_accuracy_ci95'][0]:.3f}"
                          f"-{t['balanced_accuracy_ci95'][1]:.3f})",
                          f"{t['macro_f1']:.3f} ({t['macro_f1_ci95'][0]:.3f}-"
                          f"{t['macro_f1_ci95'][1]:.3f})", "yes" if t["met"] else "no",
                          ", ".join(t["few_accepted"]) or "-"]))
    if feasible:
        lines.append("")
        lines.append(row(["class", "test coverage (mean ± sd)", "test recall (mean ± sd)"]))
        if markdown:
            lines.append("|---" * 3 + "|")
        for c in feasible[0]["classes"]:
            cov = [r["per_class"][c]["coverage"] for r in feasible if c in r["per_class"]]
            rec = [r["per_class"][c]["recall"] for r in feasible if c in r["per_class"]]
            lines.append(row([c, _mean_sd(cov), _mean_sd(rec)]))
    lines.append("")
    lines.append(f"Triage at {data['sensitivity']:.0%} sensitivity, fitted on validation:")
    lines.append(row(["fit", "val referral rate", "test sensitivity (mean ± sd)",
                      "test specificity (mean ± sd)", "test referral rate", "pooled test "
                      "sensitivity", "splits with test sensitivity >= target"]))
    if markdown:
        lines.append("|---" * 7 + "|")
    from skincli.clinical.triage import clopper_pearson_lower, wilson

    for method in ("point", "lower-bound"):
        ok = [r["triage"][method] for r in runs if "test" in r["triage"].get(method, {})]
        if not ok:
            errs = {r["triage"].get(method, {}).get("error") for r in runs}
            lines.append(row([method, "; ".join(e for e in errs if e) or "-", "", "", "", "",
                              ""]))
            continue
        tp = sum(f["test"]["tp"] for f in ok)
        pos = sum(f["test"]["positives"] for f in ok)
        ci = wilson(tp, pos)
        low = clopper_pearson_lower(tp, pos)
        lines.append(row([
            method, _mean_sd([f["validation"]["referral_rate"] for f in ok]),
            _mean_sd([f["test"]["sensitivity"] for f in ok]),
            _mean_sd([f["test"]["specificity"] for f in ok]),
            _mean_sd([f["test"]["referral_rate"] for f in ok]),
            f"{tp}/{pos} = {tp / pos:.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f}; one-sided lower "
            f"{low:.3f})" if pos and ci and low is not None else "-",
            f"{sum((f['test']['sensitivity'] or 0) >= data['sensitivity'] for f in ok)}"
            f"/{len(ok)}"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--target", type=float, default=0.85)
    parser.add_argument("--also-target", type=float, nargs="*", default=[], metavar="T",
                        help="more targets on the same outputs, each saved beside --out as "
                        "NAME-T.json")
    parser.add_argument("--sensitivity", type=float, default=0.95)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/defer-triage.json"))
    parser.add_argument("--report", type=Path, default=None, metavar="JSON")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    from skincli.errors import SkinError
    from skincli.fsutil import write_json

    if args.report is not None:
        print(report(json.loads(args.report.read_text(encoding="utf-8")), args.markdown))
        return 0
    if not args.runs:
        parser.error("pass run folders, or --report JSON")
    targets = [args.target, *args.also_target]
    outs = [args.out] + [args.out.with_name(f"{args.out.stem}-{t:.2f}{args.out.suffix}")
                         for t in args.also_target]
    datas: list[dict[str, Any]] = [{"target": t, "sensitivity": args.sensitivity,
                                    "n_boot": args.bootstrap, "runs": []} for t in targets]
    try:
        for run in args.runs:
            print(f"{run} ...", file=sys.stderr)
            arrays = run_arrays(run)
            for t, data, out in zip(targets, datas, outs):
                data["runs"].append(measure_run(run, t, args.sensitivity, args.bootstrap,
                                                arrays))
                write_json(out, data)
    except SkinError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for data in datas:
        print(report(data, args.markdown))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
