"""Several data sources pooled into one data set: a clinic's folder beside HAM10000 and the
ISIC archive, each listed in its own layout, its class names mapped onto one set of classes,
and every image keeping the name of the source it came from (the `source` column).

Sources come from the command line (`skin split DATA1 DATA2 ...`) or a small YAML file
(`--sources FILE`)::

    classes: [melanoma, nevus, ...]        # optional: the pooled classes (default below)
    metadata: isic_metadata.csv            # optional: one file covering every source
    sources:
      - path: clinic                       # relative to this file's folder
        name: our-clinic                   # default: the folder's name (a CSV's stem)
      - path: HAM10000/HAM10000_metadata.csv
        layout: csv                        # optional check: folders, kaggle or csv
        images: HAM10000/images            # a CSV's image folder
        class_map: {bkl: pigmented benign keratosis, akiec: actinic keratosis}
        metadata: HAM10000/HAM10000_metadata.csv

Class names resolve per source: its own `class_map`, then a pooled class of that name, then
the built-in code table of skincli.data.metadata (HAM10000 `nv` is nevus), then a pooled class
differing only in case. Without `classes:` the pooled classes are the built-in class names
plus whatever sources without a `class_map` bring. A label that resolves to nothing is kept
under its own name and reported, or dropped with `drop_unmapped`.

The pooled set's root is the sources' common folder, so a split file's paths stay relative
(Train/ and Test/ given as two sources list exactly as the Train/Test layout does).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from skincli.data.dataset import Dataset, Entry, load_dataset
from skincli.errors import SkinError, did_you_mean

SOURCE_KEYS = ("path", "name", "layout", "metadata", "class_map", "images", "label_col",
               "image_col", "group_col")
FILE_KEYS = ("sources", "classes", "metadata")
LAYOUTS = ("folders", "kaggle", "csv")


@dataclass
class SourceSpec:
    """One source as the user gave it."""

    path: Path
    name: str = ""
    layout: str = ""                       # a check, not a choice: "" accepts what is found
    metadata: Path | None = None
    class_map: dict[str, str] = field(default_factory=dict)
    images: Path | None = None
    label_col: str | None = None
    image_col: str | None = None
    group_col: str | None = None

    @property
    def label(self) -> str:
        """The source's name: given, else its folder's name (a CSV file's stem)."""
        if self.name:
            return self.name
        p = Path(os.path.abspath(self.path.expanduser()))
        return p.stem if p.suffix.lower() == ".csv" else p.name


@dataclass
class SourcesPlan:
    """Sources plus the pool-wide settings (the class list, when given)."""

    specs: list[SourceSpec]
    classes: list[str] | None = None


# --- reading what the user gave ------------------------------------------------------------------

def _class_map(value: Any, where: str) -> dict[str, str]:
    """A YAML mapping {code: class} or a list of 'CODE=CLASS' strings -> {code (lower): class}."""
    from skincli.data.metadata import parse_class_map

    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k).strip().lower(): "" if v is None else str(v).strip()
                for k, v in value.items()}
    if isinstance(value, list):
        return parse_class_map([str(v) for v in value])
    raise SkinError(f"{where}: class_map must be a mapping (code: class) or a list of "
                    f"CODE=CLASS, not {type(value).__name__}",
                    hint="e.g. class_map: {bkl: pigmented benign keratosis}")


def _check_keys(given: dict[str, Any], allowed: Sequence[str], where: str) -> None:
    for key in given:
        if key not in allowed:
            raise SkinError(f"{where}: unknown key '{key}'.{did_you_mean(str(key), allowed)}",
                            hint=f"Keys: {', '.join(allowed)}")


