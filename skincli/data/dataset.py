"""One dataset abstraction over the three input layouts.

(a) a folder of class folders: ``DATA/<class>/*.jpg``;
(b) the Kaggle layout: ``DATA/Train/<class>/...`` and ``DATA/Test/<class>/...`` (any case;
    a Val/ or Valid/ folder is recognised too);
    the given split is kept as a column;
(c) a CSV with an image path or id, a label and an optional group column (HAM10000:
    ``image_id, dx, lesion_id``) plus a folder of images searched recursively.

Listing is cheap (no image is opened); `skincli.data.manifest` reads the files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from skincli.errors import SkinError, did_you_mean
from skincli.imageio import IMAGE_SUFFIXES, is_image_file

GIVEN_SPLITS = ("train", "val", "test")
# Folder names (lower case) that mean a given split rather than a class.
SPLIT_FOLDERS = {"train": "train", "training": "train", "test": "test", "testing": "test",
                 "val": "val", "valid": "val", "validation": "val"}
IMAGE_COLUMNS = ("image_id", "image", "filepath", "file_path", "filename", "file", "path",
                 "image_path", "isic_id", "id")
LABEL_COLUMNS = ("label", "dx", "class", "diagnosis", "target", "category")
GROUP_COLUMNS = ("lesion_id", "group", "group_id", "patient_id", "patient")
# Folders some tools leave behind that never hold data.
IGNORED_DIRS = {"__MACOSX", "@eaDir"}


@dataclass(frozen=True)
class Entry:
    """One listed image file: where it is and what the data says about it."""

    path: str          # relative to the dataset root, with forward slashes
    label: str
    given_split: str = ""   # "train", "val", "test", or "" when the layout gives no split
    group: str = ""         # e.g. HAM10000 lesion_id; "" when unknown
    # Filled by a metadata join (skincli.data.metadata); "" without one.
    folder_label: str = ""  # the label the layout gave, when metadata relabelled the image
    image_id: str = ""
    lesion_id: str = ""
    patient_id: str = ""
    age: str = ""
    sex: str = ""
    site: str = ""
    source: str = ""        # the data source's name when several are pooled (skincli.data.sources)


# Columns of Dataset.frame(), in order.
ENTRY_FIELDS = ["path", "label", "given_split", "group", "folder_label", "image_id",
                "lesion_id", "patient_id", "age", "sex", "site", "source"]


@dataclass
class Dataset:
    """A listed data set: its root folder, layout and one Entry per image file."""

    root: Path
    layout: str                      # "folders", "kaggle", "csv" or "sources" (several pooled)
    entries: list[Entry]
    source: Path                     # what the user passed (folder or CSV file)
    csv_path: Path | None = None
    # Files seen but not listed, with the reason (non-image suffix, CSV id without a file...).
    skipped: list[dict[str, str]] = field(default_factory=list)
    columns: dict[str, str] = field(default_factory=dict)  # CSV columns used (image/label/group)
    # What the metadata join found (skincli.data.metadata.JoinReport.to_dict()), or None.
    metadata: dict[str, Any] | None = None
    # One dict per pooled source (name, path, layout, images, class mapping...); [] for one.
    sources: list[dict[str, Any]] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        """Sorted class names."""
        return sorted({e.label for e in self.entries})

    @property
    def has_given_split(self) -> bool:
        """True when the layout came with a train/test split."""
        return any(e.given_split for e in self.entries)

    def frame(self) -> pd.DataFrame:
        """The entries as a DataFrame: path, filepath, label, given_split, group, metadata."""
        df = pd.DataFrame([e.__dict__ for e in self.entries], columns=ENTRY_FIELDS)
        df.insert(1, "filepath", [str(self.root / p) for p in df["path"]])
        return df

    def describe(self) -> str:
        """A short human description, e.g. 'Kaggle layout (Train/ and Test/ class folders)'."""
        return {
            "folders": "class folders",
            "kaggle": "Kaggle layout (Train/ and Test/ above class folders)",
            "csv": f"CSV {self.csv_path.name if self.csv_path else ''} + image folder",
            "sources": f"{len(self.sources)} sources ("
            + ", ".join(s["name"] for s in self.sources) + ")",
        }[self.layout]


def load_dataset(source: str | os.PathLike[str],
                 csv_image_dir: str | os.PathLike[str] | None = None,
                 label_col: str | None = None, image_col: str | None = None,
                 group_col: str | None = None, min_classes: int = 2,
                 metadata: str | os.PathLike[str] | None = None, labels: str | None = None,
                 group: str | None = None, class_map: dict[str, str] | None = None) -> Dataset:
    """List a data set from a folder or a CSV, detecting the layout.

    A CSV is used when `source` is a .csv file, or a folder holding exactly one CSV with
    recognisable image and label columns. Raises SkinError for a missing path, an empty
    folder, fewer than `min_classes` classes or a CSV without the needed columns.

    With `metadata` (an ISIC archive export, HAM10000_metadata.csv or challenge ground truth)
    its diagnosis becomes the label (`labels="metadata"`, the default; "folder" keeps the
    layout's), its lesion (or, with `group="patient"`, patient) ids the groups, and its age,
    sex and site the subgroups. See skincli.data.metadata.
    """
    from skincli.data import metadata as md

    md.check_choices(labels, group)
    if metadata is None and (labels is not None or group is not None or class_map):
        given = [flag for flag, v in (("--labels", labels), ("--group", group),
                                      ("--class-map", class_map)) if v]
        raise SkinError(f"{' and '.join(given)} need(s) --metadata FILE",
                        hint="Pass the metadata CSV the images came with, or drop the option")
    if metadata is not None and not Path(metadata).expanduser().is_file():
        md.load_metadata(metadata)  # fails fast, before the images are listed
    src = Path(source).expanduser()
    if not src.exists():
        raise SkinError(f"Data path {src} does not exist",
                        hint="Pass a folder of class folders, a Train/Test folder or a CSV file")
    if csv_image_dir is not None and not Path(csv_image_dir).expanduser().is_dir():
        raise SkinError(f"Image folder {csv_image_dir} does not exist or is not a folder",
                        hint="Pass --images DIR with the folder holding the CSV's images")
    if src.is_file():
        if src.suffix.lower() != ".csv":
            raise SkinError(f"{src} is a file, not a data folder or a .csv",
                            hint="Pass a folder of class folders or a CSV with image and label "
                            "columns")
        ds = _from_csv(src, csv_image_dir, label_col, image_col, group_col)
    else:
        csv = _folder_csv(src)
        # A lone CSV beside (or instead of) class folders is the label source when it has
        # usable columns or the user asked for CSV options.
        if csv is not None and (csv_image_dir is not None or label_col or image_col
                                or not _class_dirs(src) or _csv_has_columns(csv)):
            ds = _from_csv(csv, csv_image_dir or src, label_col, image_col, group_col)
        else:
            if csv_image_dir is not None:
                raise SkinError(f"--images was given but {src} holds no CSV file",
                                hint="Pass the CSV file as DATA, or drop --images")
            # Column options mean nothing for class folders: say so rather than ignore them.
            given = [flag for flag, value in (("--label-col", label_col),
                                              ("--image-col", image_col),
                                              ("--group-col", group_col)) if value]
            if given:
                verb = "applies" if len(given) == 1 else "apply"
                raise SkinError(f"{' and '.join(given)} only {verb} to CSV data, but {src} "
                                "holds class folders and no CSV file",
                                hint="Drop the option, or pass the CSV file as DATA")
            ds = _from_folder(src)
    if metadata is not None and ds.entries:
        meta = md.load_metadata(metadata, class_map, known_classes=ds.classes)
        ds.entries, report = md.join(ds.entries, meta, labels or "metadata", group or "lesion")
        ds.metadata = report.to_dict()
    _check_classes(ds, min_classes)
    return ds


# --- folder layouts ---------------------------------------------------------------------------

def _visible(name: str) -> bool:
    return not name.startswith(".") and name not in IGNORED_DIRS


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p.name))


def _walk_files(folder: Path) -> Iterator[Path]:
    """Every visible file under `folder`, recursively, sorted, following symlinks."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _from_folder(root: Path) -> Dataset:
    subdirs = _class_dirs(root)
    split_dirs = [(SPLIT_FOLDERS[d.name.lower()], d) for d in subdirs
                  if d.name.lower() in SPLIT_FOLDERS]
    # Kaggle layout: Train/ and/or Test/ (any case; Val/ too) and nothing else holding images.
    others = [d for d in subdirs if d.name.lower() not in SPLIT_FOLDERS]
    kaggle = bool(split_dirs) and not any(_has_image(d) for d in others)
    entries: list[Entry] = []
    skipped: list[dict[str, str]] = []
    if kaggle:
        for given, top in sorted(split_dirs, key=lambda gd: (GIVEN_SPLITS.index(gd[0]),
                                                            gd[1].name)):
            entries += _list_class_folders(top, root, given, skipped)
        layout = "kaggle"
    else:
        entries = _list_class_folders(root, root, "", skipped)
        layout = "folders"
    return Dataset(root=root.resolve(), layout=layout, entries=entries, source=root,
                   skipped=skipped)


def _has_image(folder: Path) -> bool:
    return any(is_image_file(p) for p in _walk_files(folder))


def _list_class_folders(top: Path, root: Path, given: str,
                        skipped: list[dict[str, str]]) -> list[Entry]:
    entries = []
    for f in sorted(p for p in top.iterdir() if p.is_file() and not p.name.startswith(".")):
        reason = ("not inside a class folder" if is_image_file(f)
                  else "not an image file name (.jpg/.jpeg/.png/.bmp)")
        skipped.append({"path": _rel(f, root), "reason": reason})
    for class_dir in _class_dirs(top):
        for f in _walk_files(class_dir):
            if is_image_file(f):
                entries.append(Entry(_rel(f, root), class_dir.name, given))
            else:
                skipped.append({"path": _rel(f, root),
                                "reason": "not an image file name (.jpg/.jpeg/.png/.bmp)"})
    return entries


# --- CSV layout -------------------------------------------------------------------------------

def _folder_csv(folder: Path) -> Path | None:
    csvs = sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() == ".csv" and not p.name.startswith("."))
    if len(csvs) > 1 and not _class_dirs(folder):
        raise SkinError(f"{folder} holds {len(csvs)} CSV files "
                        f"({', '.join(p.name for p in csvs[:4])})",
                        hint="Pass the CSV file to use as DATA and its image folder with --images")
    return csvs[0] if len(csvs) == 1 else None


