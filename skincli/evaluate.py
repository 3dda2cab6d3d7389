"""Evaluate trained runs: metrics with uncertainty, calibration, TTA and paired comparisons.

Data to evaluate on (in this order):

- `data`: any labelled folder or CSV `skincli.data.dataset.load_dataset` reads (e.g. new images
  from the clinic); its labels must be classes of the run. With a Train/Test layout, `subset`
  "test" keeps the given Test part.
- `split`: a split file; `subset` picks its test / val part (or "all").
- default: the run's own copy of the split it was trained on (`runs/<name>/split.csv`, so it
  still works after re-splitting), else `splits/split.csv`.

`calibrate=True` fits the temperature on the validation part of the run's split, re-chooses the
uncertain threshold on the calibrated probabilities, computes the out-of-distribution reference
from the same images if run.json has none, and stores all of it in run.json.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from skincli import DISCLAIMER
from skincli.errors import SkinError, did_you_mean
from skincli.fsutil import sha256_file
from skincli.imageio import ImageError
from skincli.metrics import classification_summary, expected_calibration_error, paired_comparison
from skincli.plots import pyplot, save_figure
from skincli.runs import DEFAULT_RUNS_DIR, update_run_info

SUBSETS = ("test", "val", "all")
DEFAULT_SPLIT = Path("splits/split.csv")
# Metrics compared between runs and between with/without TTA.
HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "cohen_kappa",
            "macro_auc", "ece")

Progress = Callable[[str, int, int], None]


@dataclass
class EvalSet:
    """Labelled images to evaluate on."""

    filepaths: list[str]
    labels: list[str]
    description: str
    kind: str  # "split" or "data"
    subset: str
    split_path: Path | None = None
    # Subgroup values per image (sex, age band, site) from metadata; empty without it.
    subgroups: dict[str, list[str]] = field(default_factory=dict)
    # Per image {sex, age_band, site} for a run trained with --use-metadata; None without.
    metadata: list[dict[str, str]] | None = None


@dataclass
class Scored:
    """Model outputs for the readable images of an EvalSet."""

    filepaths: list[str]
    y: np.ndarray                      # (N,) class indices in the run's order
    logits: np.ndarray                 # (V, N, C): V = 8 with TTA (view 0 = as is), else 1
    embeddings: np.ndarray | None      # (N, D) of the untransformed images
    colour: np.ndarray                 # (N, 7) colour features (for the OOD reference)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def probs(self, temperature: float, tta: bool) -> np.ndarray:
        """Calibrated probabilities, averaged over the TTA views when tta."""
        from skincli.predictor import softmax

        views = self.logits if tta else self.logits[:1]
        return np.mean([softmax(v, temperature) for v in views], axis=0)


# --- what to evaluate on ----------------------------------------------------------------------

def run_split_path(run_dir: Path) -> Path:
    """The run's own copy of its split, else the project's splits/split.csv."""
    own = Path(run_dir) / "split.csv"
    return own if own.is_file() else DEFAULT_SPLIT


def _read_split(path: Path) -> Any:
    from skincli.data.split import load_split

    return load_split(path)


def _check_subset(subset: str) -> None:
    if subset not in SUBSETS:
        raise SkinError(f"Unknown subset {subset!r}.{did_you_mean(subset, SUBSETS)}",
                        hint=f"Use one of: {', '.join(SUBSETS)}")


def check_labels(labels: Sequence[str], classes: Sequence[str], source: str) -> None:
    """Every label must be a class of the run: say which are not, with the closest names."""
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        first = unknown[0]
        raise SkinError(
            f"{source} has label(s) the model does not know: "
            f"{', '.join(repr(u) for u in unknown[:5])}{' ...' if len(unknown) > 5 else ''}."
            f"{did_you_mean(first, classes)}",
            hint=f"The run's classes are: {', '.join(classes)}; rename those folders/labels")


def load_eval_set(run_dir: Path, classes: Sequence[str], data: str | Path | None = None,
                  split: str | Path | None = None, subset: str = "test",
                  metadata: dict[str, Any] | None = None) -> EvalSet:
    """Resolve what to evaluate on (see the module docstring).

    `metadata`: load_dataset's metadata keyword arguments (metadata, labels, group,
    class_map) for `data`.
    """
    from skincli.metahead import records_from_frame
    from skincli.subgroups import groups_from_frame

    _check_subset(subset)
    if data is not None and split is not None:
        raise SkinError("Pass either --data or --split, not both")
    if metadata and metadata.get("metadata") is not None and data is None:
        raise SkinError("--metadata applies to --data", hint="Pass --data DIR with it; a "
                        "split made with --metadata already carries the metadata")
    if data is not None:
        from skincli.data.dataset import load_dataset

        ds = load_dataset(data, min_classes=1, **(metadata or {}))
        df = ds.frame()
        what = f"{data} ({ds.describe()})"
        if ds.has_given_split:
            if subset == "val":
                raise SkinError(f"{data} has no validation part",
                                hint="Use --subset test or --subset all")
            if subset == "test":
                df = df[df["given_split"] == "test"]
                what = f"the Test part of {what}"
        if df.empty:
            raise SkinError(f"No images to evaluate in {data}",
                            hint="Pass a folder of class folders or a labelled CSV")
        check_labels(df["label"].tolist(), classes, str(data))
        return EvalSet(df["filepath"].tolist(), df["label"].tolist(), what, "data", subset,
                       subgroups=groups_from_frame(df), metadata=records_from_frame(df))
    path = Path(split) if split is not None else run_split_path(run_dir)
    if split is None and not path.is_file():
        raise SkinError(f"Run {run_dir} holds no split.csv and there is no {DEFAULT_SPLIT}",
                        hint="Pass --data FOLDER_OR_CSV with labelled images, or --split FILE")
    df = _read_split(path)
    part = df if subset == "all" else df[df["split"] == subset]
    if part.empty:
        raise SkinError(f"Split {path} has no {subset} images",
                        hint="Use --subset all, another --split, or --data DATA")
    check_labels(part["label"].tolist(), classes, str(path))
    where = "the run's own split" if path == Path(run_dir) / "split.csv" else str(path)
    return EvalSet(part["filepath"].tolist(), part["label"].tolist(),
                   f"{subset} part of {where} ({path})" if subset != "all" else
                   f"all of {where} ({path})", "split", subset, split_path=path,
                   subgroups=groups_from_frame(part), metadata=records_from_frame(part))


# --- scoring -----------------------------------------------------------------------------------

def score(predictor: Any, eval_set: EvalSet, tta: bool = False, batch_size: int = 32,
          progress: Progress | None = None, stage: str = "evaluate") -> Scored:
    """Run the model over an EvalSet in batches; unreadable files are skipped and listed."""
    from skincli.predictor import colour_features

    index = {c: i for i, c in enumerate(predictor.classes)}
    total = len(eval_set.filepaths)
    keep_paths: list[str] = []
    ys: list[int] = []
    logits: list[np.ndarray] = []
    embs: list[np.ndarray] = []
    colours: list[np.ndarray] = []
    skipped: list[dict[str, str]] = []
    batch_size = max(1, int(batch_size))
    for start in range(0, total, batch_size):
        paths = eval_set.filepaths[start:start + batch_size]
        labels = eval_set.labels[start:start + batch_size]
        arrays, records = [], []
        for j, (p, lab, item) in enumerate(zip(paths, labels, predictor.read_images(paths))):
            if isinstance(item, ImageError):
                skipped.append({"file": str(p), "code": item.code, "error": str(item)})
                continue
            arrays.append(item)
            keep_paths.append(str(p))
            ys.append(index[lab])
            if eval_set.metadata is not None:
                records.append(eval_set.metadata[start + j])
        if arrays:
            batch = np.stack(arrays).astype(np.float32)
            meta = predictor.encode_metadata(records if eval_set.metadata is not None else None)
            if tta:
                views, emb = predictor.tta_logits(batch, batch_size, meta)
            else:
                first, emb = predictor.logits_and_embeddings(batch, batch_size, meta)
                views = first[None]
            logits.append(views)
            if emb is not None:
                embs.append(emb)
            colours.append(colour_features(batch))
        if progress is not None:
            progress(stage, min(start + batch_size, total), total)
    if not keep_paths:
        raise SkinError(f"None of the {total} images of {eval_set.description} could be read",
                        hint="Check the files with `skin eda`")
    c = len(predictor.classes)
    return Scored(
        filepaths=keep_paths, y=np.asarray(ys, np.int64),
        logits=np.concatenate(logits, axis=1) if logits else np.zeros((1, 0, c)),
        embeddings=np.concatenate(embs) if embs and len(embs) == len(logits) else None,
        colour=np.concatenate(colours), skipped=skipped)


# --- calibration ------------------------------------------------------------------------------

def calibrate_run(predictor: Any, batch_size: int = 32, progress: Progress | None = None
                  ) -> dict[str, Any]:
    """Fit T and the uncertain threshold on the run's validation images; store them in run.json.

    Always the run's own split (its copy in the run folder, else splits/split.csv): another
    split's validation images could include this run's training images. Also stores the
    out-of-distribution reference if run.json has none.
    """
    from skincli.calibration import UNCERTAIN_ACCURACY, calibrate
    from skincli.predictor import build_reference

    info = predictor.info
    val_set = load_eval_set(predictor.run_dir, predictor.classes, subset="val")
    scored = score(predictor, val_set, tta=False, batch_size=batch_size, progress=progress,
                   stage="validation")
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
            "reference_added": reference_added, "val_description": val_set.description}


# --- one run -----------------------------------------------------------------------------------

def _headline(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary.get(k) for k in HEADLINE}


def _uncertain_stats(probs: np.ndarray, y: np.ndarray, threshold: float | None
                     ) -> dict[str, Any]:
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    flagged = conf < threshold if threshold is not None else np.zeros(len(y), bool)
    return {"threshold": threshold, "share": float(flagged.mean()) if len(y) else 0.0,
            "accuracy_uncertain": float(correct[flagged].mean()) if flagged.any() else None,
            "accuracy_confident": float(correct[~flagged].mean()) if (~flagged).any() else None}


def _triage(predictor: Any, eval_set: EvalSet, y: np.ndarray, probs: np.ndarray
            ) -> dict[str, Any]:
    """Sensitivity/specificity at the run's referral threshold (skincli.clinical.triage)."""
    from skincli.clinical.triage import evaluate_hook

    return evaluate_hook(predictor, eval_set, y, probs,
                         store=is_own_test_split(predictor, eval_set))


