"""The model card: MODEL_CARD.md + model_card.json, generated from what a run knows.

Sections: model details (version, architecture, hashes), intended use and users, out-of-scope
uses, training data (sources, counts per class and split, label provenance, what was dropped
and why), evaluation (per-class metrics with CIs, calibration, the triage operating point,
subgroup results when the run has them), known limitations (classes missing from the data,
low-support classes) and the clinical coding of each class. Nothing is typed in by hand: a
section the run has no data for says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from skincli import DISCLAIMER
from skincli.clinical.snomed import concept
from skincli.clinical.triage import record_of
from skincli.decision import decision_summary
from skincli.defer import record_of as defer_record_of
from skincli.errors import SkinError
from skincli.fsutil import sha256_file, write_json, write_text
from skincli.runs import MODEL_FILE, RunInfo, load_run_info

CARD_MD, CARD_JSON = "MODEL_CARD.md", "model_card.json"
# The nine ISIC archive diagnoses the project's data uses: a run lacking one cannot see it.
ISIC_CLASSES = ("actinic keratosis", "basal cell carcinoma", "dermatofibroma", "melanoma",
                "nevus", "pigmented benign keratosis", "seborrheic keratosis",
                "squamous cell carcinoma", "vascular lesion")
LOW_SUPPORT = 20  # fewer training images than this: a low-support class

INTENDED_USE = (
    "Decision support for clinicians (dermatologists, general practitioners and nurses "
    "trained in dermoscopy) triaging dermoscopic images of single skin lesions: a calibrated "
    "probability per class, an uncertain flag, and a refer / no referral suggested "
    "suggestion from the malignancy score. A clinician confirms every result.")
OUT_OF_SCOPE = [
    "Diagnosis without a clinician, or use by patients or the public for self-assessment.",
    "Clinical (non-dermoscopic) photographs, histopathology, or images of anything but a "
    "single skin lesion (the out-of-distribution warning is a caution, not a gate).",
    "Classes the model was not trained on: it always answers with one of its own classes.",
    "Populations, skin types, devices or sites unlike the training data (see the data "
    "section); performance there is unknown.",
    "Ruling out cancer: 'no referral suggested' does not exclude malignancy.",
]


def _sha256(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


def _split_meta(run_dir: Path) -> dict[str, Any]:
    side = run_dir / "split.json"
    try:
        return json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _split_counts(run_dir: Path, meta: dict[str, Any]) -> dict[str, dict[str, int]]:
    if isinstance(meta.get("counts"), dict) and meta["counts"]:
        return {str(c): {str(s): int(n) for s, n in v.items()} for c, v in meta["counts"].items()}
    try:
        import pandas as pd

        df = pd.read_csv(run_dir / "split.csv")
        table = df.groupby(["label", "split"]).size().unstack(fill_value=0)
        return {str(c): {str(s): int(table.loc[c, s]) for s in table.columns}
                for c in table.index}
    except Exception:  # no split copy in the run: the card says so
        return {}


def build(run_dir: str | Path, info: RunInfo | None = None) -> dict[str, Any]:
    """The card as data (what model_card.json holds)."""
    run_dir = Path(run_dir)
    info = info or load_run_info(run_dir)
    meta = _split_meta(run_dir)
    counts = _split_counts(run_dir, meta)
    test, val = info.test_metrics or {}, info.val_metrics or {}
    triage = record_of(info)
    extra = info.extra or {}
    train_counts = {c: counts.get(c, {}).get("train", 0) for c in info.classes}
    test_counts = {c: counts.get(c, {}).get("test", 0) for c in info.classes}
    limitations = []
    missing = [c for c in ISIC_CLASSES if c not in info.classes]
    if missing:
        limitations.append("Classes the model never saw (it cannot output them): "
                           + ", ".join(missing) + ".")
    if counts:
        low = [f"{c} ({n} training images)" for c, n in train_counts.items() if n < LOW_SUPPORT]
        if low:
            limitations.append(f"Low-support classes (fewer than {LOW_SUPPORT} training "
                               "images; their metrics are unreliable): " + ", ".join(low) + ".")
        absent = [c for c, n in test_counts.items() if n == 0]
        if absent:
            limitations.append("Classes absent from the test split (no test evidence): "
                               + ", ".join(absent) + ".")
    weak = test.get("weak_classes") or []
    if weak:
        limitations.append("Weak classes on the test split (F1 well below the macro F1): "
                           + ", ".join(weak) + ".")
    if not triage or triage.get("threshold") is None:
        limitations.append("No triage operating point"
                           + (f" ({triage['reason']})" if triage and triage.get("reason")
                              else "") + ": run `skin evaluate` or `skin card` to fit it.")
    limitations.append("Trained and evaluated on dermoscopic images from public archives; "
                       "skin types, devices and clinical settings there may differ from yours.")
    return {
        "model": {"name": info.name, "version": info.version, "arch": info.arch,
                  "created": info.created, "input_size": info.input_size,
                  "classes": list(info.classes), "preprocessing": info.preprocessing,
                  "model_sha256": _sha256(run_dir / MODEL_FILE),
                  "split_sha256": info.split_sha256, "config": info.config,
                  "inputs": _inputs(extra)},
        "intended_use": INTENDED_USE,
        "intended_users": ["dermatologists", "general practitioners", "dermatology nurses"],
        "out_of_scope": OUT_OF_SCOPE,
        "training_data": {
            "source": meta.get("root") or "unknown", "layout": meta.get("layout") or "unknown",
            "label_provenance": _label_provenance(meta),
            "counts": counts, "totals": meta.get("totals"),
            "dropped_counts": meta.get("dropped_counts") or {},
            "skipped_at_training": int(extra.get("skipped_images", 0) or 0),
            "split_seed": meta.get("seed"), "split_ratios": meta.get("ratios"),
            "sources": meta.get("sources") or {}, "test_source": meta.get("test_source") or "",
        },
        "evaluation": {
            "test": test or None, "validation": val or None,
            "calibration": extra.get("calibration"),
            "uncertain_threshold": info.uncertain_threshold,
            "uncertain_rule": extra.get("uncertain_rule"),
            "triage": triage,
            "answer_or_defer": defer_record_of(info),
            "decision": _decision(info),
            "subgroups": test.get("subgroups") or extra.get("subgroups"),
        },
        "limitations": limitations,
        "coding": [{"class": c, "snomed_ct": concept(c).snomed,
                    "display": concept(c).display, "group": concept(c).group,
                    "source": concept(c).source} for c in info.classes],
        "disclaimer": DISCLAIMER,
    }


def _inputs(extra: dict[str, Any]) -> str:
    """What the model reads: the image, and the patient's metadata if trained with it."""
    head = extra.get("metadata_head")
    if not head:
        return "the dermoscopic image only"
    sites = [s for s in head.get("values", {}).get("site", []) if s != "other"]
    return ("the dermoscopic image, plus the patient's sex, age band and anatomical site when "
            "given (a term added to the logits; without them the answer is the image model's; "
            f"sites: {', '.join(sites) or 'none'}, others count as 'other')")