def read_sources_file(path: str | os.PathLike[str]) -> SourcesPlan:
    """Read a sources YAML file (see the module docstring); paths are relative to its folder."""
    import yaml

    p = Path(path).expanduser()
    if not p.is_file():
        raise SkinError(f"Sources file {p} does not exist", hint="Pass --sources FILE.yaml")
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SkinError(f"Sources file {p} cannot be read as YAML "
                        f"({str(exc).splitlines()[0]})") from exc
    if isinstance(doc, list):
        doc = {"sources": doc}
    if not isinstance(doc, dict) or not isinstance(doc.get("sources"), list) \
            or not doc["sources"]:
        raise SkinError(f"Sources file {p} lists no sources",
                        hint="Write 'sources:' and one '- path: FOLDER' per source")
    _check_keys(doc, FILE_KEYS, f"sources file {p.name}")
    base = p.parent

    def resolve(value: Any) -> Path:
        q = Path(str(value)).expanduser()
        return q if q.is_absolute() else base / q

    shared_meta = resolve(doc["metadata"]) if doc.get("metadata") else None
    specs = []
    for i, item in enumerate(doc["sources"], 1):
        where = f"sources file {p.name}, source {i}"
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict) or not item.get("path"):
            raise SkinError(f"{where} has no path", hint="Each source needs 'path: FOLDER'")
        _check_keys(item, SOURCE_KEYS, where)
        layout = str(item.get("layout") or "")
        if layout and layout not in LAYOUTS:
            raise SkinError(f"{where}: unknown layout '{layout}'.{did_you_mean(layout, LAYOUTS)}",
                            hint=f"Use one of: {', '.join(LAYOUTS)}")
        specs.append(SourceSpec(
            path=resolve(item["path"]), name=str(item.get("name") or ""), layout=layout,
            metadata=resolve(item["metadata"]) if item.get("metadata") else shared_meta,
            class_map=_class_map(item.get("class_map"), where),
            images=resolve(item["images"]) if item.get("images") else None,
            **{k: str(item[k]) if item.get(k) else None
               for k in ("label_col", "image_col", "group_col")}))
    classes = doc.get("classes")
    if classes is not None and (not isinstance(classes, list) or not classes):
        raise SkinError(f"Sources file {p}: classes must be a list of class names",
                        hint="e.g. classes: [melanoma, nevus]")
    return SourcesPlan(specs, [str(c) for c in classes] if classes else None)


def plan_sources(data: Sequence[str | os.PathLike[str]], metadata: Sequence[str | os.PathLike[str]]
                 = (), sources_file: str | os.PathLike[str] | None = None) -> SourcesPlan:
    """Sources from the command line (DATA ... and --metadata FILE ...) and a sources file.

    One --metadata covers every source that has none of its own; as many as DATA arguments
    pair with them in order.
    """
    plan = read_sources_file(sources_file) if sources_file else SourcesPlan([])
    given = [SourceSpec(Path(d)) for d in data]
    meta = [Path(m) for m in metadata]
    if len(meta) > 1 and len(meta) != len(given):
        raise SkinError(f"{len(meta)} --metadata files for {len(given)} DATA sources",
                        hint="Give one --metadata for every source, or one per DATA in order "
                        "(per-source files also go in a --sources file)")
    for i, spec in enumerate(given):
        if meta:
            spec.metadata = meta[i] if len(meta) > 1 else meta[0]
    if len(meta) == 1:
        for spec in plan.specs:
            spec.metadata = spec.metadata or meta[0]
    plan.specs = given + plan.specs
    if not plan.specs:
        raise SkinError("No data given", hint="Pass DATA folders, or --sources FILE")
    return plan


def check_specs(specs: Sequence[SourceSpec]) -> None:
    """Every path exists and every name is unique (before anything is read)."""
    seen: dict[str, Path] = {}
    for spec in specs:
        if not spec.path.expanduser().exists():
            raise SkinError(f"Source path {spec.path} does not exist",
                            hint="Pass a folder of class folders, a Train/Test folder or a CSV")
        if spec.metadata is not None and not spec.metadata.expanduser().is_file():
            raise SkinError(f"Metadata file {spec.metadata} of source {spec.label} does not "
                            "exist or is not a file")
        name = spec.label
        if name in seen:
            raise SkinError(f"Two sources are named '{name}' ({seen[name]} and {spec.path})",
                            hint="Name them in a --sources file (name: ...)")
        seen[name] = spec.path


