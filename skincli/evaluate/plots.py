"""The report's plots (matplotlib, headless): confusion matrices, ROC, PR, reliability and the
decision-rule frontier."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from skincli.plots import pyplot, save_figure


def plot_confusion(cm: np.ndarray, classes: Sequence[str], path: Path, title: str) -> None:
    """Counts and row-normalised (recall) confusion matrices side by side."""
    plt = pyplot()
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(classes)
    size = max(4.5, 0.55 * n + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 2, size), layout="constrained")
    for ax, mat, name, fmt in ((axes[0], cm, "counts", "{:.0f}"),
                               (axes[1], norm, "row-normalised (recall)", "{:.2f}")):
        im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)  # colour = recall in both panels
        ax.set_title(f"{name}")
        ax.set_xticks(range(n), labels=classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), labels=classes, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if n <= 15:
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, fmt.format(mat[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=axes, fraction=0.025)
    fig.suptitle(f"Confusion matrix: {title}")
    save_figure(fig, path)


def plot_roc(y: np.ndarray, probs: np.ndarray, classes: Sequence[str], path: Path,
             title: str) -> None:
    """One-vs-rest ROC curve per class (classes absent from the data are left out)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 6))
    for i, c in enumerate(classes):
        pos = y == i
        if pos.all() or not pos.any():
            continue
        fpr, tpr, _ = roc_curve(pos, probs[:, i])
        ax.plot(fpr, tpr, lw=1.3, label=f"{c} (AUC {roc_auc_score(pos, probs[:, i]):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01),
           title=f"ROC (one-vs-rest): {title}")
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


def plot_pr(y: np.ndarray, probs: np.ndarray, classes: Sequence[str], path: Path,
            title: str) -> None:
    """Precision-recall curve per class with its average precision."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 6))
    for i, c in enumerate(classes):
        pos = y == i
        if not pos.any():
            continue
        prec, rec, _ = precision_recall_curve(pos, probs[:, i])
        ap = average_precision_score(pos, probs[:, i])
        ax.plot(rec, prec, lw=1.3, label=f"{c} (AP {ap:.3f}, prevalence {pos.mean():.2f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01),
           title=f"Precision-recall: {title}")
    ax.legend(fontsize=7, loc="lower left")
    save_figure(fig, path)


def plot_reliability(bins: list[dict[str, Any]], ece: float, temperature: float, path: Path,
                     title: str, before: tuple[list[dict[str, Any]], float, float] | None = None
                     ) -> None:
    """Reliability diagram: accuracy per confidence bin against the diagonal, with the ECE."""
    plt = pyplot()
    panels = [(bins, ece, temperature)]
    if before is not None:
        panels.insert(0, before)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 5.2), squeeze=False)
    for ax, (bs, e, t) in zip(axes[0], panels):
        lo = np.array([b["lo"] for b in bs])
        width = np.array([b["hi"] - b["lo"] for b in bs])
        acc = np.array([b["accuracy"] if b["accuracy"] is not None else 0.0 for b in bs])
        conf = np.array([b["confidence"] if b["confidence"] is not None else 0.0 for b in bs])
        count = np.array([b["count"] for b in bs])
        ax.bar(lo, acc, width=width, align="edge", edgecolor="black", lw=0.5,
               color="tab:blue", label="accuracy")
        gap_lo = np.minimum(acc, conf)
        ax.bar(lo, np.abs(conf - acc), bottom=gap_lo, width=width, align="edge",
               fill=False, edgecolor="tab:red", hatch="///", lw=0.5,
               label="gap to mean confidence")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
        for x, w, n in zip(lo, width, count):
            if n:
                ax.text(x + w / 2, 0.02, str(n), ha="center", fontsize=6, rotation=90)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)",
               ylabel="accuracy", title=f"T = {t:.3g}: ECE {e:.3f}")
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Reliability: {title}" + (" (before / after calibration)" if before else ""))
    save_figure(fig, path)


def plot_frontier(result: dict[str, Any], path: Path, title: str) -> None:
    """decision_frontier.png: accuracy vs balanced accuracy along the prior path."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.2, 5.4))
    pts = result.get("frontier") or []
    if pts:
        xs = [p["balanced_accuracy"] for p in pts]
        ys = [p["accuracy"] for p in pts]
        ax.plot(xs, ys, "-o", color="tab:blue", ms=4, lw=1.2,
                label="prior: balanced → training (log scale)")
        for p in (pts[0], pts[len(pts) // 2], pts[-1]):
            ax.annotate(f"t={p['t']:.1f}", (p["balanced_accuracy"], p["accuracy"]), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
    markers = {"balanced": "s", "prevalence": "^", "macro-f1": "D"}
    for r in result["rules"]:
        ax.plot(r["balanced_accuracy"], r["accuracy"], markers.get(r["rule"], "o"), ms=8,
                label=f"{r['rule']} ({r['accuracy']:.3f} / {r['balanced_accuracy']:.3f})")
    ax.set(xlabel="balanced accuracy", ylabel="accuracy", title=f"Decision frontier: {title}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    save_figure(fig, path)
