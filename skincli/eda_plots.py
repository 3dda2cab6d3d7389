"""PNG plots for the eda report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont, ImageOps

from skincli.imageio import ImageError, open_image
from skincli.plots import pyplot

plt = pyplot()

SAMPLES_PER_CLASS = 8
THUMB = 96
SPLIT_COLOURS = {"train": "#4C72B0", "val": "#55A868", "test": "#DD8452", "": "#4C72B0"}


def _save(fig: Any, folder: Path, name: str) -> str:
    fig.savefig(folder / name, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return name


def _height(n: int) -> float:
    return max(3.0, 0.45 * n + 1.2)


def class_counts(report: dict[str, Any], folder: Path) -> str:
    """Horizontal bars of images per class, stacked by given split when there is one."""
    classes = report["balance"]["classes"]
    names = [c["name"] for c in classes]
    per = report["balance"]["per_given_split"] or {"": {c["name"]: c["count"] for c in classes}}
    fig, ax = plt.subplots(figsize=(8, _height(len(names))))
    left = np.zeros(len(names))
    for split, counts in per.items():
        vals = np.array([counts.get(n, 0) for n in names], dtype=float)
        ax.barh(names, vals, left=left, label=split.capitalize() or None,
                color=SPLIT_COLOURS.get(split, None))
        left += vals
    for y, total in enumerate(left):
        ax.text(total, y, f" {int(total)}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("images")
    ratio = report["balance"]["imbalance_ratio"]
    ax.set_title(f"Images per class (imbalance ratio {ratio:.1f})")
    if len(per) > 1:
        ax.legend(title="given split")
    return _save(fig, folder, "class_counts.png")


def image_sizes(ok: pd.DataFrame, folder: Path) -> str:
    """Width x height scatter, aspect-ratio and file-size histograms."""
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(14, 4))
    sizes = ok.groupby(["width", "height"]).size().reset_index(name="n")
    a1.scatter(sizes["width"], sizes["height"], s=20 + 200 * sizes["n"] / sizes["n"].max(),
               alpha=0.6)
    for _, r in sizes.nlargest(3, "n").iterrows():
        a1.annotate(f"{int(r['width'])}x{int(r['height'])}: {int(r['n'])}",
                    (r["width"], r["height"]), fontsize=8)
    a1.set_xlabel("width (px)")
    a1.set_ylabel("height (px)")
    a1.set_title(f"Image sizes ({len(sizes)} distinct)")
    aspect = ok["width"] / ok["height"]
    a2.hist(aspect, bins=min(40, max(5, aspect.nunique())), color="#55A868")
    a2.set_xlabel("aspect ratio (width / height)")
    a2.set_ylabel("images")
    a2.set_title("Aspect ratios")
    a3.hist(ok["size_bytes"] / 1024, bins=40, color="#8172B3")
    a3.set_xlabel("file size (KiB)")
    a3.set_ylabel("images")
    a3.set_title("File sizes")
    fig.tight_layout()
    return _save(fig, folder, "image_sizes.png")


def colour_stats(report: dict[str, Any], folder: Path) -> str:
    """Per-class mean of each channel, with the mean within-image std as error bars."""
    per = report["images"]["per_class"]
    names = list(per)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(names) + 2), 4.5))
    for k, (ch, colour) in enumerate(zip("rgb", ("#C44E52", "#55A868", "#4C72B0"),
                                         strict=True)):
        means = [per[n]["colour_mean"][ch] for n in names]
        stds = [per[n]["colour_std"][ch] for n in names]
        ax.bar(x + (k - 1) * 0.27, means, width=0.27, yerr=stds, capsize=2, color=colour,
               label=ch.upper())
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("pixel value (0-255)")
    ax.set_ylim(0, 255)
    ax.set_title("Colour per class: mean of each channel (bars: mean within-image std)")
    ax.legend(ncol=3)
    return _save(fig, folder, "colour_stats.png")


def _box_by_class(ok: pd.DataFrame, col: str, folder: Path, name: str, title: str,
                  log: bool = False) -> str:
    names = sorted(ok["label"].unique())
    data = [ok.loc[ok["label"] == n, col].to_numpy() for n in names]
    if log:  # a flat (constant) image has sharpness 0, which a log axis cannot show
        data = [np.maximum(d, 1e-2) for d in data]
    fig, ax = plt.subplots(figsize=(8, _height(len(names))))
    ax.boxplot(data, vert=False, showfliers=True, flierprops={"markersize": 2})
    ax.set_yticks(range(1, len(names) + 1))
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(col)
    ax.set_title(title)
    return _save(fig, folder, name)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def _thumb(path: str | Path, size: int) -> Image.Image | None:
    try:
        return ImageOps.fit(open_image(path), (size, size))
    except ImageError:  # changed since the manifest was built: leave the cell blank
        return None


def samples(ok: pd.DataFrame, folder: Path, seed: int = 0) -> str:
    """A grid of random sample images, one row per class (drawn with PIL: fast)."""
    rng = np.random.default_rng(seed)
    names = sorted(ok["label"].unique())
    font = _font(14)
    label_w = 10 + max(int(font.getlength(n)) for n in names)
    top = 34
    grid = Image.new("RGB", (label_w + SAMPLES_PER_CLASS * (THUMB + 2),
                             top + len(names) * (THUMB + 2)), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((8, 8), f"Random samples per class (seed {seed})", fill="black", font=_font(16))
    for row, name in enumerate(names):
        y = top + row * (THUMB + 2)
        draw.text((label_w - 6, y + THUMB // 2), name, fill="black", font=font, anchor="rm")
        paths = ok.loc[ok["label"] == name, "filepath"].to_numpy()
        pick = rng.choice(len(paths), size=min(SAMPLES_PER_CLASS, len(paths)), replace=False)
        for col, i in enumerate(sorted(pick)):
            img = _thumb(paths[i], THUMB)
            if img is not None:
                grid.paste(img, (label_w + col * (THUMB + 2), y))
    grid.save(folder / "samples.png", optimize=False)
    return "samples.png"


def near_duplicate_pairs(report: dict[str, Any], root: Path, folder: Path,
                         n: int = 12) -> str | None:
    """The closest near-duplicate suspect pairs side by side, with distance and labels."""
    pairs = report["near_duplicates"]["pair_list"][:n]
    if not pairs:
        return None
    cell, caption, top = int(THUMB * 1.5), 34, 30
    font = _font(12)

    def label(f: dict[str, str]) -> str:
        return f"{f['label']} [{f['given_split']}]" if f["given_split"] else f["label"]

    # Columns as wide as the longest caption, so long class names do not overlap.
    widest = max(font.getlength(label(p[s])) for p in pairs for s in ("a", "b"))
    gap = 24 + max(0, int(widest) - cell)
    width = 10 + cell + gap + max(cell, int(widest)) + 60  # room for "d=.." on the right
    sheet = Image.new("RGB", (max(width, 520), top + len(pairs) * (cell + caption + 10)),
                      "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((10, 8), "Closest near-duplicate suspects (pHash distance d, bits of 64)",
              fill="black", font=_font(14))
    for r, pair in enumerate(pairs):
        y = top + r * (cell + caption + 10)
        for c, side in enumerate(("a", "b")):
            f = pair[side]
            x = 10 + c * (cell + gap)
            path = Path(f["path"]) if os.path.isabs(f["path"]) else root / f["path"]
            draw.text((x, y), label(f), fill="black", font=font)
            draw.text((x, y + 15), Path(f["path"]).name, fill="dimgray", font=font)
            img = _thumb(path, cell)
            if img is not None:
                sheet.paste(img, (x, y + caption))
        draw.text((10 + 2 * cell + gap + 4, y + caption), f"d={pair['distance']}",
                  fill="black", font=font)
    sheet.save(folder / "near_duplicates.png")
    return "near_duplicates.png"


def write_all(report: dict[str, Any], manifest: pd.DataFrame, folder: Path,
              seed: int = 0) -> list[str]:
    """Write every plot into `folder`; return the file names."""
    ok = manifest[manifest["readable"]]
    out = [
        class_counts(report, folder),
        image_sizes(ok, folder),
        colour_stats(report, folder),
        _box_by_class(ok, "brightness", folder, "brightness.png",
                      "Brightness per class (mean luma, 0-255)"),
        _box_by_class(ok, "sharpness", folder, "sharpness.png",
                      "Sharpness per class (variance of Laplacian; low = blurry)", log=True),
        samples(ok, folder, seed=seed),
    ]
    nd = near_duplicate_pairs(report, Path(report["data"]["root"]), folder)
    if nd:
        out.append(nd)
    return out
