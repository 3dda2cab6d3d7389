"""`skin split DATA`: a leakage-proof, stratified train/val/test split file."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from skincli import ui
from skincli.cli.common import (
    ClassMapOpt,
    GroupOpt,
    LabelsOpt,
    handle_errors,
    metadata_args,
)
from skincli.cli.eda import (
    DataArg,
    DropUnmappedOpt,
    MetadataListOpt,
    SourcesOpt,
    data_plan,
    progress_bar,
)
from skincli.errors import SkinError, did_you_mean

HELP = ("Split a data set into train/val/test, stratified by class and leakage-proof (identical "
        "images, the same group and near-duplicates stay together). Writes splits/split.csv "
        "(+ split.json) that train and evaluate read by default.")

SHOW = 6


class Conflicts(str, Enum):
    """What to do with the same image filed under two classes."""

    resolve = "resolve"
    drop = "drop"
    keep_first = "keep-first"
    error = "error"


@handle_errors
def command(
    data: DataArg = None,
    out: Annotated[Path, typer.Option(help="Split file to write (a .json sidecar goes beside "
                                      "it).")] = Path("splits/split.csv"),
    val: Annotated[float, typer.Option(help="Fraction of images for validation (with "
                                       "--keep-given-test: of the images outside Test).")]
    = 0.15,
    test: Annotated[float, typer.Option(help="Fraction of images for test (ignored with "
                                        "--keep-given-test).")] = 0.15,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same split.")]
    = 42,
    keep_given_test: Annotated[bool, typer.Option(help="Use the given Test/ folder as the test "
                                                  "split; its copies in Train are dropped "
                                                  "from Train.")] = False,
    conflicts: Annotated[Conflicts | None, typer.Option(
        help="Same image under different classes: keep the copy whose folder matches the "
        "metadata (resolve; the default with --metadata), drop all copies (the default "
        "without), keep the first listed (with several sources: the earlier source's "
        "label), or stop with an error.", show_default=False)]
    = None,
    keep_duplicates: Annotated[bool, typer.Option(help="Keep every copy of an image within a "
                                                  "class (default: keep one).")] = False,
    group_near_dups: Annotated[bool, typer.Option(help="Keep near-duplicate suspects in the "
                                                  "same split.")] = True,
    images: Annotated[Path | None, typer.Option(help="Image folder for a CSV (default: the "
                                                "CSV's folder).", file_okay=False)] = None,
    label_col: Annotated[str | None, typer.Option(help="CSV label column.")] = None,
    image_col: Annotated[str | None, typer.Option(help="CSV image path/id column.")] = None,
    group_col: Annotated[str | None, typer.Option(help="CSV group column, e.g. lesion_id.")]
    = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Parallel readers (default: CPU "
                                                "count).")] = None,
    metadata: MetadataListOpt = None,
    labels: LabelsOpt = None,
    group: GroupOpt = None,
    class_map: ClassMapOpt = None,
    sources: SourcesOpt = None,
    drop_unmapped: DropUnmappedOpt = False,
    test_source: Annotated[str | None, typer.Option(
        "--test-source", metavar="NAME", help="With several sources: hold this source out "
        "entirely as the test split (the others give train and --val); their copies of its "
        "images and lesions are dropped.", show_default=False)] = None,
) -> None:
    """Write a stratified, leakage-proof split file."""
    from skincli.data.dataset import load_dataset
    from skincli.data.manifest import build_manifest
    from skincli.data.sources import load_sources
    from skincli.data.split import SPLITS, check_ratios, make_split
    from skincli.data.splitfile import check_out, sidecar_path, write_split

    # Cheap checks first, so a typo does not cost a full read of the data.
    plan = data_plan(data, metadata, sources, {"images": images, "label_col": label_col,
                                               "image_col": image_col, "group_col": group_col})
    if test_source is not None:
        if plan is None:
            raise SkinError(f"--test-source {test_source} needs two or more sources",
                            hint="Pass several DATA folders (or --sources FILE)")
        if keep_given_test:
            raise SkinError("--test-source and --keep-given-test both choose the test split",
                            hint="Use one of them")
    check_ratios(val, 0.0 if keep_given_test or test_source else test)
    check_out(out)
    meta_args = metadata_args((metadata or [None])[0] if plan is None else None, labels, group,
                              class_map)
    if plan is None:
        dataset = load_dataset(data[0], csv_image_dir=images, label_col=label_col,
                               image_col=image_col, group_col=group_col, **meta_args)
    else:
        names = [s.label for s in plan.specs]
        if test_source is not None and test_source not in names:
            raise SkinError(f"--test-source {test_source} names no source."
                            f"{did_you_mean(test_source, names)}",
                            hint=f"Sources: {', '.join(names)}")
        meta_args.pop("metadata")
        dataset = load_sources(plan, drop_unmapped=drop_unmapped, **meta_args)
    with progress_bar(True) as progress:
        manifest = build_manifest(dataset, workers=workers, progress=progress)
    result = make_split(manifest, val=val, test=test, seed=seed,
                        keep_given_test=keep_given_test,
                        conflicts=conflicts.value if conflicts else None,
                        keep_duplicates=keep_duplicates, group_near_dups=group_near_dups,
                        test_source=test_source)
    path = write_split(result, out)

    meta = result.meta
    counts = result.counts()
    rows = [[label, *[int(counts.loc[label, s]) for s in SPLITS], int(counts.loc[label].sum())]
            for label in counts.index]
    rows.append(["total", *[int(counts[s].sum()) for s in SPLITS], int(counts.values.sum())])
    r = meta["ratios"]
    ratios = (f"source {test_source} is the test split; train/val {r['train']:.2f}/"
              f"{r['val']:.2f} of the others" if test_source else
              f"given Test kept; train/val {r['train']:.2f}/{r['val']:.2f} of the rest"
              if keep_given_test else
              f"train/val/test {r['train']:.2f}/{r['val']:.2f}/{r['test']:.2f}")
    title = f"Split of {meta['n_images']} images (seed {seed}; {ratios})"
    ui.console.print(ui.table(title, ["class", *SPLITS, "total"], rows))
    if meta.get("sources"):
        rows = [[name, *[s[sp] for sp in SPLITS], s["total"]]
                for name, s in meta["sources"].items()]
        ui.console.print(ui.table("Images per source", ["source", *SPLITS, "total"], rows))
    if meta["n_units"] < meta["n_images"]:
        ui.console.print(f"{meta['n_images']} images in {meta['n_units']} units (identical "
                         "images, groups and near-duplicates are kept together).",
                         highlight=False)
    if meta["groups_kept_together"]:
        unit = {"lesion": "lesions", "patient": "patients"}.get(
            (meta.get("metadata") or {}).get("group") or "", "groups")
        ui.console.print(f"{meta['groups_kept_together']} {unit} with several images "
                         f"({meta['images_in_those_groups']} images) each kept within one "
                         "split.", highlight=False)
    if meta.get("metadata"):
        m = meta["metadata"]
        source = "the metadata" if m["labels"] == "metadata" else "the folders"
        ui.console.print(f"Labels from {source} ({Path(m['path']).name}, {m['format']}): "
                         f"{m['matched_images']} images matched, {m['disagreements']} folder "
                         "labels disagree with it.", highlight=False)

    dropped = meta["dropped"]
    if dropped:
        kinds = meta["dropped_counts"]
        ui.console.print(f"\nDropped {len(dropped)} files: " + ", ".join(
            f"{n} {k.replace('_', ' ')}" for k, n in kinds.items()), highlight=False)
        for kind in kinds:
            items = [d for d in dropped if d["kind"] == kind]
            for d in items[:SHOW]:
                ui.console.print(f"  {d['path']}: {d['reason']}", highlight=False)
            if len(items) > SHOW:
                ui.console.print(f"  … and {len(items) - SHOW} more {kind.replace('_', ' ')} "
                                 f"(see {sidecar_path(path)})", highlight=False)
    for w in result.warnings:
        ui.warn(w)
    ui.console.print(f"\nWrote {path} and {sidecar_path(path).name} "
                     f"(conflicts policy: {meta['conflicts']}).", highlight=False)
