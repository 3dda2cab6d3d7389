"""The manifest: one row per listed image with its content hash, size, readability and
cheap statistics, all from a single decode per file.

Rows are cached under the user cache folder (the data folder may be read-only), keyed by
the data root; a file whose size and modification time are unchanged is not read again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageStat

from skincli.data.dataset import ENTRY_FIELDS, Dataset
from skincli.fsutil import atomic_path, cache_dir
from skincli.imageio import DEFAULT_MAX_PIXELS, ImageError, open_image

# Bump when the computed columns change so old caches are ignored.
CACHE_VERSION = 2
# Statistics are computed on a copy whose long side is at most this, so a 24 MP original
# costs about as much as a thumbnail and sharpness is measured at a comparable scale.
STATS_MAX_SIDE = 1024

FILE_COLUMNS = ["sha256", "width", "height", "size_bytes", "readable", "error", "error_code",
                "phash", "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "brightness",
                "sharpness"]
ENTRY_COLUMNS = ["path", "filepath"] + ENTRY_FIELDS[1:]
COLUMNS = ENTRY_COLUMNS + FILE_COLUMNS
STR_COLUMNS = ENTRY_COLUMNS + ["sha256", "error", "error_code", "phash"]


def cache_file(root: Path) -> Path:
    """Where the manifest cache for a data root lives."""
    key = hashlib.sha1(str(Path(root).resolve()).encode("utf-8")).hexdigest()[:16]
    return cache_dir() / "manifests" / f"{key}-v{CACHE_VERSION}.csv"


# --- per-image work -----------------------------------------------------------------------------

_DCT32 = None


def _dct_matrix(n: int = 32) -> np.ndarray:
    """Orthonormal DCT-II matrix, so the 2-D DCT is D @ X @ D.T."""
    global _DCT32
    if _DCT32 is None:
        k = np.arange(n)[:, None]
        i = np.arange(n)[None, :]
        d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
        d[0] /= np.sqrt(2.0)
        _DCT32 = d
    return _DCT32


def phash(img: Image.Image) -> str:
    """64-bit DCT perceptual hash as 16 hex digits (robust to re-encoding and resizing)."""
    gray = img if img.mode == "L" else img.convert("L")
    small = np.asarray(gray.resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    d = _dct_matrix(32)
    low = (d @ small @ d.T)[:8, :8]
    return np.packbits((low > np.median(low)).ravel()).tobytes().hex()


def image_stats(img: Image.Image, gray: Image.Image | None = None) -> dict[str, float]:
    """Per-channel mean/std, brightness (mean luma) and sharpness (variance of Laplacian).

    `gray` is img.convert("L") when the caller already has it.
    """
    long_side = max(img.size)
    if long_side > STATS_MAX_SIDE:
        factor = int(np.ceil(long_side / STATS_MAX_SIDE))
        img = img.reduce(factor)
        gray = None
    gray = gray if gray is not None else img.convert("L")
    # ImageStat works from per-band histograms in C: several times faster than numpy here.
    stat = ImageStat.Stat(img)
    g = np.asarray(gray, dtype=np.float32)
    if g.shape[0] >= 3 and g.shape[1] >= 3:
        lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
        sharp = float(lap.var())
    else:
        sharp = 0.0
    (mr, mg, mb), (sr, sg, sb) = stat.mean[:3], stat.stddev[:3]
    return {"mean_r": float(mr), "mean_g": float(mg), "mean_b": float(mb),
            "std_r": float(sr), "std_g": float(sg), "std_b": float(sb),
            "brightness": float(g.mean()), "sharpness": sharp}


def inspect_file(filepath: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """Hash, decode once and measure one file; unreadable files get readable=False and a reason."""
    row: dict[str, Any] = {c: np.nan for c in FILE_COLUMNS}
    row.update(sha256="", error="", error_code="", phash="", readable=False, width=0,
               height=0, size_bytes=0)
    try:
        raw = Path(filepath).read_bytes()
    except OSError as exc:
        row.update(error=f"cannot read file ({exc.strerror or exc})", error_code="io")
        return row
    row["size_bytes"] = len(raw)
    row["sha256"] = hashlib.sha256(raw).hexdigest()
    try:
        img = open_image(raw, max_pixels=max_pixels)
    except ImageError as exc:
        # open_image names bytes input "upload"; keep only the reason.
        reason = exc.message.split(": ", 1)[1] if exc.message.startswith("upload: ") \
            else exc.message
        row.update(error=reason, error_code=exc.code)
        return row
    gray = img.convert("L")  # shared by the hash and the statistics
    row.update(readable=True, width=img.size[0], height=img.size[1], phash=phash(gray))
    row.update(image_stats(img, gray))
    return row


# --- the manifest -------------------------------------------------------------------------------

def build_manifest(dataset: Dataset, workers: int | None = None, cache: bool = True,
                   max_pixels: int = DEFAULT_MAX_PIXELS,
                   progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """One row per listed image (see COLUMNS); reads only files not in the cache.

    `progress(done, total)` is called as files are read. df.attrs holds "root", "layout",
    "cache_hits", "files_read" and "skipped" (files not listed, with the reason).
    """
    entries = dataset.frame()
    unique = list(dict.fromkeys(entries["filepath"]))
    stats = {fp: _stat(fp) for fp in unique}
    cached = _read_cache(dataset.root) if cache else {}
    rows: dict[str, dict[str, Any]] = {}
    todo: list[str] = []
    for fp in unique:
        key = _cache_key(fp, dataset.root)
        hit = cached.get(key)
        if hit is not None and stats[fp] is not None and \
                (int(hit["size_bytes"]), int(hit["mtime_ns"])) == stats[fp]:
            rows[fp] = hit
        else:
            todo.append(fp)
    n_workers = max(1, workers if workers else (os.cpu_count() or 1))
    done = 0
    if progress:
        progress(0, len(todo))
    # Threads: hashing and PIL decoding release the GIL, and threads need no pickling.
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        for fp, row in zip(todo, pool.map(lambda f: inspect_file(f, max_pixels), todo,
                                          chunksize=1), strict=True):
            row["mtime_ns"] = stats[fp][1] if stats[fp] else 0
            rows[fp] = row
            done += 1
            if progress and (done % 64 == 0 or done == len(todo)):
                progress(done, len(todo))
    if cache and todo:
        # Keep cached rows of files this listing did not include (another CSV over the
        # same image folder may need them).
        merged = dict(cached)
        merged.update({_cache_key(fp, dataset.root): row for fp, row in rows.items()})
        _write_cache(dataset.root, merged)
    files = pd.DataFrame([{"filepath": fp, **rows[fp]} for fp in unique])
    files = files.reindex(columns=["filepath"] + FILE_COLUMNS)
    df = entries.merge(files, on="filepath", how="left")
    df = _fix_types(df)
    df.attrs.update(root=str(dataset.root), layout=dataset.layout, cache_hits=len(unique) -
                    len(todo), files_read=len(todo), skipped=list(dataset.skipped),
                    metadata=dataset.metadata, sources=list(dataset.sources))
    return df


def _stat(fp: str) -> tuple[int, int] | None:
    try:
        st = os.stat(fp)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _cache_key(fp: str, root: Path) -> str:
    try:
        return Path(fp).relative_to(root).as_posix()
    except ValueError:
        return fp


def _fix_types(df: pd.DataFrame) -> pd.DataFrame:
    for col in STR_COLUMNS:
        if col in df:
            df[col] = df[col].fillna("").astype(str)
    for col in ("width", "height", "size_bytes"):
        df[col] = pd.to_numeric(df[col], errors="coerce").fillna(0).astype("int64")
    df["readable"] = df["readable"].astype(str).str.lower().isin(["true", "1"])
    for col in FILE_COLUMNS:
        if col not in STR_COLUMNS and col not in ("width", "height", "size_bytes", "readable"):
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    return df


def _read_cache(root: Path) -> dict[str, dict[str, Any]]:
    path = cache_file(root)
    if not path.is_file():
        return {}
    try:
        df = pd.read_csv(path, dtype={c: str for c in STR_COLUMNS}, keep_default_na=False,
                         na_values={c: [""] for c in FILE_COLUMNS if c not in STR_COLUMNS})
        if not set(FILE_COLUMNS + ["path", "mtime_ns"]) <= set(df.columns):
            return {}
        df["readable"] = df["readable"].astype(str).str.lower().isin(["true", "1"])
    except Exception:  # a damaged cache is only a lost speed-up: rebuild it
        return {}
    records = df.to_dict("records")
    return {str(r.pop("path")): r for r in records}


def _write_cache(root: Path, rows: dict[str, dict[str, Any]]) -> None:
    out = [{"path": key, **row} for key, row in rows.items()]
    df = pd.DataFrame(out).reindex(columns=["path", "mtime_ns"] + FILE_COLUMNS)
    try:
        with atomic_path(cache_file(root)) as tmp:
            df.to_csv(tmp, index=False)
    except Exception:  # a read-only home or full disk only costs speed next time
        pass
