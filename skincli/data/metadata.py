"""Image metadata: the archive's record of each image as the source of labels, groups and
subgroups.

One reader for the files users have beside ISIC or HAM10000 images, detected from the header:

- the ISIC archive export: ``isic_id, diagnosis, lesion_id, patient_id, age_approx, sex,
  anatom_site_general, diagnosis_confirm_type, ...``;
- ``HAM10000_metadata.csv``: ``image_id, dx, dx_type, lesion_id, age, sex, localization``;
- the ISIC challenge one-hot ground truth: ``image, MEL, NV, BCC, AK, BKL, DF, VASC, SCC[, UNK]``
  (2018: ``AKIEC`` instead of ``AK``/``SCC``).

Rows join to images by id = file stem, case-insensitively; a copy's suffix is ignored
(``ISIC_0025509(1).jpg`` is ``ISIC_0025509``). Diagnosis codes map to class names through one
table (`DEFAULT_CLASS_MAP`) that ``--class-map CODE=CLASS`` overrides.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from skincli.errors import SkinError
from skincli.imageio import IMAGE_SUFFIXES

FORMATS = ("isic-archive", "ham10000", "isic-challenge")
LABEL_SOURCES = ("metadata", "folder")
GROUP_LEVELS = ("lesion", "patient")
# The normalised columns every format is read into ("" where the file has no value).
COLUMNS = ["image_id", "diagnosis", "code", "lesion_id", "patient_id", "age", "sex", "site",
           "confirm_type"]

# Diagnosis codes and names of the three formats -> the class names of this project (the
# 9-class ISIC collection's folder names). Keys are lower case. A value of "" means "no
# diagnosis" (the row still gives groups and subgroups, the image keeps its folder label).
DEFAULT_CLASS_MAP: dict[str, str] = {
    # HAM10000 / ISIC 2018-2019 challenge codes
    "akiec": "actinic keratosis",   # HAM10000 files most SCC under akiec (see data README)
    "ak": "actinic keratosis",
    "bcc": "basal cell carcinoma",
    "bkl": "pigmented benign keratosis",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "nevus",
    "scc": "squamous cell carcinoma",
    "vasc": "vascular lesion",
    "unk": "",
    # ISIC archive diagnosis names
    "actinic keratosis": "actinic keratosis",
    "basal cell carcinoma": "basal cell carcinoma",
    "dermatofibroma": "dermatofibroma",
    "melanoma": "melanoma",
    "melanoma metastasis": "melanoma",
    "nevus": "nevus",
    "melanocytic nevus": "nevus",
    "pigmented benign keratosis": "pigmented benign keratosis",
    "benign keratosis": "pigmented benign keratosis",
    "solar lentigo": "pigmented benign keratosis",
    "lentigo nos": "pigmented benign keratosis",
    "lichenoid keratosis": "pigmented benign keratosis",
    "seborrheic keratosis": "seborrheic keratosis",
    "squamous cell carcinoma": "squamous cell carcinoma",
    "vascular lesion": "vascular lesion",
    "unknown": "",
    "other": "",
}

# Header columns that identify each format (lower case), and where its fields are.
_ARCHIVE = {"image_id": "isic_id", "diagnosis": "diagnosis", "lesion_id": "lesion_id",
            "patient_id": "patient_id", "age": "age_approx", "sex": "sex",
            "site": "anatom_site_general", "confirm_type": "diagnosis_confirm_type"}
_HAM = {"image_id": "image_id", "diagnosis": "dx", "lesion_id": "lesion_id",
        "patient_id": "patient_id", "age": "age", "sex": "sex", "site": "localization",
        "confirm_type": "dx_type"}
_CHALLENGE_ID = "image"
# ISIC 2019/2020 challenge metadata (no diagnosis: it comes in the ground-truth file).
_CHALLENGE_META = {"image_id": "image", "diagnosis": "diagnosis", "lesion_id": "lesion_id",
                   "patient_id": "patient_id", "age": "age_approx", "sex": "sex",
                   "site": "anatom_site_general", "confirm_type": "diagnosis_confirm_type"}
_CHALLENGE_CODES = ("mel", "nv", "bcc", "ak", "akiec", "bkl", "df", "vasc", "scc", "unk")
# A copy's suffix: "ISIC_0025509(1)", "ISIC_0025509 (2)", "ISIC_0025509 copy".
_COPY_SUFFIX = re.compile(r"(\s*\(\d+\)|\s+copy(\s*\d+)?)$", re.IGNORECASE)


@dataclass
class Metadata:
    """A read metadata file: one normalised row per image id (see COLUMNS)."""

    path: Path
    sha256: str
    format: str
    table: pd.DataFrame                      # indexed by the lower-case image id
    class_map: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    duplicate_rows: int = 0                  # repeated ids with the same diagnosis (merged)

    @property
    def has_diagnosis(self) -> int:
        """How many ids carry a diagnosis."""
        return int((self.table["diagnosis"] != "").sum())

    def describe(self) -> dict[str, Any]:
        """What the run folder and reports record about the file."""
        return {"path": str(self.path), "sha256": self.sha256, "format": self.format,
                "ids": int(len(self.table)), "with_diagnosis": self.has_diagnosis,
                "with_lesion_id": int((self.table["lesion_id"] != "").sum()),
                "with_patient_id": int((self.table["patient_id"] != "").sum())}


def image_id(name: str) -> str:
    """The metadata id of an image file name or path: its stem without a copy suffix."""
    stem = Path(str(name).replace("\\", "/")).name
    if Path(stem).suffix.lower() in IMAGE_SUFFIXES or Path(stem).suffix.lower() == ".dcm":
        stem = Path(stem).stem
    return _COPY_SUFFIX.sub("", stem.strip()).lower()


def parse_class_map(items: list[str] | None) -> dict[str, str]:
    """`["bkl=pigmented benign keratosis", ...]` -> {code: class}; a bad item is a SkinError."""
    out: dict[str, str] = {}
    for item in items or []:
        code, sep, name = str(item).partition("=")
        if not sep or not code.strip():
            raise SkinError(f"--class-map {item!r} is not CODE=CLASS",
                            hint="e.g. --class-map 'bkl=pigmented benign keratosis' (an empty "
                            "CLASS means: no diagnosis)")
        out[code.strip().lower()] = name.strip()
    return out


def load_metadata(path: str | Path, class_map: dict[str, str] | None = None,
                  known_classes: Sequence[str] = (), require_diagnosis: bool = True) -> Metadata:
    """Read a metadata CSV in any of the FORMATS; raise SkinError for anything unusable.

    A diagnosis not in the class table that names one of `known_classes` (the data set's own
    class folders, any case) is taken as that class. Without `require_diagnosis` (metadata of
    images to predict) a file without a diagnosis column is read for its age, sex and site,
    including the ISIC challenge metadata file (``image, age_approx, anatom_site_general,
    lesion_id, sex``).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise SkinError(f"Metadata file {p} does not exist or is not a file",
                        hint="Pass --metadata with the CSV the images came with (e.g. the ISIC "
                        "archive export or HAM10000_metadata.csv)")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise SkinError(f"Cannot read metadata file {p}: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SkinError(f"Metadata file {p} is not UTF-8 text (byte {exc.start}: "
                        f"0x{raw[exc.start]:02x})",
                        hint="Save it as UTF-8 CSV (e.g. from a spreadsheet: CSV UTF-8)") from exc
    try:
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False,
                            skipinitialspace=True)
    except pd.errors.EmptyDataError as exc:
        raise SkinError(f"Metadata file {p} is empty",
                        hint="Give it a header row and one row per image") from exc
    except pd.errors.ParserError as exc:
        raise SkinError(f"Metadata file {p} cannot be parsed as CSV "
                        f"({str(exc).splitlines()[0]})",
                        hint="Check it is a comma-separated text file") from exc
    mapping = {**{c.lower(): c for c in known_classes}, **DEFAULT_CLASS_MAP, **(class_map or {})}
    fmt, norm = _normalise(table, p, mapping, require_diagnosis)
    meta = Metadata(path=p.resolve(), sha256=hashlib.sha256(raw).hexdigest(), format=fmt,
                    table=norm, class_map=mapping)
    _dedupe(meta)
    return meta