def evaluate_predictor(predictor: Any, eval_set: EvalSet, calibrate: bool = False,
                       tta: bool = False, n_boot: int = 1000, seed: int = 0,
                       batch_size: int = 32, progress: Progress | None = None,
                       defer_target: float | None = None) -> dict[str, Any]:
    """All metrics for one loaded run on one EvalSet (and its calibration if asked)."""
    started = time.perf_counter()
    calibration = None
    t_before = float(predictor.info.temperature or 1.0)
    if calibrate:
        calibration = calibrate_run(predictor, batch_size, progress)
    scored = score(predictor, eval_set, tta=tta, batch_size=batch_size, progress=progress)
    temperature = float(predictor.info.temperature or 1.0)
    probs = scored.probs(temperature, tta)
    summary = classification_summary(scored.y, probs, predictor.classes, n_boot=n_boot,
                                      seed=seed)
    result: dict[str, Any] = {
        "run": predictor.model_summary(),
        "data": {"description": eval_set.description, "subset": eval_set.subset,
                 "kind": eval_set.kind, "n_images": len(eval_set.filepaths),
                 "n_evaluated": int(scored.y.size), "n_skipped": len(scored.skipped),
                 "skipped": scored.skipped},
        "tta": tta,
        "metrics": summary,
        "uncertain": _uncertain_stats(probs, scored.y, predictor.info.uncertain_threshold),
        "disclaimer": DISCLAIMER,
    }
    result["triage"] = _triage(predictor, eval_set, scored.y, probs)
    if defer_target is not None:
        # Without TTA: the thresholds are fitted, and applied by predict, on single views.
        result["defer"] = _defer(predictor, eval_set, scored, scored.probs(temperature, False),
                                 defer_target, n_boot, seed, batch_size, progress)
    if tta:
        plain = classification_summary(scored.y, scored.probs(temperature, False),
                                       predictor.classes, n_boot=0)
        without, with_ = _headline(plain), _headline(summary)
        result["tta_comparison"] = {
            "without": without, "with": with_,
            "gain": {k: (with_[k] - without[k]) if with_[k] is not None
                     and without[k] is not None else None for k in HEADLINE}}
    if calibration is not None:
        pre = expected_calibration_error(scored.probs(t_before, tta), scored.y)
        calibration["eval_ece_before"] = pre["ece"]
        calibration["eval_ece_after"] = summary["ece"]
        calibration["eval_reliability_before"] = pre["bins"]
        calibration["temperature_before"] = t_before
        result["calibration"] = calibration
    if eval_set.subgroups:
        result["subgroups"] = _subgroups(eval_set, scored, probs, predictor.classes, n_boot, seed)
    result["decisions"] = evaluate_decisions(predictor, scored.y, probs, n_boot, seed,
                                             batch_size, progress)
    result["seconds"] = round(time.perf_counter() - started, 2)
    result["_arrays"] = {"y": scored.y, "probs": probs, "filepaths": scored.filepaths}
    return result


