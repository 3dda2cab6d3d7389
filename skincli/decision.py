"""Decision rules: how calibrated probabilities become the answer a deployment gives.

Every rule is one per-class weight vector w on the calibrated probabilities, applied after the
temperature: p'(c) = p(c) w(c) / sum_k p(k) w(k) (equivalently a per-class offset log w(c) on the
calibrated log-probabilities). The "uncertain" threshold is refitted per rule on the validation
split with `skincli.calibration.choose_uncertain_threshold`, the same rule `skin train` and
`skin evaluate --calibrate` use.

- `balanced`: w = 1. Today's argmax of the calibrated probabilities. A model trained with
  balanced oversampling (`skin train --oversample`, the default) answers as if every class were
  equally common: right for balanced accuracy and macro F1.
- `prevalence`: w(c) = prior(c) / model_prior(c), the classic prior-shift correction (Bayes'
  rule with a new class prior). It assumes *label shift*: the images of each class look the same
  in the clinic as in training (p(x|y) unchanged), only how common each class is differs. The
  model_prior is what the training made the model believe: uniform when it was trained with
  balanced oversampling or class-weighted loss (both make the classes count equally), else the
  training split's class frequencies. The target prior is the training split's class counts
  (the run folder's split.csv) or a file the user gives (`--prevalence FILE`, YAML or CSV).
- `macro-f1`: per-class log offsets fitted on the validation split by coordinate ascent to
  maximise validation macro F1 (an operating point, not a prior; it can overfit a small
  validation split).

`decision_summary(info, decision)` states the rule and prior for a model card or a FHIR Device.
This module holds the rules and their storage in run.json; fitting them on a run's validation
images is `skincli.evaluate.refit`, comparing them on evaluated images `skincli.evaluate.rules`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from skincli.calibration import UNCERTAIN_ACCURACY, choose_uncertain_threshold
from skincli.errors import SkinError, did_you_mean
from skincli.fsutil import write_text
from skincli.metrics import confusion_matrix, macro_f1_from_cm
from skincli.runs import load_run_info, update_run_info

RULES = ("balanced", "prevalence", "macro-f1")
DEFAULT_RULE = "balanced"
SUM_TOLERANCE = 1e-3  # a prior whose entries sum further from 1 than this is normalised (warned)
MAX_FITS = 12  # fitted operating points kept in run.json (oldest dropped)
OFFSET_GRID = np.round(np.arange(-4.0, 4.0001, 0.1), 6)  # log-offsets tried per class
SUGGEST_FLOOR = 1e-3  # a suggested prior never holds 0: that class could never be predicted


@dataclass
class Decision:
    """A fitted decision rule: weights on calibrated probabilities and its uncertain threshold."""

    rule: str
    classes: list[str]
    weights: np.ndarray  # (C,), positive; only ratios matter
    uncertain_threshold: float | None
    prior: dict[str, float] | None = None  # the target prior (prevalence rule)
    prior_source: str | None = None
    model_prior: dict[str, float] | None = None  # what the model's probabilities assume
    offsets: dict[str, float] | None = None  # macro-f1 log offsets
    threshold_source: str = ""
    fitted: dict[str, Any] = field(default_factory=dict)  # n_val, temperature, when
    warnings: list[str] = field(default_factory=list)

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """Re-weight calibrated probabilities (N, C) and renormalise each row."""
        p = np.asarray(probs, dtype=np.float64)
        if self.rule == "balanced" or p.size == 0:
            return p
        q = p * self.weights
        s = q.sum(axis=-1, keepdims=True)
        # A row whose weighted mass underflows keeps its calibrated probabilities.
        return np.divide(q, s, out=p.copy(), where=s > 0)

    def summary(self) -> dict[str, Any]:
        """JSON-able description: the rule, its parameters and where they came from."""
        return {
            "rule": self.rule,
            "prior": _rounded(self.prior), "prior_source": self.prior_source,
            "model_prior": _rounded(self.model_prior),
            "offsets": _rounded(self.offsets),
            "weights": {c: round(float(w), 6) for c, w in zip(self.classes, self.weights)},
            "uncertain_threshold": self.uncertain_threshold,
            "threshold_source": self.threshold_source,
            "fitted": dict(self.fitted),
        }


def _rounded(d: dict[str, float] | None) -> dict[str, float] | None:
    return None if d is None else {k: round(float(v), 6) for k, v in d.items()}


def check_rule(rule: str | None) -> str:
    """The rule name, or a one-line error naming the choices."""
    name = DEFAULT_RULE if rule is None or rule == "" else str(rule).strip().lower()
    if name not in RULES:
        raise SkinError(f"Unknown --decision {rule!r}.{did_you_mean(str(rule), RULES)}",
                        hint=f"Use one of: {', '.join(RULES)}")
    return name


def balanced(info: Any) -> Decision:
    """The rule without any fitting: calibrated probabilities and the run's own threshold."""
    c = list(info.classes)
    return Decision("balanced", c, np.ones(len(c)), info.uncertain_threshold,
                    threshold_source="run.json uncertain_threshold")