def _normalise(table: pd.DataFrame, p: Path, mapping: dict[str, str],
               require_diagnosis: bool = True) -> tuple[str, pd.DataFrame]:
    columns = [str(c) for c in table.columns]
    lower = {c.strip().lower(): c for c in columns}
    found = ", ".join(columns[:12]) + (", ..." if len(columns) > 12 else "")
    if "isic_id" in lower:
        fmt, fields = "isic-archive", _ARCHIVE
    elif "image_id" in lower and ("dx" in lower or not require_diagnosis):
        fmt, fields = "ham10000", _HAM
    elif _CHALLENGE_ID in lower and any(c in lower for c in _CHALLENGE_CODES):
        return "isic-challenge", _from_one_hot(table, lower, p, mapping)
    elif _CHALLENGE_ID in lower and not require_diagnosis:
        fmt, fields = "isic-challenge-metadata", _CHALLENGE_META
    elif "image_id" in lower or _CHALLENGE_ID in lower:
        raise SkinError(f"Metadata file {p} has no diagnosis column (found: {found})",
                        hint="Expected 'dx' (HAM10000), 'diagnosis' with 'isic_id' (ISIC "
                        "archive) or one-hot class columns MEL, NV, BCC... (ISIC challenge)")
    else:
        raise SkinError(f"Metadata file {p} has no image id column (found: {found})",
                        hint="Expected 'isic_id' (ISIC archive export), 'image_id' "
                        "(HAM10000_metadata.csv) or 'image' (ISIC challenge ground truth)")
    if fields["diagnosis"] not in lower and require_diagnosis:
        raise SkinError(f"Metadata file {p} has no diagnosis column '{fields['diagnosis']}' "
                        f"(found: {found})",
                        hint="Export the metadata with the diagnosis column")
    out = pd.DataFrame({name: (table[lower[col]].astype(str).str.strip() if col in lower
                               else "") for name, col in fields.items()})
    out["code"] = out["diagnosis"]
    # Metadata of images to predict: the diagnosis (if any) is not used, so not checked.
    out["diagnosis"] = _map_codes(out["code"], p, mapping) if require_diagnosis else ""
    return fmt, _finish(out, p)


