"""The refits on a run's validation images: temperature and uncertain threshold, the decision
rules' operating points and the triage threshold.

The validation images are scored once (`Validation`), the first time a refit needs them, and
every refit reads the same logits: `skin evaluate --calibrate` on a run without stored
operating points reads its validation split once, not once per refit. Probabilities are taken
at the run's temperature in force when asked, so a refit after calibration sees the new one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from skincli.calibration import UNCERTAIN_ACCURACY, calibrate
from skincli.clinical import triage
from skincli.data.evalset import EvalSet, load_eval_set
from skincli.decision import (
    Decision,
    balanced,
    check_rule,
    fit_decision,
    fit_key,
    store_decisions,
    stored_decision,
    target_prior,
)
from skincli.errors import SkinError
from skincli.evaluate.scoring import Progress, Scored, score
from skincli.ood import build_reference
from skincli.predictor import Predictor
from skincli.runs import update_run_info


class Validation:
    """The run's validation images, scored once on first need (no TTA)."""

    def __init__(self, predictor: Predictor, batch_size: int = 32,
                 progress: Progress | None = None) -> None:
        self.predictor = predictor
        self.batch_size = batch_size
        self.progress = progress
        self.description = ""
        self.eval_set: EvalSet | None = None
        self._scored: Scored | None = None
        self._error: SkinError | None = None

    def scored(self) -> Scored:
        """The scored validation images; a SkinError (no split, unreadable) every time asked."""
        if self._scored is None and self._error is None:
            p = self.predictor
            try:
                val_set = load_eval_set(p.run_dir, p.classes, subset="val")
                self.description = val_set.description
                self.eval_set = val_set
                self._scored = score(p, val_set, batch_size=self.batch_size,
                                     progress=self.progress, stage="validation")
            except SkinError as exc:
                self._error = exc
        if self._error is not None:
            raise self._error
        assert self._scored is not None
        return self._scored

    def probs(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Calibrated probabilities and labels at the run's temperature (None if unreadable)."""
        try:
            scored = self.scored()
        except SkinError:
            return None
        return scored.probs(self.predictor.temperature, False), scored.y


# --- temperature and the uncertain threshold ---------------------------------------------------

def calibrate_run(predictor: Predictor, validation: Validation) -> dict[str, Any]:
    """Fit T and the uncertain threshold on the run's validation images; store them in run.json.

    Always the run's own split (its copy in the run folder, else splits/split.csv): another
    split's validation images could include this run's training images. Also stores the
    out-of-distribution reference if run.json has none.
    """
    info = predictor.info
    scored = validation.scored()
    target = float((info.config or {}).get("uncertain_accuracy", UNCERTAIN_ACCURACY))
    result = calibrate(scored.logits[0], scored.y, uncertain_accuracy=target)
    extra = dict(info.extra or {})
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    extra["calibration"] = {
        "method": "temperature scaling (validation NLL)", "fitted": stamp,
        "n_val": int(scored.y.size), "previous_temperature": float(info.temperature or 1.0),
        **{k: result[k] for k in ("temperature", "val_nll_before", "val_nll_after",
                                  "val_ece_before", "val_ece_after")},
    }
    rule = result["uncertain"]
    extra["uncertain_rule"] = rule["rule"]
    extra["uncertain_val_share"] = rule["uncertain_share"]
    reference_added = False
    if "reference" not in extra and len(scored.y) >= 10:
        extra["reference"] = build_reference(
            scored.colour, scored.embeddings,
            source=f"validation split ({len(scored.y)} images), skin evaluate --calibrate")
        reference_added = True
    predictor.info = update_run_info(predictor.run_dir, temperature=result["temperature"],
                                     uncertain_threshold=rule["threshold"], extra=extra)
    return {**result, "n_val": int(scored.y.size), "skipped_val": scored.skipped,
            "reference_added": reference_added, "val_description": validation.description}


# --- the triage threshold ----------------------------------------------------------------------

def refit_triage(predictor: Predictor, target: float | None = None,
                 malignant: str | Sequence[str] | None = None,
                 validation: Validation | None = None, method: str | None = None
                 ) -> dict[str, Any]:
    """Fit (or refit) the triage threshold on the run's validation split; store it in run.json.

    `method`: "point" or "lower-bound" (skincli.clinical.triage); default the stored record's.
    """
    info = predictor.info
    old = triage.record_of(info) or {}
    target = float(target if target is not None else old.get("target_sensitivity")
                   or (info.config or {}).get("triage_sensitivity")
                   or triage.DEFAULT_SENSITIVITY)
    if malignant is None:
        malignant = old.get("malignant") or (info.config or {}).get("triage_malignant") or None
    method = method or old.get("fit") or "point"
    if method not in triage.FIT_METHODS:  # before the images are read
        raise SkinError(f"Unknown triage fit {method!r}",
                        hint=f"Use one of: {', '.join(triage.FIT_METHODS)}")
    scored = (validation or Validation(predictor)).scored()
    probs = scored.probs(predictor.temperature, False)
    record = triage.fit(probs, scored.y, predictor.classes, target, malignant,
                        count_premalignant=bool(old.get("count_premalignant", False)),
                        source=f"validation split ({len(scored.y)} images), fitted on first need",
                        method=method)
    extra = dict(predictor.info.extra or {})
    extra["triage"] = record
    predictor.info = update_run_info(predictor.run_dir, extra=extra)
    return record


def ensure_triage(predictor: Predictor, validation: Validation | None = None
                  ) -> dict[str, Any] | None:
    """The run's triage record, fitted now from its split if it was trained before triage."""
    rec = triage.record_of(predictor.info)
    if rec is not None:
        return rec
    try:
        return refit_triage(predictor, validation=validation)
    except SkinError as exc:  # e.g. no split: no triage, say why
        return {"threshold": None, "reason": str(exc)}


# --- the decision rules' operating points ------------------------------------------------------

def resolve_decision(predictor: Predictor, rule: str | None = None,
                     prevalence: str | Path | None = None, batch_size: int = 32) -> Decision:
    """The Decision for a loaded run: from run.json when fitted before, else fitted on the
    run's validation images now and stored in run.json. Warnings are in `Decision.warnings`."""
    name = check_rule(rule)
    info = predictor.info
    if prevalence is not None and name != "prevalence":
        raise SkinError(f"--prevalence applies to --decision prevalence, not {name}",
                        hint="Add --decision prevalence")
    if name == "balanced":
        return balanced(info)
    prior = source = counts = None
    warnings: list[str] = []
    if name == "prevalence":
        prior, source, warnings, counts = target_prior(predictor.run_dir, info, prevalence)
    found = stored_decision(info, name, prior)
    if found is not None:
        found.prior_source = source or found.prior_source
        found.warnings = warnings
        return found
    val = Validation(predictor, batch_size).probs()
    d = fit_decision(name, info, None if val is None else val[0],
                     None if val is None else val[1], prior=prior, prior_source=source,
                     counts=counts)
    d.warnings = warnings + d.warnings
    if val is not None:  # only a properly fitted point is worth keeping
        try:
            predictor.info = store_decisions(predictor.run_dir,
                                             [(d, fit_key(name, info, prior))], counts)
        except (OSError, SkinError) as exc:  # a read-only run folder still serves
            d.warnings.append(f"fitted operating point not stored in run.json ({exc})")
    return d


def fit_decisions(predictor: Predictor, validation: Validation
                  ) -> tuple[list[Decision], list[str], np.ndarray | None]:
    """Every rule for `skin evaluate`: balanced, prevalence with the training prior (when the
    run has training counts) and macro-f1, from run.json when fitted before, else fitted on the
    validation images and stored. Returns (decisions, notes, training prior or None)."""
    info = predictor.info
    classes = list(info.classes)
    notes: list[str] = []
    out = [balanced(info)]
    try:
        prior, source, _, counts = target_prior(predictor.run_dir, info, None)
    except SkinError:
        prior, source, counts = None, None, None
        notes.append("prevalence rule not evaluated: the run has no training class counts "
                     "(no split.csv in the run folder)")
    wanted: list[tuple[str, dict[str, float] | None]] = (
        [("prevalence", prior)] if prior is not None else []) + [("macro-f1", None)]
    found = {r: stored_decision(info, r, p) for r, p in wanted}
    val = None
    if any(d is None for d in found.values()):
        val = validation.probs()
    todo: list[tuple[Decision, str]] = []
    for r, p in wanted:
        d = found[r]
        if d is None:
            if val is None and r == "macro-f1":
                notes.append("macro-f1 rule not evaluated: the run's validation images could "
                             "not be read to fit its offsets")
                continue
            d = fit_decision(r, info, None if val is None else val[0],
                             None if val is None else val[1], prior=p, prior_source=source,
                             counts=counts)
            notes.extend(d.warnings)
            if val is not None:
                todo.append((d, fit_key(r, info, p)))
        out.append(d)
    if todo:
        try:
            predictor.info = store_decisions(predictor.run_dir, todo, counts)
        except (OSError, SkinError) as exc:
            notes.append(f"fitted operating points not stored in run.json ({exc})")
    train = None if prior is None else np.array([prior[c] for c in classes])
    return out, notes, train
