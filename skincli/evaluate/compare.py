"""Two runs on the same images: the paired comparison and its verdict; the warnings of a
result."""

from __future__ import annotations

from typing import Any

import numpy as np

from skincli.metrics import paired_comparison

# Metrics compared between runs and between with/without TTA.
HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "cohen_kappa",
            "macro_auc", "ece")


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The HEADLINE metrics of a classification summary."""
    return {k: summary.get(k) for k in HEADLINE}


def compare_results(a: dict[str, Any], b: dict[str, Any], n_boot: int, seed: int) -> dict[str, Any]:
    """Paired comparison of two results on the same images (B - A)."""
    ya, yb = a["_arrays"]["y"], b["_arrays"]["y"]
    fa, fb = a["_arrays"]["filepaths"], b["_arrays"]["filepaths"]
    classes_a = a["run"]["classes"]
    # The same readable files in the same order (both read the same list), mapped to A's order.
    if fa != fb:
        common = sorted(set(fa) & set(fb))
        ia = [fa.index(f) for f in common]
        ib = [fb.index(f) for f in common]
    else:
        ia = ib = list(range(len(fa)))
    to_a = np.array([classes_a.index(c) for c in b["run"]["classes"]])
    y = ya[ia]
    pred_a = a["_arrays"]["probs"][ia].argmax(axis=1)
    pred_b = to_a[b["_arrays"]["probs"][ib].argmax(axis=1)]
    assert (to_a[yb[ib]] == y).all()
    test = paired_comparison(y, pred_a, pred_b, len(classes_a), n_boot=n_boot, seed=seed)
    name_a, name_b = a["run"]["name"], b["run"]["name"]
    lo, hi = test["macro_f1_diff_ci"]
    diff = test["macro_f1_diff"]
    if n_boot == 0:
        verdict = "No bootstrap was run (--bootstrap 0), so there is no verdict on macro F1."
    elif test["significant"]:
        better = name_b if diff > 0 else name_a
        verdict = (f"{better} is better: macro F1 difference {diff:+.3f} "
                   f"(95% CI {lo:+.3f} to {hi:+.3f} excludes 0).")
    else:
        verdict = (f"No real difference shown: macro F1 difference {diff:+.3f} "
                   f"(95% CI {lo:+.3f} to {hi:+.3f} includes 0).")
    mc = test["mcnemar"]
    verdict += (f" McNemar (accuracy): {name_a} alone right on {mc['only_a_correct']}, "
                f"{name_b} alone right on {mc['only_b_correct']}, p = {mc['p_value']:.3g}.")
    return {"a": name_a, "b": name_b, "n_images": int(len(y)), **test, "verdict": verdict,
            "headline": {name_a: headline(a["metrics"]), name_b: headline(b["metrics"])}}


def result_warnings(result: dict[str, Any]) -> list[str]:
    out = []
    n_skip = result["data"]["n_skipped"]
    if n_skip:
        out.append(f"{result['run']['name']}: {n_skip} unreadable image(s) were skipped "
                   "(listed in metrics.json)")
    for f in result.get("subgroups", {}).get("flagged", []):
        out.append(f"{result['run']['name']}: subgroup {f['attribute']}={f['value']} "
                   f"({f['n']} images) has macro F1 {f['macro_f1']:.3f} (95% CI "
                   f"{f['ci95'][0]:.3f}–{f['ci95'][1]:.3f}), wholly below the overall "
                   f"{result['subgroups']['overall_macro_f1']:.3f}")
    absent = result["metrics"]["auc_skipped_classes"]
    if absent:
        out.append(f"{result['run']['name']}: ROC AUC skipped for class(es) absent from the "
                   f"data: {', '.join(absent)}")
    return out