def lesion_groups(eval_set: EvalSet, filepaths: Sequence[str]) -> list[str] | None:
    """Each scored image's lesion group from the split file (None for other data)."""
    if eval_set.kind != "split" or eval_set.split_path is None:
        return None
    df = _read_split(eval_set.split_path)
    where = dict(zip(df["filepath"].astype(str), df["group"].astype(str)))
    return [where.get(str(p), "") for p in filepaths]


def _defer(predictor: Any, eval_set: EvalSet, scored: Scored, probs: np.ndarray, target: float,
           n_boot: int, seed: int, batch_size: int, progress: Progress | None) -> dict[str, Any]:
    """Answer-or-defer (skincli.defer): curves, the operating point fitted on the run's own
    validation split (stored in run.json when feasible) and what it reaches here."""
    from skincli.defer import evaluation_section

    val_set = load_eval_set(predictor.run_dir, predictor.classes, subset="val")
    val = score(predictor, val_set, batch_size=batch_size, progress=progress,
                stage="validation")
    section = evaluation_section(
        (val.probs(float(predictor.info.temperature or 1.0), False), val.y,
         lesion_groups(val_set, val.filepaths)),
        (probs, scored.y, lesion_groups(eval_set, scored.filepaths)), predictor.classes,
        target, eval_set.subset, n_boot=n_boot, seed=seed,
        source=f"validation split ({len(val.y)} images), skin evaluate --defer-target")
    section["stored"] = bool(section["operating_point"]["feasible"])
    if section["stored"]:
        extra = dict(predictor.info.extra or {})
        record = dict(section["operating_point"])
        if is_own_test_split(predictor, eval_set):  # the card states what test reached
            res = section["result"]
            record["test"] = {k: res[k] for k in (
                "coverage", "n_accepted", "balanced_accuracy", "balanced_accuracy_ci95",
                "macro_f1", "macro_f1_ci95", "met", "few_accepted")}
        extra["defer"] = record
        predictor.info = update_run_info(predictor.run_dir, extra=extra)
    return section


