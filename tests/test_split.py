"""`skin split`: stratified, leakage-proof splits and the split file later steps read."""

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from imagegen import make_class_folders, make_image, make_truncated_jpeg
from PIL import Image
from typer.testing import CliRunner

from skincli.cli import app
from skincli.data.dataset import load_dataset
from skincli.data.manifest import build_manifest
from skincli.data.split import DEFAULT_SPLIT_PATH, make_split
from skincli.data.splitfile import load_split, split_file_sha256, write_split
from skincli.errors import SkinError

runner = CliRunner()


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIN_CACHE_DIR", str(tmp_path / "cache"))


def manifest_of(path: Path, **kw) -> pd.DataFrame:
    return build_manifest(load_dataset(path, **kw))


def splits_of(result, column: str) -> pd.Series:
    """How many distinct splits each value of `column` landed in."""
    return result.frame[result.frame[column] != ""].groupby(column)["split"].nunique()


def test_stratified_ratios(tmp_path: Path) -> None:
    sizes = {"a": 40, "b": 34, "c": 60}
    make_class_folders(tmp_path, sizes)
    res = make_split(manifest_of(tmp_path), val=0.15, test=0.15, seed=0)
    counts = res.counts()
    for label, n in sizes.items():
        assert counts.loc[label].sum() == n
        assert abs(counts.loc[label, "test"] - 0.15 * n) <= 1
        assert abs(counts.loc[label, "val"] - 0.15 * n) <= 1
    assert res.warnings == []
    assert res.meta["seed"] == 0 and res.meta["ratios"]["train"] == pytest.approx(0.7)


def test_same_seed_same_split_other_seed_differs(tmp_path: Path) -> None:
    make_class_folders(tmp_path, {"a": 30, "b": 30})
    m = manifest_of(tmp_path)
    one = make_split(m, seed=1).frame
    again = make_split(m.sample(frac=1, random_state=3), seed=1).frame  # row order irrelevant
    other = make_split(m, seed=2).frame
    assert one[["path", "split"]].equals(again[["path", "split"]])
    assert not one[["path", "split"]].equals(other[["path", "split"]])


def test_groups_never_span_splits(tmp_path: Path) -> None:
    rows = ["image_id,dx,lesion_id"]
    for i in range(60):
        make_image(tmp_path / "imgs" / f"im{i}.jpg", seed=i)
        rows.append(f"im{i},{'mel' if i % 2 else 'nv'},L{i // 4 if i % 2 else i // 3}")
    (tmp_path / "meta.csv").write_text("\n".join(rows) + "\n")
    m = manifest_of(tmp_path / "meta.csv", csv_image_dir=tmp_path / "imgs")
    for seed in range(5):
        res = make_split(m, seed=seed, group_near_dups=False)
        assert (splits_of(res, "group") == 1).all()
        assert set(res.frame["split"]) == {"train", "val", "test"}


def test_groups_never_span_splits_when_some_rows_have_none(tmp_path: Path) -> None:
    # Rows without a group before grouped ones: units must join rows, not filtered positions.
    rows = ["image_id,dx,lesion_id"]
    for i in range(60):
        make_image(tmp_path / "imgs" / f"im{i}.jpg", seed=i)
        rows.append(f"im{i},{'mel' if i % 2 else 'nv'},{f'L{i // 6}' if i >= 20 else ''}")
    (tmp_path / "meta.csv").write_text("\n".join(rows) + "\n")
    m = manifest_of(tmp_path / "meta.csv", csv_image_dir=tmp_path / "imgs")
    for seed in range(5):
        res = make_split(m, seed=seed, group_near_dups=False)
        assert (splits_of(res, "group") == 1).all()


def test_exact_copies_dropped_or_kept_together(tmp_path: Path) -> None:
    made = make_class_folders(tmp_path, {"a": 20, "b": 20})
    for i in range(5):
        shutil.copy(made["a"][i], tmp_path / "a" / f"copy{i}.jpg")
    m = manifest_of(tmp_path)

    res = make_split(m)
    assert len(res.frame) == 40 and res.frame["sha256"].is_unique
    dups = sorted((d["path"], d["reason"]) for d in res.meta["dropped"]
                  if d["kind"] == "duplicate")
    # Listing order keeps a/copyN.jpg (sorted first) and drops its twin a/img_00N.jpg.
    assert dups == [(f"a/img_{i:03d}.jpg", f"exact duplicate of a/copy{i}.jpg")
                    for i in range(5)]

    for seed in range(5):
        kept = make_split(m, keep_duplicates=True, seed=seed)
        assert len(kept.frame) == 45
        assert (splits_of(kept, "sha256") == 1).all()


