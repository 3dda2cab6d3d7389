"""eda and split on the real ISIC 9-class folder (../shared/data/isic9), when it is there."""

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skincli.cli import app
from skincli.data.splitfile import load_split
from skincli.imageio import is_image_file

ISIC9 = Path(__file__).resolve().parents[2] / "shared" / "data" / "isic9"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not ISIC9.is_dir(), reason=f"{ISIC9} not present"),
]
runner = CliRunner()


def _image_files() -> list[Path]:
    return [Path(d) / f for d, _, files in os.walk(ISIC9) for f in files
            if is_image_file(f) and not f.startswith(".")]


def test_eda_and_split_on_isic9(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIN_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "eda"
    result = runner.invoke(app, ["eda", str(ISIC9), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())

    files = _image_files()
    assert report["data"]["layout"] == "kaggle"
    assert report["data"]["files"] == len(files)
    class_dirs = {p.parent.name for p in files}
    assert set(report["data"]["classes"]) == class_dirs
    assert sum(c["count"] for c in report["balance"]["classes"]) == report["data"]["readable"]
    for item in report["leakage"]["items"]:
        assert item["train"] and item["test"]
    for item in report["label_conflicts"]["items"]:
        assert len({f["label"] for f in item["files"]}) >= 2
    assert len(report["plots"]) >= 6

    split = tmp_path / "splits" / "split.csv"
    result = runner.invoke(app, ["split", str(ISIC9), "--out", str(split), "--keep-given-test"])
    assert result.exit_code == 0, result.output
    df = load_split(split)
    # Leakage-proof: no content hash in two splits, no conflicting image kept.
    assert (df.groupby("sha256")["split"].nunique() == 1).all()
    assert (df.groupby("sha256")["label"].nunique() == 1).all()
    assert (df.loc[df["split"] == "test", "given_split"] == "test").all()
    assert set(df["split"]) == {"train", "val", "test"}
    assert all(Path(p).is_file() for p in df["filepath"].head(50))


METADATA = ISIC9.parent / "isic9_metadata.csv"


@pytest.mark.skipif(not METADATA.is_file(), reason=f"{METADATA} not present")
def test_eda_and_split_with_archive_metadata(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIN_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "eda"
    result = runner.invoke(app, ["eda", str(ISIC9), "--metadata", str(METADATA), "--out",
                                 str(out), "--no-plots"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "report.json").read_text())["metadata"]
    assert meta["disagreements"] == 158 == len(meta["disagreement_list"])
    assert meta["lesions"]["with_several_images"] == 226
    assert meta["lesions"]["images_in_those"] == 491
    assert [c["class"] for c in meta["emptied_classes"]] == ["seborrheic keratosis"]

    split = tmp_path / "split.csv"
    result = runner.invoke(app, ["split", str(ISIC9), "--metadata", str(METADATA), "--out",
                                 str(split)])
    assert result.exit_code == 0, result.output
    df = load_split(split)
    assert len(df) == 1792
    assert "seborrheic keratosis" not in set(df["label"])
    lesions = df[df["lesion_id"] != ""]
    assert (lesions.groupby("lesion_id")["split"].nunique() == 1).all()
    assert (df.groupby("sha256")["split"].nunique() == 1).all()
    # Every actinic keratosis the archive knows is kept (none lost to a conflict).
    assert (df["label"] == "actinic keratosis").sum() == 120