# --- class names -------------------------------------------------------------------------------

def _default_names() -> set[str]:
    from skincli.data.metadata import DEFAULT_CLASS_MAP

    return {v for v in DEFAULT_CLASS_MAP.values() if v}


def resolve_label(label: str, mapping: dict[str, str], known: set[str]) -> str | None:
    """A source's label as a pooled class; "" = maps to no class on purpose, None = unknown."""
    from skincli.data.metadata import DEFAULT_CLASS_MAP

    low = label.lower()
    if low in mapping:
        return mapping[low]
    if label in known:
        return label
    if low in DEFAULT_CLASS_MAP and (DEFAULT_CLASS_MAP[low] in known or not
                                     DEFAULT_CLASS_MAP[low]):
        return DEFAULT_CLASS_MAP[low]
    by_case = {k.lower(): k for k in known}
    return by_case.get(low)


def _known_classes(plan: SourcesPlan, listed: list[tuple[SourceSpec, Dataset]],
                   shared: dict[str, str]) -> set[str]:
    if plan.classes:
        return set(plan.classes)
    known = _default_names()
    for spec, ds in listed:
        if spec.class_map:
            continue
        for label in ds.classes:
            if resolve_label(label, shared, known) is None:
                known.add(label)
    return known


def _check_targets(name: str, mapping: dict[str, str], known: set[str]) -> None:
    for code, target in mapping.items():
        if target and target not in known:
            raise SkinError(f"Source {name}: class map sends '{code}' to '{target}', which is "
                            f"not a class.{did_you_mean(target, sorted(known))}",
                            hint="Map to one of: " + ", ".join(sorted(known))
                            + " (or list the classes under 'classes:' in the sources file)")


# --- the pooled data set -------------------------------------------------------------------------

