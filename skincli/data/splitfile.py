"""The split file: writing it with its JSON sidecar, hashing it, reading it back.

splits/split.csv holds one row per image (paths relative to the data root);
splits/split.json beside it holds the root, seed, ratios, policy, counts, dropped files and
the CSV's sha256, so an edited or half-copied pair is refused on reading.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from skincli.data.split import DEFAULT_SPLIT_PATH, META_COLUMNS, SPLITS, SplitResult
from skincli.errors import SkinError
from skincli.fsutil import check_writable, json_default, sha256_file, write_text

_STR_COLUMNS = ["path", "label", "split", "given_split", "group", "sha256", "phash",
                *META_COLUMNS]


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """splits/split.csv -> splits/split.json."""
    return Path(path).with_suffix(".json")


def check_out(out: str | os.PathLike[str]) -> Path:
    """Validate a split file path before any work: a .csv in a folder we can create, and
    not some other CSV (e.g. the data set's own labels) that would be overwritten."""
    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise SkinError(f"Split file {out} must end in .csv", hint="e.g. --out splits/split.csv")
    if out.exists() and not sidecar_path(out).is_file():
        raise SkinError(f"{out} exists and is not a split file (no {sidecar_path(out).name} "
                        "beside it); it would be overwritten",
                        hint="Choose another --out, e.g. splits/split.csv")
    return check_writable(out)


def write_split(result: SplitResult, out: str | os.PathLike[str] = DEFAULT_SPLIT_PATH) -> Path:
    """Write the split CSV and its JSON sidecar atomically; return the CSV path."""
    out = check_out(out)
    # Absolute paths are machine-specific: the file keeps only paths relative to the root.
    text = result.frame.drop(columns=["filepath"], errors="ignore").to_csv(index=False)
    meta = dict(result.meta)
    root = Path(meta.get("root", ""))
    meta["root_relative"] = os.path.relpath(root, out.parent.resolve()) if str(root) else ""
    meta["csv_sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    meta["csv_file"] = out.name
    # Sidecar first: if the CSV write then fails, load_split sees the mismatch and says so.
    write_text(sidecar_path(out), json.dumps(meta, indent=2, default=json_default) + "\n")
    write_text(out, text)
    return out


def split_file_sha256(path: str | os.PathLike[str] = DEFAULT_SPLIT_PATH) -> str:
    """sha256 of the split CSV file (recorded in training run folders)."""
    p = Path(path)
    try:
        return sha256_file(p)
    except FileNotFoundError as exc:
        raise SkinError(f"No split file at {path}", hint="Run `skin split DATA` first") from exc


def load_split(path: str | os.PathLike[str] = DEFAULT_SPLIT_PATH,
               root: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Read a split file: one row per image with an absolute `filepath` and a `split` column.

    df.attrs: "classes" (sorted class names, the model's class order), "root" (data root),
    "meta" (the sidecar: seed, ratios, policy, counts, dropped files...). `root` overrides
    the recorded data root (e.g. the data moved to another machine).
    """
    p = Path(path)
    if not p.is_file():
        raise SkinError(f"No split file at {path}", hint="Run `skin split DATA` first")
    side = sidecar_path(p)
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SkinError(f"Split file {p} has no {side.name} beside it",
                        hint="Re-run `skin split DATA`") from exc
    except (OSError, ValueError) as exc:
        raise SkinError(f"Cannot read {side}: {exc}", hint="Re-run `skin split DATA`") from exc
    raw = p.read_bytes()
    if meta.get("csv_sha256") and hashlib.sha256(raw).hexdigest() != meta["csv_sha256"]:
        raise SkinError(f"{p} does not match {side.name} (edited, or only one of them copied)",
                        hint="Re-run `skin split DATA`")
    try:
        df = pd.read_csv(p, dtype={c: str for c in _STR_COLUMNS}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SkinError(f"Split file {p} cannot be parsed", hint="Re-run `skin split DATA`") \
            from exc
    missing = [c for c in ("path", "label", "split", "sha256") if c not in df.columns]
    if missing:
        raise SkinError(f"Split file {p} lacks column(s) {', '.join(missing)}",
                        hint="Re-run `skin split DATA`")
    bad = sorted(set(df["split"]) - set(SPLITS))
    if bad:
        raise SkinError(f"Split file {p} has unknown split value(s) {', '.join(bad)}",
                        hint="Re-run `skin split DATA`")
    data_root = _resolve_root(meta, p, side, root)
    for col in ("group", "given_split", "source"):
        if col not in df:
            df[col] = ""
    df = df.drop(columns=["filepath"], errors="ignore")
    df.insert(0, "filepath", [str(data_root / q) if not Path(q).is_absolute() else q
                              for q in df["path"]])
    df.attrs["classes"] = sorted(df["label"].unique().tolist())
    df.attrs["root"] = str(data_root)
    df.attrs["meta"] = meta
    return df


def _resolve_root(meta: dict[str, Any], csv: Path, side: Path,
                  override: str | os.PathLike[str] | None) -> Path:
    if override is not None:
        r = Path(override).expanduser()
        if not r.is_dir():
            raise SkinError(f"Data folder {r} does not exist")
        return r.resolve()
    recorded = Path(meta.get("root", ""))
    if str(recorded) and recorded.is_dir():
        return recorded
    rel = meta.get("root_relative")
    if rel:
        cand = (csv.parent / rel).resolve()
        if cand.is_dir():
            return cand
    raise SkinError(f"Data folder {recorded} recorded in {side} does not exist",
                    hint="Move the data back, or re-run `skin split DATA`")
