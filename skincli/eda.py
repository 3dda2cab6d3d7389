"""Exploratory data analysis of a data set: the facts behind `skin eda`, as a JSON-ready dict.

Counts and balance, image properties per class, unreadable files, exact duplicates, label
conflicts, Train/Test leakage and near-duplicate suspects. Plots live in skincli.eda_plots.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from skincli.data.dataset import GIVEN_SPLITS, Dataset, load_dataset
from skincli.data.duplicates import NearDupParams, UnionFind, near_duplicate_pairs
from skincli.data.manifest import build_manifest
from skincli.data.overlap import source_overlap
from skincli.data.sources import SourcesPlan, load_sources
from skincli.errors import SkinError
from skincli.fsutil import atomic_dir, check_writable, write_json

DEFAULT_OUT = Path("reports/eda")
# Lists in report.json are complete; these only bound the extremes lists.
N_EXTREMES = 10


def _files(rows: pd.DataFrame) -> list[dict[str, str]]:
    return [{"path": p, "label": lab, "given_split": g}
            for p, lab, g in zip(rows["path"], rows["label"], rows["given_split"], strict=True)]


def _describe(values: pd.Series) -> dict[str, float]:
    v = values.astype(float)
    if v.empty:
        return {}
    return {"min": float(v.min()), "p10": float(v.quantile(0.10)), "median": float(v.median()),
            "mean": float(v.mean()), "p90": float(v.quantile(0.90)), "max": float(v.max())}


def _split_order(name: str) -> int:
    return GIVEN_SPLITS.index(name) if name in GIVEN_SPLITS else len(GIVEN_SPLITS)


def class_balance(ok: pd.DataFrame) -> dict[str, Any]:
    """Counts per class (and per given split), imbalance ratio and balancing class weights."""
    counts = ok["label"].value_counts().sort_index()
    n, k = int(counts.sum()), len(counts)
    # The usual "balanced" weights: n / (k * n_c), so every class weighs the same in the loss.
    weights = {c: round(n / (k * int(m)), 4) for c, m in counts.items()}
    per_split: dict[str, dict[str, int]] = {}
    if (ok["given_split"] != "").any():
        table = pd.crosstab(ok["label"], ok["given_split"])
        per_split = {s: {c: int(table.loc[c, s]) if c in table.index else 0 for c in counts.index}
                     for s in sorted(table.columns, key=_split_order)}
    largest, smallest = counts.idxmax(), counts.idxmin()
    return {
        "classes": [{"name": c, "count": int(m), "share": round(int(m) / n, 4),
                     "weight": weights[c],
                     **{f"given_{s}": per_split[s][c] for s in per_split}}
                    for c, m in counts.items()],
        "per_given_split": per_split,
        "imbalance_ratio": round(float(counts.max()) / float(counts.min()), 3),
        "largest_class": {"name": largest, "count": int(counts[largest])},
        "smallest_class": {"name": smallest, "count": int(counts[smallest])},
        "class_weights": weights,
    }


def image_properties(ok: pd.DataFrame) -> dict[str, Any]:
    """Sizes, aspect ratios, file sizes, colour, brightness and sharpness (overall, per class)."""
    aspect = ok["width"] / ok["height"].where(ok["height"] > 0)
    sizes = ok.groupby(["width", "height"]).size().sort_values(ascending=False)
    per_class: dict[str, dict[str, Any]] = {}
    for label, g in ok.groupby("label"):
        per_class[str(label)] = {
            "colour_mean": {c: round(float(g[f"mean_{c}"].mean()), 2) for c in "rgb"},
            "colour_std": {c: round(float(g[f"std_{c}"].mean()), 2) for c in "rgb"},
            "brightness": _describe(g["brightness"]),
            "sharpness": _describe(g["sharpness"]),
            "width": _describe(g["width"]),
            "height": _describe(g["height"]),
        }
    def extremes(col: str, ascending: bool) -> list[dict[str, Any]]:
        rows = ok.sort_values(col, ascending=ascending).head(N_EXTREMES)
        return [{"path": p, "label": lab, col: round(float(v), 2)}
                for p, lab, v in zip(rows["path"], rows["label"], rows[col], strict=True)]

    return {
        "width": _describe(ok["width"]), "height": _describe(ok["height"]),
        "aspect_ratio": _describe(aspect.dropna()),
        "file_size_bytes": _describe(ok["size_bytes"]),
        "distinct_sizes": int(len(sizes)),
        "most_common_sizes": [{"width": int(w), "height": int(h), "count": int(c)}
                              for (w, h), c in sizes.head(5).items()],
        "brightness": _describe(ok["brightness"]),
        "sharpness": _describe(ok["sharpness"]),
        "per_class": per_class,
        "blurriest": extremes("sharpness", True),
        "darkest": extremes("brightness", True),
        "brightest": extremes("brightness", False),
    }


def exact_duplicates(ok: pd.DataFrame) -> dict[str, Any]:
    """Same content hash: copies within a class, label conflicts and leakage between given
    splits (Train/Test, or Val)."""
    multi = ok[ok.duplicated("sha256", keep=False)].sort_values(["sha256", "path"])
    within, conflicts, leakage = [], [], []
    pair_counts: dict[tuple[str, str], int] = {}
    if "folder_label" in multi and (multi["folder_label"] != "").any():
        # With metadata, a conflict is about where the copies were filed; the metadata's
        # label (the same for every copy of one id) is what `split --conflicts resolve` keeps.
        multi = multi.assign(metadata_label=multi["label"],
                             label=multi["folder_label"].where(multi["folder_label"] != "",
                                                               multi["label"]))
    for sha, g in multi.groupby("sha256", sort=False):
        labels = sorted(g["label"].unique())
        for label, gl in g.groupby("label"):
            if len(gl) > 1:
                within.append({"sha256": sha, "label": label, "files": _files(gl)})
        if len(labels) > 1:
            item = {"sha256": sha, "labels": labels, "files": _files(g)}
            if "metadata_label" in g and g["metadata_label"].nunique() == 1:
                item["metadata_label"] = g["metadata_label"].iloc[0]
            conflicts.append(item)
            for i, a in enumerate(labels):
                for b in labels[i + 1:]:
                    pair_counts[(a, b)] = pair_counts.get((a, b), 0) + 1
        splits = set(g["given_split"]) - {""}
        if len(splits) > 1:
            leakage.append({"sha256": sha, "same_label": len(labels) == 1,
                            "splits": sorted(splits, key=_split_order),
                            **{s: _files(g[g["given_split"] == s]) for s in GIVEN_SPLITS}})
    return {
        "duplicates_within_class": {
            "groups": len(within),
            "extra_copies": int(sum(len(d["files"]) - 1 for d in within)),
            "items": within},
        "label_conflicts": {
            "images": len(conflicts),
            "files": int(sum(len(c["files"]) for c in conflicts)),
            "by_class_pair": [{"classes": list(k), "images": v} for k, v in
                              sorted(pair_counts.items(), key=lambda kv: -kv[1])],
            "items": conflicts},
        "leakage": {
            "images": len(leakage),
            "test_files": int(sum(len(x["test"]) for x in leakage)),
            "val_files": int(sum(len(x["val"]) for x in leakage)),
            "items": leakage},
    }


def near_duplicates(ok: pd.DataFrame, params: NearDupParams) -> dict[str, Any]:
    """Near-duplicate suspects (perceptual hash), as pairs and as clusters of files."""
    pairs = near_duplicate_pairs(ok, params)
    shas = sorted(set(pairs["sha_a"]) | set(pairs["sha_b"]))
    by_sha = dict(iter(ok[ok["sha256"].isin(shas)].groupby("sha256")))
    index = {s: i for i, s in enumerate(shas)}
    uf = UnionFind(len(shas))
    for a, b in zip(pairs["sha_a"], pairs["sha_b"], strict=True):
        uf.union(index[a], index[b])
    members: dict[int, list[str]] = {}
    for s, root in zip(shas, uf.components(), strict=True):
        members.setdefault(root, []).append(s)
    max_dist = {}
    for a, d in zip(pairs["sha_a"], pairs["distance"], strict=True):
        r = uf.find(index[a])
        max_dist[r] = max(max_dist.get(r, 0), int(d))
    clusters = []
    for root, group in members.items():
        rows = pd.concat([by_sha[s] for s in group]).sort_values("path")
        clusters.append({
            "files": _files(rows), "max_distance": max_dist.get(root, 0),
            "cross_class": rows["label"].nunique() > 1,
            "cross_split": len(set(rows["given_split"]) - {""}) > 1})
    clusters.sort(key=lambda c: (c["max_distance"], c["files"][0]["path"]))

    def first(sha: str) -> dict[str, str]:
        return _files(by_sha[sha].sort_values("path").head(1))[0]

    pair_list = [{"a": first(a), "b": first(b), "distance": int(d), "colour_diff": float(c)}
                 for a, b, d, c in zip(pairs["sha_a"], pairs["sha_b"], pairs["distance"],
                                       pairs["colour_diff"], strict=True)]
    return {
        "params": asdict(params),
        "method": "64-bit DCT perceptual hash; suspect if Hamming distance <= strict_distance, "
                  "or <= max_distance with mean colours within max_colour_diff per channel",
        "pairs": len(pair_list), "clusters": len(clusters),
        "cross_class_clusters": sum(c["cross_class"] for c in clusters),
        "cross_split_clusters": sum(c["cross_split"] for c in clusters),
        "items": clusters, "pair_list": pair_list,
    }


def metadata_findings(ok: pd.DataFrame, join: dict[str, Any]) -> dict[str, Any]:
    """What the metadata says: folder-vs-metadata labels, lesions and patients with several
    images (and those straddling given splits), and the subgroups available."""
    out = dict(join)
    for level, col in (("lesions", "lesion_id"), ("patients", "patient_id")):
        rows = ok[ok[col] != ""]
        # One photograph may be filed twice: count images by metadata id, not files.
        per = rows.drop_duplicates("image_id").groupby(col).size()
        multi = per[per > 1]
        splits = rows[rows["given_split"] != ""].groupby(col)["given_split"].nunique()
        straddle = sorted(splits[splits > 1].index)
        out[level] = {
            "with_id": int(len(per)), "with_several_images": int(len(multi)),
            "images_in_those": int(multi.sum()),
            "straddling_given_splits": len(straddle),
            "straddling_list": [
                {"id": lid, "files": _files(rows[rows[col] == lid].sort_values("path"))}
                for lid in straddle],
        }
    sub: dict[str, dict[str, int]] = {}
    for col in ("sex", "age", "site"):
        vals = ok.drop_duplicates("image_id")[col]
        counts = vals[vals != ""].value_counts()
        sub[col] = {str(k): int(v) for k, v in sorted(counts.items(), key=lambda kv: kv[0])}
    out["subgroups"] = sub
    return out


def analyse(manifest: pd.DataFrame, dataset: Dataset,
            params: NearDupParams | None = None) -> dict[str, Any]:
    """The full report (without plots or timings) for a manifest of `dataset`."""
    params = params or NearDupParams()
    ok = manifest[manifest["readable"]]
    bad = manifest[~manifest["readable"]]
    report: dict[str, Any] = {
        "data": {
            "source": str(dataset.source), "root": str(dataset.root), "layout": dataset.layout,
            "layout_description": dataset.describe(), "csv_columns": dataset.columns or None,
            "files": int(len(manifest)), "readable": int(len(ok)), "unreadable": int(len(bad)),
            "skipped": len(dataset.skipped), "classes": sorted(ok["label"].unique().tolist()),
            "groups": int(ok.loc[ok["group"] != "", "group"].nunique()),
        },
        "unreadable": [{"path": p, "label": lab, "reason": e, "code": c} for p, lab, e, c in
                       zip(bad["path"], bad["label"], bad["error"], bad["error_code"],
                           strict=True)],
        "skipped": list(dataset.skipped),
    }
    if ok.empty:
        return report
    report["balance"] = class_balance(ok)
    report["images"] = image_properties(ok)
    report.update(exact_duplicates(ok))
    report["near_duplicates"] = near_duplicates(ok, params)
    if dataset.metadata:
        report["metadata"] = metadata_findings(ok, dataset.metadata)
    if dataset.sources:
        report["sources"] = {"listing": dataset.sources,
                             **source_overlap(ok, params)}
    return report


def _check_out(out: Path, source: Path) -> None:
    """The report folder is replaced as a whole: never let that hit data or unrelated files."""
    if out.exists() and not out.is_dir():
        raise SkinError(f"--out {out} is a file, not a folder", hint="Pass a folder name")
    src = source.expanduser().resolve()
    dst = out.expanduser().resolve()
    if dst == src or dst in src.parents:
        raise SkinError(f"--out {out} would replace the data folder {source}",
                        hint="Write the report elsewhere, e.g. --out reports/eda")
    if dst.is_dir() and any(dst.iterdir()) and not (dst / "report.json").is_file():
        raise SkinError(f"--out {out} is a folder that is not an eda report; it would be "
                        "replaced", hint="Choose a new or empty folder, e.g. --out reports/eda")


def run_eda(source: str | os.PathLike[str], out: str | os.PathLike[str] | None = DEFAULT_OUT,
            *, images: str | os.PathLike[str] | None = None, label_col: str | None = None,
            image_col: str | None = None, group_col: str | None = None,
            metadata: str | os.PathLike[str] | None = None, labels: str | None = None,
            group: str | None = None, class_map: dict[str, str] | None = None,
            workers: int | None = None, plots: bool = True, cache: bool = True,
            params: NearDupParams | None = None, seed: int = 0,
            progress: Callable[[int, int], None] | None = None,
            sources: SourcesPlan | None = None, drop_unmapped: bool = False) -> dict[str, Any]:
    """List, read and analyse a data set; write report.json, manifest.csv and plots to `out`.

    With `sources` (several pooled data sources, skincli.data.sources) `source` and the CSV
    and metadata options are ignored: each source carries its own. The report folder is
    swapped in atomically: a failure never leaves a half-written report. Returns the report
    dict (with timings and the written plot names).
    """
    t0 = time.perf_counter()
    if out is not None:
        for src in [s.path for s in sources.specs] if sources else [source]:
            _check_out(Path(out), Path(src))
        check_writable(out)
    if sources is not None:
        dataset = load_sources(sources, labels=labels, group=group, class_map=class_map,
                               drop_unmapped=drop_unmapped)
    else:
        dataset = load_dataset(source, csv_image_dir=images, label_col=label_col,
                               image_col=image_col, group_col=group_col, metadata=metadata,
                               labels=labels, group=group, class_map=class_map)
    t1 = time.perf_counter()
    manifest = build_manifest(dataset, workers=workers, cache=cache, progress=progress)
    t2 = time.perf_counter()
    report = analyse(manifest, dataset, params)
    t3 = time.perf_counter()
    timing = {"list_s": t1 - t0, "manifest_s": t2 - t1, "analysis_s": t3 - t2,
              "files_read": int(manifest.attrs.get("files_read", 0)),
              "cache_hits": int(manifest.attrs.get("cache_hits", 0))}
    report["plots"] = []
    if out is not None:
        with atomic_dir(out) as tmp:
            if plots and report["data"]["readable"]:
                from skincli import eda_plots  # matplotlib is slow to import; only when needed

                report["plots"] = eda_plots.write_all(report, manifest, tmp, seed=seed)
            manifest.to_csv(tmp / "manifest.csv", index=False)
            timing["plots_s"] = time.perf_counter() - t3
            timing["total_s"] = time.perf_counter() - t0
            report["timing"] = {k: round(v, 3) if isinstance(v, float) else v
                                for k, v in timing.items()}
            write_json(tmp / "report.json", report)
        report["out"] = str(out)
    else:
        timing["total_s"] = time.perf_counter() - t0
        report["timing"] = {k: round(v, 3) if isinstance(v, float) else v
                            for k, v in timing.items()}
    return report


def summary_numbers(report: dict[str, Any]) -> dict[str, int]:
    """The data-quality counts shown at the top of the CLI output."""
    return {
        "unreadable": len(report.get("unreadable", [])),
        "duplicate_groups": report.get("duplicates_within_class", {}).get("groups", 0),
        "label_conflicts": report.get("label_conflicts", {}).get("images", 0),
        "leakage": report.get("leakage", {}).get("images", 0),
        "near_duplicate_clusters": report.get("near_duplicates", {}).get("clusters", 0),
        "metadata_disagreements": report.get("metadata", {}).get("disagreements", 0),
        "images_shared_by_sources": sum(p["shared_images"] for p in
                                        report.get("sources", {}).get("pairs", [])),
        "lesions_with_several_images": report.get("metadata", {}).get("lesions", {})
        .get("with_several_images", 0),
    }