def load_sources(plan: SourcesPlan, *, labels: str | None = None, group: str | None = None,
                 class_map: dict[str, str] | None = None, drop_unmapped: bool = False,
                 min_classes: int = 2) -> Dataset:
    """List every source, map its class names and join its metadata into one Dataset.

    Raises SkinError (before reading any image) for a missing path, two sources of one name,
    a declared layout that is not what the folder holds, or a map to an unknown class.
    """
    from skincli.data import metadata as md

    md.check_choices(labels, group)
    specs = plan.specs
    check_specs(specs)
    if (labels or group) and not any(s.metadata for s in specs):
        given = " and ".join(f for f, v in (("--labels", labels), ("--group", group)) if v)
        raise SkinError(f"{given} need(s) --metadata FILE",
                        hint="Pass the metadata CSV the images came with, or drop the option")
    shared = {k.lower(): v for k, v in (class_map or {}).items()}
    listed: list[tuple[SourceSpec, Dataset]] = []
    for spec in specs:
        try:
            ds = load_dataset(spec.path, csv_image_dir=spec.images, label_col=spec.label_col,
                              image_col=spec.image_col, group_col=spec.group_col, min_classes=1)
        except SkinError as exc:
            raise SkinError(f"Source {spec.label}: {exc.message}", hint=exc.hint) from exc
        if spec.layout and spec.layout != ds.layout:
            raise SkinError(f"Source {spec.label} is declared layout '{spec.layout}' but "
                            f"{spec.path} holds {ds.describe()}",
                            hint=f"Set layout: {ds.layout}, or drop the layout key")
        listed.append((spec, ds))
    known = _known_classes(plan, listed, shared)
    _check_targets("(--class-map)", shared, known)
    roots = [Path(os.path.abspath(ds.root)) for _, ds in listed]
    common = Path(os.path.commonpath([str(r) for r in roots]))
    entries: list[Entry] = []
    skipped: list[dict[str, str]] = []
    infos: list[dict[str, Any]] = []
    joins: dict[tuple[str, tuple[tuple[str, str], ...]], list[int]] = {}
    for spec, ds in listed:
        name = spec.label
        mapping = {**shared, **spec.class_map}
        _check_targets(name, spec.class_map, known)
        resolved = {lab: resolve_label(lab, mapping, known) for lab in ds.classes}
        unmapped = sorted(lab for lab, to in resolved.items() if not to)
        counts = {lab: 0 for lab in ds.classes}
        lesion_column = ds.columns.get("group", "").strip().lower() == "lesion_id"
        start = len(entries)
        for e in ds.entries:
            counts[e.label] += 1
            to = resolved[e.label]
            rel = _reroot(e.path, ds.root, common)
            if not to and drop_unmapped:
                skipped.append({"path": rel, "source": name, "reason": f"class '{e.label}' of "
                                f"source {name} maps to no class (--drop-unmapped)"})
                continue
            entries.append(replace(e, path=rel, label=to or e.label, source=name,
                                   **_pooled_group(e, lesion_column, name)))
        skipped += [{**s, "path": _reroot(s["path"], ds.root, common), "source": name}
                    for s in ds.skipped]
        if spec.metadata is not None:
            key = (str(spec.metadata.expanduser().resolve()), tuple(sorted(mapping.items())))
            joins.setdefault(key, []).extend(range(start, len(entries)))
        warnings = [f"class '{lab}' of source {name} ({counts[lab]} image"
                    f"{'s' if counts[lab] != 1 else ''}) maps to no class: "
                    + ("dropped (--drop-unmapped)" if drop_unmapped else
                       "kept under its own name (map it with class_map, or --drop-unmapped)")
                    for lab in unmapped]
        infos.append({"name": name, "path": os.path.abspath(spec.path.expanduser()),
                      "root": str(ds.root),
                      "layout": ds.layout, "layout_description": ds.describe(),
                      "images": len(ds.entries), "skipped": len(ds.skipped),
                      "metadata": str(spec.metadata or ""),
                      "class_mapping": {lab: to for lab, to in resolved.items()
                                        if to and to != lab},
                      "unmapped": [{"class": lab, "images": counts[lab],
                                    "dropped": drop_unmapped} for lab in unmapped],
                      "warnings": warnings})
    join_reports = []
    for (meta_path, mapping_items), rows in joins.items():
        meta = md.load_metadata(meta_path, dict(mapping_items),
                                known_classes=sorted(known | {entries[i].label for i in rows}))
        joined, report = md.join([entries[i] for i in rows], meta, labels or "metadata",
                                 group or "lesion")
        for i, e in zip(rows, joined, strict=True):
            entries[i] = e
        join_reports.append(report.to_dict())
    pooled = Dataset(root=common, layout="sources", entries=entries, source=common,
                     skipped=skipped, metadata=merge_joins(join_reports), sources=infos)
    for info in infos:
        info["classes"] = sorted({e.label for e in entries if e.source == info["name"]})
    _check_pooled(pooled, min_classes)
    return pooled


def _pooled_group(e: Entry, lesion_column: bool, source: str) -> dict[str, str]:
    """A CSV's group id in the pooled set: a lesion id (HAM10000's lesion_id column) is one
    lesion in every source, spelled as the metadata join spells it; any other group id
    (a clinic's patient 17) means something only within its own source."""
    if not e.group:
        return {}
    if lesion_column:
        return {"group": f"lesion:{e.group}", "lesion_id": e.group}
    return {"group": f"{source}:{e.group}"}


def _reroot(path: str, root: Path, common: Path) -> str:
    p = Path(path)
    if p.is_absolute():
        return p.as_posix()
    return Path(os.path.relpath(Path(os.path.abspath(root)) / p, common)).as_posix()


