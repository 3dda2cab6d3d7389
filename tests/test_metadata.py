"""Image metadata as the source of labels, groups and subgroups (skincli.data.metadata)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from imagegen import PALETTE, make_image
from typer.testing import CliRunner

from skincli.cli import app
from skincli.data.dataset import load_dataset
from skincli.data.manifest import build_manifest
from skincli.data.metadata import image_id, load_metadata
from skincli.data.split import make_split
from skincli.data.splitfile import load_split
from skincli.errors import SkinError

runner = CliRunner()
CLASSES = ["melanoma", "nevus", "actinic keratosis"]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIN_CACHE_DIR", str(tmp_path / "cache"))


def _folders(root: Path, n: int = 12) -> dict[str, str]:
    """Class folders of n images each, ids ISIC_<class><i>; returns id -> true class.

    The last two nevus files are really actinic keratoses filed under both folders (the same
    bytes), and one melanoma is a second photograph of another melanoma's lesion.
    """
    truth = {}
    for c, name in enumerate(CLASSES):
        for i in range(n):
            iid = f"ISIC_{c}{i:03d}"
            make_image(root / name / f"{iid}.jpg", PALETTE[c], seed=100 * c + i)
            truth[iid] = name
    # Two actinic keratoses also filed (byte-identical) under nevus.
    for i in range(2):
        src = root / "actinic keratosis" / f"ISIC_2{i:03d}.jpg"
        (root / "nevus" / src.name).write_bytes(src.read_bytes())
    # A nevus that the metadata says is a melanoma (a wrong folder, no copy).
    truth["ISIC_1005"] = "melanoma"
    return truth


def _archive_csv(path: Path, truth: dict[str, str]) -> Path:
    rows = []
    for iid, dx in sorted(truth.items()):
        lesion = "IL_0000001" if iid in ("ISIC_0000", "ISIC_0001", "ISIC_0002") else ""
        rows.append({"isic_id": iid, "diagnosis": dx, "diagnosis_confirm_type": "histopathology",
                     "lesion_id": lesion, "patient_id": "", "age_approx": "55",
                     "sex": "female" if int(iid[-1]) % 2 else "male",
                     "anatom_site_general": "back"})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_image_id_ignores_suffix_case_and_copy_marks() -> None:
    assert image_id("Train/x/ISIC_0024306.jpg") == "isic_0024306"
    assert image_id("ISIC_0025509(1).jpg") == image_id("ISIC_0025509.JPG")
    assert image_id("ISIC_0025509 (2).png") == "isic_0025509"
    assert image_id("ISIC_0025509") == "isic_0025509"


def test_archive_metadata_relabels_resolves_and_groups(tmp_path: Path) -> None:
    data = tmp_path / "data"
    truth = _folders(data)
    meta = _archive_csv(tmp_path / "meta.csv", truth)
    ds = load_dataset(data, metadata=meta)
    assert ds.metadata is not None
    assert ds.metadata["metadata"]["format"] == "isic-archive"
    # Disagreements: the 2 copies under nevus and the mis-filed nevus.
    bad = {(d["path"], d["metadata"]) for d in ds.metadata["disagreement_list"]}
    assert bad == {("nevus/ISIC_2000.jpg", "actinic keratosis"),
                   ("nevus/ISIC_2001.jpg", "actinic keratosis"),
                   ("nevus/ISIC_1005.jpg", "melanoma")}
    assert ds.metadata["folder_vs_metadata"]["nevus"]["actinic keratosis"] == 2
    manifest = build_manifest(ds)
    result = make_split(manifest, seed=1, val=0.2, test=0.2)
    df = result.frame
    assert result.meta["conflicts"] == "resolve"
    # Every copy conflict keeps the copy filed where the metadata says; none is lost.
    kept = df[df["path"].str.contains("ISIC_200[01]")]
    assert sorted(kept["path"]) == ["actinic keratosis/ISIC_2000.jpg",
                                    "actinic keratosis/ISIC_2001.jpg"]
    assert (kept["label"] == "actinic keratosis").all()
    assert df.loc[df["path"] == "nevus/ISIC_1005.jpg", "label"].item() == "melanoma"
    assert len(df) == len(truth)
    # The lesion's three photographs sit in one split.
    lesion = df[df["lesion_id"] == "IL_0000001"]
    assert len(lesion) == 3 and lesion["split"].nunique() == 1
    assert result.meta["groups_kept_together"] == 1
    assert result.meta["metadata"]["sha256"]
    assert set(df["sex"]) == {"male", "female"}


def test_folder_labels_keep_metadata_groups(tmp_path: Path) -> None:
    data = tmp_path / "data"
    truth = _folders(data)
    meta = _archive_csv(tmp_path / "meta.csv", truth)
    ds = load_dataset(data, metadata=meta, labels="folder")
    manifest = build_manifest(ds)
    result = make_split(manifest, seed=1, val=0.2, test=0.2)
    assert result.meta["conflicts"] == "drop"
    df = result.frame
    assert not df["path"].str.contains("ISIC_200[01]").any()  # both copies dropped
    assert df.loc[df["path"] == "nevus/ISIC_1005.jpg", "label"].item() == "nevus"
    assert df[df["lesion_id"] == "IL_0000001"]["split"].nunique() == 1


def test_emptied_class_is_reported_not_trained(tmp_path: Path) -> None:
    data = tmp_path / "data"
    truth = _folders(data)
    # A folder whose every file is, by the metadata, a melanoma.
    for i in range(3):
        src = data / "melanoma" / f"ISIC_0{i + 5:03d}.jpg"
        (data / "seborrheic keratosis").mkdir(exist_ok=True)
        (data / "seborrheic keratosis" / src.name).write_bytes(src.read_bytes())
    meta = _archive_csv(tmp_path / "meta.csv", truth)
    ds = load_dataset(data, metadata=meta)
    assert "seborrheic keratosis" not in ds.classes
    assert [c["class"] for c in ds.metadata["emptied_classes"]] == ["seborrheic keratosis"]
    result = make_split(build_manifest(ds), seed=0, val=0.2, test=0.2)
    assert "seborrheic keratosis" not in set(result.frame["label"])
    assert any("seborrheic keratosis" in w and "not a class" in w for w in result.warnings)


def test_ham10000_csv_maps_codes(tmp_path: Path) -> None:
    images = tmp_path / "images"
    rows = []
    codes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    for i, code in enumerate(codes * 2):
        iid = f"ISIC_00{i:05d}"
        make_image(images / f"{iid}.jpg", PALETTE[i % len(PALETTE)], seed=i)
        rows.append({"lesion_id": f"HAM_{i % 7:07d}", "image_id": iid, "dx": code,
                     "dx_type": "histo", "age": "45.0", "sex": "male", "localization": "back"})
    csv = tmp_path / "HAM10000_metadata.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    meta = load_metadata(csv)
    assert meta.format == "ham10000"
    assert set(meta.table["diagnosis"]) == {"actinic keratosis", "basal cell carcinoma",
                                            "pigmented benign keratosis", "dermatofibroma",
                                            "melanoma", "nevus", "vascular lesion"}
    assert set(meta.table["age"]) == {"45"}
    # The same file as data (CSV layout) and as metadata for a folder of images.
    ds = load_dataset(csv, csv_image_dir=images, metadata=csv)
    assert len(ds.entries) == 14
    assert {e.group for e in ds.entries} == {f"lesion:HAM_{i:07d}" for i in range(7)}
    # User override of a code in the table.
    meta2 = load_metadata(csv, {"bkl": "seborrheic keratosis"})
    assert "seborrheic keratosis" in set(meta2.table["diagnosis"])


@pytest.mark.parametrize("year", [2019, 2018])
def test_challenge_one_hot_ground_truth(tmp_path: Path, year: int) -> None:
    codes = (["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"] if year == 2019
             else ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"])
    rows = []
    for i, code in enumerate(codes):
        rows.append({"image": f"ISIC_{i:07d}", **{c: 1.0 if c == code else 0.0 for c in codes}})
    csv = tmp_path / "gt.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    meta = load_metadata(csv)
    assert meta.format == "isic-challenge"
    t = meta.table
    assert t.loc["isic_0000000", "diagnosis"] == "melanoma"
    assert t.loc["isic_0000003", "diagnosis"] == "actinic keratosis"
    if year == 2019:
        assert t.loc["isic_0000007", "diagnosis"] == "squamous cell carcinoma"
        assert t.loc["isic_0000008", "diagnosis"] == ""  # UNK: no diagnosis


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("content, message", [
    ("name,diagnosis\nISIC_1,melanoma\n", "no image id column"),
    ("isic_id,age_approx\nISIC_1,50\n", "no diagnosis column"),
    ("image_id,age\nISIC_1,50\n", "no diagnosis column"),
    ("isic_id,diagnosis\nISIC_1,melanoma\nISIC_1,nevus\n", "different diagnoses"),
    ("isic_id,diagnosis\nISIC_1,blue nevus of ota\n", "--class-map"),
    ("image_id,dx,lesion_id\nISIC_1,xyz,HAM_1\n", "xyz"),
    (b"isic_id,diagnosis\nISIC_1,n\xe9vus\n", "not UTF-8"),
    ("", "empty"),
    ('isic_id,diagnosis\n"ISIC_1,melanoma\n', "cannot be parsed"),
])
def test_bad_metadata_is_one_line_error(tmp_path: Path, content: str | bytes,
                                        message: str) -> None:
    path = _write(tmp_path / "meta.csv", content)
    with pytest.raises(SkinError) as info:
        load_metadata(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_ids_matching_no_image_and_images_without_row_are_counted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    truth = _folders(data, n=6)
    del truth["ISIC_0003"]
    truth["ISIC_9999"] = "nevus"
    meta = _archive_csv(tmp_path / "meta.csv", truth)
    ds = load_dataset(data, metadata=meta)
    assert ds.metadata["rows_without_image_list"] == ["ISIC_9999"]
    assert ds.metadata["images_without_row_list"] == ["melanoma/ISIC_0003.jpg"]
    assert any("1 image(s) have no row" in w for w in ds.metadata["warnings"])
    # The image without a row keeps its folder label.
    entry = next(e for e in ds.entries if e.path == "melanoma/ISIC_0003.jpg")
    assert entry.label == "melanoma"


def test_metadata_for_other_images_is_an_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _folders(data, n=4)
    meta = _archive_csv(tmp_path / "meta.csv", {"ISIC_X1": "nevus"})
    with pytest.raises(SkinError, match="No image matches"):
        load_dataset(data, metadata=meta)


def test_cli_eda_and_split_with_metadata(tmp_path: Path) -> None:
    data = tmp_path / "data"
    truth = _folders(data)
    meta = _archive_csv(tmp_path / "meta.csv", truth)
    out = tmp_path / "eda"
    result = runner.invoke(app, ["eda", str(data), "--metadata", str(meta), "--out", str(out),
                                 "--no-plots"])
    assert result.exit_code == 0, result.output
    assert "3 files are filed under a class the metadata contradicts" in result.output
    assert "nevus/ISIC_1005.jpg: folder nevus, metadata melanoma" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["metadata"]["disagreements"] == 3
    assert report["metadata"]["lesions"]["with_several_images"] == 1
    conflict = report["label_conflicts"]["items"][0]
    assert conflict["metadata_label"] == "actinic keratosis"

    split = tmp_path / "splits" / "split.csv"
    result = runner.invoke(app, ["split", str(data), "--metadata", str(meta), "--out",
                                 str(split), "--val", "0.2", "--test", "0.2"])
    assert result.exit_code == 0, result.output
    assert "1 lesions with several images (3 images) each kept within one split" in \
        " ".join(result.output.split())
    df = load_split(split)
    assert df.attrs["meta"]["metadata"]["labels"] == "metadata"
    assert (df.groupby("lesion_id")["split"].nunique()[lambda s: s.index != ""] == 1).all()


def test_cli_metadata_option_errors(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _folders(data, n=4)
    result = runner.invoke(app, ["split", str(data), "--labels", "folder",
                                 "--out", str(tmp_path / "s.csv")])
    assert result.exit_code == 1
    assert "need(s) --metadata" in result.output
    bad = _write(tmp_path / "m.csv", "isic_id,diagnosis\nISIC_0000,zzz\n")
    result = runner.invoke(app, ["split", str(data), "--metadata", str(bad),
                                 "--out", str(tmp_path / "s.csv")])
    assert result.exit_code == 1
    assert "zzz" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "s.csv").exists()
    result = runner.invoke(app, ["split", str(data), "--metadata", str(bad), "--class-map",
                                 "zzz=nevus", "--out", str(tmp_path / "s.csv")])
    assert result.exit_code == 0, result.output


def test_class_map_from_the_yaml_config(tmp_path: Path) -> None:
    data = tmp_path / "data"
    truth = _folders(data, n=4)
    meta = _archive_csv(tmp_path / "meta.csv", {k: ("zzz" if v == "nevus" else v)
                                                for k, v in truth.items()})
    config = _write(tmp_path / "skin.yaml", "split:\n  class-map: ['zzz=nevus']\n")
    result = runner.invoke(app, ["--config", str(config), "split", str(data), "--metadata",
                                 str(meta), "--out", str(tmp_path / "s.csv")])
    assert result.exit_code == 0, result.output
    assert "nevus" in set(load_split(tmp_path / "s.csv")["label"])
