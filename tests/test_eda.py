"""`skin eda`: the analysis, the report folder and the command users run."""

import json
import shutil
from pathlib import Path

import pytest
from imagegen import (
    make_class_folders,
    make_empty_file,
    make_fake_jpeg,
    make_png_bomb,
    make_truncated_jpeg,
)
from PIL import Image
from typer.testing import CliRunner

from skincli.cli import app
from skincli.data.dataset import load_dataset
from skincli.data.manifest import build_manifest
from skincli.eda import analyse, run_eda

runner = CliRunner()


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """Kaggle layout with one of each problem eda must find."""
    root = tmp_path / "data"
    train = make_class_folders(root / "Train", {"alpha": 6, "beta": 3}, size=(64, 64))
    make_class_folders(root / "Test", {"alpha": 2, "beta": 2}, size=(64, 64), seed=1)
    a = train["alpha"]
    shutil.copy(a[0], root / "Train" / "alpha" / "copy.jpg")      # duplicate within class
    shutil.copy(a[1], root / "Train" / "beta" / "conflict.jpg")   # same image, other class
    shutil.copy(a[2], root / "Test" / "alpha" / "leak.jpg")       # same image in Train and Test
    Image.open(a[3]).resize((56, 56)).save(root / "Train" / "beta" / "near.jpg", quality=80)
    make_truncated_jpeg(root / "Train" / "beta" / "broken.jpg")
    return root


def test_analysis_finds_every_problem(messy: Path) -> None:
    ds = load_dataset(messy)
    report = analyse(build_manifest(ds), ds)

    assert report["data"]["layout"] == "kaggle"
    assert report["data"]["files"] == 18 and report["data"]["readable"] == 17
    assert [u["path"] for u in report["unreadable"]] == ["Train/beta/broken.jpg"]
    assert "truncated" in report["unreadable"][0]["reason"]

    dup = report["duplicates_within_class"]
    # The Train/Test copy is a duplicate within its class too (and, below, leakage).
    assert dup["groups"] == 2 and dup["extra_copies"] == 2
    assert sorted(sorted(f["path"] for f in item["files"]) for item in dup["items"]) == [
        ["Test/alpha/leak.jpg", "Train/alpha/img_002.jpg"],
        ["Train/alpha/copy.jpg", "Train/alpha/img_000.jpg"]]
    con = report["label_conflicts"]
    assert con["images"] == 1 and con["files"] == 2
    assert con["items"][0]["labels"] == ["alpha", "beta"]
    assert con["by_class_pair"] == [{"classes": ["alpha", "beta"], "images": 1}]

    leak = report["leakage"]
    assert leak["images"] == 1
    assert [f["path"] for f in leak["items"][0]["train"]] == ["Train/alpha/img_002.jpg"]
    assert [f["path"] for f in leak["items"][0]["test"]] == ["Test/alpha/leak.jpg"]
    assert leak["items"][0]["same_label"] is True

    near = report["near_duplicates"]
    assert near["clusters"] == 1
    cluster = near["items"][0]
    assert {f["path"] for f in cluster["files"]} == {"Train/alpha/img_003.jpg",
                                                     "Train/beta/near.jpg"}
    assert cluster["cross_class"] is True and cluster["cross_split"] is False


def test_balance_counts_weights_and_given_split(messy: Path) -> None:
    ds = load_dataset(messy)
    bal = analyse(build_manifest(ds), ds)["balance"]
    counts = {c["name"]: c["count"] for c in bal["classes"]}
    assert counts == {"alpha": 10, "beta": 7}
    assert bal["imbalance_ratio"] == pytest.approx(10 / 7, abs=1e-3)
    assert bal["class_weights"]["alpha"] == pytest.approx(17 / (2 * 10), abs=1e-4)
    assert bal["class_weights"]["beta"] == pytest.approx(17 / (2 * 7), abs=1e-4)
    assert list(bal["per_given_split"]) == ["train", "test"]
    assert bal["per_given_split"]["test"] == {"alpha": 3, "beta": 2}


