"""The manifest: hashes, sizes, readability with reasons, statistics, pHash and the cache."""

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from imagegen import (
    make_class_folders,
    make_empty_file,
    make_fake_jpeg,
    make_image,
    make_png_bomb,
    make_truncated_jpeg,
)
from PIL import Image

from skincli.data.dataset import load_dataset
from skincli.data.manifest import COLUMNS, build_manifest, cache_file, inspect_file, phash


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIN_CACHE_DIR", str(tmp_path / "cache"))


def _hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def test_columns_sizes_and_hashes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    made = make_class_folders(data, {"a": 2, "b": 2}, size=(40, 30))
    m = build_manifest(load_dataset(data), workers=2)
    assert list(m.columns) == COLUMNS
    assert len(m) == 4
    assert m["readable"].all()
    assert (m["width"] == 40).all() and (m["height"] == 30).all()
    first = made["a"][0]
    row = m[m["path"] == "a/img_000.jpg"].iloc[0]
    assert row["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
    assert row["size_bytes"] == first.stat().st_size
    assert row["filepath"] == str(first.resolve())
    assert len(row["phash"]) == 16
    assert m["sha256"].nunique() == 4


@pytest.mark.parametrize(("maker", "code", "words"), [
    (make_fake_jpeg, "unsupported_type", "not an image"),
    (make_truncated_jpeg, "corrupt", "truncated"),
    (make_empty_file, "empty", "0 bytes"),
    (make_png_bomb, "too_many_pixels", "pixels"),
])
def test_unreadable_files_get_a_reason(tmp_path: Path, maker, code: str, words: str) -> None:
    suffix = ".png" if maker is make_png_bomb else ".jpg"
    bad = maker(tmp_path / f"bad{suffix}")
    row = inspect_file(str(bad))
    assert row["readable"] is False
    assert row["error_code"] == code
    assert words in row["error"]
    assert "upload" not in row["error"]


def test_unreadable_rows_stay_in_manifest(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_class_folders(data, {"a": 2, "b": 2})
    make_truncated_jpeg(data / "a" / "broken.jpg")
    m = build_manifest(load_dataset(data))
    assert len(m) == 5
    bad = m[~m["readable"]]
    assert bad["path"].tolist() == ["a/broken.jpg"]
    assert bad["width"].iloc[0] == 0
    assert np.isnan(bad["brightness"].iloc[0])


def test_colour_brightness_and_sharpness(tmp_path: Path) -> None:
    red = tmp_path / "red.png"
    Image.new("RGB", (20, 20), (255, 0, 0)).save(red)
    checker = tmp_path / "checker.png"
    arr = (np.indices((20, 20)).sum(axis=0) % 2 * 255).astype(np.uint8)
    Image.fromarray(np.stack([arr] * 3, axis=-1)).save(checker)

    r = inspect_file(str(red))
    c = inspect_file(str(checker))

    assert r["mean_r"] == pytest.approx(255) and r["mean_g"] == pytest.approx(0)
    assert r["std_r"] == pytest.approx(0)
    assert r["brightness"] == pytest.approx(0.299 * 255, abs=1)  # luma of 8-bit grey
    assert r["sharpness"] == pytest.approx(0)
    assert c["sharpness"] > 1000  # a checkerboard is as sharp as it gets
    assert c["brightness"] == pytest.approx(127.5, abs=1)


def test_phash_survives_resize_and_reencode_but_separates_images(tmp_path: Path) -> None:
    a = make_image(tmp_path / "a.jpg", size=(64, 64), seed=1)
    Image.open(a).resize((50, 50)).save(tmp_path / "a_small.jpg", quality=70)
    Image.open(a).crop((2, 2, 62, 62)).save(tmp_path / "a_crop.png")
    others = [make_image(tmp_path / f"o{i}.jpg", size=(64, 64), seed=100 + i) for i in range(8)]

    h = {p.name: inspect_file(str(p))["phash"] for p in [a, tmp_path / "a_small.jpg",
                                                           tmp_path / "a_crop.png", *others]}
    assert _hamming(h["a.jpg"], h["a_small.jpg"]) <= 4
    assert _hamming(h["a.jpg"], h["a_crop.png"]) <= 6
    assert min(_hamming(h["a.jpg"], h[o.name]) for o in others) > 10


def test_phash_of_flat_image_is_defined() -> None:
    assert len(phash(Image.new("RGB", (8, 8), (10, 10, 10)))) == 16


def test_cache_reuses_unchanged_files_and_rereads_changed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    made = make_class_folders(data, {"a": 3, "b": 3})
    ds = load_dataset(data)

    first = build_manifest(ds)
    assert first.attrs["files_read"] == 6
    assert cache_file(ds.root).is_file()
    assert str(cache_file(ds.root)).startswith(str(tmp_path / "cache"))

    second = build_manifest(ds)
    assert second.attrs["files_read"] == 0 and second.attrs["cache_hits"] == 6
    cols = [c for c in COLUMNS if c != "filepath"]
    assert second[cols].equals(first[cols])

    target = made["a"][0]
    make_image(target, seed=999, size=(48, 48))
    os.utime(target, ns=(1, 1))  # a different mtime even on coarse clocks
    third = build_manifest(load_dataset(data))
    assert third.attrs["files_read"] == 1
    assert third.loc[third["path"] == "a/img_000.jpg", "width"].iloc[0] == 48

    no_cache = build_manifest(ds, cache=False)
    assert no_cache.attrs["files_read"] == 6


def test_damaged_cache_is_rebuilt(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_class_folders(data, {"a": 2, "b": 2})
    ds = load_dataset(data)
    build_manifest(ds)
    cache_file(ds.root).write_text("garbage\n\x00\x01")
    m = build_manifest(ds)
    assert m.attrs["files_read"] == 4 and m["readable"].all()


def test_data_folder_is_never_written(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_class_folders(data, {"a": 2, "b": 2})
    before = sorted(p for p in data.rglob("*"))
    build_manifest(load_dataset(data))
    assert sorted(p for p in data.rglob("*")) == before


def test_worker_counts_agree(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_class_folders(data, {"a": 5, "b": 5})
    make_fake_jpeg(data / "b" / "fake.jpg")
    ds = load_dataset(data)
    one = build_manifest(ds, workers=1, cache=False)
    two = build_manifest(ds, workers=2, cache=False)
    assert one.equals(two)


def test_one_cache_folder_honours_xdg_cache_home(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Manifests, converted weights and TFLite models share one cache folder."""
    from skincli.engines.convert import cache_folder
    from skincli.models.pretrained import cache_path

    monkeypatch.delenv("SKIN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    want = tmp_path / "xdg" / "skincli"
    assert cache_file(tmp_path / "data").parent.parent == want
    assert cache_path("lite0").parent.parent == want
    assert cache_folder().parent == want
    monkeypatch.setenv("SKIN_CACHE_DIR", str(tmp_path / "own"))  # the explicit choice wins
    assert cache_file(tmp_path / "data").parent.parent == tmp_path / "own"
    assert cache_path("lite0").parent.parent == tmp_path / "own"
