"""Listing data sets: class folders, the Kaggle Train/Test layout and CSVs (HAM10000)."""

from pathlib import Path

import pytest
from imagegen import make_class_folders, make_image

from skincli.data.dataset import load_dataset
from skincli.errors import SkinError


def test_class_folders_with_spaces_any_suffix_case_and_hidden_files(tmp_path: Path) -> None:
    make_image(tmp_path / "basal cell carcinoma" / "a.JPG", seed=1)
    make_image(tmp_path / "basal cell carcinoma" / "b.jpeg", seed=2)
    make_image(tmp_path / "nevus" / "c.png", seed=3)
    make_image(tmp_path / "nevus" / "nested" / "d.BMP", seed=4)
    make_image(tmp_path / "nevus" / ".hidden.jpg", seed=5)
    make_image(tmp_path / ".trash" / "e.jpg", seed=6)
    (tmp_path / "nevus" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "nevus" / "notes.txt").write_text("x")
    (tmp_path / "loose.jpg").write_bytes(b"")

    ds = load_dataset(tmp_path)

    assert ds.layout == "folders"
    assert ds.classes == ["basal cell carcinoma", "nevus"]
    assert sorted(e.path for e in ds.entries) == [
        "basal cell carcinoma/a.JPG", "basal cell carcinoma/b.jpeg", "nevus/c.png",
        "nevus/nested/d.BMP"]
    assert not ds.has_given_split
    skipped = {s["path"]: s["reason"] for s in ds.skipped}
    assert "not an image" in skipped["nevus/notes.txt"]
    assert "not inside a class folder" in skipped["loose.jpg"]
    frame = ds.frame()
    assert Path(frame.loc[0, "filepath"]).is_file()


def test_kaggle_layout_keeps_given_split_any_case(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "Train", {"melanoma": 3, "nevus": 2})
    make_class_folders(tmp_path / "TEST", {"melanoma": 1, "nevus": 1}, seed=1)

    ds = load_dataset(tmp_path)

    assert ds.layout == "kaggle"
    assert ds.has_given_split
    given = ds.frame().groupby("given_split").size().to_dict()
    assert given == {"train": 5, "test": 2}
    assert ds.frame()["path"].str.startswith(("Train/", "TEST/")).all()


def _ham(tmp_path: Path) -> Path:
    """A HAM10000-style folder: metadata CSV + images split over two part folders."""
    for i in range(6):
        part = "part_1" if i < 3 else "part_2"
        make_image(tmp_path / "images" / part / f"ISIC_{i:07d}.jpg", seed=i)
    csv = tmp_path / "HAM10000_metadata.csv"
    csv.write_text("lesion_id,image_id,dx,age\n"
                   "HAM_1,ISIC_0000000,nv,40\n"
                   "HAM_1,ISIC_0000001,nv,40\n"
                   "HAM_2,ISIC_0000002,mel,50\n"
                   "HAM_3,ISIC_0000003,mel,60\n"
                   "HAM_4,ISIC_0000004,bkl,70\n"
                   "HAM_5,ISIC_0000005,bkl,70\n"
                   "HAM_6,ISIC_0009999,nv,30\n")
    return csv


def test_ham10000_csv_finds_images_recursively(tmp_path: Path) -> None:
    csv = _ham(tmp_path)

    ds = load_dataset(csv, csv_image_dir=tmp_path / "images")

    assert ds.layout == "csv"
    assert ds.columns == {"image": "image_id", "label": "dx", "group": "lesion_id"}
    assert ds.classes == ["bkl", "mel", "nv"]
    assert len(ds.entries) == 6
    assert {e.group for e in ds.entries} == {"HAM_1", "HAM_2", "HAM_3", "HAM_4", "HAM_5"}
    assert ds.entries[0].path == "part_1/ISIC_0000000.jpg"
    assert any("ISIC_0009999" in s["path"] and "no image file found" in s["reason"]
               for s in ds.skipped)


def test_folder_with_one_csv_is_read_as_csv(tmp_path: Path) -> None:
    _ham(tmp_path)
    ds = load_dataset(tmp_path)
    assert ds.layout == "csv"
    assert len(ds.entries) == 6


def test_csv_with_relative_paths_and_custom_columns(tmp_path: Path) -> None:
    make_image(tmp_path / "imgs" / "x.png", seed=1)
    make_image(tmp_path / "imgs" / "y.png", seed=2)
    csv = tmp_path / "labels.csv"
    csv.write_text("file,diag\nimgs/x.png,benign\nimgs/y.png,malignant\n")

    ds = load_dataset(csv, label_col="diag", image_col="file")

    assert sorted((e.path, e.label) for e in ds.entries) == [
        ("imgs/x.png", "benign"), ("imgs/y.png", "malignant")]


