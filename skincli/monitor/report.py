"""The monitoring report: operations over time windows, drift verdicts, labelled performance.

Core functions return data; `skincli/cli/monitor.py` prints it and `write_report` saves
`report.json` and PNG time-series plots into a folder that appears atomically.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skincli.errors import SkinError
from skincli.fsutil import atomic_dir, write_json
from skincli.monitor.drift import DRIFT, TOO_FEW, DriftResult, Thresholds, run_drift
from skincli.monitor.store import COLUMNS

DAY = 86400.0
# 1970-01-05 was a Monday: weekly windows start on Mondays (UTC).
_MONDAY = 4 * DAY
_WINDOW_RE = re.compile(r"^(\d+)?\s*(h|hour|hours|d|day|days|w|week|weeks)$")


@dataclass(frozen=True)
class Window:
    """A window length and the origin its buckets are aligned to (UTC)."""

    name: str
    seconds: float
    origin: float = 0.0

    def start(self, t: float) -> float:
        """Start of the bucket holding time t."""
        return self.origin + math.floor((t - self.origin) / self.seconds) * self.seconds


def parse_window(text: str) -> Window:
    """'day', 'week', 'hour' or a multiple such as '6h', '2d', '4w'."""
    raw = str(text).strip().lower()
    m = _WINDOW_RE.match(raw)
    if not m or (m.group(1) is not None and int(m.group(1)) < 1):
        raise SkinError(f"--window {text!r} is not valid",
                        hint="Use day, week, hour, or a multiple such as 6h, 2d, 4w")
    k = int(m.group(1) or 1)
    unit = m.group(2)[0]
    seconds = {"h": 3600.0, "d": DAY, "w": 7 * DAY}[unit] * k
    name = {"h": "hour", "d": "day", "w": "week"}[unit]
    return Window(name if k == 1 else f"{k}{unit}", seconds, _MONDAY if unit == "w" else 0.0)


def iso(t: float) -> str:
    """Epoch seconds -> ISO 8601 UTC (seconds)."""
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# Operations per window
# ---------------------------------------------------------------------------------------------

def _percentiles(values: np.ndarray) -> dict[str, float | None]:
    v = values[np.isfinite(values)]
    if not len(v):
        return {"p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(v, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99)}


def window_stats(df: pd.DataFrame, window: Window, start: float, end: float,
                 classes: list[str]) -> list[dict[str, Any]]:
    """One dict per window bucket in [start, end): volume, latency, class mix, confidence."""
    out = []
    t = window.start(start)
    times = df["time"].to_numpy(float) if len(df) else np.zeros(0)
    while t < end:
        sel = df[(times >= t) & (times < t + window.seconds)] if len(df) else df
        n = int(len(sel))
        lat = _percentiles(sel["latency_ms"].to_numpy(float) if n else np.zeros(0))
        mix = sel["predicted"].value_counts() if n else pd.Series(dtype=float)
        names = list(classes) + sorted(set(mix.index) - set(classes))
        out.append({
            "start": iso(t), "start_ts": t, "end_ts": t + window.seconds, "n": n,
            "latency_ms": lat,
            "uncertain_share": float(sel["uncertain"].mean()) if n else None,
            "mean_confidence": float(np.nanmean(sel["top_probability"].to_numpy(float)))
            if n and np.isfinite(sel["top_probability"].to_numpy(float)).any() else None,
            "class_share": {c: float(mix.get(c, 0)) / n if n else 0.0 for c in names},
            "n_labelled": int(sel["label"].notna().sum()) if n else 0,
            "sources": {str(k): int(v) for k, v in sel["source"].value_counts().items()}
            if n else {},
        })
        t += window.seconds
    return out


# ---------------------------------------------------------------------------------------------
# Performance on labelled feedback
# ---------------------------------------------------------------------------------------------

def _latest_per_image(df: pd.DataFrame) -> pd.DataFrame:
    # An image predicted several times counts once (its latest prediction): a retried upload
    # must not weigh more than other cases.
    return df.sort_values("time").drop_duplicates("image_sha256", keep="last")


def labelled_performance(df: pd.DataFrame, classes: list[str], n_boot: int = 1000,
                         seed: int = 0) -> dict[str, Any]:
    """Macro F1 and per-class recall with 95% bootstrap CIs on labelled predictions."""
    from skincli.metrics import (
        batched_confusion,
        bootstrap_ci,
        confusion_matrix,
        macro_f1_from_cm,
        per_class_from_cm,
    )

    lab = df[df["label"].notna()]
    if len(lab):
        lab = _latest_per_image(lab)
    index = {c: i for i, c in enumerate(classes)}
    known = lab[lab["label"].isin(index) & lab["predicted"].isin(index)] if len(lab) else lab
    n_unknown = int(len(lab) - len(known))
    n = int(len(known))
    result: dict[str, Any] = {"n": n, "n_unknown_label": n_unknown, "macro_f1": None,
                              "macro_f1_ci": None, "per_class_recall": {}}
    if n == 0:
        return result
    t = known["label"].map(index).to_numpy(np.int64)
    p = known["predicted"].map(index).to_numpy(np.int64)
    c = len(classes)
    cm = confusion_matrix(t, p, c)
    pc = per_class_from_cm(cm)
    ci = bootstrap_ci(t, p, c, n_boot=n_boot, seed=seed)
    result["macro_f1"] = float(macro_f1_from_cm(cm))
    result["macro_f1_ci"] = ci["macro_f1"]
    result["accuracy"] = float((t == p).mean())
    # Per-class recall intervals from the same kind of resamples.
    rng = np.random.default_rng(seed + 1)
    recalls = []
    for start in range(0, n_boot, 200):
        b = min(200, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        cms = batched_confusion(t, p, idx, c)
        rec = per_class_from_cm(cms)["recall"]
        rec[cms.sum(axis=-1) == 0] = np.nan  # class absent from a resample: no recall
        recalls.append(rec)
    boot = np.concatenate(recalls) if recalls else np.zeros((0, c))
    for i, name in enumerate(classes):
        if pc["support"][i] == 0:
            continue
        col = boot[:, i][np.isfinite(boot[:, i])] if len(boot) else np.zeros(0)
        result["per_class_recall"][name] = {
            "recall": float(pc["recall"][i]), "support": int(pc["support"][i]),
            "ci": [float(q) for q in np.quantile(col, [0.025, 0.975])] if len(col) else None,
        }
    return result


def test_baseline(test_metrics: dict[str, Any]) -> dict[str, Any]:
    """Macro F1 and per-class recall from run.json test_metrics (several spellings)."""
    tm = test_metrics or {}
    f1 = tm.get("macro_f1", tm.get("f1_macro"))
    recall: dict[str, float] = {}
    per = tm.get("per_class")
    if isinstance(per, list):
        for row in per:
            if isinstance(row, dict) and row.get("recall") is not None and "class" in row:
                recall[str(row["class"])] = float(row["recall"])
    elif isinstance(per, dict):
        for name, row in per.items():
            if isinstance(row, dict) and row.get("recall") is not None:
                recall[str(name)] = float(row["recall"])
    return {"macro_f1": float(f1) if f1 is not None else None, "recall": recall}


def performance_verdict(perf: dict[str, Any], baseline: dict[str, Any],
                        th: Thresholds) -> tuple[str, str]:
    """('ok' | 'degraded' | 'too few' | 'no baseline', one-line reason)."""
    n = perf["n"]
    if n < th.min_labels:
        return TOO_FEW, f"{n} labelled predictions, need at least {th.min_labels} for a verdict"
    test_f1 = baseline.get("macro_f1")
    if test_f1 is None:
        return "no baseline", "run.json has no test macro F1 to compare with"
    lo, hi = perf["macro_f1_ci"] or (perf["macro_f1"], perf["macro_f1"])
    text = (f"macro F1 {perf['macro_f1']:.3f} (95% CI {lo:.3f}-{hi:.3f}) on {n} labelled vs "
            f"test {test_f1:.3f}")
    if hi < test_f1 - th.f1_tolerance:
        return "degraded", text + f": the whole interval is more than {th.f1_tolerance:g} below"
    return "ok", text


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------

@dataclass
class MonitorReport:
    """Everything `skin monitor` shows, JSON-able via to_dict()."""

    created: str
    store: str
    run: str
    model_version: str
    classes: list[str]
    window: str
    period: dict[str, Any]
    thresholds: dict[str, Any]
    totals: dict[str, Any]
    windows: list[dict[str, Any]]
    drift: dict[str, Any]
    performance: dict[str, Any]
    alerts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    label_shift: dict[str, Any] = field(default_factory=dict)  # skincli.monitor.labelshift

    @property
    def status(self) -> str:
        """'alert' when any threshold is crossed, else 'ok'."""
        return "alert" if self.alerts else "ok"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        d = asdict(self)
        d["status"] = self.status
        return d


def model_rows(df: pd.DataFrame, info: Any) -> pd.DataFrame:
    """Rows logged by this run's model (version string or bare run name)."""
    if not len(df):
        return df
    return df[df["model_version"].isin({info.version, info.name})]


