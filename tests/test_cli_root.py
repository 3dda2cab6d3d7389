"""The root CLI: help, version, and the global --config."""

from pathlib import Path

import pytest
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


def _config_error(tmp_path: Path, text: str, *args: str) -> str:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    result = runner.invoke(app, ["--config", str(cfg), *(args or ("split", "--help"))])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error:") and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    return " ".join(result.output.split())


def test_config_section_that_is_not_a_mapping(tmp_path: Path) -> None:
    out = _config_error(tmp_path, "train: 5\n")
    assert "Section 'train'" in out and "must map option names to values" in out
    assert "Did you mean: train" not in out  # the name is right; the shape is wrong
    out = _config_error(tmp_path, "monitor:\n  label: [a]\n")
    assert "Section 'monitor.label'" in out


def test_config_values_of_the_wrong_type_name_the_file_and_key(tmp_path: Path) -> None:
    # Caught when the config is read: before, `train: {epochs: many}` was a usage error that
    # did not say it came from the file, and a list slipped through unchecked.
    for text, key in [("train:\n  epochs: many\n", "train.epochs: 'many'"),
                      ("train:\n  epochs: [1, 2]\n", "train.epochs: [1, 2]"),
                      ("split:\n  val: high\n", "split.val: 'high'"),
                      ("train:\n  oversample: maybe\n", "train.oversample: 'maybe'"),
                      ("monitor:\n  last: x\n", "monitor.last: 'x'")]:
        out = _config_error(tmp_path, text)
        assert key in out and "c.yaml is not valid" in out, out
        assert f"skin {key.split('.')[0]} --help" in out


def test_config_empty_section_and_single_value_for_a_repeatable_option(tmp_path: Path) -> None:
    import typer.main

    from skincli.cli import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\nserve:\n  cors_origin: https://ward.example\n  port: 8123\n")
    loaded = load_config(cfg, typer.main.get_command(app))  # type: ignore[arg-type]
    assert loaded == {"serve": {"cors_origin": ["https://ward.example"], "port": 8123}}


def test_hint_after_a_question_reads_as_a_sentence() -> None:
    from skincli.errors import SkinError

    text = str(SkinError("Unknown arch 'x'. Did you mean: y?", hint="See --list-archs"))
    assert text == "Unknown arch 'x'. Did you mean: y? See --list-archs"
    assert str(SkinError("Bad value", hint="Use 1")) == "Bad value. Use 1"


def _entry_point(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                 *argv: str) -> tuple[int, str]:
    """Run the console-script entry point in-process; return its exit code and stderr."""
    from skincli.cli import main

    monkeypatch.setattr("sys.argv", ["skin", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return int(exit_info.value.code or 0), capsys.readouterr().err


def test_usage_mistakes_are_one_line_with_exit_2(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    for argv, expected in ((("trian",), "Did you mean 'train'?"),
                           (("predict", "--top-k", "0", "x.jpg"), "--top-k"),
                           (("split", "--bogus"), "--bogus")):
        code, err = _entry_point(monkeypatch, capsys, *argv)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, argv
        assert len(lines) == 1 and lines[0].startswith("error:"), err
        assert expected in lines[0] and "--help" in lines[0]
        assert "Traceback" not in err and "╭" not in err


def test_entry_point_passes_through_exit_codes(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    code, _ = _entry_point(monkeypatch, capsys, "--version")
    assert code == 0
    code, err = _entry_point(monkeypatch, capsys, "predict", str(tmp_path / "missing.jpg"))
    assert code == 1 and "does not exist" in err
