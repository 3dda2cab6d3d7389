"""Server settings: one table of defaults, read from SKIN_* environment variables.

The CLI overrides the environment; the environment overrides the defaults. Because Uvicorn
starts each worker process with the app factory, the CLI passes its choices to the workers by
writing them back into the environment (`Settings.to_env`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skincli.errors import SkinError
from skincli.imageio import DEFAULT_MAX_PIXELS

ENV_PREFIX = "SKIN_"


@dataclass
class Settings:
    """Everything `skin serve` can be told. Each field is also the env var SKIN_<FIELD>."""

    run: str | None = None  # run name or folder; None = runs/CURRENT, else the latest run
    runs_dir: str = "runs"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1  # one model copy per worker process; on 2 cores 1 is fastest
    max_batch: int = 16  # largest batch the micro-batcher runs in one forward pass
    batch_window_ms: float = 5.0  # how long a batch waits for more requests once one is in
    queue_size: int = 64  # queued images beyond this get 503 + Retry-After
    timeout_s: float = 30.0  # per-request budget from arrival to answer (504 past it)
    max_upload_mb: float = 20.0  # per image and per single-image request body (413)
    max_pixels: int = DEFAULT_MAX_PIXELS  # ceiling on an upload's pixels (large originals)
    decode_mpx: float = 64.0  # megapixels being decoded at once, all requests together
    decode_wait_s: float = 2.0  # how long a decode waits for room in decode_mpx (then 503)
    max_files: int = 16  # images per /v1/predict/batch request
    top_k: int = 3  # default number of classes returned
    tta: bool = False  # test-time augmentation (8 views): 8x the compute per image
    cors_origins: list[str] = field(default_factory=list)  # empty = CORS off
    api_key: str | None = None  # one key (prefer SKIN_API_KEY to a command-line flag)
    api_keys_file: str | None = None  # one key per line, '#' comments
    store: str | None = None  # prediction-log URL for `skin monitor`; None = store default
    no_log: bool = False  # do not log predictions at all
    log_queue_size: int = 1000  # log rows waiting for the store; more are dropped and counted
    audit_log: str | None = None  # hash-chained audit log; None = <runs_dir>/audit.jsonl
    warmup: bool = True  # run one forward pass at start so the first request is not slow
    max_connections: int = 2048  # open connections; beyond, the oldest idle one is closed
    max_requests: int = 256  # requests being handled at once; beyond, 503 + Retry-After
    header_timeout_s: float = 10.0  # to receive a request's head (line + headers); 408/close
    body_timeout_s: float = 30.0  # to receive a request's body once its head is in; 408
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this
    log_flush_s: float = 10.0  # at shutdown, wait this long for the store, then spool rows
    journal: str | None = None  # spool of unstored rows; None: <runs_dir>/predictions.journal.jsonl
    journal_mb: float = 256.0  # bound on the local journal of rows the store could not take
    decision: str = "balanced"  # decision rule: balanced, prevalence, macro-f1 (docs/decisions.md)
    prevalence: str | None = None  # class-prior file for the prevalence rule (YAML or CSV)
    rate_limit: str | None = None  # per API key (else client address) and worker: "60/minute"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then SKIN_* variables, then explicit overrides (those not None)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, raw, f.type)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse values that cannot work, naming the setting."""
        checks = [
            (self.port, 0, 65535, "port"), (self.workers, 1, 64, "workers"),
            (self.max_batch, 1, 1024, "max_batch"), (self.queue_size, 1, 100_000, "queue_size"),
            (self.max_files, 1, 1024, "max_files"), (self.top_k, 1, 1000, "top_k"),
            (self.log_queue_size, 1, 10_000_000, "log_queue_size"),
            (self.max_pixels, 1, 10**10, "max_pixels"),
            (self.max_connections, 1, 1_000_000, "max_connections"),
            (self.max_requests, 1, 1_000_000, "max_requests"),
        ]
        for value, low, high, name in checks:
            if not low <= value <= high:
                raise SkinError(f"{_label(name)} {value} is out of range",
                                hint=f"Use a value from {low} to {high}")
        for value, name in ((self.batch_window_ms, "batch_window_ms"),
                            (self.timeout_s, "timeout_s"), (self.max_upload_mb, "max_upload_mb"),
                            (self.decode_mpx, "decode_mpx"), (self.decode_wait_s, "decode_wait_s"),
                            (self.header_timeout_s, "header_timeout_s"),
                            (self.body_timeout_s, "body_timeout_s"),
                            (self.keep_alive_s, "keep_alive_s"), (self.log_flush_s, "log_flush_s"),
                            (self.journal_mb, "journal_mb")):
            zero_ok = name in ("batch_window_ms", "decode_wait_s", "log_flush_s")
            if not value >= 0 or (not zero_ok and value == 0):
                kind = "0 or more" if zero_ok else "positive"
                raise SkinError(f"{_label(name)} {value} is not valid: it must be {kind}")
        if self.rate_limit is not None:
            from skincli.serve.ratelimit import parse_rate

            self.rate_limit = str(parse_rate(self.rate_limit))
        from skincli.decision import check_rule

        self.decision = check_rule(self.decision)
        if self.prevalence is not None and self.decision != "prevalence":
            raise SkinError(f"{_label('prevalence')} applies to the prevalence decision rule, "
                            f"not {self.decision}", hint="Add --decision prevalence")
        if self.prevalence is not None and not Path(self.prevalence).is_file():
            raise SkinError(f"Prevalence file {self.prevalence} does not exist",
                            hint="Pass a YAML or CSV file of class: prevalence")
        if self.api_keys_file and not Path(self.api_keys_file).is_file():
            raise SkinError(f"API keys file {self.api_keys_file} does not exist",
                            hint="Pass a file with one key per line")

    @property
    def max_upload_bytes(self) -> int:
        """The upload limit in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)

    def to_env(self) -> dict[str, str]:
        """SKIN_* variables that reproduce these settings in a worker process."""
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool):
                text = "1" if value else "0"
            elif isinstance(value, list):
                text = ",".join(value)
            else:
                text = str(value)
            out[ENV_PREFIX + f.name.upper()] = text
        return out

    def public(self) -> dict[str, Any]:
        """The settings a client may see (no keys, no file paths)."""
        return {"max_batch": self.max_batch, "batch_window_ms": self.batch_window_ms,
                "queue_size": self.queue_size, "timeout_s": self.timeout_s,
                "max_upload_mb": self.max_upload_mb, "max_pixels": self.max_pixels,
                "max_files": self.max_files, "top_k": self.top_k, "tta": self.tta,
                "decode_mpx": self.decode_mpx, "max_connections": self.max_connections,
                "max_requests": self.max_requests, "header_timeout_s": self.header_timeout_s,
                "body_timeout_s": self.body_timeout_s, "keep_alive_s": self.keep_alive_s,
                "prediction_log": not self.no_log, "decision": self.decision,
                "rate_limit": self.rate_limit}


# Settings that `skin serve` also takes as options (the others exist only as SKIN_* variables).
_CLI_OPTIONS = {"host", "port", "workers", "max_batch", "batch_window_ms", "max_upload_mb",
                "max_pixels", "max_files", "timeout_s", "queue_size", "api_keys_file", "store",
                "tta", "runs_dir", "decode_mpx", "max_connections", "max_requests",
                "header_timeout_s", "body_timeout_s", "keep_alive_s", "log_flush_s", "decision",
                "prevalence", "rate_limit"}


def _label(name: str) -> str:
    """How the user set it: '--max-batch (SKIN_MAX_BATCH)', or just the variable."""
    env = ENV_PREFIX + name.upper()
    return f"--{name.replace('_', '-')} ({env})" if name in _CLI_OPTIONS else env


def _parse(name: str, raw: str, kind: Any) -> Any:
    """Parse one SKIN_* variable by the field's declared type, with a clear error."""
    kind = str(kind)
    try:
        if kind.startswith("bool"):
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("list"):
            return [part.strip() for part in raw.split(",") if part.strip()]
    except ValueError:
        raise SkinError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind}",
                        hint="Fix or unset the environment variable") from None
    return raw


def describe() -> list[tuple[str, str, str]]:
    """(env var, default, meaning) for every setting, for docs and --help."""
    rows = []
    defaults = Settings()
    for f in dataclasses.fields(Settings):
        rows.append((ENV_PREFIX + f.name.upper(), repr(getattr(defaults, f.name)), f.name))
    return rows
