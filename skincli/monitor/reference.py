"""The drift reference of a run: the model's view of its own validation images, cached.

`runs/<run>/reference.json` holds, for every validation image, the calibrated top probability,
the predicted class, the `image_stats` and the embedding summary, computed exactly as the
prediction log computes them (same preprocessing, same functions). It is rebuilt when the
model or the split changes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skincli.errors import SkinError
from skincli.fsutil import write_json
from skincli.monitor.drift import REFERENCE_FILE, REFERENCE_VERSION, build_reference
from skincli.monitor.store import image_stats, summarize_embedding
from skincli.runs import load_run_info

SPLIT_FILE = "split.csv"
PATH_COLUMNS = ("filepath", "path", "image_path", "file")  # bare CSVs only
# Enough images for stable KS/MMD estimates; more only costs time.
DEFAULT_MAX_IMAGES = 1000


def read_split(run_dir: str | Path) -> pd.DataFrame:
    """The run's split.csv with absolute `filepath`, `label` and `split` columns."""
    path = Path(run_dir) / SPLIT_FILE
    if not path.is_file():
        raise SkinError(f"{run_dir} has no {SPLIT_FILE}, so there is no reference to compare with",
                        hint="Use a run trained by `skin train` (it saves its split)")
    if path.with_suffix(".json").is_file():
        from skincli.data.splitfile import load_split

        return load_split(path)  # resolves paths against the recorded data root
    # A bare CSV (no sidecar) with absolute or CSV-relative paths.
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise SkinError(f"Cannot read {path}: {exc}", hint="Train the run again") from exc
    col = next((c for c in PATH_COLUMNS if c in df.columns), None)
    if col is None or "split" not in df.columns or "label" not in df.columns:
        raise SkinError(f"{path} lacks the filepath/label/split columns",
                        hint="Train the run again with `skin train`")
    out = df.rename(columns={col: "filepath"}).copy()
    out["split"] = out["split"].str.strip().str.lower()
    out["filepath"] = [_resolve(p, path.parent) for p in out["filepath"]]
    return out


def _resolve(p: str, base: Path) -> str:
    path = Path(p).expanduser()
    if not path.is_absolute() and not path.exists() and (base / path).exists():
        path = base / path
    return str(path)


def reference_split(split: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The validation rows (else train rows as a fallback) and a word saying which."""
    for part in ("val", "validation", "valid"):
        rows = split[split["split"] == part]
        if len(rows):
            return rows, "val"
    rows = split[split["split"] == "train"]
    if len(rows):
        return rows, "train"
    raise SkinError("The run's split has no validation or training rows to build a "
                    "reference from", hint="Train the run again with `skin train`")


def reference_path(run_dir: str | Path) -> Path:
    """Where the run's reference is cached."""
    return Path(run_dir) / REFERENCE_FILE


def _fresh(ref: dict[str, Any], info: Any) -> bool:
    return (ref.get("version") == REFERENCE_VERSION and ref.get("model_version") == info.version
            and ref.get("split_sha256", "") == (info.split_sha256 or "")
            and list(ref.get("classes", [])) == list(info.classes))


def load_reference(run_dir: str | Path) -> dict[str, Any] | None:
    """The cached reference if it exists and still matches the run, else None."""
    import json

    path = reference_path(run_dir)
    if not path.is_file():
        return None
    try:
        ref = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # damaged cache: rebuild
    return ref if _fresh(ref, load_run_info(run_dir)) else None


def compute_reference(run_dir: str | Path, max_images: int = DEFAULT_MAX_IMAGES,
                      batch_size: int = 32, seed: int = 0,
                      progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run the model over the run's validation images and build the reference (not cached)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from skincli.calibration import softmax
    from skincli.imageio import ImageError
    from skincli.predictor import Predictor

    run_dir = Path(run_dir)
    info = load_run_info(run_dir)
    rows, which = reference_split(read_split(run_dir))
    if len(rows) > max_images:
        rows = rows.sample(n=max_images, random_state=seed)
    predictor = Predictor.from_run(run_dir)
    probs, stats, embs, labels = [], [], [], []
    skipped = 0
    paths = list(rows["filepath"])
    row_labels = list(rows["label"])
    for start in range(0, len(paths), batch_size):
        batch, batch_labels = [], []
        for p, lab in zip(paths[start:start + batch_size], row_labels[start:start + batch_size]):
            try:
                arr = predictor.preprocess(p)
            except ImageError:
                skipped += 1  # a file moved or damaged since training: use the others
                continue
            batch.append(arr)
            batch_labels.append(lab)
        if batch:
            x = np.stack(batch)
            # The same forward pass, statistics and summary as the prediction log uses.
            logits, emb = predictor.logits_and_embeddings(x)
            probs.append(softmax(logits, predictor.temperature))
            stats.extend(image_stats(a) for a in x)
            if emb is not None:
                embs.extend(summarize_embedding(e) for e in emb)
            labels.extend(batch_labels)
        if progress:
            progress(min(start + batch_size, len(paths)), len(paths))
    if not labels:
        raise SkinError(f"None of the {len(paths)} {which} images of {run_dir} could be read",
                        hint="Check the data folder the run was trained on is still there")
    meta = {
        "run": info.name, "model_version": info.version, "split_sha256": info.split_sha256 or "",
        "source": f"{which} split of {run_dir.name}", "skipped_images": skipped,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return build_reference(info.classes, np.concatenate(probs), stats,
                           embs if len(embs) == len(stats) else None, labels, meta)


def get_reference(run_dir: str | Path, rebuild: bool = False,
                  max_images: int = DEFAULT_MAX_IMAGES,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The cached reference, computed and saved (atomically) first if missing or stale."""
    if not rebuild:
        ref = load_reference(run_dir)
        if ref is not None:
            return ref
    ref = compute_reference(run_dir, max_images=max_images, progress=progress)
    write_json(reference_path(run_dir), ref)
    return ref
