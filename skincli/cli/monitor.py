"""`skin monitor` (placeholder until it is built)."""

from __future__ import annotations

import typer

from skincli.cli.common import handle_errors, not_implemented

app = typer.Typer(help="(not implemented yet)", invoke_without_command=True)


@app.callback()
@handle_errors
def report() -> None:
    """Not implemented yet."""
    not_implemented("monitor")
