"""The report folder of `skin evaluate`: metrics.json, CSV tables and the plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skincli.defer import plot_risk_coverage
from skincli.evaluate.plots import (
    plot_confusion,
    plot_frontier,
    plot_pr,
    plot_reliability,
    plot_roc,
)
from skincli.fsutil import atomic_dir, write_json, write_text


def public(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able part of a result (without the private arrays)."""
    if "runs" in result:
        return {**{k: v for k, v in result.items() if k != "runs"},
                "runs": [public(r) for r in result["runs"]]}
    return {k: v for k, v in result.items() if not k.startswith("_")}


def default_out(result: dict[str, Any], reports_dir: str | Path = "reports/evaluate") -> Path:
    """reports/evaluate/<run> or reports/evaluate/<runA>_vs_<runB>."""
    if "runs" in result:
        return Path(reports_dir) / f"{result['comparison']['a']}_vs_{result['comparison']['b']}"
    return Path(reports_dir) / result["run"]["name"]


def write_report(result: dict[str, Any], out: str | Path) -> Path:
    """Write the report folder atomically: metrics.json, CSVs and PNG plots."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        if "runs" in result:
            for res in result["runs"]:
                _write_single(res, tmp / res["run"]["name"])
        else:
            _write_single(result, tmp)
        write_json(tmp / "metrics.json", public(result))
    return out


def _write_single(result: dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    m = result["metrics"]
    classes = m["classes"]
    y, probs = result["_arrays"]["y"], result["_arrays"]["probs"]
    cm = np.asarray(m["confusion_matrix"])
    cm_df = pd.DataFrame(cm, index=pd.Index(classes, name="true \\ predicted"), columns=classes)
    write_text(folder / "confusion_matrix.csv", cm_df.to_csv())
    write_text(folder / "per_class.csv", pd.DataFrame(m["per_class"]).to_csv(index=False))
    pred = probs.argmax(axis=1)
    rows = pd.DataFrame({"file": result["_arrays"]["filepaths"],
                         "label": [classes[i] for i in y],
                         "predicted": [classes[i] for i in pred],
                         "probability": probs.max(axis=1).round(6),
                         "correct": pred == y})
    for i, c in enumerate(classes):
        rows[f"p_{c}"] = probs[:, i].round(6)
    write_text(folder / "predictions.csv", rows.to_csv(index=False))
    if result.get("subgroups"):
        write_text(folder / "subgroups.csv", _subgroup_table(result["subgroups"]).to_csv(
            index=False))
    title = f"{result['run']['name']} on {result['data']['subset']} ({m['n']} images)"
    plot_confusion(cm, classes, folder / "confusion_matrix.png", title)
    plot_roc(y, probs, classes, folder / "roc.png", title)
    plot_pr(y, probs, classes, folder / "pr.png", title)
    cal = result.get("calibration")
    before = (cal["eval_reliability_before"], cal["eval_ece_before"],
              cal["temperature_before"]) if cal else None
    plot_reliability(m["reliability"], m["ece"], result["run"]["temperature"],
                     folder / "reliability.png", title, before=before)
    if result.get("defer"):
        plot_risk_coverage(result["defer"], folder / "risk_coverage.png", title)
    if result.get("decisions", {}).get("frontier"):
        plot_frontier(result["decisions"], folder / "decision_frontier.png", title)


def _subgroup_table(sub: dict[str, Any]) -> Any:
    """One row per subgroup and class: n, macro F1 with CI, recall with CI, the flag."""
    rows = []
    for attr, items in sub["attributes"].items():
        for r in items:
            base = {"attribute": attr, "value": r["value"], "n": r["n"],
                    "macro_f1": r.get("macro_f1"),
                    "macro_f1_ci_low": (r.get("ci95") or [None, None])[0],
                    "macro_f1_ci_high": (r.get("ci95") or [None, None])[1],
                    "below_overall": r.get("below_overall", False)}
            for cls, rec in (r.get("per_class_recall") or {"": None}).items():
                ci = (rec or {}).get("ci95") or [None, None]
                rows.append({**base, "class": cls, "class_n": (rec or {}).get("n"),
                             "recall": (rec or {}).get("recall"), "recall_ci_low": ci[0],
                             "recall_ci_high": ci[1]})
    return pd.DataFrame(rows)