def test_report_folder_has_json_manifest_and_plots(messy: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports" / "eda"
    report = run_eda(messy, out)
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["label_conflicts"]["images"] == 1
    assert (out / "manifest.csv").is_file()
    assert set(report["plots"]) >= {"class_counts.png", "image_sizes.png", "colour_stats.png",
                                    "brightness.png", "sharpness.png", "samples.png",
                                    "near_duplicates.png"}
    for name in report["plots"]:
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.size[0] > 100
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_failed_run_leaves_previous_report_untouched(messy: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "eda"
    run_eda(messy, out, plots=False)
    before = (out / "report.json").read_text()

    from skincli import eda_plots

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(eda_plots, "write_all", boom)
    with pytest.raises(RuntimeError):
        run_eda(messy, out)
    assert (out / "report.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".eda")) == []


# --- the command ---------------------------------------------------------------------------


def test_cli_eda_prints_tables_and_problems(messy: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    result = runner.invoke(app, ["eda", str(messy), "--out", str(out), "--no-plots"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Images per class" in text
    assert "Imbalance ratio 1.4" in text
    assert "label conflicts" in text.lower()
    assert "Train/alpha/img_001.jpg (alpha) = Train/beta/conflict.jpg (beta)" in text
    assert "unreadable Train/beta/broken.jpg" in text
    assert (out / "report.json").is_file()
    assert not list(out.glob("*.png"))


def test_cli_eda_json(messy: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["eda", str(messy), "--out", str(tmp_path / "r"), "--no-plots",
                                 "--json"])
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["leakage"]["images"] == 1


def test_cli_eda_csv_layout(tmp_path: Path) -> None:
    made = make_class_folders(tmp_path / "imgs", {"x": 3, "y": 3})
    lines = ["image_id,dx,lesion_id"] + [f"{p.stem}_{c},{c}," for c in made for p in made[c]]
    # Rename files to match the ids: <stem>_<class>.jpg anywhere under the image folder.
    for c, paths in made.items():
        for p in paths:
            p.rename(p.with_name(f"{p.stem}_{c}.jpg"))
    (tmp_path / "meta.csv").write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["eda", str(tmp_path / "meta.csv"), "--images",
                                 str(tmp_path / "imgs"), "--out", str(tmp_path / "r"),
                                 "--no-plots"])
    assert result.exit_code == 0, result.output
    assert "6 image files, 6 readable, 2 classes" in " ".join(result.output.split())


@pytest.mark.parametrize(("setup", "expected"), [
    (lambda d: None, "does not exist"),
    (lambda d: d.mkdir(), "No images found"),
    (lambda d: make_class_folders(d, {"only": 3}), "Only 1 class"),
    (lambda d: (d.mkdir(), (d / "m.csv").write_text("image_id,age\na,1\n")), "no label column"),
])
def test_cli_eda_bad_input_is_one_clean_line(tmp_path: Path, setup, expected: str) -> None:
    data = tmp_path / "data"
    setup(data)
    out = tmp_path / "rep"
    result = runner.invoke(app, ["eda", str(data), "--out", str(out)])
    assert result.exit_code == 1
    assert expected in result.output
    assert result.output.startswith("error:")
    assert len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert not out.exists()


def test_cli_eda_bad_files_are_listed_and_skipped(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_class_folders(data, {"a": 3, "b": 3})
    make_fake_jpeg(data / "a" / "fake.jpg")
    make_truncated_jpeg(data / "a" / "cut.jpg")
    make_empty_file(data / "b" / "zero.jpg")
    make_png_bomb(data / "b" / "bomb.png")
    result = runner.invoke(app, ["eda", str(data), "--out", str(tmp_path / "r"), "--no-plots"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for name, reason in [("a/fake.jpg", "not an image"), ("a/cut.jpg", "truncated"),
                         ("b/zero.jpg", "0 bytes"), ("b/bomb.png", "pixels")]:
        assert f"unreadable {name}: " in text and reason in text
    assert "10 image files, 6 readable" in text


def test_out_never_replaces_data_or_unrelated_folders(messy: Path, tmp_path: Path) -> None:
    precious = tmp_path / "docs"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    for out, words in [(messy, "would replace the data folder"),
                       (messy.parent, "would replace the data folder"),
                       (precious, "not an eda report"),
                       (precious / "thesis.txt", "is a file")]:
        result = runner.invoke(app, ["eda", str(messy), "--out", str(out), "--no-plots"])
        assert result.exit_code == 1 and words in result.output
    assert (precious / "thesis.txt").read_text() == "years of work"
    assert (messy / "Train").is_dir()


def test_near_duplicate_pairs_same_for_any_block_size() -> None:
    import numpy as np
    import pandas as pd

    from skincli.data.duplicates import NearDupParams, near_duplicate_pairs, popcount

    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, size=40, dtype=np.uint64)
    # Every 4th hash gets a near twin (3 bits flipped) with the same colour.
    twins = base[::4] ^ np.uint64(0b10101)
    hashes = np.concatenate([base, twins])
    n = len(hashes)
    colour = rng.uniform(0, 255, size=(n, 3))
    colour[40:] = colour[:40:4]
    m = pd.DataFrame({"sha256": [f"{i:04d}" for i in range(n)], "readable": True,
                      "phash": [f"{int(h):016x}" for h in hashes],
                      "mean_r": colour[:, 0], "mean_g": colour[:, 1], "mean_b": colour[:, 2]})
    params = NearDupParams(max_distance=3, strict_distance=3)
    whole = near_duplicate_pairs(m, params, block=1024)
    pieces = near_duplicate_pairs(m, params, block=7)
    assert whole.equals(pieces)
    assert sorted(zip(whole["sha_a"], whole["sha_b"])) == [
        (f"{i:04d}", f"{40 + i // 4:04d}") for i in range(0, 40, 4)]
    assert (whole["distance"] == 3).all()
    x = rng.integers(0, 2**63, size=100, dtype=np.uint64)
    assert popcount(x).tolist() == [bin(int(v)).count("1") for v in x]


def test_cli_eda_read_only_out_is_one_line_before_reading(messy: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # A read-only folder (root ignores chmod, so refuse the temp files the writes make).
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("skincli.fsutil.tempfile.mkstemp", refuse)
    monkeypatch.setattr("skincli.fsutil.tempfile.mkdtemp", refuse)
    result = runner.invoke(app, ["eda", str(messy), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 1
    assert result.output.startswith("error: Cannot write --out")
    assert "Permission denied" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1  # no tables: it stopped first
