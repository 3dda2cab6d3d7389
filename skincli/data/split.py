"""Leakage-proof stratified train/val/test split and the split file every later step reads.

Images that share a content hash, a group (e.g. HAM10000 lesion_id) or, by default, a
near-duplicate suspect link form one "unit"; whole units are assigned to splits, class by
class, so a lesion never sits on both sides. The split file stores paths relative to the data
root; the root, seed, ratios, policy, counts and every dropped file (with the reason) go to a
JSON sidecar (splits/split.csv -> splits/split.json).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skincli import __version__
from skincli.data.duplicates import NearDupParams, UnionFind, near_duplicate_pairs
from skincli.data.overlap import cross_source_disagreements
from skincli.data.sources import check_test_source, check_training_classes, source_summary
from skincli.errors import SkinError

DEFAULT_SPLIT_PATH = Path("splits/split.csv")
SPLITS = ("train", "val", "test")
CONFLICT_POLICIES = ("resolve", "drop", "keep-first", "error")
# Fewer images than this for a class in a split make its metrics too noisy to read.
MIN_PER_SPLIT = 5
# Columns written to the split file, in order (the manifest's, minus what is true of every
# row that survives: readable, no error).
# Metadata columns travel with the split so evaluate can report subgroups.
# `source` names the pooled data source of each image (skincli.data.sources), "" for one.
META_COLUMNS = ["folder_label", "image_id", "lesion_id", "patient_id", "age", "sex", "site",
                "source"]
SPLIT_COLUMNS = ["path", "label", "split", "given_split", "group", "sha256", "width", "height",
                 "size_bytes", "phash", "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b",
                 "brightness", "sharpness", *META_COLUMNS]


@dataclass
class SplitResult:
    """A computed split: the kept rows (with a `split` column), metadata and warnings."""

    frame: pd.DataFrame
    meta: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def counts(self) -> pd.DataFrame:
        """Class x split image counts (all three splits as columns)."""
        table = pd.crosstab(self.frame["label"], self.frame["split"])
        return table.reindex(columns=list(SPLITS), fill_value=0)


def make_split(manifest: pd.DataFrame, *, val: float = 0.15, test: float = 0.15, seed: int = 42,
               keep_given_test: bool = False, conflicts: str | None = None,
               keep_duplicates: bool = False, group_near_dups: bool = True,
               near_dup_params: NearDupParams | None = None,
               min_per_split: int = MIN_PER_SPLIT, test_source: str | None = None) -> SplitResult:
    """Split a manifest (from build_manifest) into train/val/test without leakage.

    With keep_given_test the given Test rows are the test split, `val` is the fraction of the
    remaining images, and Train images that duplicate (or share a group / near-duplicate link
    with) a test image are dropped from Train. `conflicts` defaults to "resolve" when the
    manifest carries metadata labels, else "drop".

    With `test_source` (pooled sources) every image of that source is the test split, the
    other sources give train and val (`val` of them), and their images that share a unit with
    a test image are dropped; a class left with no training image is an error.
    """
    held_out = keep_given_test or bool(test_source)
    check_ratios(val, 0.0 if held_out else test)
    join = manifest.attrs.get("metadata") or None
    if conflicts is None:
        conflicts = "resolve" if join and join.get("labels") == "metadata" else "drop"
    if conflicts not in CONFLICT_POLICIES:
        raise SkinError(f"Unknown conflicts policy '{conflicts}'",
                        hint=f"Use one of: {', '.join(CONFLICT_POLICIES)}")
    df = manifest.reset_index(drop=True).copy()
    df["_order"] = np.arange(len(df))
    for col in META_COLUMNS + ["group"]:
        if col not in df:
            df[col] = ""
    if test_source:
        check_test_source(test_source, df, keep_given_test)
    # Rows that are the test split by the user's word (given Test, or the held-out source).
    df["_test"] = (df["source"] == test_source) if test_source else \
        (df["given_split"] == "test") if keep_given_test else False
    dropped: list[dict[str, str]] = []

    def drop(rows: pd.DataFrame, kind: str, reasons: list[str] | str) -> None:
        reasons = [reasons] * len(rows) if isinstance(reasons, str) else reasons
        for (_, r), why in zip(rows.iterrows(), reasons, strict=True):
            dropped.append({"path": r["path"], "label": r["label"],
                            "given_split": r["given_split"], "kind": kind, "reason": why,
                            **({"source": r["source"]} if r["source"] else {})})

    bad = df[~df["readable"]]
    drop(bad, "unreadable", [f"unreadable: {e}" for e in bad["error"]])
    df = df[df["readable"]]

    df = _apply_conflict_policy(df, conflicts, drop)

    if keep_given_test and not (df["given_split"] == "test").any():
        raise SkinError("--keep-given-test needs a given Test folder, and this data set has "
                        "none", hint="Use the Train/ + Test/ layout, or drop --keep-given-test")

    if not keep_duplicates:
        df = _drop_exact_copies(df, held_out, drop)

    if df.empty:
        raise SkinError("No usable images left to split",
                        hint="Run `skin eda DATA` to see which files are unreadable or conflicting")

    # Units: connected components over shared hash, shared group and near-duplicate links.
    df = df.reset_index(drop=True)
    uf = UnionFind(len(df))
    for col in ("sha256", "group"):
        # Index labels (df has a fresh 0..n-1 index), not positions within the filtered rows.
        for idx in df[df[col] != ""].groupby(col).groups.values():
            for other in idx[1:]:
                uf.union(int(idx[0]), int(other))
    near = pd.DataFrame()
    if group_near_dups:
        near = near_duplicate_pairs(df, near_dup_params)
        # Any row of a hash will do: rows sharing a hash are already in one unit.
        row_of = dict(zip(df["sha256"], df.index, strict=True))
        for a, b in zip(near["sha_a"], near["sha_b"], strict=True):
            uf.union(row_of[a], row_of[b])
    df["_unit"] = uf.components()

    if held_out:
        df = _keep_given_test(df, drop)
        ratios = {"train": round(1.0 - val, 6), "val": val, "test": 0.0}
        pool = df["split"] == ""
        df.loc[pool, "split"] = _assign(df[pool], ratios, seed)
    else:
        ratios = {"train": round(1.0 - val - test, 6), "val": val, "test": test}
        df["split"] = _assign(df, ratios, seed)

    result = SplitResult(frame=_finish(df), meta={})
    counts = result.counts()
    if test_source:
        check_training_classes(counts, test_source)
    before = manifest.loc[manifest["readable"], "label"].value_counts()
    losses = pd.Series([d["label"] for d in dropped if d["kind"] == "label_conflict"],
                       dtype=object).value_counts()
    result.warnings = _warnings(counts, ratios, min_per_split, before, losses, conflicts)
    if join:
        result.warnings = list(join.get("warnings", [])) + result.warnings
    sources = list(manifest.attrs.get("sources") or [])
    result.warnings = [w for s in sources for w in s.get("warnings", [])] + result.warnings
    if len(sources) > 1 and not near.empty:
        result.warnings += cross_source_disagreements(df, near)
    grouped = df[df["group"] != ""].groupby("group").size()
    result.meta = {
        "skincli_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "root": manifest.attrs.get("root", ""),
        "layout": manifest.attrs.get("layout", ""),
        "seed": seed,
        "ratios": ratios,
        "keep_given_test": keep_given_test,
        "conflicts": conflicts,
        "keep_duplicates": keep_duplicates,
        "group_near_dups": group_near_dups,
        "near_dup_params": (near_dup_params or NearDupParams()).__dict__,
        "near_dup_links": int(len(near)),
        "classes": sorted(result.frame["label"].unique().tolist()),
        "n_images": int(len(result.frame)),
        "n_units": int(df["_unit"].nunique()),
        # Groups (lesions, patients) with several images, each kept within one split.
        "groups_kept_together": int((grouped > 1).sum()),
        "images_in_those_groups": int(grouped[grouped > 1].sum()),
        "metadata": _join_summary(join),
        "test_source": test_source or "",
        "sources": source_summary(sources, result.frame, SPLITS),
        "counts": {c: {s: int(counts.loc[c, s]) for s in SPLITS} for c in counts.index},
        "totals": {s: int(counts[s].sum()) for s in SPLITS},
        "dropped_counts": pd.Series([d["kind"] for d in dropped], dtype=object)
        .value_counts().to_dict() if dropped else {},
        "dropped": dropped,
        "skipped_at_listing": list(manifest.attrs.get("skipped", [])),
        "warnings": result.warnings,
    }
    return result


def check_ratios(val: float, test: float) -> None:
    """Raise SkinError unless val and test are fractions that leave room for training."""
    for name, value in (("--val", val), ("--test", test)):
        if not 0.0 <= value < 1.0:
            raise SkinError(f"{name} {value} must be a fraction between 0 and 1",
                            hint="e.g. --val 0.15 --test 0.15")
    if val + test >= 0.9:
        raise SkinError(f"--val {val} + --test {test} leaves less than 10% for training",
                        hint="Use smaller fractions, e.g. --val 0.15 --test 0.15")


def _apply_conflict_policy(df: pd.DataFrame, policy: str, drop: Any) -> pd.DataFrame:
    """Handle the same image (content hash) filed under different classes.

    A conflict is a hash whose copies carry different labels, or were filed under different
    folders (`folder_label`) even where metadata gave them one label. `resolve` keeps the
    copy whose folder matches its metadata label (the metadata is the truth); hashes whose
    labels still differ cannot be resolved and are dropped.
    """
    filed = df["folder_label"].where(df["folder_label"] != "", df["label"])
    by_hash = pd.DataFrame({"sha256": df["sha256"], "label": df["label"], "filed": filed})
    stats = by_hash.groupby("sha256").agg(labels=("label", "nunique"), filed=("filed",
                                                                              "nunique"))
    conflicted = stats.index[(stats["labels"] > 1) | (stats["filed"] > 1)]
    if len(conflicted) == 0:
        return df
    rows = df[df["sha256"].isin(conflicted)].sort_values("_order")
    if policy == "error":
        first = rows[rows["sha256"] == rows["sha256"].iloc[0]]
        example = " = ".join(f"{p} ({lab})" for p, lab in zip(first["path"], filed[first.index],
                                                               strict=True))
        raise SkinError(f"{len(conflicted)} label conflicts (the same image under different "
                        f"classes), e.g. {example}",
                        hint="Fix the labels, or use --conflicts resolve (with --metadata), "
                        "drop or keep-first")
    reasons: dict[int, tuple[str, str]] = {}  # row -> (kind, reason)
    for _, grp in rows.groupby("sha256", sort=False):
        names = sorted(set(filed[grp.index]))
        one_label = grp["label"].nunique() == 1
        if policy == "resolve" and one_label:
            truth = grp["label"].iloc[0]
            match = grp.index[filed[grp.index] == truth]
            keep = match[0] if len(match) else grp.index[0]
            for i in grp.index:
                if i != keep:
                    reasons[i] = ("resolved_conflict",
                                  f"label conflict resolved: filed as '{filed[i]}', the "
                                  f"metadata says '{truth}' (kept {df.at[keep, 'path']})")
        elif policy in ("drop", "resolve"):
            why = f"label conflict: the same image is filed as {' and '.join(names)}"
            if policy == "resolve":
                why += " and the metadata does not settle it"
            for i in grp.index:
                reasons[i] = ("label_conflict", why)
        else:
            first_label, first_path = grp["label"].iloc[0], grp["path"].iloc[0]
            for i, lab in zip(grp.index, grp["label"], strict=True):
                if i != grp.index[0] and (lab != first_label or filed[i] != filed[grp.index[0]]):
                    reasons[i] = ("label_conflict", f"label conflict: the same image is kept "
                                  f"as '{first_label}' ({first_path})")
    for kind in ("resolved_conflict", "label_conflict"):
        idx = [i for i, (k, _) in reasons.items() if k == kind]
        if idx:
            gone = df.loc[idx]
            drop(gone, kind, [reasons[i][1] for i in gone.index])
    return df.drop(index=list(reasons))


def provenance(meta: dict[str, Any]) -> dict[str, Any]:
    """Where a split's labels and groups came from, for the run folder (run.json)."""
    m = meta.get("metadata") or {}
    out = {"label_source": m.get("labels") or "layout", "group": m.get("group") or "",
           "metadata_file": m.get("path", ""), "metadata_sha256": m.get("sha256", ""),
           "metadata_format": m.get("format", ""), "conflicts": meta.get("conflicts", ""),
           "layout": meta.get("layout", "")}
    if meta.get("sources"):
        out["sources"] = {name: {"path": s.get("path", ""), "images": s.get("total", 0)}
                          for name, s in meta["sources"].items()}
        out["test_source"] = meta.get("test_source", "")
    return out