def evaluate_decisions(predictor: Any, y: np.ndarray, probs: np.ndarray, n_boot: int,
                       seed: int, batch_size: int = 32, progress: Progress | None = None
                       ) -> dict[str, Any]:
    """Every decision rule on the same images side by side (skincli.decision), and the
    accuracy / balanced-accuracy frontier from the model's own prior to the training prior."""
    from skincli.decision import compare_rules, fit_all, model_prior, training_counts

    decisions, notes, train_prior = fit_all(predictor, batch_size, progress)
    base = model_prior(predictor.info, training_counts(predictor.run_dir, predictor.classes))[0]
    out = compare_rules(y, probs, decisions, list(predictor.classes), n_boot=n_boot, seed=seed,
                        base=base, train_prior=train_prior)
    out["notes"] = notes
    if train_prior is not None:
        out["training_prior"] = dict(zip(predictor.classes, train_prior.round(6).tolist()))
    return out


def _subgroups(eval_set: EvalSet, scored: Scored, probs: np.ndarray, classes: Sequence[str],
               n_boot: int, seed: int) -> dict[str, Any]:
    """Subgroup metrics of the images that were scored (unreadable ones are left out)."""
    from skincli.subgroups import subgroup_metrics

    where = {p: i for i, p in enumerate(eval_set.filepaths)}
    rows = [where[p] for p in scored.filepaths]
    groups = {attr: [vals[i] for i in rows] for attr, vals in eval_set.subgroups.items()}
    return subgroup_metrics(scored.y, probs.argmax(axis=1), classes, groups,
                            n_boot=n_boot, seed=seed)