def _check_pooled(ds: Dataset, min_classes: int) -> None:
    if not ds.entries:
        raise SkinError("No images found in any source",
                        hint="Expected class folders, a Train/Test folder or a labelled CSV")
    if len(ds.classes) < min_classes:
        raise SkinError(f"Only {len(ds.classes)} class found across the sources; a classifier "
                        f"needs at least {min_classes}",
                        hint="Check each source's class folders or class_map")


def merge_joins(parts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One join report (JoinReport.to_dict()) from several metadata joins."""
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    out = dict(parts[0])
    metas = [p["metadata"] for p in parts]
    out["metadata"] = {**metas[0], "path": ", ".join(m["path"] for m in metas),
                       "format": ", ".join(dict.fromkeys(m["format"] for m in metas)),
                       "ids": sum(m["ids"] for m in metas), "files": metas}
    for key in ("matched_images", "images_without_row", "rows_without_image",
                "matched_without_diagnosis", "disagreements"):
        out[key] = sum(int(p.get(key, 0)) for p in parts)
    for key in ("images_without_row_list", "rows_without_image_list", "disagreement_list",
                "emptied_classes", "warnings"):
        out[key] = [x for p in parts for x in p.get(key, [])]
    confusion: dict[str, dict[str, int]] = {}
    for p in parts:
        for folder, by_dx in p.get("folder_vs_metadata", {}).items():
            for dx, n in by_dx.items():
                confusion.setdefault(folder, {}).setdefault(dx, 0)
                confusion[folder][dx] += n
    out["folder_vs_metadata"] = confusion
    return out

# --- the split of pooled sources (skincli.data.split) ------------------------------------------

def check_test_source(name: str, df: pd.DataFrame, keep_given_test: bool) -> None:
    """--test-source names one of several pooled sources, and is not combined with
    --keep-given-test."""
    if keep_given_test:
        raise SkinError("--test-source and --keep-given-test both choose the test split",
                        hint="Use one of them")
    names = sorted(set(df["source"]) - {""})
    if len(names) < 2:
        raise SkinError(f"--test-source {name} needs two or more sources",
                        hint="Pass several DATA folders (or --sources FILE)")
    if name not in names:
        raise SkinError(f"--test-source {name} names no source.{did_you_mean(name, names)}",
                        hint=f"Sources: {', '.join(names)}")


def check_training_classes(counts: pd.DataFrame, test_source: str) -> None:
    """Holding a source out must leave every one of its classes something to learn from."""
    empty = [c for c in counts.index if int(counts.loc[c, "train"]) == 0]
    if empty:
        c = empty[0]
        raise SkinError(f"--test-source {test_source} leaves class '{c}' with no training image"
                        f" ({int(counts.loc[c, 'test'])} in {test_source}, none elsewhere)"
                        + (f"; also {', '.join(empty[1:])}" if len(empty) > 1 else ""),
                        hint="Hold out another source, or add images of the class elsewhere")


def source_summary(sources: list[dict[str, Any]], frame: pd.DataFrame,
                   splits: Sequence[str]) -> dict[str, Any]:
    """Per pooled source: where it is, how it was read, and its images per split."""
    if not sources:
        return {}
    table = pd.crosstab(frame["source"], frame["split"]).reindex(columns=list(splits),
                                                                 fill_value=0)
    out = {}
    for s in sources:
        name = s["name"]
        row = {sp: int(table.loc[name, sp]) if name in table.index else 0 for sp in splits}
        out[name] = {"path": s.get("path", ""), "layout": s.get("layout", ""),
                     "metadata": s.get("metadata", ""), "listed": s.get("images", 0),
                     "class_mapping": s.get("class_mapping", {}),
                     "unmapped": s.get("unmapped", []), **row, "total": sum(row.values())}
    return out
