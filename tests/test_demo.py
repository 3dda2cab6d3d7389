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


@pytest.fixture()
def steps(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The commands the demo would run, recorded instead of run (no training here)."""
    import subprocess

    seen: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        seen.append(list(cmd[3:]))  # drop "python -m skincli"
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr("skincli.cli.demo.subprocess.run", fake_run)
    return seen


def _demo(workdir: Path, *extra: str) -> object:
    return runner.invoke(app, ["demo", "--workdir", str(workdir), "--arch", "tiny",
                               "--images", "16", *extra])


def test_second_demo_in_the_same_folder_replaces_data_and_takes_a_new_run_name(
        tmp_path: Path, steps: list[list[str]]) -> None:
    assert _demo(tmp_path).exit_code == 0
    (tmp_path / "data" / "synthetic-nevus" / "stale.jpg").write_bytes(b"old")
    (tmp_path / "runs" / "demo").mkdir(parents=True)  # the first demo's run
    (tmp_path / "runs" / "demo" / "run.json").write_text("{}")
    steps.clear()
    result = _demo(tmp_path, "--images", "8")
    assert result.exit_code == 0, result.output
    train = next(s for s in steps if s[0] == "train")
    assert train[train.index("--name") + 1] == "demo2"  # before: "runs/demo already exists"
    images = list((tmp_path / "data").rglob("*.jpg"))
    assert not any(p.name == "stale.jpg" for p in images) and len(images) < 16


def test_demo_never_writes_into_someone_elses_data_folder(tmp_path: Path,
                                                          steps: list[list[str]]) -> None:
    mine = tmp_path / "data" / "melanoma"
    mine.mkdir(parents=True)
    (mine / "patient.jpg").write_bytes(b"precious")
    result = _demo(tmp_path)
    assert result.exit_code == 1 and steps == []
    assert "already has a data/ folder" in result.output
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["melanoma"]


def test_demo_bad_arch_and_unwritable_workdir_are_one_line(tmp_path: Path,
                                                           steps: list[list[str]]) -> None:
    result = runner.invoke(app, ["demo", "--workdir", str(tmp_path / "w"), "--arch", "effnet"])
    assert result.exit_code == 1 and "Did you mean: efficientnet" in result.output
    assert not (tmp_path / "w").exists() and steps == []
    (tmp_path / "afile").write_text("x")
    result = _demo(tmp_path / "afile" / "w")
    assert result.exit_code == 1 and result.output.startswith("error: Cannot create --workdir")
    assert "Traceback" not in result.output and steps == []