def _csv_has_columns(csv: Path) -> bool:
    try:
        cols = [c.strip().lower() for c in pd.read_csv(csv, nrows=0, encoding="utf-8-sig").columns]
    except Exception:
        return False
    return any(c in cols for c in IMAGE_COLUMNS) and any(c in cols for c in LABEL_COLUMNS)


def _pick_column(kind: str, given: str | None, candidates: Sequence[str], columns: list[str],
                 csv: Path, option: str, required: bool = True) -> str | None:
    lower = {c.strip().lower(): c for c in columns}
    if given:
        if given in columns:
            return given
        if given.lower() in lower:
            return lower[given.lower()]
        raise SkinError(f"CSV {csv.name} has no column '{given}' (found: {', '.join(columns)})",
                        hint=f"Pass {option} with one of the columns found."
                        + did_you_mean(given, columns))
    for cand in candidates:
        if cand in lower:
            return lower[cand]
    if required:
        raise SkinError(f"CSV {csv.name} has no {kind} column (found: {', '.join(columns)}; "
                        f"expected one of: {', '.join(candidates)})",
                        hint=f"Pass {option} NAME")
    return None


def _from_csv(csv: Path, image_dir: str | os.PathLike[str] | None, label_col: str | None,
              image_col: str | None, group_col: str | None) -> Dataset:
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False, skipinitialspace=True,
                            encoding="utf-8-sig")  # tolerate the BOM spreadsheets write
    except pd.errors.EmptyDataError as exc:
        raise SkinError(f"CSV {csv} is empty", hint="Give it a header row and one row per "
                        "image") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise SkinError(f"CSV {csv} cannot be parsed ({str(exc).splitlines()[0]})",
                        hint="Check it is a comma-separated text file") from exc
    except OSError as exc:
        raise SkinError(f"Cannot read CSV {csv}: {exc.strerror or exc}") from exc
    columns = [str(c) for c in table.columns]
    img_c = _pick_column("image path or id", image_col, IMAGE_COLUMNS, columns, csv,
                         "--image-col")
    lab_c = _pick_column("label", label_col, LABEL_COLUMNS, columns, csv, "--label-col")
    grp_c = _pick_column("group", group_col, GROUP_COLUMNS, columns, csv, "--group-col",
                         required=bool(group_col))
    if len(table) == 0:
        raise SkinError(f"CSV {csv} has a header but no rows",
                        hint="Add one row per image")
    root = Path(image_dir).expanduser() if image_dir is not None else csv.parent
    root = root.resolve()
    by_stem, by_rel = _index_images(root)
    entries: list[Entry] = []
    skipped: list[dict[str, str]] = []
    seen: dict[str, str] = {}
    for i, row in enumerate(table.itertuples(index=False), start=2):  # line 1 is the header
        values = dict(zip(columns, row, strict=True))
        ref = str(values[img_c]).strip()
        label = str(values[lab_c]).strip()
        group = str(values[grp_c]).strip() if grp_c else ""
        where = f"{csv.name} line {i}"
        if not ref:
            skipped.append({"path": where, "reason": f"empty {img_c}"})
            continue
        if not label:
            skipped.append({"path": ref, "reason": f"no {lab_c} ({where})"})
            continue
        found = _resolve_image(ref, root, csv.parent, by_stem, by_rel)
        if isinstance(found, str):
            skipped.append({"path": ref, "reason": f"{found} ({where})"})
            continue
        rel = _rel_or_abs(found, root)
        if rel in seen:
            if seen[rel] == label:
                skipped.append({"path": rel, "reason": f"listed twice in the CSV ({where})"})
                continue
            # Same file, two labels: kept so eda and split see (and handle) the conflict.
        seen.setdefault(rel, label)
        entries.append(Entry(rel, label, "", group))
    return Dataset(root=root, layout="csv", entries=entries, source=csv, csv_path=csv.resolve(),
                   skipped=skipped, columns={"image": img_c, "label": lab_c, "group": grp_c or ""})