def _decision(info: RunInfo) -> dict[str, Any] | None:
    """The decision rule the model answers with by default (balanced) and what is stored."""
    try:
        return decision_summary(info)
    except (SkinError, KeyError, TypeError, ValueError):  # a card is still worth writing
        return None


def _label_provenance(meta: dict[str, Any]) -> str:
    """Where the training labels came from: image metadata (which file) or the layout."""
    m = meta.get("metadata") or {}
    if m.get("labels") == "metadata":
        emptied = m.get("emptied_classes") or []
        return (f"image metadata {Path(str(m.get('path', ''))).name} ({m.get('format')}, "
                f"sha256 {str(m.get('sha256', ''))[:16]}): {m.get('disagreements', 0)} folder "
                "labels contradicted by it were replaced"
                + (f"; folder(s) holding none of their class by it: {', '.join(emptied)}"
                   if emptied else "")
                + f"; images grouped by {m.get('group') or 'lesion'}")
    layout = {"folders": "class folder names", "kaggle": "class folder names (Train/Test)",
              "csv": "a CSV's label column", "flat": "class folder names",
              "sources": "each source's class names, mapped onto one set of classes"}.get(
        str(meta.get("layout")), "unknown (no split sidecar in the run)")
    if m:
        layout += f" (metadata {Path(str(m.get('path', ''))).name} used for groups only)"
    return layout


def _f(v: Any, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.1%}" if pct else f"{v:.3f}"
    return str(v)


def _ci(ci: Any, pct: bool = False) -> str:
    if not ci or len(ci) != 2 or ci[0] is None:
        return ""
    return f" (95% CI {_f(float(ci[0]), pct)} to {_f(float(ci[1]), pct)})"


