"""How a model performs for whom: macro F1 and per-class recall per sex, age band, site and
data source.

The subgroup values come from image metadata (skincli.data.metadata) and, for pooled data,
the source each image came from (skincli.data.sources), carried in the split file. Each
figure has a bootstrap 95% interval; a subgroup whose macro-F1 interval lies wholly below the
overall macro F1 is flagged. Macro F1 is averaged over the classes present in the
subgroup's labels (a subgroup with no dermatofibroma cannot be scored on it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from skincli.metrics import (
    batched_confusion,
    confusion_matrix,
    macro_f1_from_cm,
    per_class_from_cm,
)

ATTRIBUTES = ("sex", "age_band", "site", "source")
# Fewer images than this make a subgroup's interval too wide to say anything.
MIN_IMAGES = 10
AGE_BANDS = ((0, 30, "<30"), (30, 45, "30-44"), (45, 60, "45-59"), (60, 75, "60-74"),
             (75, 200, "75+"))


def age_band(age: str | float | None) -> str:
    """'55' -> '45-59'; '' or unparsable -> ''."""
    try:
        a = float(age)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""
    if not np.isfinite(a):
        return ""
    return next((name for lo, hi, name in AGE_BANDS if lo <= a < hi), "")


def _ci(values: np.ndarray) -> list[float] | None:
    return [float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))] \
        if values.size else None


def subgroup_metrics(y: np.ndarray, pred: np.ndarray, classes: Sequence[str],
                     groups: dict[str, Sequence[str]], n_boot: int = 1000, seed: int = 0,
                     min_images: int = MIN_IMAGES) -> dict[str, Any]:
    """Per attribute and value: n, macro F1 and per-class recall with bootstrap CIs.

    `groups` maps an attribute to one value per image ("" = unknown, left out). Returns
    {"overall_macro_f1", "attributes": {attr: [row, ...]}, "flagged": [...], "min_images"}.
    """
    y = np.asarray(y, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    k = len(classes)
    overall = float(macro_f1_from_cm(confusion_matrix(y, pred, k)))
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"overall_macro_f1": overall, "attributes": {}, "flagged": [],
                           "min_images": min_images, "n_boot": n_boot}
    for attr, values in groups.items():
        vals = np.asarray([str(v) for v in values], dtype=object)
        if len(vals) != len(y) or not (vals != "").any():
            continue
        rows = []
        for value in sorted(set(vals) - {""}):
            idx = np.flatnonzero(vals == value)
            row: dict[str, Any] = {"value": value, "n": int(idx.size)}
            if idx.size < min_images:
                row["note"] = f"fewer than {min_images} images: not scored"
                rows.append(row)
                continue
            ys, ps = y[idx], pred[idx]
            labels = np.unique(ys)
            cm = confusion_matrix(ys, ps, k)
            row["macro_f1"] = float(macro_f1_from_cm(cm))
            # Resamples within the subgroup; a class's recall counts only in the resamples
            # that contain it (as its point estimate does).
            cms = batched_confusion(ys, ps, rng.integers(0, idx.size, (n_boot, idx.size)), k) \
                if n_boot > 0 else np.zeros((0, k, k))
            boot = per_class_from_cm(cms)
            row["ci95"] = _ci(macro_f1_from_cm(cms))
            recall = per_class_from_cm(cm)["recall"]
            row["per_class_recall"] = {
                classes[c]: {"n": int((ys == c).sum()), "recall": float(recall[c]),
                             "ci95": _ci(boot["recall"][boot["support"][:, c] > 0, c])}
                for c in labels}
            row["below_overall"] = bool(row["ci95"] is not None and row["ci95"][1] < overall)
            if row["below_overall"]:
                out["flagged"].append({"attribute": attr, "value": value, "n": row["n"],
                                       "macro_f1": row["macro_f1"], "ci95": row["ci95"]})
            rows.append(row)
        out["attributes"][attr] = rows
    return out


def groups_from_frame(frame: Any) -> dict[str, list[str]]:
    """The subgroup columns of a split or dataset frame (sex, age band, site, source), where
    filled."""
    out: dict[str, list[str]] = {}
    if "sex" in frame:
        out["sex"] = [str(v) for v in frame["sex"]]
    if "age" in frame:
        out["age_band"] = [age_band(v) for v in frame["age"]]
    if "site" in frame:
        out["site"] = [str(v) for v in frame["site"]]
    if "source" in frame:
        out["source"] = [str(v) for v in frame["source"]]
    return {k: v for k, v in out.items() if any(v)}
