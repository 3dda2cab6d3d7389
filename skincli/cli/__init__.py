"""The `skin` command: the root app only wires the command modules together."""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Annotated, Any

import click
import typer
import yaml
from rich.markup import escape as rich_escape

from skincli import __version__, ui
from skincli.cli import (
    audit,
    card,
    demo,
    eda,
    evaluate,
    export,
    learning_curve,
    monitor,
    predict,
    receive,
    serve,
    split,
    train,
)
from skincli.errors import SkinError

app = typer.Typer(
    name="skin",
    help="Classify dermoscopic skin-lesion images: eda, split, train, evaluate, predict, "
    "serve, export, monitor; card and audit for clinical review.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)

app.command("demo", help=demo.HELP)(demo.command)
app.command("eda", help=eda.HELP)(eda.command)
app.command("split", help=split.HELP)(split.command)
app.command("train", help=train.HELP)(train.command)
app.command("evaluate", help=evaluate.HELP)(evaluate.command)
app.command("learning-curve", help=learning_curve.HELP)(learning_curve.command)
app.command("predict", help=predict.HELP)(predict.command)
app.command("serve", help=serve.HELP)(serve.command)
app.command("export", help=export.HELP)(export.command)
app.add_typer(monitor.app, name="monitor")
app.command("card", help=card.HELP)(card.command)
app.add_typer(audit.app, name="audit")
app.command("receive", help=receive.HELP)(receive.command)


def _version(value: bool) -> None:
    if value:
        ui.console.print(f"skin {__version__}")
        raise typer.Exit()


def load_config(path: Path, root: click.Group) -> dict[str, Any]:
    """Read a YAML config whose sections are command names and keys are option names.

    Unknown sections or keys raise SkinError with the closest valid name.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise SkinError(f"Cannot read config {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise SkinError(f"Config {path} is not valid YAML{where}",
                        hint="Fix the syntax; see examples/*.yaml") from exc
    if not isinstance(data, dict):
        raise SkinError(f"Config {path} must be a mapping of command names to options",
                        hint="See examples/fast-cpu.yaml")
    return _check_section(data, root, str(path), prefix="")


def _check_section(data: dict[str, Any], cmd: click.Command, path: str,
                   prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    subcommands = getattr(cmd, "commands", {}) or {}
    # Typer's option class is not a click.Option subclass: ask the parameter what it is.
    params = {p.name: p for p in cmd.params
              if p.name and getattr(p, "param_type_name", "") == "option"}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        label = f"{prefix}{raw_key}"
        sub_key = str(raw_key)
        if sub_key in subcommands:
            if value is None:  # an empty section ("train:" with nothing under it)
                continue
            if not isinstance(value, dict):
                raise SkinError(f"Section '{label}' in config {path} must map option names to "
                                f"values, not {value!r}", hint="e.g. train: {epochs: 10}")
            out[sub_key] = _check_section(value, subcommands[sub_key], path, prefix=f"{label}.")
        elif key in params:
            out[key] = _check_value(params[key], value, label, path)
        else:
            choices = list(subcommands) + [n.replace("_", "-") for n in params]
            close = difflib.get_close_matches(str(raw_key), choices, n=3, cutoff=0.5)
            hint = f"Did you mean: {', '.join(close)}?" if close else (
                f"Valid keys here: {', '.join(sorted(choices))}")
            raise SkinError(f"Unknown key '{label}' in config {path}", hint=hint)
    return out


def _check_value(param: Any, value: Any, label: str, path: str) -> Any:
    """Convert a config value the way the option would be, so a wrong type names the file."""
    if getattr(param, "multiple", False) and isinstance(value, (str, int, float)):
        value = [value]  # `cors_origin: https://a` means a list of one
    if value is None:
        return value
    try:
        param.get_runtime_param().coerce(value, param=param, ctx=None)
    except Exception as exc:  # the option type's own complaint, e.g. "not a valid integer"
        reason = getattr(exc, "message", None) or str(exc)
        command = " ".join(label.split(".")[:-1])
        raise SkinError(f"{label}: {value!r} in config {path} is not valid ({reason})",
                        hint=f"Fix the value; `skin {command} --help` shows what each option "
                        "takes") from None
    return value


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="YAML file whose sections mirror the commands' "
                     "options (e.g. train: {epochs: 10}).", dir_okay=False),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True,
                           help="Show the version and exit.")
    ] = False,
) -> None:
    """skincli: one command for the whole skin-lesion classification lifecycle."""
    if config is None:
        return
    try:
        if not config.exists():
            raise SkinError(f"Config file {config} does not exist",
                            hint="Pass a YAML file, e.g. examples/fast-cpu.yaml")
        ctx.default_map = load_config(config, ctx.command)  # type: ignore[arg-type]
    except SkinError as exc:
        ui.error(str(exc))
        raise typer.Exit(code=1) from None


def _is(exc: BaseException, name: str) -> bool:
    """True if `exc` is a Click exception named `name` (Typer may bundle its own Click)."""
    return any(cls.__name__ == name for cls in type(exc).__mro__)


def main() -> None:
    """Console-script entry point: usage mistakes are one line on stderr (exit 2)."""
    try:
        code = app(standalone_mode=False)
    except Exception as exc:
        if _is(exc, "NoArgsIsHelpError"):
            code = 0  # the help text has been shown already
        elif _is(exc, "UsageError"):
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "skin"
            message = exc.format_message()  # type: ignore[attr-defined]
            ui.error(rich_escape(f"{message} (see '{where} --help')"))
            code = exc.exit_code  # type: ignore[attr-defined]
        elif _is(exc, "ClickException"):
            ui.error(rich_escape(exc.format_message()))  # type: ignore[attr-defined]
            code = exc.exit_code  # type: ignore[attr-defined]
        elif _is(exc, "Abort"):
            ui.error("aborted.")
            code = 1
        else:
            raise
    sys.exit(code if isinstance(code, int) else 0)