def test_csv_missing_label_column_names_found_and_expected(tmp_path: Path) -> None:
    make_image(tmp_path / "a.jpg")
    csv = tmp_path / "meta.csv"
    csv.write_text("image_id,age\na,3\n")
    with pytest.raises(SkinError) as exc:
        load_dataset(csv)
    msg = str(exc.value)
    assert "no label column" in msg
    assert "found: image_id, age" in msg
    assert "dx" in msg and "--label-col" in msg
    assert "\n" not in msg


def test_csv_unknown_label_col_suggests(tmp_path: Path) -> None:
    csv = tmp_path / "meta.csv"
    csv.write_text("image_id,diagnosis_main\na,b\n")
    with pytest.raises(SkinError, match="Did you mean: diagnosis_main"):
        load_dataset(csv, label_col="diagnosis_mian")


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(SkinError, match="does not exist"):
        load_dataset(tmp_path / "nope")


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(SkinError, match="No images found"):
        load_dataset(tmp_path)


def test_folder_with_only_non_images(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "readme.txt").write_text("x")
    with pytest.raises(SkinError, match="No images found"):
        load_dataset(tmp_path)


def test_one_class_is_an_error(tmp_path: Path) -> None:
    make_class_folders(tmp_path, {"nevus": 3})
    with pytest.raises(SkinError, match="Only 1 class .'nevus'. found"):
        load_dataset(tmp_path)


def test_csv_whose_images_are_all_missing(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text("image_id,dx\nq1,nv\nq2,mel\n")
    with pytest.raises(SkinError, match="No images found.*no image file found for 'q1'"):
        load_dataset(csv)


def test_a_file_that_is_not_csv(tmp_path: Path) -> None:
    f = make_image(tmp_path / "one.jpg")
    with pytest.raises(SkinError, match="is a file"):
        load_dataset(f)


def test_csv_same_file_listed_with_two_labels_is_kept_for_conflict_checks(tmp_path: Path) -> None:
    make_image(tmp_path / "a.jpg", seed=1)
    make_image(tmp_path / "b.jpg", seed=2)
    csv = tmp_path / "m.csv"
    csv.write_text("image_id,label\na,x\na,y\nb,y\nb,y\n")
    ds = load_dataset(csv)
    assert sorted((e.path, e.label) for e in ds.entries) == [("a.jpg", "x"), ("a.jpg", "y"),
                                                              ("b.jpg", "y")]
    assert any("listed twice" in s["reason"] for s in ds.skipped)


def test_train_valid_test_folders_are_given_splits_not_classes(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "train", {"mel": 3, "nv": 3})
    make_class_folders(tmp_path / "Valid", {"mel": 1, "nv": 1}, seed=1)
    make_class_folders(tmp_path / "test", {"mel": 1, "nv": 1}, seed=2)
    ds = load_dataset(tmp_path)
    assert ds.layout == "kaggle"
    assert ds.classes == ["mel", "nv"]
    assert ds.frame().groupby("given_split").size().to_dict() == {"train": 6, "val": 2,
                                                                  "test": 2}


def test_split_named_folder_beside_class_folders_is_a_class(tmp_path: Path) -> None:
    make_class_folders(tmp_path, {"test": 2, "nevus": 2})
    ds = load_dataset(tmp_path)
    assert ds.layout == "folders" and ds.classes == ["nevus", "test"]


def test_csv_with_bom_and_windows_line_ends(tmp_path: Path) -> None:
    make_image(tmp_path / "a.jpg", seed=1)
    make_image(tmp_path / "b.jpg", seed=2)
    (tmp_path / "m.csv").write_bytes("\ufeffimage_id,dx\r\na,nv\r\nb,mel\r\n".encode())
    ds = load_dataset(tmp_path / "m.csv")
    assert sorted((e.path, e.label) for e in ds.entries) == [("a.jpg", "nv"), ("b.jpg", "mel")]


def test_csv_column_options_on_class_folders_are_an_error_not_ignored(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "data", {"nevus": 2, "melanoma": 2})
    for option in ("label_col", "image_col", "group_col"):
        with pytest.raises(SkinError) as info:
            load_dataset(tmp_path / "data", **{option: "dx"})
        flag = "--" + option.replace("_", "-")
        assert flag in str(info.value) and "only applies to CSV data" in str(info.value)
    assert len(load_dataset(tmp_path / "data").entries) == 4  # without the option it loads