def _from_one_hot(table: pd.DataFrame, lower: dict[str, str], p: Path,
                  mapping: dict[str, str]) -> pd.DataFrame:
    codes = [c for c in lower if c != _CHALLENGE_ID and c not in ("lesion_id", "patient_id",
                                                                  "age_approx", "sex",
                                                                  "anatom_site_general")]
    try:
        values = table[[lower[c] for c in codes]].apply(pd.to_numeric, errors="raise")
    except (ValueError, TypeError) as exc:
        raise SkinError(f"Metadata file {p} looks like one-hot ground truth but its class "
                        f"columns are not numbers ({exc})",
                        hint="Each class column (MEL, NV, ...) must hold 0 or 1") from exc
    best = values.to_numpy().argmax(axis=1)
    # A row with no 1 (all zeros) has no diagnosis.
    has = values.to_numpy().max(axis=1) > 0
    code = pd.Series([codes[i].upper() if h else "" for i, h in zip(best, has)],
                     index=table.index)
    out = pd.DataFrame({"image_id": table[lower[_CHALLENGE_ID]].astype(str).str.strip(),
                        "code": code})
    for name, col in (("lesion_id", "lesion_id"), ("patient_id", "patient_id"),
                      ("age", "age_approx"), ("sex", "sex"), ("site", "anatom_site_general")):
        out[name] = table[lower[col]].astype(str).str.strip() if col in lower else ""
    out["confirm_type"] = ""
    out["diagnosis"] = _map_codes(out["code"], p, mapping)
    return _finish(out, p)


