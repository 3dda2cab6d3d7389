"""`skin demo` (placeholder until it is built)."""

from __future__ import annotations

from skincli.cli.common import handle_errors, not_implemented

HELP = "(not implemented yet)"


@handle_errors
def command() -> None:
    """Not implemented yet."""
    not_implemented("demo")
