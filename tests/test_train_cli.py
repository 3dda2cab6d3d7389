"""`skin train` through the CLI: help, --list-archs, a tiny run, and one-line errors."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import errno
from pathlib import Path
from typing import Any

import pytest
from imagegen import make_fake_jpeg
from test_train import make_split_files
from typer.testing import CliRunner

from skincli.cli import app

runner = CliRunner()
FAST = ["--arch", "tiny", "--epochs", "1", "--fine-tune-epochs", "1", "--batch-size", "8",
        "--no-deterministic"]


def _run(*args: str) -> Any:
    return runner.invoke(app, ["train", *args], catch_exceptions=False)


def _one_line_error(result: Any, only: bool = True) -> str:
    """The error is one line (the last); with `only`, nothing else was printed."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("error:"), result.output
    assert not only or len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[-1]


def test_help_and_list_archs() -> None:
    result = _run("--help")
    assert result.exit_code == 0
    for option in ("--oversample", "--fine-tune", "--resume", "--preset", "--strategy",
                   "--list-archs", "--label-smoothing", "--mixup", "--no-calibrate"):
        assert option in result.output
    result = _run("--list-archs")
    assert result.exit_code == 0
    for name in ("tiny", "efficientnet", "resnet50", "mobilenetv2"):
        assert name in result.output


def test_tiny_run_prints_progress_and_summary(tmp_path: Path) -> None:
    bad = make_fake_jpeg(tmp_path / "data" / "red" / "broken.jpg")
    split = make_split_files(tmp_path, extra_train=[(bad, "red")])
    result = _run(*FAST, "--split", str(split), "--runs-dir", str(tmp_path / "runs"),
                  "--name", "cli")
    assert result.exit_code == 0, result.output
    assert "Training summary" in result.output and "val macro F1" in result.output
    assert "unreadable" in result.output  # the broken file was skipped and reported
    assert (tmp_path / "runs" / "cli" / "run.json").exists()
    assert "calibration" in result.output and "T = " in result.output
    # 6 validation images: too few for the out-of-distribution reference, and it says so.
    assert "no out-of-distribution reference" in result.output