# --- priors ----------------------------------------------------------------------------------

def check_prior(values: dict[str, float], classes: list[str], source: str
                ) -> tuple[dict[str, float], list[str]]:
    """Validate a prior for the run's classes; normalise (with a warning) if it does not sum
    to 1. Unknown or missing classes, non-numbers, negative, zero or all-zero entries are
    refused with one line."""
    unknown = [k for k in values if k not in classes]
    if unknown:
        raise SkinError(f"{source}: class(es) the model does not know: "
                        f"{', '.join(repr(u) for u in unknown[:5])}."
                        f"{did_you_mean(unknown[0], classes)}",
                        hint=f"The run's classes are: {', '.join(classes)}")
    missing = [c for c in classes if c not in values]
    if missing:
        raise SkinError(f"{source}: no prevalence for {', '.join(repr(m) for m in missing[:5])}",
                        hint="Give every class of the run a value (a small positive number "
                        "for a rare class)")
    out: dict[str, float] = {}
    for c in classes:
        try:
            v = float(values[c])
        except (TypeError, ValueError):
            raise SkinError(f"{source}: prevalence of {c!r} is not a number ({values[c]!r})",
                            hint="Use numbers such as 0.12 (or counts)") from None
        if not math.isfinite(v) or v < 0:
            raise SkinError(f"{source}: prevalence of {c!r} is {values[c]!r}; it must be a "
                            "positive number", hint="Use numbers such as 0.12 (or counts)")
        out[c] = v
    total = sum(out.values())
    if total <= 0:
        raise SkinError(f"{source}: every prevalence is 0", hint="Give positive prevalences")
    zero = [c for c, v in out.items() if v == 0]
    if zero:
        raise SkinError(f"{source}: prevalence of {zero[0]!r} is 0, so it could never be "
                        "predicted", hint="Give a small positive value instead, e.g. 0.001")
    warnings = []
    if abs(total - 1.0) > SUM_TOLERANCE:
        warnings.append(f"{source}: prevalences sum to {total:.6g}, not 1; normalised")
    return {c: v / total for c, v in out.items()}, warnings


def read_prior(path: str | Path, classes: list[str]) -> tuple[dict[str, float], list[str]]:
    """Read a prior file: YAML `{class: value}` (or `prevalence: {...}`), or CSV with
    `class,prevalence` rows (header optional). Returns (normalised prior, warnings)."""
    p = Path(path)
    if not p.is_file():
        raise SkinError(f"Prevalence file {p} does not exist",
                        hint="Pass a YAML or CSV file of class: prevalence")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SkinError(f"Cannot read prevalence file {p} ({exc})") from None
    values: Any
    if p.suffix.lower() == ".csv":
        values = _csv_prior(text, p)
    else:
        import yaml

        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
            raise SkinError(f"Prevalence file {p} is not valid YAML ({first})",
                            hint="Write one `class: value` per line") from None
        if isinstance(values, dict) and isinstance(values.get("prevalence"), dict):
            values = values["prevalence"]
        if not isinstance(values, dict) or not values:
            raise SkinError(f"Prevalence file {p} holds no `class: value` mapping",
                            hint="Write one `class: value` per line (YAML) or class,prevalence "
                            "rows (CSV)")
        values = {str(k): v for k, v in values.items()}
    return check_prior(values, list(classes), str(p))