def test_near_duplicates_stay_together(tmp_path: Path) -> None:
    made = make_class_folders(tmp_path, {"a": 20, "b": 20}, size=(64, 64))
    for i in range(4):
        Image.open(made["a"][i]).resize((56, 56)).save(tmp_path / "a" / f"small{i}.jpg",
                                                       quality=75)
    m = manifest_of(tmp_path)
    for seed in range(5):
        res = make_split(m, seed=seed)
        f = res.frame.set_index("path")["split"]
        for i in range(4):
            assert f[f"a/img_{i:03d}.jpg"] == f[f"a/small{i}.jpg"]
    assert res.meta["near_dup_links"] == 4


@pytest.fixture
def conflicted(tmp_path: Path) -> Path:
    made = make_class_folders(tmp_path, {"a": 20, "b": 20})
    shutil.copy(made["a"][0], tmp_path / "b" / "same_as_a0.jpg")
    return tmp_path


def test_conflicts_drop(conflicted: Path) -> None:
    res = make_split(manifest_of(conflicted), conflicts="drop")
    gone = [d for d in res.meta["dropped"] if d["kind"] == "label_conflict"]
    assert sorted(d["path"] for d in gone) == ["a/img_000.jpg", "b/same_as_a0.jpg"]
    assert all("filed as a and b" in d["reason"] for d in gone)
    assert len(res.frame) == 39


def test_conflicts_keep_first(conflicted: Path) -> None:
    res = make_split(manifest_of(conflicted), conflicts="keep-first")
    gone = [d for d in res.meta["dropped"] if d["kind"] == "label_conflict"]
    assert [d["path"] for d in gone] == ["b/same_as_a0.jpg"]
    assert "kept as 'a' (a/img_000.jpg)" in gone[0]["reason"]
    assert "a/img_000.jpg" in set(res.frame["path"])


def test_conflicts_error(conflicted: Path) -> None:
    with pytest.raises(SkinError, match="1 label conflicts .*a/img_000.jpg \\(a\\) = "
                                        "b/same_as_a0.jpg \\(b\\)"):
        make_split(manifest_of(conflicted), conflicts="error")


def test_keep_given_test(tmp_path: Path) -> None:
    train = make_class_folders(tmp_path / "Train", {"a": 20, "b": 20})
    make_class_folders(tmp_path / "Test", {"a": 5, "b": 5}, seed=1)
    shutil.copy(tmp_path / "Test" / "a" / "img_000.jpg", tmp_path / "Train" / "a" / "dup.jpg")
    m = manifest_of(tmp_path)

    res = make_split(m, keep_given_test=True, val=0.2)
    f = res.frame
    assert (f.loc[f["split"] == "test", "given_split"] == "test").all()
    assert (f["split"] == "test").sum() == 10
    leak = [d for d in res.meta["dropped"] if d["kind"] == "leaks_into_test"]
    assert [d["path"] for d in leak] == ["Train/a/dup.jpg"]
    assert "Test/a/img_000.jpg" in leak[0]["reason"]
    assert (f.loc[f["given_split"] == "train", "split"] != "test").all()
    assert abs((f["split"] == "val").sum() - 8) <= 1
    assert len(train["a"]) == 20


def test_pooled_split_keeps_train_test_copies_together(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "Train", {"a": 20, "b": 20})
    make_class_folders(tmp_path / "Test", {"a": 5, "b": 5}, seed=1)
    shutil.copy(tmp_path / "Test" / "a" / "img_000.jpg", tmp_path / "Train" / "a" / "dup.jpg")
    for seed in range(5):
        res = make_split(manifest_of(tmp_path), keep_duplicates=True, seed=seed)
        assert (splits_of(res, "sha256") == 1).all()


