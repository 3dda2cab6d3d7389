"""Helpers shared by every CLI command: turning errors into one clean line."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from skincli import ui
from skincli.errors import SkinError

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(func: F) -> F:
    """Show SkinError (and Ctrl-C) as one line on stderr and exit non-zero, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SkinError as exc:
            ui.error(str(exc))
            raise typer.Exit(code=1) from None
        except KeyboardInterrupt:
            ui.error("interrupted")
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def not_implemented(name: str) -> None:
    """An honest placeholder for a command that does not exist yet."""
    raise SkinError(f"`skin {name}` is not implemented yet")
