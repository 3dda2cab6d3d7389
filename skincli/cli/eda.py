"""`skin eda DATA`: what is in a data set, and what is wrong with it."""

from __future__ import annotations

import json as jsonlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from skincli import ui
from skincli.cli.common import (
    ClassMapOpt,
    GroupOpt,
    LabelsOpt,
    handle_errors,
    metadata_args,
)
from skincli.errors import SkinError
from skincli.fsutil import json_default

if TYPE_CHECKING:
    from skincli.data.sources import SourcesPlan

HELP = ("Explore a data set: images per class and balance, sizes, colour, brightness, "
        "sharpness, unreadable files, duplicates, label conflicts, Train/Test leakage and "
        "near-duplicates. Writes report.json, manifest.csv and plots to --out.")

# How many files each problem list shows in the terminal (report.json has them all).
SHOW = 8

# The data arguments of eda and split: one DATA, or several pooled sources.
DataArg = Annotated[list[Path] | None, typer.Argument(
    help="Folder of class folders, a Train/Test folder, or a CSV (image, label[, group]); "
    "several are pooled as sources (each named by its folder).", show_default=False)]
MetadataListOpt = Annotated[list[Path] | None, typer.Option(
    "--metadata", dir_okay=False,
    help="Image metadata CSV (ISIC archive export, HAM10000_metadata.csv or ISIC challenge "
    "ground truth): its diagnosis is the label, lesion_id the group, age/sex/site the "
    "subgroups. Rows join images by file name without suffix. With several DATA: once for "
    "all, or once per DATA in order.")]
SourcesOpt = Annotated[Path | None, typer.Option(
    "--sources", dir_okay=False,
    help="YAML file of data sources (per source: path, name, layout, metadata, class_map, "
    "images); pooled with any DATA given. See docs/data.md.")]
DropUnmappedOpt = Annotated[bool, typer.Option(
    "--drop-unmapped", help="With several sources: drop images whose class maps to no "
    "pooled class (default: keep them under their own name, with a warning).")]


