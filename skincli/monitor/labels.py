"""Ground truth from pathology: a CSV of image hash (or image path) -> confirmed diagnosis."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from skincli.errors import SkinError
from skincli.fsutil import sha256_file

HASH_COLUMNS = ("image_sha256", "sha256", "hash", "image_hash")
PATH_COLUMNS = ("path", "filepath", "file_path", "image_path", "file", "image", "filename")
LABEL_COLUMNS = ("label", "diagnosis", "dx", "class", "confirmed_diagnosis")
_SHA = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class LabelFile:
    """What a label CSV holds, after hashing any paths."""

    mapping: dict[str, str]
    rows: int
    problems: list[str] = field(default_factory=list)  # one line per skipped row (capped)
    skipped: int = 0
    conflicts: int = 0  # the same image given two different labels: the last one wins


def _pick(columns: list[str], wanted: tuple[str, ...]) -> str | None:
    lower = {c.strip().lower(): c for c in columns}
    return next((lower[w] for w in wanted if w in lower), None)


def read_label_csv(path: str | Path, max_problems: int = 5) -> LabelFile:
    """Read image_sha256 (or path) -> label; paths are hashed, relative ones from the CSV folder."""
    path = Path(path)
    if not path.is_file():
        raise SkinError(f"Label file {path} does not exist",
                        hint="Pass a CSV with columns image_sha256 (or path) and label")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise SkinError(f"Cannot read label file {path} as CSV ({exc})",
                        hint="Save it as a comma-separated file with a header row") from exc
    cols = list(df.columns)
    hash_col, path_col, label_col = (_pick(cols, HASH_COLUMNS), _pick(cols, PATH_COLUMNS),
                                     _pick(cols, LABEL_COLUMNS))
    if label_col is None or (hash_col is None and path_col is None):
        raise SkinError(f"Label file {path} needs an image_sha256 or path column and a label "
                        f"column; it has: {', '.join(cols) or 'no columns'}",
                        hint="Rename the columns, e.g. image_sha256,label or path,diagnosis")
    out = LabelFile(mapping={}, rows=len(df))
    for i, row in enumerate(df.to_dict("records"), start=2):  # line 1 is the header
        label = str(row[label_col]).strip()
        key = str(row[hash_col]).strip().lower() if hash_col else ""
        problem = None
        if not label:
            problem = f"line {i}: empty label"
        elif key:
            if not _SHA.match(key):
                problem = f"line {i}: {key[:20]!r} is not a SHA-256 (64 hex digits)"
        elif path_col and str(row[path_col]).strip():
            p = Path(str(row[path_col]).strip()).expanduser()
            if not p.is_absolute() and not p.exists():
                p = path.parent / p
            try:
                key = sha256_file(p)
            except OSError as exc:
                problem = f"line {i}: cannot read {p} ({exc.strerror or exc})"
        else:
            problem = f"line {i}: no image hash or path"
        if problem:
            out.skipped += 1
            if len(out.problems) < max_problems:
                out.problems.append(problem)
            continue
        if key in out.mapping and out.mapping[key] != label:
            out.conflicts += 1
        out.mapping[key] = label
    return out