# The channels a prediction arrived by; any other `source` value names where the image came
# from (a clinic, a data source: `skin predict --source NAME`), and drift is also tested per such
# source, since a shift in one clinic's images can hide inside the pooled traffic.
CHANNELS = frozenset({"", "cli", "api"})


def source_drift(reference: dict[str, Any], current: pd.DataFrame,
                 th: Thresholds) -> dict[str, dict[str, Any]]:
    """The drift tests run on each named source's share of the current window."""
    if not len(current) or "source" not in current.columns:
        return {}
    names = current["source"].fillna("").astype(str)
    return {name: {"n": int((names == name).sum()),
                   "results": run_drift(reference, current[names == name], th)}
            for name in sorted(set(names) - CHANNELS)}


def build_report(df: pd.DataFrame, info: Any, reference: dict[str, Any] | None,
                 window: Window, last: int = 14, now: float | None = None,
                 th: Thresholds | None = None, store_url: str = "",
                 n_boot: int = 1000) -> MonitorReport:
    """Assemble the report from all logged rows `df` (PredictionStore.predictions())."""
    th = th or Thresholds()
    now = time.time() if now is None else float(now)
    df = df if "time" in df.columns else pd.DataFrame(columns=COLUMNS)
    if last < 1:
        raise SkinError(f"--last {last} is not valid: it must be at least 1 window")
    end = now
    start = window.start(now) - (last - 1) * window.seconds
    period = df[(df["time"] >= start) & (df["time"] < end)] if len(df) else df
    classes = list(info.classes)
    notes: list[str] = []
    windows = window_stats(period, window, start, end, classes)
    lat = _percentiles(period["latency_ms"].to_numpy(float) if len(period) else np.zeros(0))
    totals = {
        "n": int(len(period)), "latency_ms": lat,
        "uncertain_share": float(period["uncertain"].mean()) if len(period) else None,
        "mean_confidence": float(np.nanmean(period["top_probability"].to_numpy(float)))
        if len(period) and np.isfinite(period["top_probability"].to_numpy(float)).any()
        else None,
        "model_versions": {str(k): int(v) for k, v in
                           period["model_version"].value_counts().items()} if len(period) else {},
    }

    mine = model_rows(df, info)
    if len(df) and not len(mine):
        versions = ", ".join(sorted(set(df["model_version"])))[:200]
        notes.append(f"no prediction in the store was made by {info.version} (logged versions: "
                     f"{versions}); drift and performance need that model's predictions")
    # Drift compares the trailing window (the last `window` up to now) with the reference, so a
    # check from cron right after midnight still sees a full window of traffic.
    current = mine[(mine["time"] >= now - window.seconds) & (mine["time"] < now)] \
        if len(mine) else mine
    results: list[DriftResult] = []
    per_source: dict[str, dict[str, Any]] = {}
    if reference is None:
        notes.append("no drift reference (run without split.csv); drift tests skipped")
    else:
        results = run_drift(reference, current, th)
        per_source = source_drift(reference, current, th)
    drift = {"current": {"start": iso(now - window.seconds), "end": iso(now),
                         "n": int(len(current))},
             "reference": {k: reference.get(k) for k in ("source", "n", "created", "run")}
             if reference else None,
             "results": [r.to_dict() for r in results],
             "per_source": {name: {"n": v["n"], "results": [r.to_dict() for r in v["results"]]}
                            for name, v in per_source.items()}}

    mine_period = mine[(mine["time"] >= start) & (mine["time"] < end)] if len(mine) else mine
    baseline = test_baseline(info.test_metrics)
    perf = labelled_performance(mine_period, classes, n_boot=n_boot, seed=th.seed)
    verdict, reason = performance_verdict(perf, baseline, th)
    per_window = []
    for w in windows:
        rows = mine_period[(mine_period["time"] >= w["start_ts"])
                           & (mine_period["time"] < w["end_ts"])]
        p = labelled_performance(rows, classes, n_boot=n_boot, seed=th.seed)
        per_window.append({"start": w["start"], **p})
    performance = {"overall": perf, "test": baseline, "verdict": verdict, "reason": reason,
                   "windows": per_window}
    if perf.get("n_unknown_label"):
        notes.append(f"{perf['n_unknown_label']} labelled predictions have a label outside the "
                     f"run's classes ({', '.join(classes)}) and are not scored")

    alerts = [f"{r.name}: {r.detail}" for r in results if r.verdict == DRIFT]
    alerts += [f"{r.name} (source {name}): {r.detail}" for name, v in per_source.items()
               for r in v["results"] if r.verdict == DRIFT]
    if verdict == "degraded":
        alerts.append(f"performance: {reason}")
    return MonitorReport(
        created=iso(time.time()), store=store_url, run=info.name, model_version=info.version,
        classes=classes, window=window.name,
        period={"start": iso(start), "end": iso(end), "windows": last},
        thresholds=asdict(th), totals=totals, windows=windows, drift=drift,
        performance=performance, alerts=alerts, notes=notes)


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------

