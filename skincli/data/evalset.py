"""What to evaluate on, and the one reader of its images.

Labelled images come from (in this order):

- `data`: any labelled folder or CSV `skincli.data.dataset.load_dataset` reads (e.g. new images
  from the clinic); its labels must be classes of the run. With a Train/Test layout, `subset`
  "test" keeps the given Test part.
- `split`: a split file; `subset` picks its test / val part (or "all").
- default: the run's own copy of the split it was trained on (`runs/<name>/split.csv`, so it
  still works after re-splitting), else `splits/split.csv`.

`read_batches` reads them as model-input images in batches (unreadable files are skipped and
listed): evaluation, the refits on validation, the LiteRT parity check and export all read a
run's split images through it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skincli.data.dataset import load_dataset
from skincli.data.splitfile import load_split
from skincli.errors import SkinError, did_you_mean
from skincli.imageio import DEFAULT_MAX_PIXELS, ImageError, read_images
from skincli.metahead import records_from_frame
from skincli.subgroups import groups_from_frame

SUBSETS = ("test", "val", "all")
DEFAULT_SPLIT = Path("splits/split.csv")


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
class EvalBatch:
    """The readable images of one batch of an EvalSet, with their labels."""

    images: np.ndarray                     # (n, S, S, 3) float32, 0..255
    y: np.ndarray                          # (n,) class indices in the run's order
    filepaths: list[str]
    metadata: list[dict[str, str]] | None  # per image, when the EvalSet carries metadata
    skipped: list[dict[str, str]]          # unreadable files of this batch
    done: int                              # files read so far (readable or not)
    total: int


def run_split_path(run_dir: Path) -> Path:
    """The run's own copy of its split, else the project's splits/split.csv."""
    own = Path(run_dir) / "split.csv"
    return own if own.is_file() else DEFAULT_SPLIT


def check_subset(subset: str) -> None:
    """A known subset name, or a one-line error naming the choices."""
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
    """Resolve what to evaluate on (see the module docstring): the files and their labels.

    `metadata`: load_dataset's metadata keyword arguments (metadata, labels, group,
    class_map) for `data`.
    """
    check_subset(subset)
    if data is not None and split is not None:
        raise SkinError("Pass either --data or --split, not both")
    if metadata and metadata.get("metadata") is not None and data is None:
        raise SkinError("--metadata applies to --data", hint="Pass --data DIR with it; a "
                        "split made with --metadata already carries the metadata")
    if data is not None:
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
    df = load_split(path)
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


def lesion_groups(eval_set: EvalSet, filepaths: Sequence[str]) -> list[str] | None:
    """Each scored image's lesion group from the split file (None for other data)."""
    if eval_set.kind != "split" or eval_set.split_path is None:
        return None
    df = load_split(eval_set.split_path)
    where = dict(zip(df["filepath"].astype(str), df["group"].astype(str)))
    return [where.get(str(p), "") for p in filepaths]


def read_batches(eval_set: EvalSet, classes: Sequence[str], size: int, batch_size: int = 32,
                 max_pixels: int = DEFAULT_MAX_PIXELS, limit: int | None = None
                 ) -> Iterator[EvalBatch]:
    """Read an EvalSet (its first `limit` files) as model-input batches, in order.

    A file that cannot be read is listed in its batch's `skipped`, not raised.
    """
    index = {c: i for i, c in enumerate(classes)}
    paths_all = eval_set.filepaths if limit is None else eval_set.filepaths[:limit]
    total = len(paths_all)
    batch_size = max(1, int(batch_size))
    for start in range(0, total, batch_size):
        paths = paths_all[start:start + batch_size]
        labels = eval_set.labels[start:start + batch_size]
        arrays, ys, kept, records, skipped = [], [], [], [], []
        items = read_images(paths, size, max_pixels)
        for j, (p, lab, item) in enumerate(zip(paths, labels, items)):
            if isinstance(item, ImageError):
                skipped.append({"file": str(p), "code": item.code, "error": str(item)})
                continue
            arrays.append(item)
            kept.append(str(p))
            ys.append(index[lab])
            if eval_set.metadata is not None:
                records.append(eval_set.metadata[start + j])
        images = (np.stack(arrays).astype(np.float32) if arrays
                  else np.zeros((0, size, size, 3), np.float32))
        yield EvalBatch(images, np.asarray(ys, np.int64), kept,
                        records if eval_set.metadata is not None else None, skipped,
                        min(start + batch_size, total), total)


def read_labelled(eval_set: EvalSet, classes: Sequence[str], size: int,
                  limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All readable images of an EvalSet (its first `limit` files) as one batch, and labels."""
    batches = list(read_batches(eval_set, classes, size, limit=limit))
    if not batches:
        return np.zeros((0, size, size, 3), np.float32), np.zeros(0, np.int64)
    return (np.concatenate([b.images for b in batches]),
            np.concatenate([b.y for b in batches]))
