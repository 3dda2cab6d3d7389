"""`skin audit verify [LOG]`: check the prediction audit trail's hash chain."""

from __future__ import annotations

import json
import os
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
    key: Annotated[Path | None, typer.Option(
        "--key", help="The Ed25519 key the rotation digests were signed with (private or "
        ".pub PEM; default: $SKIN_AUDIT_KEY). Needed once the log has rotated.",
        dir_okay=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Verify the audit chain."""
    from skincli.clinical import audit

    path = log or audit.default_path(runs_dir)
    result = audit.verify(path, key)
    if as_json:
        typer.echo(json.dumps({"log": str(path), **result.to_dict()}))
    if result.ok:
        if not as_json:
            segs = f" in {result.segments + 1} segments" if result.segments else ""
            ui.console.print(f"{path}: {result.records} records{segs}, chain intact (last "
                             f"hash {(result.last_hash or '')[:16]}...)", highlight=False)
        return
    seq = f" (seq {result.first_bad_seq})" if result.first_bad_seq is not None else ""
    where = f"record at line {result.first_bad_line}{seq}" if result.first_bad_line else \
        f"segment{seq}"
    raise SkinError(f"{result.file or path}: {where} is broken: {result.reason}; the "
                    f"{result.records} records before it check out",
                    hint="Keep the files as evidence and investigate who changed them")


@app.command("keygen", help="Write a new Ed25519 key for signing rotation digests (mode 0600) "
             "and its public half (PATH.pub). Keep it outside the audit log's folder.")
@handle_errors
def keygen(path: Annotated[Path, typer.Argument(help="Where to write the private key.",
                                                dir_okay=False)]) -> None:
    """Make a signing key."""
    from skincli.clinical import auditsign

    pub = auditsign.keygen(path)
    ui.console.print(f"{path} (private, keep it secret) and {pub} (public)", highlight=False)


@app.command("rotate", help="Close the current audit segment now: it is kept compressed, its "
             "digest signed (key: --key or $SKIN_AUDIT_KEY), and a new segment opened.")
@handle_errors
def rotate(
    log: Annotated[Path | None, typer.Argument(
        help="The audit log (default: $SKIN_AUDIT_LOG or <runs-dir>/audit.jsonl).",
        show_default=False, dir_okay=False)] = None,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where runs live.",
                                           file_okay=False)] = Path("runs"),
    key: Annotated[Path | None, typer.Option("--key", help="The Ed25519 signing key.",
                                             dir_okay=False)] = None,
) -> None:
    """Rotate the audit log."""
    from skincli.clinical import audit

    path = log or audit.default_path(runs_dir)
    if key is None and not os.environ.get("SKIN_AUDIT_KEY"):
        raise SkinError("Rotation needs the signing key", hint="Pass --key or set "
                        "$SKIN_AUDIT_KEY (make one with `skin audit keygen PATH`)")
    digest = audit.AuditLog(path, signing_key=key).rotate()
    if digest is None:
        ui.console.print(f"{path}: nothing to rotate (empty)", highlight=False)
        return
    ui.console.print(f"{path}: segment {digest['segment']} closed as {digest['file']} "
                     f"({digest['count']} records, digest signed)", highlight=False)