def _csv_prior(text: str, path: Path) -> dict[str, Any]:
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(x.strip() for x in r)]
    if rows and len(rows[0]) >= 2:
        try:
            float(rows[0][1])
        except ValueError:
            rows = rows[1:]  # a header row
    out: dict[str, Any] = {}
    for r in rows:
        if len(r) < 2:
            raise SkinError(f"Prevalence file {path}: row {r!r} has no value",
                            hint="Write class,prevalence rows")
        name = r[0].strip()
        if name in out:
            raise SkinError(f"Prevalence file {path}: class {name!r} appears twice")
        out[name] = r[1].strip()
    if not out:
        raise SkinError(f"Prevalence file {path} holds no rows", hint="Write class,prevalence rows")
    return out


def write_prior(path: str | Path, prior: dict[str, float], comment: str = "") -> Path:
    """Write a prior as YAML that `--prevalence` reads (atomically)."""
    lines = [f"# {line}" for line in comment.splitlines() if line.strip()]
    lines.append("prevalence:")
    # json-style quoting keeps names with spaces or colons valid YAML
    lines += [f"  {json.dumps(c)}: {v:.6f}" for c, v in prior.items()]
    return write_text(path, "\n".join(lines) + "\n")


def training_counts(run_dir: str | Path, classes: list[str]) -> dict[str, int] | None:
    """Images per class in the training part of the run's own split.csv (None without it)."""
    path = Path(run_dir) / "split.csv"
    if not path.is_file():
        return None
    import pandas as pd

    try:
        df = pd.read_csv(path, usecols=["label", "split"], dtype=str)
    except (ValueError, OSError, pd.errors.ParserError):
        return None
    counts = df[df["split"] == "train"]["label"].value_counts()
    if counts.empty:
        return None
    return {c: int(counts.get(c, 0)) for c in classes}


def model_prior(info: Any, counts: dict[str, int] | None) -> tuple[np.ndarray, str]:
    """The class prior the model's calibrated probabilities assume, and why.

    Balanced oversampling (the `skin train` default) and class-weighted loss both train the
    model as if the classes were equally common, so its implicit prior is uniform; a run
    trained on the natural mix assumes the training frequencies.
    """
    classes = list(info.classes)
    cfg = info.config or {}
    balanced_training = bool(cfg.get("oversample", True)) or bool(cfg.get("class_weights"))
    if balanced_training or not counts or sum(counts.values()) == 0:
        why = ("uniform: trained with balanced oversampling or class weights" if
               balanced_training else "uniform: no training counts")
        return np.full(len(classes), 1.0 / len(classes)), why
    v = np.array([max(counts.get(c, 0), 1) for c in classes], dtype=np.float64)
    return v / v.sum(), "training split frequencies (trained without balancing)"


def prior_weights(target: np.ndarray, base: np.ndarray) -> np.ndarray:
    """w = target / base, scaled to mean 1 (only ratios matter)."""
    w = np.asarray(target, np.float64) / np.maximum(np.asarray(base, np.float64), 1e-12)
    return w / w.mean()


def interpolate_prior(start: np.ndarray, end: np.ndarray, t: float) -> np.ndarray:
    """The prior a fraction t of the way from `start` to `end` on the log scale."""
    z = (1.0 - t) * np.log(np.maximum(start, 1e-12)) + t * np.log(np.maximum(end, 1e-12))
    p = np.exp(z - z.max())
    return p / p.sum()


# --- fitting on the validation split ---------------------------------------------------------

def _macro_f1(y: np.ndarray, pred: np.ndarray, c: int) -> float:
    return float(macro_f1_from_cm(confusion_matrix(y, pred, c)))