def test_keep_given_test_without_test_folder(tmp_path: Path) -> None:
    make_class_folders(tmp_path, {"a": 5, "b": 5})
    with pytest.raises(SkinError, match="needs a given Test folder"):
        make_split(manifest_of(tmp_path), keep_given_test=True)


@pytest.mark.parametrize(("val", "test"), [(-0.1, 0.1), (0.1, 1.0), (0.5, 0.45)])
def test_bad_ratios(tmp_path: Path, val: float, test: float) -> None:
    make_class_folders(tmp_path, {"a": 5, "b": 5})
    with pytest.raises(SkinError):
        make_split(manifest_of(tmp_path), val=val, test=test)


def test_unreadable_files_are_excluded_and_reported(tmp_path: Path) -> None:
    make_class_folders(tmp_path, {"a": 10, "b": 10})
    make_truncated_jpeg(tmp_path / "a" / "cut.jpg")
    res = make_split(manifest_of(tmp_path))
    assert "a/cut.jpg" not in set(res.frame["path"])
    bad = [d for d in res.meta["dropped"] if d["kind"] == "unreadable"]
    assert bad[0]["path"] == "a/cut.jpg" and "truncated" in bad[0]["reason"]


def test_small_classes_warn(tmp_path: Path) -> None:
    make_class_folders(tmp_path, {"big": 60, "tiny": 6})
    res = make_split(manifest_of(tmp_path))
    assert any("'tiny'" in w and "test" in w and "noisy" in w for w in res.warnings)
    assert not any("'big'" in w for w in res.warnings)


def test_a_class_missing_from_a_split_says_so_plainly(tmp_path: Path) -> None:
    make_class_folders(tmp_path, {"big": 40, "rare": 2})
    res = make_split(manifest_of(tmp_path))
    assert not any("only 0" in w for w in res.warnings), res.warnings
    assert any("'rare' has no images in" in w for w in res.warnings), res.warnings


# --- the split file ------------------------------------------------------------------------


def test_write_and_load_roundtrip(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_class_folders(data, {"b class": 10, "a class": 10})
    res = make_split(manifest_of(data), seed=3)
    out = write_split(res, tmp_path / "splits" / "split.csv")

    raw = pd.read_csv(out)
    assert not raw["path"].str.startswith("/").any()  # relative: not machine-specific
    meta = json.loads((tmp_path / "splits" / "split.json").read_text())
    assert meta["seed"] == 3 and meta["root"] == str(data.resolve())

    df = load_split(out)
    assert len(df) == 20
    assert {"filepath", "label", "split", "sha256", "group", "width"} <= set(df.columns)
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in df["filepath"])
    assert df.attrs["classes"] == ["a class", "b class"]
    assert df.attrs["root"] == str(data.resolve())
    assert df.attrs["meta"]["seed"] == 3
    assert df["group"].eq("").all()
    assert split_file_sha256(out) == hashlib.sha256(out.read_bytes()).hexdigest()


def test_numeric_class_names_stay_strings(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "d", {"0": 8, "1": 8})
    out = write_split(make_split(manifest_of(tmp_path / "d")), tmp_path / "s.csv")
    df = load_split(out)
    assert df.attrs["classes"] == ["0", "1"]
    assert df["label"].map(type).eq(str).all()


def test_moved_project_still_loads(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    make_class_folders(proj / "data", {"a": 5, "b": 5})
    write_split(make_split(manifest_of(proj / "data")), proj / "splits" / "split.csv")
    moved = tmp_path / "elsewhere"
    proj.rename(moved)
    df = load_split(moved / "splits" / "split.csv")
    assert all(Path(p).is_file() for p in df["filepath"])
    assert df.attrs["root"] == str((moved / "data").resolve())


def test_load_split_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SkinError) as exc:
        load_split()
    assert str(exc.value) == "No split file at splits/split.csv. Run `skin split DATA` first"
    assert DEFAULT_SPLIT_PATH == Path("splits/split.csv")

    make_class_folders(tmp_path / "data", {"a": 5, "b": 5})
    out = write_split(make_split(manifest_of(tmp_path / "data")))
    assert out == Path("splits/split.csv")
    out.write_text(out.read_text().replace(",train,", ",test,", 1))
    with pytest.raises(SkinError, match="does not match split.json"):
        load_split(out)
    (tmp_path / "splits" / "split.json").unlink()
    with pytest.raises(SkinError, match="has no split.json beside it"):
        load_split(out)


