"""`skin audit verify [LOG]`: check the prediction audit trail's hash chain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from skincli import ui
from skincli.cli.common import handle_errors
from skincli.errors import SkinError

app = typer.Typer(help="The prediction audit trail (append-only, hash-chained).",
                  no_args_is_help=True)


@app.command("verify", help="Check every record's hash and its link to the one before; "
             "name the first broken record. Exit 0 when the chain is intact, 1 otherwise.")
@handle_errors
def verify(
    log: Annotated[Path | None, typer.Argument(
        help="The audit log (default: $SKIN_AUDIT_LOG or <runs-dir>/audit.jsonl).",
        show_default=False, dir_okay=False)] = None,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where runs live.",
                                           file_okay=False)] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Verify the audit chain."""
    from skincli.clinical import audit

    path = log or audit.default_path(runs_dir)
    result = audit.verify(path)
    if as_json:
        typer.echo(json.dumps({"log": str(path), **result.to_dict()}))
    if result.ok:
        if not as_json:
            ui.console.print(f"{path}: {result.records} records, chain intact (last hash "
                             f"{(result.last_hash or '')[:16]}...)", highlight=False)
        return
    seq = f" (seq {result.first_bad_seq})" if result.first_bad_seq is not None else ""
    raise SkinError(f"{path}: record at line {result.first_bad_line}{seq} is broken: "
                    f"{result.reason}; the {result.records} records before it check out",
                    hint="Keep the file as evidence and investigate who changed it")