def is_own_test_split(predictor: Any, eval_set: EvalSet) -> bool:
    """True when the EvalSet is the test part of the split this run was trained on."""
    if eval_set.kind != "split" or eval_set.subset != "test" or eval_set.split_path is None:
        return False
    own = Path(predictor.run_dir) / "split.csv"
    if eval_set.split_path == own:
        return True
    want = predictor.info.split_sha256
    try:
        return bool(want) and sha256_file(eval_set.split_path) == want
    except OSError:
        return False


def store_test_metrics(predictor: Any, result: dict[str, Any]) -> None:
    """Write a compact copy of the test metrics into run.json."""
    s = result["metrics"]
    compact = {k: s[k] for k in ("n", "accuracy", "balanced_accuracy", "macro_f1", "weighted_f1",
                                 "cohen_kappa", "macro_auc", "ece", "nll", "ci95", "n_boot",
                                 "weak_classes")}
    compact["per_class_f1"] = {r["class"]: r["f1"] for r in s["per_class"]}
    sub = result.get("subgroups")
    if sub:  # the model card states how the model performs for whom
        compact["subgroups"] = {
            "overall_macro_f1": sub["overall_macro_f1"], "flagged": sub["flagged"],
            "attributes": {a: [{k: r.get(k) for k in ("value", "n", "macro_f1", "ci95",
                                                       "below_overall")} for r in rows]
                           for a, rows in sub["attributes"].items()}}
    compact.update({"tta": result["tta"], "temperature": result["run"]["temperature"],
                    "data": result["data"]["description"],
                    "evaluated": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    predictor.info = update_run_info(predictor.run_dir, test_metrics=compact)


def load_predictor(run: str | Path | None, runs_dir: str | Path = DEFAULT_RUNS_DIR,
                   engine: str | None = None,
                   on_warning: Callable[[str], None] | None = None) -> Any:
    """Load a run's Predictor (a damaged model file is a one-line SkinError from from_run).

    engine: "litert" or "tf" (default $SKIN_ENGINE, else litert); a LiteRT fallback to
    TensorFlow is one line to `on_warning`.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from skincli.predictor import Predictor

    return Predictor.from_run(run, runs_dir, engine=engine, on_warning=on_warning)


MAX_BOOTSTRAP = 100_000


def evaluate(runs: Sequence[str | Path] | None = None, runs_dir: str | Path = DEFAULT_RUNS_DIR,
             data: str | Path | None = None, split: str | Path | None = None,
             subset: str = "test", calibrate: bool = False, tta: bool = False,
             n_boot: int = 1000, seed: int = 0, batch_size: int = 32,
             progress: Progress | None = None,
             metadata: dict[str, Any] | None = None,
             engine: str | None = None, defer_target: float | None = None) -> dict[str, Any]:
    """Evaluate one run, or compare two on the same images (paired test).

    `defer_target`: also fit and report the answer-or-defer operating point (skincli.defer).

    `metadata`: load_dataset's metadata keyword arguments for `data` (labels, groups and
    subgroups from an image metadata file).
    """
    _check_subset(subset)
    if defer_target is not None:
        from skincli.defer import check_target

        check_target(defer_target)
    if n_boot < 0:
        raise SkinError(f"--bootstrap must be 0 or more, got {n_boot}")
    if n_boot > MAX_BOOTSTRAP:  # would run for hours; the intervals stop moving long before
        raise SkinError(f"--bootstrap {n_boot} is too many (at most {MAX_BOOTSTRAP:,})",
                        hint="1000 (the default) to 10000 gives stable 95% intervals")
    names: list[str | Path | None] = list(runs) if runs else [None]
    if len(names) > 2:
        raise SkinError(f"Compare at most two runs at a time, got {len(names)}",
                        hint="Pass one run to evaluate it, or two to compare them")
    engine_notes: list[str] = []
    predictors = [load_predictor(r, runs_dir, engine, engine_notes.append) for r in names]
    if len(predictors) == 2 and predictors[0].run_dir.resolve() == predictors[1].run_dir.resolve():
        raise SkinError(f"Both runs are {predictors[0].run_dir}", hint="Pass two different runs")
    first = predictors[0]
    eval_set = load_eval_set(first.run_dir, first.classes, data=data, split=split, subset=subset,
                             metadata=metadata)
    warnings: list[str] = list(engine_notes)
    for other in predictors[1:]:
        if sorted(other.classes) != sorted(first.classes):
            raise SkinError(f"Runs {first.info.name} and {other.info.name} have different classes",
                            hint="Only runs trained on the same classes can be compared")
        check_labels(eval_set.labels, other.classes, eval_set.description)
        if (eval_set.kind == "split" and other.info.split_sha256 and first.info.split_sha256
                and other.info.split_sha256 != first.info.split_sha256):
            warnings.append(f"{other.info.name} was trained on a different split than "
                            f"{first.info.name}: some of these test images may have been in its "
                            "training data, which would flatter it")
    if defer_target is not None:  # no validation images: one line now, before any scoring
        for p in predictors:
            load_eval_set(p.run_dir, p.classes, subset="val")
    results = []
    for p in predictors:
        res = evaluate_predictor(p, eval_set, calibrate=calibrate, tta=tta, n_boot=n_boot,
                                 seed=seed, batch_size=batch_size, progress=progress,
                                 defer_target=defer_target)
        res["stored_test_metrics"] = is_own_test_split(p, eval_set) and data is None
        if res["stored_test_metrics"]:
            store_test_metrics(p, res)
        results.append(res)
    if len(results) == 1:
        out = results[0]
        out["warnings"] = warnings + _warnings(out)
        return out
    a, b = results
    comparison = _compare(a, b, n_boot=n_boot, seed=seed)
    return {"runs": results, "comparison": comparison, "tta": tta, "disclaimer": DISCLAIMER,
            "warnings": warnings + _warnings(a) + _warnings(b)}


def _warnings(result: dict[str, Any]) -> list[str]:
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


def _compare(a: dict[str, Any], b: dict[str, Any], n_boot: int, seed: int) -> dict[str, Any]:
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
            "headline": {name_a: _headline(a["metrics"]), name_b: _headline(b["metrics"])}}


# --- the report folder -------------------------------------------------------------------------

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
    from skincli.fsutil import atomic_dir, write_json

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
    import pandas as pd

    from skincli.fsutil import write_text

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
        from skincli.defer import plot_risk_coverage

        plot_risk_coverage(result["defer"], folder / "risk_coverage.png", title)
    if result.get("decisions", {}).get("frontier"):
        from skincli.decision import plot_frontier

        plot_frontier(result["decisions"], folder / "decision_frontier.png", title)


def _subgroup_table(sub: dict[str, Any]) -> Any:
    """One row per subgroup and class: n, macro F1 with CI, recall with CI, the flag."""
    import pandas as pd

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


# --- plots (matplotlib, headless) ---------------------------------------------------------------

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
