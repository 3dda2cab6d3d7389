"""`skin serve`: the REST API and the clinician page, on Uvicorn."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from skincli import ui
from skincli.cli.common import handle_errors
from skincli.errors import SkinError

if TYPE_CHECKING:
    from skincli.serve.settings import Settings

HELP = ("Serve a trained run over HTTP: POST /v1/predict, /v1/predict/batch, /v1/explain, "
        "GET /v1/model, /health, /ready, /metrics, and a web page at /. Every option can also "
        "be set as SKIN_<OPTION> in the environment (e.g. SKIN_PORT=9000, SKIN_API_KEY=...).")

def check_listen(host: str, port: int) -> None:
    """Bind host:port once and let go, so a busy port or a wrong address is one clear line
    now instead of a server log after the model has loaded."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SkinError(f"Cannot listen on --host {host}: {exc.strerror}",
                        hint="Pass an address of this machine, e.g. 127.0.0.1 or 0.0.0.0") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # Uvicorn sets SO_REUSEADDR too: a port left in TIME_WAIT is free for it, and for us.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise SkinError(f"Port {port} on {host} is already in use",
                                hint=f"Stop the program using it or pass another --port, "
                                f"e.g. --port {port + 1 if port < 65535 else 8000}") from None
            if exc.errno == errno.EACCES:
                raise SkinError(f"Not allowed to listen on port {port}",
                                hint="Ports below 1024 need administrator rights; use e.g. "
                                "--port 8000") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise SkinError(f"--host {host} is not an address of this machine",
                                hint="Use 127.0.0.1 (this machine only) or 0.0.0.0 (every "
                                "interface)") from None
            raise SkinError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}",
                            hint="Check --host and --port") from None


# File descriptors kept free beyond the connections: model files, the store, logs, threads.
_FD_RESERVE = 256


def fit_open_files(max_connections: int) -> int:
    """Raise this process's open-file limit to fit max_connections (up to the hard limit);
    if it cannot, lower max_connections to fit, with a warning. Returns the cap to use.

    Past the limit, accept() fails and asyncio logs a traceback per attempt; below it, the
    connection cap closes idle connections first and nothing fails."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + _FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < want:
        fitted = max(1, soft - _FD_RESERVE)
        ui.warn(f"--max-connections {max_connections} does not fit the open-file limit "
                f"({soft}); using {fitted} (raise it with `ulimit -n`)")
        return fitted
    return max_connections


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _loaded_target(settings: Settings) -> Any:
    """What Uvicorn runs, once the model is known to load: the app itself for one worker, the
    factory's import string for several (each worker loads its own copy)."""
    if settings.workers == 1:
        from skincli.serve.app import create_app

        # One process: load the model here so a run that cannot be loaded is one error line
        # (inside Uvicorn's startup it would be a traceback), and serve this very app.
        app = create_app(settings)
        with ui.err_console.status("Loading the model..."):
            app.state.skin.preload()
        return app
    from skincli.serve.model import load_model

    # Check once here that the run can be loaded at all.
    with ui.err_console.status("Checking that the model loads..."):
        load_model(settings)
    return "skincli.serve.app:create_app"