def _map_codes(codes: pd.Series, p: Path, mapping: dict[str, str]) -> pd.Series:
    present = sorted({c for c in codes if c})
    unknown = [c for c in present if c.lower() not in mapping]
    if unknown:
        raise SkinError(f"Metadata file {p} has diagnosis code(s) with no class: "
                        f"{', '.join(unknown[:8])}{', ...' if len(unknown) > 8 else ''} "
                        f"(codes found: {', '.join(present[:16])})",
                        hint="Map each with --class-map CODE=CLASS (or class-map: in the YAML "
                        "config); an empty CLASS means no diagnosis")
    return codes.map(lambda c: mapping.get(c.lower(), "") if c else "")


def _finish(out: pd.DataFrame, p: Path) -> pd.DataFrame:
    out = out.reindex(columns=COLUMNS, fill_value="").fillna("").astype(str)
    out["sex"] = out["sex"].str.lower()
    out["site"] = out["site"].str.lower()
    out["age"] = out["age"].str.replace(r"\.0$", "", regex=True)
    out["key"] = out["image_id"].map(image_id)
    out = out[out["key"] != ""]
    if out.empty:
        raise SkinError(f"Metadata file {p} has no rows with an image id",
                        hint="Add one row per image")
    return out


def _dedupe(meta: Metadata) -> None:
    """Merge repeated ids with one diagnosis; stop on an id with two different diagnoses."""
    t = meta.table
    labels = t[t["diagnosis"] != ""].groupby("key")["diagnosis"].nunique()
    clash = labels[labels > 1]
    if len(clash):
        key = clash.index[0]
        rows = t[t["key"] == key]
        raise SkinError(f"Metadata file {meta.path} lists {len(clash)} image id(s) more than "
                        f"once with different diagnoses, e.g. {rows['image_id'].iloc[0]}: "
                        f"{' vs '.join(sorted(set(rows['diagnosis']) - {''}))}",
                        hint="Keep one row per image id (the true diagnosis)")
    before = len(t)
    # A row with a diagnosis wins over a repeat without one.
    t = t.assign(_has=(t["diagnosis"] != "")).sort_values("_has", ascending=False,
                                                          kind="stable")
    t = t.drop_duplicates("key").drop(columns="_has").set_index("key", drop=True)
    meta.duplicate_rows = before - len(t)
    if meta.duplicate_rows:
        meta.warnings.append(f"{meta.duplicate_rows} repeated image id row(s) in "
                             f"{meta.path.name} with the same diagnosis were merged")
    meta.table = t


# --- the join ---------------------------------------------------------------------------------