def fit_offsets(probs: np.ndarray, y: np.ndarray, sweeps: int = 3) -> np.ndarray:
    """Per-class log offsets that maximise macro F1 of argmax(log p + b) (coordinate ascent
    over a grid, starting at 0; a change is kept only if it strictly improves)."""
    logp = np.log(np.maximum(np.asarray(probs, np.float64), 1e-12))
    y = np.asarray(y, np.int64)
    c = logp.shape[1]
    b = np.zeros(c)
    best = _macro_f1(y, logp.argmax(axis=1), c)
    for _ in range(sweeps):
        improved = False
        for k in range(c):
            for v in OFFSET_GRID:
                if v == b[k]:
                    continue
                trial = b.copy()
                trial[k] = v
                score = _macro_f1(y, (logp + trial).argmax(axis=1), c)
                if score > best + 1e-12:
                    best, b, improved = score, trial, True
        if not improved:
            break
    return b - b.mean()


def _threshold(probs: np.ndarray, y: np.ndarray, info: Any) -> float:
    target = float((info.config or {}).get("uncertain_accuracy", UNCERTAIN_ACCURACY))
    return float(choose_uncertain_threshold(probs, y, target)["threshold"])


def fit_decision(rule: str, info: Any, val_probs: np.ndarray | None, val_y: np.ndarray | None,
                 prior: dict[str, float] | None = None, prior_source: str | None = None,
                 counts: dict[str, int] | None = None) -> Decision:
    """Fit one rule from calibrated validation probabilities (pure numpy).

    `prior`: the target prior of the prevalence rule (already checked). Without validation
    data the prevalence rule keeps the run's own threshold (said in threshold_source);
    macro-f1 cannot be fitted without it.
    """
    rule = check_rule(rule)
    classes = list(info.classes)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    fitted: dict[str, Any] = {"temperature": float(info.temperature or 1.0), "when": stamp,
                              "n_val": int(len(val_y)) if val_y is not None else 0}
    if rule == "balanced":
        d = balanced(info)
        d.fitted = fitted
        return d
    base, why = model_prior(info, counts)
    base_d = dict(zip(classes, base.tolist()))
    has_val = val_probs is not None and val_y is not None and len(val_y) > 0
    if rule == "prevalence":
        if prior is None:
            raise SkinError("The prevalence rule needs a prior", hint="Pass --prevalence FILE")
        target = np.array([prior[c] for c in classes])
        w = prior_weights(target, base)
        d = Decision("prevalence", classes, w, info.uncertain_threshold, prior=dict(prior),
                     prior_source=prior_source, model_prior=base_d, fitted=fitted)
        d.fitted["model_prior_reason"] = why
        if has_val:
            d.uncertain_threshold = _threshold(d.apply(val_probs), val_y, info)
            d.threshold_source = "refitted on the validation split under this rule"
        else:
            d.threshold_source = ("the balanced rule's (validation images unavailable, not "
                                  "refitted)")
            d.warnings.append("uncertain threshold not refitted for the prevalence rule: the "
                              "run's validation images could not be read")
        return d
    if not has_val:
        raise SkinError("--decision macro-f1 needs the run's validation images to fit its "
                        "offsets, and none could be read",
                        hint="Run where split.csv's images are (e.g. `skin evaluate` once) so "
                        "the fitted offsets are stored in run.json")
    b = fit_offsets(val_probs, val_y)
    d = Decision("macro-f1", classes, np.exp(b), None, model_prior=base_d,
                 offsets=dict(zip(classes, b.tolist())), fitted=fitted)
    adjusted = d.apply(val_probs)
    d.fitted["val_macro_f1_before"] = _macro_f1(val_y, val_probs.argmax(axis=1), len(classes))
    d.fitted["val_macro_f1_after"] = _macro_f1(val_y, adjusted.argmax(axis=1), len(classes))
    d.uncertain_threshold = _threshold(adjusted, val_y, info)
    d.threshold_source = "refitted on the validation split under this rule"
    return d


# --- stored with the run -----------------------------------------------------------------------

def fit_key(rule: str, info: Any, prior: dict[str, float] | None) -> str:
    """What a fitted operating point depends on: rule, prior, temperature, split."""
    text = repr((rule, None if prior is None else sorted((k, round(v, 6)) for k, v in
                                                            prior.items()),
                 round(float(info.temperature or 1.0), 6), info.split_sha256))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _to_stored(d: Decision, key: str) -> dict[str, Any]:
    return {"key": key, **d.summary()}


