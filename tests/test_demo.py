"""`skin demo` and the synthetic data it runs on."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from skincli.cli import app
from skincli.synthetic import make_synthetic_dataset, synthetic_classes

runner = CliRunner()


def test_synthetic_dataset_has_every_class_and_only_images(tmp_path: Path) -> None:
    counts = {c: 3 for c in synthetic_classes()}
    root = make_synthetic_dataset(tmp_path / "data", counts, size=48, seed=1)
    assert sorted(p.name for p in root.iterdir()) == sorted(counts)
    files = sorted(root.rglob("*"))
    assert all(p.is_dir() or p.suffix == ".jpg" for p in files)
    img = Image.open(next(root.rglob("*.jpg")))
    assert img.size == (48, 48) and img.mode == "RGB"


def test_synthetic_classes_differ_in_colour(tmp_path: Path) -> None:
    # The demo must be learnable: class mean colours are far apart.
    root = make_synthetic_dataset(tmp_path, {c: 4 for c in synthetic_classes()}, size=48)
    means = [np.mean([np.asarray(Image.open(p), dtype=float).mean(axis=(0, 1))
                      for p in (root / c).glob("*.jpg")], axis=0) for c in synthetic_classes()]
    gaps = [np.abs(a - b).max() for i, a in enumerate(means) for b in means[i + 1:]]
    assert min(gaps) > 5


def test_same_seed_same_images(tmp_path: Path) -> None:
    a = make_synthetic_dataset(tmp_path / "a", {"synthetic-nevus": 2}, size=32, seed=3)
    b = make_synthetic_dataset(tmp_path / "b", {"synthetic-nevus": 2}, size=32, seed=3)
    for pa, pb in zip(sorted(a.rglob("*.jpg")), sorted(b.rglob("*.jpg")), strict=True):
        assert pa.read_bytes() == pb.read_bytes()


@pytest.mark.slow
def test_demo_runs_the_whole_lifecycle(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--workdir", str(tmp_path), "--arch", "tiny",
                                 "--epochs", "2", "--fine-tune-epochs", "0",
                                 "--input-size", "48", "--images", "60"])
    assert result.exit_code == 0, result.output
    assert "demo summary" in result.output
    assert (tmp_path / "reports" / "eda" / "report.json").exists()
    assert (tmp_path / "splits" / "split.csv").exists()
    assert (tmp_path / "runs" / "demo" / "run.json").exists()
    assert (tmp_path / "SYNTHETIC-DATA.txt").exists()
    assert "failed" not in result.output
