"""The data of a run: the split it trains on, its metadata rows and its tf.data streams.

The streams themselves (decoding, augmentation, oversampling) are skincli.train.pipeline;
this module turns a split and a TrainConfig into the arguments those streams take.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skincli.errors import SkinError
from skincli.metahead import FIELD_DROPOUT
from skincli.train.config import TrainConfig


@dataclass
class SplitData:
    """The parts of a split the trainer uses."""

    path: Path
    sha256: str
    classes: list[str]
    train_paths: list[str]
    train_labels: list[int]
    val_paths: list[str]
    val_labels: list[int]
    frame: Any = field(repr=False, default=None)
    # Per image {sex, age_band, site} (skincli.metahead) when the split carries metadata.
    train_meta: list[dict[str, str]] | None = field(repr=False, default=None)
    val_meta: list[dict[str, str]] | None = field(repr=False, default=None)


def load_split_data(path: str | Path) -> SplitData:
    """Read the split CSV and check it can train a model (every class has training images)."""
    from skincli.data.splitfile import load_split, split_file_sha256
    from skincli.metahead import records_from_frame

    path = Path(path)
    df = load_split(path)
    classes = [str(c) for c in (df.attrs.get("classes") or sorted(df["label"].astype(str)
                                                                    .unique()))]
    if len(classes) < 2:
        raise SkinError(f"{path} has {len(classes)} class; a classifier needs at least 2",
                        hint="Add image folders for more classes and run `skin split` again")
    index = {c: i for i, c in enumerate(classes)}
    parts, meta = {}, {}
    for part in ("train", "val"):
        sub = df[df["split"].astype(str) == part]
        parts[part] = ([str(p) for p in sub["filepath"]],
                       [index[str(lab)] for lab in sub["label"]])
        meta[part] = records_from_frame(sub)
    counts = np.bincount(parts["train"][1], minlength=len(classes))
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        raise SkinError(f"Class {empty[0]!r} has no training images in {path}"
                        + (f" (nor do {', '.join(map(repr, empty[1:]))})" if len(empty) > 1
                           else ""),
                        hint="Add images for it or remove its folder, then run `skin split` "
                             "again")
    if not parts["val"][0]:
        raise SkinError(f"{path} has no validation images; model selection needs them",
                        hint="Run `skin split` with a validation fraction above 0")
    return SplitData(path=path, sha256=str(split_file_sha256(path)), classes=classes,
                     train_paths=parts["train"][0], train_labels=parts["train"][1],
                     val_paths=parts["val"][0], val_labels=parts["val"][1], frame=df,
                     train_meta=meta["train"], val_meta=meta["val"])


def metadata_encoder(cfg: TrainConfig, split: SplitData) -> Any:
    """The metadata encoder of a `--use-metadata` run (None otherwise); checks the split has it."""
    if not cfg.use_metadata:
        return None
    from skincli.metahead import MetadataEncoder

    records = split.train_meta or []
    encoder = MetadataEncoder.fit(records)
    if not any(encoder.coverage(records).values()):
        raise SkinError(f"--use-metadata needs age, sex or site for the training images, and "
                        f"{split.path} has none",
                        hint="Make the split with `skin split DATA --metadata FILE`, or train "
                             "without --use-metadata")
    return encoder


def meta_rows(encoder: Any, split: SplitData, part: str) -> np.ndarray | None:
    """Encoded metadata of the train or val images (None without --use-metadata)."""
    if encoder is None:
        return None
    records = split.train_meta if part == "train" else split.val_meta
    return encoder.encode(records or [])


def validation_dataset(cfg: TrainConfig, split: SplitData, encoder: Any, size: int,
                       skipped: Any, cache: bool) -> Any:
    """The validation images in file order: model selection and the final pass read these."""
    from skincli.train.pipeline import eval_dataset

    return eval_dataset(split.val_paths, split.val_labels, size=size,
                        batch_size=max(cfg.batch_size, 32), skipped=skipped, cache=cache,
                        meta=meta_rows(encoder, split, "val"))


def phase_dataset(cfg: TrainConfig, split: SplitData, encoder: Any, size: int, skipped: Any,
                  seed: int) -> Any:
    """The augmented training stream of one phase (skincli.train.pipeline.TrainData)."""
    from skincli.train.pipeline import balanced_class_weights, train_dataset

    num_classes = len(split.classes)
    weights = (balanced_class_weights(split.train_labels, num_classes)
               if cfg.class_weights else None)
    return train_dataset(
        split.train_paths, split.train_labels, num_classes=num_classes, size=size,
        batch_size=cfg.batch_size, skipped=skipped, oversample=cfg.oversample,
        oversample_strength=cfg.oversample_strength,
        augment=cfg.augment, mixup=cfg.mixup, cutmix=cfg.cutmix,
        seed=seed, class_weights=weights,
        cache=cfg.cache == "memory", meta=meta_rows(encoder, split, "train"),
        meta_blocks=None if encoder is None else encoder.blocks(),
        meta_dropout=FIELD_DROPOUT,
        colour_shift=1.0 if cfg.colour_constancy != "none" else 0.0)


def check_readable_classes(split: SplitData, unreadable: Collection[str]) -> None:
    """Fail when every training image of a class turned out to be unreadable."""
    if not unreadable:
        return
    bad = set(unreadable)
    for i, cls in enumerate(split.classes):
        files = [p for p, lab in zip(split.train_paths, split.train_labels) if lab == i]
        if files and all(p in bad for p in files):
            raise SkinError(f"Class {cls!r} has no readable training images "
                            f"({len(files)} listed, all unreadable)",
                            hint="Fix or replace its images, then run `skin split` again")