def _from_stored(s: dict[str, Any], info: Any) -> Decision | None:
    try:
        classes = list(info.classes)
        w = np.array([float(s["weights"][c]) for c in classes])
        thr = s.get("uncertain_threshold")
        return Decision(str(s["rule"]), classes, w, None if thr is None else float(thr),
                        prior=s.get("prior"), prior_source=s.get("prior_source"),
                        model_prior=s.get("model_prior"), offsets=s.get("offsets"),
                        threshold_source=str(s.get("threshold_source", "")),
                        fitted=dict(s.get("fitted") or {}))
    except (KeyError, TypeError, ValueError):
        return None


def stored_decision(info: Any, rule: str, prior: dict[str, float] | None) -> Decision | None:
    """The operating point fitted earlier for this rule and prior (None if absent or stale)."""
    key = fit_key(rule, info, prior)
    for s in (info.extra or {}).get("decisions", {}).get("fits", []):
        if isinstance(s, dict) and s.get("key") == key:
            return _from_stored(s, info)
    return None


def store_decisions(run_dir: str | Path, decisions: list[tuple[Decision, str]],
                    counts: dict[str, int] | None = None) -> Any:
    """Record fitted operating points (and the training counts) in run.json extra["decisions"]."""
    info = load_run_info(run_dir)
    extra = dict(info.extra or {})
    block = dict(extra.get("decisions") or {})
    fits = [f for f in block.get("fits", []) if isinstance(f, dict)]
    for d, key in decisions:
        fits = [f for f in fits if f.get("key") != key] + [_to_stored(d, key)]
    block["fits"] = fits[-MAX_FITS:]
    if counts is not None:
        block["train_counts"] = counts
    extra["decisions"] = block
    return update_run_info(run_dir, extra=extra)


def target_prior(run_dir: str | Path, info: Any, prevalence: str | Path | None
                 ) -> tuple[dict[str, float], str, list[str], dict[str, int] | None]:
    """The prevalence rule's prior: the file's, else the training split's counts."""
    classes = list(info.classes)
    counts = training_counts(run_dir, classes)
    if prevalence is not None:
        prior, warnings = read_prior(prevalence, classes)
        return prior, f"file {prevalence}", warnings, counts
    if counts is None:
        counts = (info.extra or {}).get("decisions", {}).get("train_counts")
    if not counts or sum(counts.values()) == 0:
        raise SkinError(f"--decision prevalence: run {Path(run_dir).name} has no training class "
                        "counts (no split.csv in the run folder)",
                        hint="Pass --prevalence FILE with the clinic's class prevalences")
    n = sum(counts.values())
    prior, warnings = check_prior({c: max(v, 0.5) for c, v in counts.items()}, classes,
                                  "training counts")
    return prior, f"training split ({n} images)", [], counts


def decision_summary(info: Any, decision: Decision | None = None) -> dict[str, Any]:
    """The rule and prior a model answers with, for a model card or a FHIR Device.

    `decision`: the rule in force (default: balanced). Also lists the training prior and the
    operating points fitted and stored in run.json.
    """
    d = decision or balanced(info)
    block = (info.extra or {}).get("decisions") or {}
    counts = block.get("train_counts")
    train_prior = None
    if counts and sum(counts.values()):
        n = sum(counts.values())
        train_prior = {c: round(v / n, 6) for c, v in counts.items()}
    return {
        **d.summary(),
        "description": describe_rule(d),
        "training_prior": train_prior,
        "stored_rules": sorted({str(f.get("rule")) for f in block.get("fits", [])
                                if isinstance(f, dict)} | {"balanced"}),
    }


def describe_rule(d: Decision) -> str:
    """One sentence a person reads: which rule, with which prior."""
    if d.rule == "prevalence":
        return (f"prevalence: calibrated probabilities re-weighted to the class prior of "
                f"{d.prior_source or 'a given prior'} (assumes only class frequencies differ "
                "from training)")
    if d.rule == "macro-f1":
        return "macro-f1: per-class offsets fitted on the validation split to maximise macro F1"
    return "balanced: calibrated probabilities as trained (every class counted equally)"