@handle_errors
def command(
    run: Annotated[str | None, typer.Argument(
        help="Run name or folder (default: runs/CURRENT, else the latest run).")] = None,
    host: Annotated[str | None, typer.Option(
        help="Address to listen on (default 127.0.0.1; 0.0.0.0 for every interface).")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (default 8000).")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Worker processes, each with its own model copy (default 1).")] = None,
    max_batch: Annotated[int | None, typer.Option(
        help="Largest micro-batch per forward pass (default 16).")] = None,
    batch_window_ms: Annotated[float | None, typer.Option(
        help="How long a batch waits for more images that are on their way (default 5).")] = None,
    max_upload_mb: Annotated[float | None, typer.Option(
        help="Largest image upload in MB; bigger gets 413 (default 20).")] = None,
    max_pixels: Annotated[int | None, typer.Option(
        help="Largest decoded image in pixels; bigger gets 413 (default 50000000).")] = None,
    max_files: Annotated[int | None, typer.Option(
        help="Images per /v1/predict/batch request (default 16).")] = None,
    timeout_s: Annotated[float | None, typer.Option(
        help="Per-request time budget; past it 504 (default 30).")] = None,
    queue_size: Annotated[int | None, typer.Option(
        help="Images waiting for the model; more get 503 + Retry-After (default 64).")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option(
        help="Allow browser calls from this origin (repeat; default: CORS off).")] = None,
    api_keys_file: Annotated[Path | None, typer.Option(
        help="File with one API key per line; /v1/* then needs X-API-Key (or set "
             "SKIN_API_KEY).", dir_okay=False)] = None,
    store: Annotated[str | None, typer.Option(
        help="Prediction log for `skin monitor` (sqlite:///runs/predictions.db or a "
             "SQLAlchemy URL) (default: $SKIN_STORE or runs/predictions.db).")] = None,
    log: Annotated[bool | None, typer.Option(
        "--log/--no-log", help="Log each prediction (hash of the image, never the image) "
        "(default --log).")] = None,
    tta: Annotated[bool | None, typer.Option(
        "--tta/--no-tta", help="Average the 8 flips/rotations (8x compute) (default off).")
    ] = None,
    runs_dir: Annotated[str | None, typer.Option(help="Folder of runs (default runs).")] = None,
    decode_mpx: Annotated[float | None, typer.Option(
        help="Megapixels being decoded at once over all requests; beyond, a short wait then "
             "503 (default 64).")] = None,
    max_connections: Annotated[int | None, typer.Option(
        help="Open connections; at the cap the longest-idle one is closed (default 2048).")
    ] = None,
    max_requests: Annotated[int | None, typer.Option(
        help="Requests handled at once; more get 503 + Retry-After (default 256).")] = None,
    header_timeout_s: Annotated[float | None, typer.Option(
        help="Deadline to receive a request's head; past it 408 and close (default 10).")
    ] = None,
    body_timeout_s: Annotated[float | None, typer.Option(
        help="Deadline to receive a request's body; past it 408 (default 30).")] = None,
    keep_alive_s: Annotated[float | None, typer.Option(
        help="Idle keep-alive connections are closed after this (default 5).")] = None,
    log_flush_s: Annotated[float | None, typer.Option(
        help="At shutdown, how long to wait for the prediction store before spooling the "
             "remaining rows to runs/predictions.journal.jsonl (default 10).")] = None,
    decision: Annotated[str | None, typer.Option(
        help="Decision rule: balanced (default), prevalence (re-weighted to the training prior "
        "or --prevalence), macro-f1 (offsets fitted on validation). See docs/decisions.md.")
    ] = None,
    prevalence: Annotated[Path | None, typer.Option(
        help="With --decision prevalence: the clinic's class prior (YAML or CSV), e.g. from "
        "`skin monitor --suggest-prevalence`.", dir_okay=False)] = None,
    rate_limit: Annotated[str | None, typer.Option(
        help="Requests to /v1/* per API key (per client address without keys) and worker, "
        "e.g. 60/minute; beyond it 429 + Retry-After (default: no limit).")] = None,
    engine: Annotated[str | None, typer.Option(
        help="Inference engine: litert or tf (default: $SKIN_ENGINE, else litert; runs that "
        "do not convert use tf).")] = None,
) -> None:
    """Start Uvicorn with the app factory; the model loads and warms once per worker."""
    from skincli.engines.base import ENGINE_ENV, resolve_engine_name

    if engine is not None:  # workers read it from the environment, like every SKIN_* setting
        os.environ[ENGINE_ENV] = resolve_engine_name(engine)
    from skincli.runs import check_model_file, load_run_info, resolve_run
    from skincli.serve.auth import load_keys
    from skincli.serve.settings import Settings

    settings = Settings.from_env(
        run=run, host=host, port=port, workers=workers, max_batch=max_batch,
        batch_window_ms=batch_window_ms, max_upload_mb=max_upload_mb, max_pixels=max_pixels,
        max_files=max_files, timeout_s=timeout_s, queue_size=queue_size,
        cors_origins=list(cors_origin) if cors_origin else None,
        api_keys_file=str(api_keys_file) if api_keys_file else None, store=store,
        no_log=None if log is None else not log, tta=tta, runs_dir=runs_dir,
        decode_mpx=decode_mpx, max_connections=max_connections, max_requests=max_requests,
        header_timeout_s=header_timeout_s, body_timeout_s=body_timeout_s,
        keep_alive_s=keep_alive_s, log_flush_s=log_flush_s,
        decision=decision, prevalence=str(prevalence) if prevalence else None,
        rate_limit=rate_limit)
    # Fail here, in one line, rather than inside a worker process.
    run_dir = resolve_run(settings.run, settings.runs_dir)
    info = load_run_info(run_dir)
    check_model_file(run_dir)
    keys = load_keys(settings.api_key, settings.api_keys_file)
    check_listen(settings.host, settings.port)
    settings.max_connections = fit_open_files(settings.max_connections)
    if not keys and not _is_loopback(settings.host):
        ui.warn(f"listening on {settings.host} without API keys: anyone who can reach it can "
                "use it (set SKIN_API_KEY or --api-keys-file)")
    try:
        import uvicorn
    except ImportError as exc:
        raise SkinError("uvicorn is not installed", hint="pip install uvicorn") from exc
    target = _loaded_target(settings)
    os.environ.update(settings.to_env())  # the factory in each worker reads these
    ui.err_console.print(
        f"Serving [bold]{info.version}[/] ({info.arch}, {len(info.classes)} classes) on "
        f"http://{settings.host}:{settings.port}/ with {settings.workers} worker(s); "
        f"API keys {'on' if keys else 'off'}, CORS "
        f"{', '.join(settings.cors_origins) if settings.cors_origins else 'off'}, "
        f"prediction log {'off' if settings.no_log else 'on'}, decision rule "
        f"{settings.decision}, rate limit {settings.rate_limit or 'off'}.", highlight=False)
    # The protocol class adds the request head/body deadlines and the connection cap that
    # Uvicorn lacks (see skincli/serve/protocol.py); the request cap is the app's (JSON 503).
    uvicorn.run(target, factory=settings.workers > 1, host=settings.host,
                port=settings.port, workers=settings.workers, access_log=False,
                log_level="info", timeout_graceful_shutdown=int(settings.timeout_s) + 5,
                server_header=False, http="skincli.serve.protocol:GuardedH11Protocol",
                timeout_keep_alive=max(1, round(settings.keep_alive_s)),
                backlog=min(2048, settings.max_connections))