def write_report(report: MonitorReport, out_dir: str | Path, plots: bool = True) -> Path:
    """report.json plus PNG time series, swapped into `out_dir` atomically."""
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        write_json(tmp / "report.json", report.to_dict())
        if plots:
            _plots(report, tmp)
    return out


def _plots(report: MonitorReport, folder: Path) -> None:
    from skincli.plots import pyplot

    plt = pyplot()
    ws = report.windows
    x = [datetime.fromtimestamp(w["start_ts"], tz=timezone.utc) for w in ws]
    width = (ws[0]["end_ts"] - ws[0]["start_ts"]) / DAY * 0.8 if ws else 0.8
    title = f"{report.run} — per {report.window} (UTC)"

    x_end = datetime.fromtimestamp(ws[-1]["end_ts"], tz=timezone.utc) if ws else None

    def save(fig: Any, name: str) -> None:
        if ws:
            # Explicit limits: windows without traffic (NaN) must not stretch the axis.
            for ax_ in fig.axes:
                ax_.set_xlim(x[0], x_end)
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.bar(x, [w["n"] for w in ws], width=width, align="edge", color="#4c72b0")
    ax.set_ylabel("predictions")
    ax.set_title(f"Volume — {title}")
    save(fig, "volume.png")

    fig, ax = plt.subplots(figsize=(8, 3.2))
    for key, style in (("p50", "-o"), ("p95", "-s"), ("p99", "-^")):
        ys = [w["latency_ms"][key] if w["latency_ms"][key] is not None else np.nan for w in ws]
        ax.plot(x, ys, style, label=key, markersize=3)
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"Latency — {title}")
    ax.legend()
    save(fig, "latency.png")

    fig, ax = plt.subplots(figsize=(8, 3.6))
    names = list(dict.fromkeys(c for w in ws for c in w["class_share"]))
    bottom = np.zeros(len(ws))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    for i, name in enumerate(names):
        vals = np.array([w["class_share"].get(name, 0.0) for w in ws])
        ax.bar(x, vals, width=width, bottom=bottom, align="edge", label=name,
               color=cmap(i % cmap.N))
        bottom += vals
    ax.set_ylabel("share of predictions")
    ax.set_ylim(0, 1)
    ax.set_title(f"Predicted classes — {title}")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save(fig, "classes.png")

    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.plot(x, [w["mean_confidence"] if w["mean_confidence"] is not None else np.nan
                for w in ws], "-o", markersize=3, label="mean confidence")
    ax.plot(x, [w["uncertain_share"] if w["uncertain_share"] is not None else np.nan
                for w in ws], "-s", markersize=3, label="uncertain share")
    ax.set_ylim(0, 1)
    ax.set_title(f"Confidence — {title}")
    ax.legend()
    save(fig, "confidence.png")

    pw = report.performance.get("windows") or []
    if any(w.get("macro_f1") is not None for w in pw):
        fig, ax = plt.subplots(figsize=(8, 3.2))
        f1 = np.array([w["macro_f1"] if w.get("macro_f1") is not None else np.nan for w in pw])
        lo = np.array([w["macro_f1_ci"][0] if w.get("macro_f1_ci") else np.nan for w in pw])
        hi = np.array([w["macro_f1_ci"][1] if w.get("macro_f1_ci") else np.nan for w in pw])
        ax.errorbar(x, f1, yerr=[np.nan_to_num(f1 - lo), np.nan_to_num(hi - f1)], fmt="o",
                    capsize=3, label="macro F1 on labelled feedback (95% CI)")
        test_f1 = report.performance.get("test", {}).get("macro_f1")
        if test_f1 is not None:
            ax.axhline(test_f1, linestyle="--", color="grey", label=f"test {test_f1:.3f}")
        ax.set_ylim(0, 1)
        ax.set_title(f"Performance — {title}")
        ax.legend(fontsize=8)
        save(fig, "performance.png")