def _join_summary(join: dict[str, Any] | None) -> dict[str, Any] | None:
    """What split.json (and so the run folder) records of the metadata join."""
    if not join:
        return None
    return {**join.get("metadata", {}), "labels": join.get("labels"), "group": join.get("group"),
            "matched_images": join.get("matched_images"),
            "images_without_row": join.get("images_without_row"),
            "rows_without_image": join.get("rows_without_image"),
            "disagreements": join.get("disagreements"),
            "emptied_classes": [c["class"] for c in join.get("emptied_classes", [])]}


def _drop_exact_copies(df: pd.DataFrame, prefer_test: bool, drop: Any) -> pd.DataFrame:
    """Keep one file per content hash (a test copy first when the test split is given)."""
    rank = (~df["_test"]).astype(int) if prefer_test else 0
    ordered = df.assign(_rank=rank).sort_values(["_rank", "_order"])
    keep = ordered.drop_duplicates("sha256")
    kept = {sha: (path, held) for sha, path, held in
            zip(keep["sha256"], keep["path"], keep["_test"], strict=True)}
    extra = ordered[ordered.duplicated("sha256")]
    leak = [prefer_test and bool(kept[sha][1]) and not held
            for sha, held in zip(extra["sha256"], extra["_test"], strict=True)]
    leak_mask = np.array(leak, dtype=bool)
    drop(extra[leak_mask], "leaks_into_test",
         [f"exact copy of test image {kept[sha][0]} (would leak into training)"
          for sha in extra["sha256"][leak_mask]])
    drop(extra[~leak_mask], "duplicate",
         [f"exact duplicate of {kept[sha][0]}" for sha in extra["sha256"][~leak_mask]])
    return keep.drop(columns="_rank").sort_values("_order")


