"""The only module (with the CLI) that prints: shared Rich consoles and table helpers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """Build a Rich table; numbers are right-aligned and floats shown with 3 decimals."""
    t = Table(title=title, title_justify="left")
    rows = [list(r) for r in rows]
    for i, col in enumerate(columns):
        numeric = bool(rows) and all(isinstance(r[i], (int, float)) for r in rows if i < len(r))
        t.add_column(str(col), justify="right" if numeric else "left")
    for r in rows:
        t.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in r])
    return t


def error(message: str) -> None:
    """Print a one-line error on stderr."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    """Print a one-line warning on stderr."""
    err_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