@dataclass
class JoinReport:
    """What joining metadata to a listed data set found."""

    metadata: dict[str, Any]
    labels: str
    group: str
    matched: int = 0
    without_row: list[str] = field(default_factory=list)       # image paths
    rows_without_image: list[str] = field(default_factory=list)  # metadata ids
    without_diagnosis: int = 0
    disagreements: list[dict[str, str]] = field(default_factory=list)
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)  # folder -> metadata
    emptied_classes: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for report.json and split.json)."""
        return {"metadata": self.metadata, "labels": self.labels, "group": self.group,
                "matched_images": self.matched,
                "images_without_row": len(self.without_row),
                "images_without_row_list": self.without_row,
                "rows_without_image": len(self.rows_without_image),
                "rows_without_image_list": self.rows_without_image,
                "matched_without_diagnosis": self.without_diagnosis,
                "disagreements": len(self.disagreements),
                "disagreement_list": self.disagreements,
                "folder_vs_metadata": self.confusion,
                "emptied_classes": self.emptied_classes, "warnings": self.warnings}


def check_choices(labels: str | None, group: str | None) -> None:
    """Validate --labels and --group values."""
    if labels is not None and labels not in LABEL_SOURCES:
        raise SkinError(f"Unknown --labels {labels!r}",
                        hint=f"Use one of: {', '.join(LABEL_SOURCES)}")
    if group is not None and group not in GROUP_LEVELS:
        raise SkinError(f"Unknown --group {group!r}",
                        hint=f"Use one of: {', '.join(GROUP_LEVELS)}")


def join(entries: list[Any], meta: Metadata, labels: str = "metadata",
         group: str = "lesion") -> tuple[list[Any], JoinReport]:
    """Join metadata rows to dataset entries (skincli.data.dataset.Entry).

    Returns new entries whose `label` is the metadata diagnosis (labels="metadata", where the
    row has one) or the folder's, `folder_label` the listed label, `group` the lesion (or
    patient) id, and the subgroup fields filled; plus a JoinReport.
    """
    from dataclasses import replace

    check_choices(labels, group)
    t = meta.table
    report = JoinReport(metadata=meta.describe(), labels=labels, group=group)
    used: set[str] = set()
    out = []
    confusion: dict[str, dict[str, int]] = {}
    for e in entries:
        key = image_id(e.path)
        folder = e.label
        if key not in t.index:
            report.without_row.append(e.path)
            out.append(replace(e, folder_label=folder, image_id=key))
            continue
        used.add(key)
        report.matched += 1
        row = t.loc[key]
        dx = row["diagnosis"]
        if not dx:
            report.without_diagnosis += 1
        else:
            confusion.setdefault(folder, {}).setdefault(dx, 0)
            confusion[folder][dx] += 1
            if dx != folder:
                report.disagreements.append({"path": e.path, "folder": folder,
                                             "metadata": dx, "image_id": row["image_id"]})
        label = dx if (labels == "metadata" and dx) else folder
        unit = _group_of(row, key, group) or e.group
        out.append(replace(e, label=label, folder_label=folder, group=unit, image_id=key,
                           lesion_id=row["lesion_id"], patient_id=row["patient_id"],
                           age=row["age"], sex=row["sex"], site=row["site"]))
    report.rows_without_image = sorted(t.loc[sorted(set(t.index) - used), "image_id"])
    report.confusion = {f: dict(sorted(m.items())) for f, m in sorted(confusion.items())}
    # A folder class that holds none of its own class by the metadata.
    used_labels = {x.label for x in out}
    for folder, by_dx in report.confusion.items():
        if labels == "metadata" and by_dx.get(folder, 0) == 0 and folder not in used_labels:
            report.emptied_classes.append({"class": folder, "files": sum(by_dx.values()),
                                           "metadata_says": by_dx})
    report.warnings = list(meta.warnings)
    if report.without_row:
        report.warnings.append(f"{len(report.without_row)} image(s) have no row in "
                               f"{meta.path.name} and keep their folder label (e.g. "
                               f"{report.without_row[0]})")
    if report.rows_without_image:
        report.warnings.append(f"{len(report.rows_without_image)} row(s) of {meta.path.name} "
                               "match no image (e.g. "
                               f"{report.rows_without_image[0]}); they are ignored")
    for c in report.emptied_classes:
        says = ", ".join(f"{n} {dx}" for dx, n in sorted(c["metadata_says"].items(),
                                                         key=lambda kv: -kv[1]))
        report.warnings.append(f"folder '{c['class']}' holds no {c['class']} by the metadata "
                               f"(its {c['files']} files are: {says}); it is not a class here")
    if report.matched == 0:
        raise SkinError(f"No image matches a row of {meta.path.name} (ids are file names "
                        f"without suffix, e.g. {image_id(entries[0].path) if entries else '?'}"
                        f" vs {t['image_id'].iloc[0]})",
                        hint="Check that --metadata belongs to these images")
    return out, report


def _group_of(row: pd.Series, key: str, level: str) -> str:
    """The identity unit of an image: its patient or lesion, else the image id itself."""
    if level == "patient" and row["patient_id"]:
        return f"patient:{row['patient_id']}"
    if row["lesion_id"]:
        return f"lesion:{row['lesion_id']}"
    # Files of one id (copies, re-encodings) are one photograph.
    return f"image:{key}"