def test_load_split_missing_data_root(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "data", {"a": 5, "b": 5})
    out = write_split(make_split(manifest_of(tmp_path / "data")), tmp_path / "s" / "split.csv")
    shutil.rmtree(tmp_path / "data")
    with pytest.raises(SkinError, match="recorded in .*split.json does not exist"):
        load_split(out)


# --- the command ---------------------------------------------------------------------------


def test_cli_split(tmp_path: Path) -> None:
    data = tmp_path / "data"
    made = make_class_folders(data, {"melanoma": 30, "nevus": 30})
    shutil.copy(made["melanoma"][0], data / "nevus" / "oops.jpg")
    out = tmp_path / "s" / "split.csv"
    result = runner.invoke(app, ["split", str(data), "--out", str(out), "--seed", "5"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "train" in text and "val" in text and "test" in text and "melanoma" in text
    assert "Dropped 2 files: 2 label conflict" in text
    assert "nevus/oops.jpg: label conflict" in text
    assert load_split(out).attrs["meta"]["seed"] == 5


def test_cli_split_conflicts_error_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    made = make_class_folders(data, {"melanoma": 5, "nevus": 5})
    shutil.copy(made["melanoma"][0], data / "nevus" / "oops.jpg")
    out = tmp_path / "split.csv"
    result = runner.invoke(app, ["split", str(data), "--out", str(out), "--conflicts", "error"])
    assert result.exit_code == 1
    assert result.output.startswith("error: 1 label conflicts")
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_cli_split_seed_from_config(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_class_folders(data, {"a": 10, "b": 10})
    cfg = tmp_path / "c.yaml"
    out = tmp_path / "split.csv"
    cfg.write_text(f"split:\n  seed: 7\n  out: {out}\n  val: 0.2\n")
    result = runner.invoke(app, ["--config", str(cfg), "split", str(data)])
    assert result.exit_code == 0, result.output
    meta = load_split(out).attrs["meta"]
    assert meta["seed"] == 7 and meta["ratios"]["val"] == 0.2


def test_cli_split_warns_on_small_classes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_class_folders(data, {"big": 40, "rare": 4})
    result = runner.invoke(app, ["split", str(data), "--out", str(tmp_path / "s.csv")])
    assert result.exit_code == 0
    assert "warning: class 'rare' has only" in result.output


def test_cli_split_missing_path(tmp_path: Path) -> None:
    result = runner.invoke(app, ["split", str(tmp_path / "nope"), "--out",
                                 str(tmp_path / "s.csv")])
    assert result.exit_code == 1
    assert "does not exist" in result.output and "Traceback" not in result.output


def test_cli_split_never_overwrites_the_labels_csv(tmp_path: Path) -> None:
    made = make_class_folders(tmp_path, {"x": 4, "y": 4})
    csv = tmp_path / "labels.csv"
    text = "image,label\n" + "".join(f"{p.relative_to(tmp_path)},{c}\n"
                                     for c in made for p in made[c])
    csv.write_text(text)
    result = runner.invoke(app, ["split", str(csv), "--out", str(csv)])
    assert result.exit_code == 1 and "is not a split file" in result.output
    assert csv.read_text() == text


def test_a_loaded_split_can_be_written_again(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "data", {"a": 6, "b": 6})
    first = write_split(make_split(manifest_of(tmp_path / "data")), tmp_path / "one.csv")
    df = load_split(first)
    meta = dict(df.attrs["meta"])
    from skincli.data.split import SplitResult

    again = write_split(SplitResult(frame=df, meta=meta), tmp_path / "two" / "split.csv")
    assert "filepath" not in pd.read_csv(again).columns
    assert load_split(again)["filepath"].tolist() == df["filepath"].tolist()


def test_cli_split_read_only_out_is_one_line(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    make_class_folders(data, {"melanoma": 5, "nevus": 5})

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("skincli.fsutil.tempfile.mkstemp", refuse)
    result = runner.invoke(app, ["split", str(data), "--out", str(tmp_path / "s" / "split.csv")])
    assert result.exit_code == 1
    assert result.output.startswith("error: Cannot write --out")
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
