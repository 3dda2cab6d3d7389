"""What pooled sources share: per pair of sources, the images published in both (identical
files, re-encoded or resized copies: the near-duplicate detection of skincli.data.duplicates)
and the lesions both list, each with whether the two sources' labels agree.

The public collections overlap heavily (the ISIC archive republishes HAM10000 and the
challenge sets), so this is the first thing to know before pooling them; `skin split` keeps
every shared image and lesion within one split whatever this finds.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import pandas as pd

from skincli.data.duplicates import NearDupParams, UnionFind, near_duplicate_pairs


def _files(rows: pd.DataFrame) -> list[dict[str, str]]:
    return [{"path": p, "source": s, "label": lab}
            for p, s, lab in zip(rows["path"], rows["source"], rows["label"], strict=True)]


def _copy_kind(a: pd.DataFrame, b: pd.DataFrame) -> str:
    """identical (same bytes), re-encoded (same size, other bytes) or resized."""
    if set(a["sha256"]) & set(b["sha256"]):
        return "identical"
    sizes = set(zip(a["width"], a["height"], strict=True))
    return "re-encoded" if sizes & set(zip(b["width"], b["height"], strict=True)) else "resized"


def source_names(frame: pd.DataFrame) -> list[str]:
    """The sources of a manifest in the order listed ([] for a single unnamed source)."""
    if "source" not in frame:
        return []
    return [s for s in dict.fromkeys(frame["source"]) if s]


def source_overlap(ok: pd.DataFrame, params: NearDupParams | None = None,
                   pairs: pd.DataFrame | None = None) -> dict[str, Any]:
    """Per source its size, and per pair of sources the images and lesions they share.

    `ok` holds readable manifest rows with a `source` column; `pairs` are its near-duplicate
    pairs when the caller has them. Returns {} for fewer than two sources.
    """
    names = source_names(ok)
    if len(names) < 2:
        return {}
    if pairs is None:
        pairs = near_duplicate_pairs(ok, params)
    # One "image" = a content hash plus every hash a near-duplicate link joins to it.
    shas = list(dict.fromkeys(ok["sha256"]))
    index = {s: i for i, s in enumerate(shas)}
    uf = UnionFind(len(shas))
    for a, b in zip(pairs["sha_a"], pairs["sha_b"], strict=True):
        if a in index and b in index:
            uf.union(index[a], index[b])
    comp = uf.components()
    # Lesion ids (from metadata or a lesion_id column) name one lesion in every source; other
    # group ids are the source's own.
    rows = ok.assign(_image=[comp[index[s]] for s in ok["sha256"]],
                     _lesion=ok["lesion_id"] if "lesion_id" in ok else "")
    per_source = []
    for name in names:
        r = rows[rows["source"] == name]
        per_source.append({"name": name, "files": int(len(r)),
                           "images": int(r["_image"].nunique()),
                           "lesions": int(r.loc[r["_lesion"] != "", "_lesion"].nunique()),
                           "classes": {str(k): int(v) for k, v in
                                       r["label"].value_counts().sort_index().items()}})
    by_source = {n: rows[rows["source"] == n] for n in names}
    out_pairs = []
    for a, b in combinations(names, 2):
        ra, rb = by_source[a], by_source[b]
        images = []
        for img in sorted(set(ra["_image"]) & set(rb["_image"])):
            fa, fb = ra[ra["_image"] == img], rb[rb["_image"] == img]
            both = pd.concat([fa, fb])
            images.append({"kind": _copy_kind(fa, fb), "files": _files(both),
                           "labels_agree": both["label"].nunique() == 1})
        lesions = []
        la = set(ra.loc[ra["_lesion"] != "", "_lesion"])
        for lid in sorted(la & set(rb["_lesion"])):
            both = pd.concat([ra[ra["_lesion"] == lid], rb[rb["_lesion"] == lid]])
            lesions.append({"id": lid, "files": _files(both),
                            "labels_agree": both["label"].nunique() == 1})
        kinds = pd.Series([i["kind"] for i in images], dtype=object).value_counts()
        out_pairs.append({
            "sources": [a, b], "shared_images": len(images),
            **{k.replace("-", "_"): int(kinds.get(k, 0))
               for k in ("identical", "re-encoded", "resized")},
            "images_label_disagreements": sum(not i["labels_agree"] for i in images),
            "shared_lesions": len(lesions),
            "lesions_label_disagreements": sum(not x["labels_agree"] for x in lesions),
            "images": images, "lesions": lesions})
    return {"names": names, "per_source": per_source, "pairs": out_pairs}


def cross_source_disagreements(df: pd.DataFrame, near: pd.DataFrame) -> list[str]:
    """Near-duplicate copies in two sources under different labels (kept in one split; the
    conflict policy acts on identical files only, a near-duplicate may be a look-alike)."""
    first = df.drop_duplicates("sha256").set_index("sha256")
    seen = {sha: (src, lab) for sha, src, lab in
            zip(first.index, first["source"], first["label"], strict=True)}
    n = 0
    for a, b in zip(near["sha_a"], near["sha_b"], strict=True):
        if a in seen and b in seen:  # a copy dropped as leaking into test is not counted
            n += int(seen[a][0] != seen[b][0] and seen[a][1] != seen[b][1])
    if not n:
        return []
    return [f"{n} near-duplicate pair(s) across sources carry different labels (kept in one "
            "split); review them with `skin eda` (cross-source section)"]