def _index_images(root: Path) -> tuple[dict[str, list[Path]], dict[str, Path]]:
    """Map file stems (and relative paths) of every image under root to their paths."""
    by_stem: dict[str, list[Path]] = {}
    by_rel: dict[str, Path] = {}
    for f in _walk_files(root):
        if is_image_file(f):
            by_stem.setdefault(f.stem.lower(), []).append(f)
            by_rel[_rel(f, root).lower()] = f
    return by_stem, by_rel


def _resolve_image(ref: str, root: Path, csv_dir: Path, by_stem: dict[str, list[Path]],
                   by_rel: dict[str, Path]) -> Path | str:
    """Find the file for a CSV cell (a path or an id); return the reason as str if none."""
    ref_path = Path(ref.replace("\\", "/"))
    if ref_path.suffix:
        for base in (root, csv_dir):
            cand = ref_path if ref_path.is_absolute() else base / ref_path
            if cand.is_file():
                if not is_image_file(cand):
                    return f"not an image file name ({', '.join(IMAGE_SUFFIXES)})"
                return cand
        hit = by_rel.get(ref_path.as_posix().lower())
        if hit is not None:
            return hit
    stem = ref_path.stem if ref_path.suffix.lower() in IMAGE_SUFFIXES else ref_path.name
    matches = by_stem.get(stem.lower(), [])
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        return (f"ambiguous: {len(matches)} files named {stem}.* "
                f"({', '.join(_rel(m, root) for m in matches[:3])})")
    return f"no image file found for '{ref}' under {root}"


def _rel_or_abs(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def _check_classes(ds: Dataset, min_classes: int) -> None:
    where = ds.csv_path or ds.source
    if not ds.entries:
        extra = ""
        if ds.skipped:
            extra = f" ({len(ds.skipped)} entries skipped, e.g. {ds.skipped[0]['path']}: " \
                    f"{ds.skipped[0]['reason']})"
        hint = ("Check --images points at the folder holding the images" if ds.layout == "csv"
                else "Expected DATA/<class name>/*.jpg (or Train/ and Test/ above class "
                "folders), with .jpg/.jpeg/.png/.bmp files")
        raise SkinError(f"No images found in {where}{extra}", hint=hint)
    classes = ds.classes
    if len(classes) < min_classes:
        raise SkinError(f"Only {len(classes)} class ({classes[0]!r}) found in {where}; a "
                        f"classifier needs at least {min_classes}",
                        hint="Put each class in its own folder (or label column value)")