def markdown(card: dict[str, Any]) -> str:
    """The card as Markdown for a clinical reviewer."""
    m, data, ev = card["model"], card["training_data"], card["evaluation"]
    out = [f"# Model card: {m['name']}", "", f"> {card['disclaimer']}", "",
           "## Model details", "",
           f"- Version: `{m['version']}` (architecture `{m['arch']}`, input "
           f"{m['input_size']} px, created {m['created'] or 'unknown'})",
           f"- Classes ({len(m['classes'])}): {', '.join(m['classes'])}",
           f"- Inputs: {m.get('inputs') or 'the dermoscopic image only'}",
           f"- model.keras SHA-256: `{m['model_sha256'] or 'missing'}`",
           f"- Training split SHA-256: `{m['split_sha256'] or 'unknown'}`", "",
           "## Intended use", "", card["intended_use"], "",
           "Intended users: " + ", ".join(card["intended_users"]) + ".", "",
           "## Out of scope", ""]
    out += [f"- {x}" for x in card["out_of_scope"]]
    out += ["", "## Training data", "",
            f"- Source: `{data['source']}` (layout: {data['layout']})",
            f"- Labels from: {data['label_provenance']}",
            f"- Split: seed {data['split_seed']}, ratios {data['split_ratios']}"]
    for name, src in (data.get("sources") or {}).items():
        held = " (held out: the whole test split)" if name == data.get("test_source") else ""
        out.append(f"- Source {name}{held}: `{src.get('path', '')}`, {src.get('total', 0)} "
                   f"images (train {src.get('train', 0)}, val {src.get('val', 0)}, test "
                   f"{src.get('test', 0)})")
    dropped = data["dropped_counts"]
    out.append("- Dropped before splitting: " + (", ".join(
        f"{n} {k.replace('_', ' ')}" for k, n in dropped.items()) if dropped else "none recorded"))
    out.append(f"- Unreadable images skipped during training: {data['skipped_at_training']}")
    if data["counts"]:
        splits = sorted({s for v in data["counts"].values() for s in v},
                        key=lambda s: ["train", "val", "test"].index(s)
                        if s in ("train", "val", "test") else 9)
        out += ["", "| class | " + " | ".join(splits) + " |",
                "|---|" + "---|" * len(splits)]
        for c in m["classes"]:
            row = data["counts"].get(c, {})
            out.append(f"| {c} | " + " | ".join(str(row.get(s, 0)) for s in splits) + " |")
    else:
        out.append("- Counts per class: unknown (the run holds no split copy)")
    out += ["", "## Evaluation", ""]
    test = ev["test"]
    if test:
        ci = test.get("ci95") or {}
        out += [f"Test split ({test.get('n', '?')} images; {test.get('data', '')}):", "",
                f"- Accuracy {_f(test.get('accuracy'))}{_ci(ci.get('accuracy'))}",
                f"- Balanced accuracy {_f(test.get('balanced_accuracy'))}"
                f"{_ci(ci.get('balanced_accuracy'))}",
                f"- Macro F1 {_f(test.get('macro_f1'))}{_ci(ci.get('macro_f1'))}",
                f"- Macro ROC AUC {_f(test.get('macro_auc'))}",
                f"- Expected calibration error {_f(test.get('ece'))}"]
        per = test.get("per_class_f1") or {}
        if per:
            out += ["", "| class | test F1 | SNOMED CT |", "|---|---|---|"]
            for c in m["classes"]:
                code = concept(c).snomed
                out.append(f"| {c} | {_f(per.get(c))} | {code or 'none verified'} |")
    else:
        out.append("No test metrics yet: run `skin evaluate` on the run's test split.")
    val = ev["validation"]
    if val:
        out += ["", f"Validation: macro F1 {_f(val.get('macro_f1'))}, accuracy "
                f"{_f(val.get('accuracy'))} (used for model selection, so optimistic)."]
    cal = ev["calibration"]
    if cal:
        out += ["", f"Calibration: temperature {_f(cal.get('temperature'))} fitted on "
                f"{cal.get('n_val', '?')} validation images; validation ECE "
                f"{_f(cal.get('val_ece_before'))} -> {_f(cal.get('val_ece_after'))}."]
    if ev["uncertain_threshold"] is not None:
        out.append(f"Uncertain flag: top probability below {_f(ev['uncertain_threshold'])}"
                   + (f" ({ev['uncertain_rule']})" if ev["uncertain_rule"] else "") + ".")
    out += ["", "### Triage operating point", ""]
    tri = ev["triage"]
    if tri and tri.get("threshold") is not None:
        counted = tri["malignant"] + (tri.get("premalignant", [])
                                      if tri.get("count_premalignant") else [])
        out += [f"- Malignancy score: summed probability of {', '.join(counted)}"
                + (f"; pre-malignant (reported, not counted): {', '.join(tri['premalignant'])}"
                   if tri.get("premalignant") and not tri.get("count_premalignant") else ""),
                f"- Referral threshold {_f(tri['threshold'])}: fitted on the validation split "
                f"for {_f(tri['target_sensitivity'], True)} sensitivity ({tri.get('source', '')})"]
        for name, key in (("Validation", "validation"), ("Test", "test")):
            p = tri.get(key)
            if p:
                out.append(f"- {name}: sensitivity {_f(p['sensitivity'], True)}"
                           f"{_ci(p['sensitivity_ci95'], True)}, specificity "
                           f"{_f(p['specificity'], True)}{_ci(p['specificity_ci95'], True)}, "
                           f"{p['positives']} malignant / {p['negatives']} other images, "
                           f"referral rate {_f(p['referral_rate'], True)}")
        if not tri.get("test"):
            out.append("- Test: not yet measured (run `skin evaluate`).")
    else:
        out.append("Not fitted" + (f": {tri['reason']}" if tri and tri.get("reason") else "."))
    out += _answer_or_defer(ev.get("answer_or_defer"))
    sub = ev["subgroups"]
    dec = ev.get("decision") or {}
    out += ["", "### Decision rule", ""]
    if dec:
        out.append(f"- Answers by default with: {dec.get('description') or dec.get('rule')}.")
        if dec.get("training_prior"):
            prior = ", ".join(f"{c} {_f(v, True)}" for c, v in dec["training_prior"].items())
            out.append(f"- Training prior: {prior}.")
        out.append(f"- Rules with a fitted operating point: "
                   f"{', '.join(dec.get('stored_rules') or ['balanced'])} (`skin serve "
                   "--decision`, docs/decisions.md).")
    out += ["", "### Subgroups", ""]
    if sub and sub.get("attributes"):
        out.append(f"Test macro F1 per subgroup (overall {_f(sub.get('overall_macro_f1'))}; "
                   "95% bootstrap intervals; ! = interval wholly below the overall figure).")
        out += ["", "| attribute | value | images | macro F1 | 95% CI |", "|---|---|---|---|---|"]
        for attr, rows in sub["attributes"].items():
            for r in rows:
                ci = r.get("ci95")
                out.append(f"| {attr} | {'! ' if r.get('below_overall') else ''}{r['value']} | "
                           f"{r['n']} | {_f(r.get('macro_f1'))} | "
                           + (f"{_f(ci[0])}–{_f(ci[1])}" if ci else "-") + " |")
    else:
        out.append("No subgroup results (split with image metadata, then `skin evaluate`, "
                   "to add them).")
    out += ["", "## Known limitations", ""] + [f"- {x}" for x in card["limitations"]]
    out += ["", "## Clinical coding", "", "| class | SNOMED CT | display | group | source |",
            "|---|---|---|---|---|"]
    for row in card["coding"]:
        out.append(f"| {row['class']} | {row['snomed_ct'] or '-'} | {row['display']} | "
                   f"{row['group']} | {row['source']} |")
    return "\n".join(out) + "\n"