def _keep_given_test(df: pd.DataFrame, drop: Any) -> pd.DataFrame:
    """Test rows (given Test, or the held-out source) stay test; other rows in a unit with a
    test image are dropped (they would leak into training)."""
    df = df.copy()
    df["split"] = np.where(df["_test"], "test", "")
    test_units = set(df.loc[df["split"] == "test", "_unit"])
    leaking = df[(df["split"] == "") & df["_unit"].isin(test_units)]
    if len(leaking):
        test_rows = df[df["split"] == "test"]
        example = dict(zip(test_rows["_unit"], test_rows["path"], strict=True))
        reasons = []
        for _, r in leaking.iterrows():
            tr = test_rows[test_rows["_unit"] == r["_unit"]]
            same_hash = (tr["sha256"] == r["sha256"]).any()
            same_group = r["group"] != "" and (tr["group"] == r["group"]).any()
            how = ("exact copy of" if same_hash else "same group as" if same_group
                   else "near-duplicate of")
            reasons.append(f"{how} test image {example[r['_unit']]} (would leak into training)")
        drop(leaking, "leaks_into_test", reasons)
        df = df.drop(index=leaking.index)
    return df


def _assign(df: pd.DataFrame, ratios: dict[str, float], seed: int) -> pd.Series:
    """Assign whole units to splits, class by class, filling the split with the largest deficit.

    Units are taken in a seeded random order, largest first, so the split is reproducible for
    a seed and big groups are placed while there is room.
    """
    rng = np.random.default_rng(seed)
    chosen: dict[int, str] = {}
    # A unit's class is its most common label (ties: alphabetical), for stratification.
    unit_label = (df.groupby(["_unit", "label"]).size().reset_index(name="n")
                  .sort_values(["_unit", "n", "label"], ascending=[True, False, True])
                  .drop_duplicates("_unit").set_index("_unit")["label"])
    sizes = df.groupby("_unit").size()
    # Stable unit keys independent of row order: the smallest path in the unit.
    keys = df.groupby("_unit")["path"].min()
    active = [s for s in SPLITS if ratios[s] > 0]
    for label in sorted(unit_label.unique()):
        units = sorted(unit_label.index[unit_label == label], key=lambda u: keys[u])
        units = [units[i] for i in rng.permutation(len(units))]
        units.sort(key=lambda u: -sizes[u])  # stable: random order within equal sizes
        total = float(sizes[units].sum())
        target = {s: ratios[s] * total for s in active}
        have = dict.fromkeys(active, 0.0)
        for u in units:
            best = max(active, key=lambda s: (target[s] - have[s], -SPLITS.index(s)))
            have[best] += sizes[u]
            chosen[u] = best
    return df["_unit"].map(chosen).astype(object)