def test_calibration_switch_from_the_cli_and_yaml(tmp_path: Path) -> None:
    from skincli.runs import load_run_info

    split = make_split_files(tmp_path, counts={"a": 10, "b": 10}, val_share=0.5)
    runs = tmp_path / "runs"
    result = _run(*FAST, "--split", str(split), "--runs-dir", str(runs), "--name", "off",
                  "--no-calibrate")
    assert result.exit_code == 0, result.output
    info = load_run_info(runs / "off")
    assert info.temperature == 1.0 and info.config["calibrate"] is False
    assert "off (temperature 1.0)" in result.output
    assert info.extra["reference"]["n"] == 10  # made either way

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"train:\n  arch: tiny\n  epochs: 1\n  fine_tune: none\n  split: {split}\n"
                   f"  runs_dir: {runs}\n  name: yaml\n  calibrate: false\n")
    result = runner.invoke(app, ["--config", str(cfg), "train"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert load_run_info(runs / "yaml").config["calibrate"] is False


def test_yaml_config_sets_options(tmp_path: Path) -> None:
    split = make_split_files(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"train:\n  arch: tiny\n  epochs: 1\n  fine_tune: none\n  split: {split}\n"
                   f"  runs_dir: {tmp_path / 'runs'}\n  deterministic: false\n")
    result = runner.invoke(app, ["--config", str(cfg), "train"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "head" in result.output and "fine-tune" not in result.output.split("Saving")[0]


@pytest.mark.parametrize(("args", "needle"), [
    (["--arch", "efficientnet_lite"], "Did you mean"),
    (["--fine-tune", "half"], "top:N"),
    (["--loss", "focl"], "Did you mean: focal"),
    (["--preset", "quick"], "fast"),
    (["--augment", "5"], "--augment"),
])
def test_bad_options_are_one_line_errors(tmp_path: Path, args: list[str], needle: str) -> None:
    split = make_split_files(tmp_path, counts={"a": 4, "b": 4})
    line = _one_line_error(_run(*FAST, "--split", str(split), "--runs-dir",
                                str(tmp_path / "runs"), *args))
    assert needle in line


@pytest.mark.parametrize("name", ["..", ".", "-x", ".hidden", "a/b"])
def test_run_names_that_cannot_be_a_folder_or_an_argument(tmp_path: Path, name: str) -> None:
    result = _run(*FAST, "--split", str(tmp_path / "none.csv"), "--name", name)
    assert result.output.startswith("error:"), result.output  # no blank line before it
    line = _one_line_error(result)
    assert f"Run name {name!r} is not valid" in line and "--name" in line


def test_resume_unknown_run(tmp_path: Path) -> None:
    line = _one_line_error(_run("--resume", "nothing-here", "--runs-dir", str(tmp_path)))
    assert "No resumable run 'nothing-here'" in line


def test_missing_split_says_which_command_makes_it(tmp_path: Path) -> None:
    result = _run(*FAST, "--split", str(tmp_path / "none.csv"))
    # Off a terminal the progress bar stays off: no blank line ahead of the error in logs.
    assert result.output.startswith("error:"), repr(result.output)
    assert "skin split" in _one_line_error(result)


def test_class_without_training_images(tmp_path: Path) -> None:
    split = make_split_files(tmp_path, counts={"a": 4, "b": 4, "solo": 1})
    line = _one_line_error(_run(*FAST, "--split", str(split), "--runs-dir",
                                str(tmp_path / "runs")))
    assert "'solo' has no training images" in line


def test_existing_run_name(tmp_path: Path) -> None:
    split = make_split_files(tmp_path, counts={"a": 4, "b": 4})
    (tmp_path / "runs" / "mine").mkdir(parents=True)
    line = _one_line_error(_run(*FAST, "--split", str(split), "--runs-dir",
                                str(tmp_path / "runs"), "--name", "mine"))
    assert "already exists" in line


def test_disk_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from skincli.train import trainer

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trainer.np, "savez", full)
    split = make_split_files(tmp_path, counts={"a": 4, "b": 4})
    line = _one_line_error(_run(*FAST, "--split", str(split), "--runs-dir",
                                str(tmp_path / "runs")), only=False)
    assert "No space left" in line
    assert "--resume" not in line  # the first checkpoint failed: nothing to resume
    assert not list((tmp_path / "runs").iterdir())


def test_hidden_head_trains_predicts_and_explains(tmp_path: Path) -> None:
    import keras
    import numpy as np
    import yaml

    from skincli.explain import explain
    from skincli.predictor import Predictor

    split = make_split_files(tmp_path)
    result = _run(*FAST, "--head-units", "8", "--split", str(split), "--runs-dir",
                  str(tmp_path / "runs"), "--name", "mlp")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "mlp"
    assert yaml.safe_load((run / "config.yaml").read_text())["head_units"] == 8
    model = keras.models.load_model(run / "model.keras", compile=False)
    assert model.get_layer("head_hidden").units == 8
    predictor = Predictor.from_run(run)
    batch = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    logits, embeddings = predictor.logits_and_embeddings(batch)
    assert logits.shape == (2, len(predictor.info.classes))
    assert embeddings.shape == (2, 8)  # the embedding is what the logits layer sees
    cams = explain(predictor, batch)
    assert len(cams) == 2


def test_negative_head_units_is_a_one_line_error(tmp_path: Path) -> None:
    split = make_split_files(tmp_path, counts={"a": 4, "b": 4})
    line = _one_line_error(_run(*FAST, "--split", str(split), "--runs-dir",
                                str(tmp_path / "runs"), "--head-units", "-1"))
    assert "--head-units" in line