def write(run_dir: str | Path, info: RunInfo | None = None) -> tuple[Path, Path]:
    """Write MODEL_CARD.md and model_card.json into the run folder (atomically)."""
    run_dir = Path(run_dir)
    card = build(run_dir, info)
    md = write_text(run_dir / CARD_MD, markdown(card))
    js = write_json(run_dir / CARD_JSON, card)
    return md, js


def _answer_or_defer(op: dict[str, Any] | None) -> list[str]:
    """The card's answer-or-defer section: thresholds, validation and test figures."""
    out = ["", "### Answer or defer", ""]
    if not op:
        return out + ["No operating point: every image is answered (`skin evaluate "
                      "--defer-target 0.85` fits one on validation)."]
    v = op["validation"]
    out += ["- The model answers an image when its top calibrated probability reaches the "
            "threshold of the predicted class; otherwise it is **deferred to a "
            "dermatologist**. A triage referral stands either way.",
            f"- Fitted on {op['n_val']} validation images for balanced accuracy and macro F1 >= "
            f"{_f(op['target'])}, every class recall >= {_f(op['recall_floor'])} and coverage "
            f">= {_f(op['coverage_floor'], True)}: answers {_f(v['coverage'], True)} "
            f"(balanced accuracy {_f(v['balanced_accuracy'])}, macro F1 {_f(v['macro_f1'])}).",
            "- Thresholds: " + ", ".join(
                f"{c} {'never' if t is None else _f(t)}" for c, t in op["thresholds"].items())]
    t = op.get("test")
    if t:
        out.append(f"- Test: answers {_f(t['coverage'], True)} ({t['n_accepted']} images), "
                   f"balanced accuracy {_f(t['balanced_accuracy'])}"
                   f"{_ci(t.get('balanced_accuracy_ci95'))}, macro F1 {_f(t['macro_f1'])}"
                   f"{_ci(t.get('macro_f1_ci95'))}; target "
                   + ("met (95% lower bounds clear it)." if t["met"] else "not met on the "
                      "95% lower bounds."))
    else:
        out.append("- Test: not yet measured (run `skin evaluate --defer-target`).")
    return out
