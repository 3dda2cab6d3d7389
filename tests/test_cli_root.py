"""The root CLI: help, version, and the global --config."""

from pathlib import Path

from typer.testing import CliRunner

from skincli.cli import app

runner = CliRunner()

COMMANDS = ["eda", "split", "train", "evaluate", "predict", "serve", "monitor"]


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("skin ")


def test_config_unknown_key_suggests_closest(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("split:\n  sede: 3\n")
    result = runner.invoke(app, ["--config", str(cfg), "split", "--help"])
    assert result.exit_code == 1
    assert "sede" in result.output
    assert "seed" in result.output


def test_config_unknown_section(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("trian:\n  epochs: 3\n")
    result = runner.invoke(app, ["--config", str(cfg), "split", "--help"])
    assert result.exit_code == 1
    assert "train" in result.output


def test_config_missing_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--config", str(tmp_path / "nope.yaml"), "split", "--help"])
    assert result.exit_code == 1
    assert "does not exist" in result.output
