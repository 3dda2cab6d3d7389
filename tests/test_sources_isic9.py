"""isic9/Train and isic9/Test pooled as two sources (../shared/data), when they are there."""

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skincli.cli import app
from skincli.data.splitfile import load_split

# ../shared/data beside the checkout; SKIN_SHARED_DATA points elsewhere (e.g. from a worktree).
DATA = Path(os.environ.get("SKIN_SHARED_DATA")
            or Path(__file__).resolve().parents[2] / "shared" / "data")
ISIC9, METADATA = DATA / "isic9", DATA / "isic9_metadata.csv"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (ISIC9.is_dir() and METADATA.is_file()),
                       reason=f"{ISIC9} or {METADATA} not present"),
]
runner = CliRunner()


def _split(out: Path, *args: str) -> None:
    result = runner.invoke(app, ["split", *args, "--metadata", str(METADATA), "--out", str(out)])
    assert result.exit_code == 0, result.output


def test_train_and_test_as_two_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIN_CACHE_DIR", str(tmp_path / "cache"))
    train, test = str(ISIC9 / "Train"), str(ISIC9 / "Test")
    single, pooled = tmp_path / "single.csv", tmp_path / "pooled.csv"
    _split(single, str(ISIC9))
    _split(pooled, train, test)
    one, two = load_split(single), load_split(pooled)
    assert len(two) == len(one) == 1792
    # The same images, labels and splits: pooling the two folders changes nothing but the
    # source column.
    merged = one.merge(two, on="path", suffixes=("_one", "_two"))
    assert len(merged) == len(one)
    assert (merged["split_one"] == merged["split_two"]).all()
    assert (merged["label_one"] == merged["label_two"]).all()
    assert set(two["source"]) == {"Train", "Test"}
    lesions = two[two["lesion_id"] != ""]
    assert (lesions.groupby("lesion_id")["split"].nunique() == 1).all()

    out = tmp_path / "eda"
    result = runner.invoke(app, ["eda", train, test, "--metadata", str(METADATA), "--out",
                                 str(out), "--no-plots"])
    assert result.exit_code == 0, result.output
    pair = json.loads((out / "report.json").read_text())["sources"]["pairs"][0]
    assert pair["sources"] == ["Train", "Test"]
    # What the two folders share: copies of images and lesions photographed in both.
    assert pair["shared_images"] > 0 and pair["shared_lesions"] > 0
    assert pair["identical"] + pair["re_encoded"] + pair["resized"] == pair["shared_images"]

    held = tmp_path / "held.csv"
    _split(held, train, test, "--test-source", "Test")
    df = load_split(held)
    part = df[df["split"] == "test"]
    assert set(part["source"]) == {"Test"}
    assert (df.loc[df["source"] == "Test", "split"] == "test").all()
    test_lesions = set(part.loc[part["lesion_id"] != "", "lesion_id"])
    assert not test_lesions & set(df.loc[df["split"] != "test", "lesion_id"])
    assert not set(part["sha256"]) & set(df.loc[df["split"] != "test", "sha256"])