def _finish(df: pd.DataFrame) -> pd.DataFrame:
    order = {s: i for i, s in enumerate(SPLITS)}
    df = df.assign(_s=df["split"].map(order)).sort_values(["_s", "label", "path"])
    return df.reindex(columns=SPLIT_COLUMNS).reset_index(drop=True)


def _warnings(counts: pd.DataFrame, ratios: dict[str, float], minimum: int,
              before: pd.Series, conflict_losses: pd.Series, policy: str) -> list[str]:
    out = []
    counts = counts.reindex(sorted(set(counts.index) | set(before.index)), fill_value=0)
    for label in counts.index:
        if int(counts.loc[label].sum()) == 0:
            out.append(f"class '{label}' has no images left after dropping unreadable, "
                       "conflicting and duplicate files: the model will not know it")
            continue
        lost = int(conflict_losses.get(label, 0))
        if lost * 2 > int(before.get(label, 0)):
            out.append(f"class '{label}' lost {lost} of {int(before[label])} images to label "
                       "conflicts; review them with `skin eda`"
                       + (", or use --conflicts keep-first" if policy == "drop" else ""))
        for s in SPLITS:
            n = int(counts.loc[label, s])
            if s == "train":
                if n < minimum:
                    out.append(f"class '{label}' has only {n} training image"
                               f"{'s' if n != 1 else ''}: too few to learn it")
            elif (ratios.get(s, 0) > 0 or n > 0) and n == 0:
                out.append(f"class '{label}' has no images in {s}: {s} metrics will not "
                           "cover it (more images of this class would help)")
            elif (ratios.get(s, 0) > 0 or n > 0) and n < minimum:
                out.append(f"class '{label}' has only {n} image{'s' if n != 1 else ''} in "
                           f"{s} (fewer than {minimum}): its {s} metrics will be noisy")
    return out