def data_plan(data: list[Path] | None, metadata: list[Path] | None, sources: Path | None,
              csv_options: dict[str, Any]) -> SourcesPlan | None:
    """The pooled sources, or None for one DATA (the single-source path, unchanged)."""
    from skincli.data.sources import check_specs, plan_sources

    data, metadata = list(data or []), list(metadata or [])
    if sources is None and len(data) <= 1:
        if not data:
            raise SkinError("No data given", hint="Pass DATA (a folder or CSV), or --sources "
                            "FILE")
        if len(metadata) > 1:
            raise SkinError(f"{len(metadata)} --metadata files for one DATA",
                            hint="Give one metadata file (or pass several DATA sources)")
        return None
    given = [f"--{k.replace('_', '-')}" for k, v in csv_options.items() if v]
    if given:
        raise SkinError(f"{' and '.join(given)} apply to one DATA, not to pooled sources",
                        hint="Give each CSV source its options in a --sources file (images:, "
                        "label_col:, ...)")
    plan = plan_sources(data, metadata, sources)
    check_specs(plan.specs)  # a missing path or a repeated name fails before anything else
    return plan


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A transient progress bar on stderr for reading files (only on a terminal)."""
    if not enabled or not ui.err_console.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress("reading images", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=ui.err_console, transient=True) as bar:
        task = bar.add_task("read", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@handle_errors
def command(
    data: DataArg = None,
    out: Annotated[Path, typer.Option(help="Report folder (replaced atomically).")]
    = Path("reports/eda"),
    images: Annotated[Path | None, typer.Option(help="Image folder for a CSV (searched "
                                                "recursively for <id>.jpg/.png...); default: "
                                                "the CSV's folder.", file_okay=False)] = None,
    label_col: Annotated[str | None, typer.Option(help="CSV label column (default: label, dx, "
                                                  "class, diagnosis...).")] = None,
    image_col: Annotated[str | None, typer.Option(help="CSV image path/id column (default: "
                                                  "image_id, image, filepath, path...).")] = None,
    group_col: Annotated[str | None, typer.Option(help="CSV group column, e.g. lesion_id "
                                                  "(default: lesion_id, group, patient_id if "
                                                  "present).")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Parallel readers (default: CPU "
                                                "count).")] = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write PNG plots.")] = True,
    json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout "
                                           "instead of tables.")] = False,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse file hashes and "
                                        "statistics of unchanged files.")] = True,
    near_dup_distance: Annotated[int, typer.Option(min=0, max=32, help="Largest perceptual-hash "
                                                   "distance (bits of 64) for near-duplicate "
                                                   "suspects.")] = 10,
    metadata: MetadataListOpt = None,
    labels: LabelsOpt = None,
    group: GroupOpt = None,
    class_map: ClassMapOpt = None,
    sources: SourcesOpt = None,
    drop_unmapped: DropUnmappedOpt = False,
) -> None:
    """Explore a data set (or several pooled sources) and write a report folder."""
    from skincli.data.duplicates import NearDupParams
    from skincli.eda import run_eda

    plan = data_plan(data, metadata, sources, {"images": images, "label_col": label_col,
                                               "image_col": image_col, "group_col": group_col})
    params = NearDupParams(max_distance=near_dup_distance,
                           strict_distance=min(NearDupParams.strict_distance, near_dup_distance))
    meta = metadata_args((metadata or [None])[0] if plan is None else None, labels, group,
                         class_map)
    with progress_bar(not json) as progress:
        report = run_eda(data[0] if data else Path("."), out, images=images, label_col=label_col,
                         image_col=image_col, group_col=group_col, workers=workers, plots=plots,
                         cache=cache, params=params, progress=progress, sources=plan,
                         drop_unmapped=drop_unmapped, **meta)
    if json:
        typer.echo(jsonlib.dumps(report, indent=2, default=json_default))
        return
    show_report(report)


def _more(n_total: int, out: str) -> None:
    if n_total > SHOW:
        ui.console.print(f"  … and {n_total - SHOW} more in {out}/report.json", highlight=False)


def show_report(report: dict[str, Any]) -> None:
    """Print the report as Rich tables and lists."""
    c = ui.console
    d = report["data"]
    out = report.get("out", "")
    c.print(f"[bold]{d['source']}[/]: {d['layout_description']}, {d['files']} image files, "
            f"{d['readable']} readable, {len(d['classes'])} classes"
            + (f", {d['groups']} groups" if d["groups"] else ""), highlight=False)
    for item in report["unreadable"][:SHOW]:
        ui.warn(f"skipped unreadable {item['path']}: {item['reason']}")
    if len(report["unreadable"]) > SHOW:
        ui.warn(f"… and {len(report['unreadable']) - SHOW} more unreadable files "
                f"(see {out}/report.json)")
    if report["skipped"]:
        ui.warn(f"{len(report['skipped'])} files not used (e.g. {report['skipped'][0]['path']}: "
                f"{report['skipped'][0]['reason']}); see {out}/report.json")
    if "balance" not in report:
        return
    bal = report["balance"]
    splits = list(bal["per_given_split"])
    cols = ["class", *[f"given {s}" for s in splits], "images", "share", "class weight"]
    rows = [[k["name"], *[k[f"given_{s}"] for s in splits], k["count"],
             f"{100 * k['share']:.1f}%", k["weight"]] for k in bal["classes"]]
    c.print(ui.table("Images per class", cols, rows))
    c.print(f"Imbalance ratio [bold]{bal['imbalance_ratio']:.1f}[/] (largest "
            f"{bal['largest_class']['name']} {bal['largest_class']['count']}, smallest "
            f"{bal['smallest_class']['name']} {bal['smallest_class']['count']}); class weights "
            "above balance the training loss.", highlight=False)

    im = report["images"]
    common = ", ".join(f"{s['width']}x{s['height']} ({s['count']})"
                       for s in im["most_common_sizes"][:3])
    c.print(f"\nImage sizes: {im['distinct_sizes']} distinct; most common {common}; aspect "
            f"ratio {im['aspect_ratio']['min']:.2f}–{im['aspect_ratio']['max']:.2f}",
            highlight=False)
    rows = []
    for name, p in im["per_class"].items():
        cm = p["colour_mean"]
        rows.append([name, f"{cm['r']:.0f} / {cm['g']:.0f} / {cm['b']:.0f}",
                     f"{p['brightness']['mean']:.1f}", f"{p['sharpness']['median']:.1f}",
                     f"{p['sharpness']['p10']:.1f}"])
    c.print(ui.table("Image properties per class",
                     ["class", "mean R/G/B", "brightness", "sharpness (median)",
                      "sharpness (p10)"], rows))

    dup = report["duplicates_within_class"]
    con = report["label_conflicts"]
    leak = report["leakage"]
    near = report["near_duplicates"]
    has_split = bool(splits)
    rows = [
        ["unreadable files", len(report["unreadable"]), "skipped by split and train"],
        ["exact duplicates within a class", f"{dup['groups']} images, {dup['extra_copies']} "
         "extra copies", "split keeps one copy"],
        ["label conflicts (same image, different classes)",
         f"{con['images']} images in {con['files']} files", "split drops them (--conflicts)"],
        ["leakage: same image in two given splits (Train/Test)",
         f"{leak['images']} images" if has_split else "n/a (no given split)",
         "split keeps copies together"],
        ["near-duplicate suspects (perceptual hash)",
         f"{near['clusters']} clusters ({near['cross_class_clusters']} across classes"
         + (f", {near['cross_split_clusters']} across given splits)" if has_split else ")"),
         "split keeps them together"],
    ]
    c.print(ui.table("Data quality", ["check", "found", "what happens"], rows))

    if con["images"]:
        pairs = "; ".join(f"{' / '.join(p['classes'])}: {p['images']}"
                          for p in con["by_class_pair"][:6])
        c.print(f"\n[bold]Label conflicts[/] by class pair: {pairs}", highlight=False)
        for item in con["items"][:SHOW]:
            truth = (f"  → metadata: {item['metadata_label']}" if item.get("metadata_label")
                     else "")
            c.print("  " + " = ".join(f"{f['path']} ({f['label']})" for f in item["files"])
                    + truth, highlight=False)
        _more(con["images"], out)
    if leak["images"]:
        c.print("\n[bold]Leakage[/] (same image in two given splits):")
        for item in leak["items"][:SHOW]:
            files = item["train"] + item["val"] + item["test"]
            c.print("  " + " = ".join(f"{f['path']}" for f in files)
                    + ("" if item["same_label"] else "  [red](different labels)[/]"),
                    highlight=False)
        _more(leak["images"], out)
    if dup["groups"]:
        c.print("\n[bold]Exact duplicates[/] within a class:")
        for item in dup["items"][:SHOW]:
            c.print("  " + " = ".join(f["path"] for f in item["files"]), highlight=False)
        _more(dup["groups"], out)
    if near["clusters"]:
        c.print(f"\n[bold]Near-duplicate suspects[/] (pHash distance ≤ "
                f"{near['params']['max_distance']}; check them by eye in near_duplicates.png):")
        for item in near["items"][:SHOW]:
            flags = [w for w, on in (("different classes", item["cross_class"]),
                                     ("across given splits", item["cross_split"])) if on]
            c.print(f"  d≤{item['max_distance']}: " + " ~ ".join(
                f"{f['path']} ({f['label']})" for f in item["files"])
                + (f"  [yellow]({', '.join(flags)})[/]" if flags else ""), highlight=False)
        _more(near["clusters"], out)

    if "metadata" in report:
        show_metadata(report["metadata"], out)
    if "sources" in report:
        show_sources(report["sources"], out)

    t = report["timing"]
    where = f"Report: {out}/ (report.json, manifest.csv" + (
        f", {len(report['plots'])} plots)" if report["plots"] else ")")
    c.print(f"\n{where} in {t['total_s']:.1f}s ({t['files_read']} files read, "
            f"{t['cache_hits']} from cache)", highlight=False)


def show_metadata(m: dict[str, Any], out: str) -> None:
    """The metadata section: folder vs metadata labels, every disagreement, lesions."""
    c = ui.console
    meta = m["metadata"]
    c.print(f"\n[bold]Metadata[/] {Path(meta['path']).name} ({meta['format']}, {meta['ids']} "
            f"ids): {m['matched_images']} images matched, {m['images_without_row']} without a "
            f"row (they keep their folder label), {m['rows_without_image']} rows match no "
            f"image. Labels used: {m['labels']}.", highlight=False)
    # Long format (one row per folder/diagnosis pair present): a 9 x 9 grid of long class
    # names does not fit a terminal.
    rows = [[folder, dx, n, "" if folder == dx else "[red]disagrees[/]"]
            for folder, by_dx in m["folder_vs_metadata"].items()
            for dx, n in sorted(by_dx.items(), key=lambda kv: -kv[1])]
    if rows:
        c.print(ui.table("Folder vs metadata diagnosis", ["folder", "metadata says", "files",
                                                          ""], rows))
    c.print(f"[bold]{m['disagreements']}[/] files are filed under a class the metadata "
            "contradicts:", highlight=False)
    for d in m["disagreement_list"]:  # every one: these are the label errors of the data
        c.print(f"  {d['path']}: folder {d['folder']}, metadata {d['metadata']}",
                highlight=False)
    for e in m["emptied_classes"]:
        ui.warn(f"folder '{e['class']}' holds no {e['class']} by the metadata: not a class here")
    les = m["lesions"]
    c.print(f"\n[bold]Lesions[/]: {les['with_id']} with a lesion id, "
            f"[bold]{les['with_several_images']}[/] photographed more than once "
            f"({les['images_in_those']} images); {les['straddling_given_splits']} straddle the "
            "given splits (`skin split --metadata` keeps each lesion in one split).",
            highlight=False)
    for item in les["straddling_list"][:SHOW]:
        c.print(f"  {item['id']}: " + ", ".join(f"{f['path']}" for f in item["files"]),
                highlight=False)
    _more(les["straddling_given_splits"], out)
    pat = m["patients"]
    if pat["with_id"]:
        c.print(f"Patients: {pat['with_id']} with an id, {pat['with_several_images']} with "
                f"several images; {pat['straddling_given_splits']} straddle the given splits.",
                highlight=False)
    sub = m["subgroups"]
    parts = [f"{k}: {len(v)} values" for k, v in sub.items() if v]
    if parts:
        c.print("Subgroups for `skin evaluate`: " + "; ".join(parts), highlight=False)


def show_sources(src: dict[str, Any], out: str) -> None:
    """Pooled sources: each one's size and class mapping, and what every pair shares."""
    c = ui.console
    listing = {s["name"]: s for s in src["listing"]}
    rows = []
    for s in src.get("per_source", []):
        info = listing.get(s["name"], {})
        mapped = ", ".join(f"{a}→{b}" for a, b in info.get("class_mapping", {}).items())
        rows.append([s["name"], info.get("layout_description", ""), s["files"], s["images"],
                     s["lesions"] or "-", len(s["classes"]), mapped or "-"])
    c.print(ui.table("Sources", ["source", "layout", "files", "distinct images", "lesions",
                                 "classes", "class names mapped"], rows))
    for info in src["listing"]:
        for w in info.get("warnings", []):
            ui.warn(w)
    rows = []
    for p in src.get("pairs", []):
        rows.append([" + ".join(p["sources"]),
                     f"{p['shared_images']} ({p['identical']} identical, {p['re_encoded']} "
                     f"re-encoded, {p['resized']} resized)",
                     p["images_label_disagreements"], p["shared_lesions"],
                     p["lesions_label_disagreements"]])
    if rows:
        c.print(ui.table("Shared between sources (`skin split` keeps each in one split)",
                         ["sources", "images", "labels differ", "lesions", "labels differ"],
                         rows))
    for p in src.get("pairs", []):
        differ = [i for i in p["images"] if not i["labels_agree"]]
        differ += [x for x in p["lesions"] if not x["labels_agree"]]
        if differ:
            c.print(f"\n[bold]Labels that {' and '.join(p['sources'])} disagree on[/] "
                    "(`skin split --conflicts` decides identical files):", highlight=False)
        for item in differ[:SHOW]:
            what = f"lesion {item['id']}" if "id" in item else item["kind"]
            c.print(f"  {what}: " + " = ".join(f"{f['source']}:{f['path']} ({f['label']})"
                                              for f in item["files"]), highlight=False)
        _more(len(differ), out)
