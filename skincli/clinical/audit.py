"""The audit trail: an append-only log of every prediction, each record chained by hash.

One JSON object per line (UTF-8, sorted keys), with:
  seq, time (UTC ISO 8601), request_id, caller (the API-key id "key-<12 hex of its SHA-256>",
  "anonymous", or "cli"), source (api | cli), model_version, image_sha256, result (label,
  probability, uncertain), triage (score, threshold, decision) or null,
  prev (the previous record's hash; 64 zeros for the first) and hash = SHA-256 of the
  record's canonical JSON without "hash".
Nothing identifying is stored: no file name, no DICOM attribute, no key, no image.

Appends are serialised across threads and processes (an exclusive `flock` on a lock file
beside the log): the last hash is read and the new line written and fsync-ed under the lock,
so concurrent writers cannot fork the chain. A writer that cannot take the lock within its
`timeout` gets AuditUnavailable: the caller refuses the request instead of answering
without a record (the API returns 503 `audit_unavailable`; the CLI exits with an error).

`verify` re-reads the chain and names the first record that does not check out.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from skincli.errors import SkinError

GENESIS = "0" * 64
DEFAULT_NAME = "audit.jsonl"
_THREAD_LOCK = threading.Lock()
# The fields a record may hold (anything else given to `entry` is a bug, refused).
FIELDS = ("time", "request_id", "caller", "source", "model_version", "image_sha256",
          "result", "triage")


class AuditUnavailable(SkinError):
    """The audit record could not be written: the prediction must not be released."""


def key_id(key: str | None) -> str:
    """The caller id for an API key: a short SHA-256 fingerprint, never the key itself."""
    if not key:
        return "anonymous"
    return "key-" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def entry(*, request_id: str, caller: str, source: str, model_version: str,
          image_sha256: str, prediction: dict[str, Any]) -> dict[str, Any]:
    """One record's content from a prediction dict (label, probability, uncertain, triage)."""
    triage = prediction.get("triage")
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "request_id": str(request_id), "caller": str(caller), "source": str(source),
        "model_version": str(model_version), "image_sha256": str(image_sha256),
        "result": {"label": prediction["label"],
                   "probability": round(float(prediction["probability"]), 6),
                   "uncertain": bool(prediction["uncertain"])},
        "triage": None if not triage else {
            "malignancy_score": triage["malignancy_score"], "threshold": triage["threshold"],
            "decision": triage["decision"]},
    }


def _canonical(record: dict[str, Any]) -> bytes:
    body = {k: v for k, v in record.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 of the record's canonical JSON without its own hash."""
    return hashlib.sha256(_canonical(record)).hexdigest()


def _last_line(f: Any) -> bytes:
    """The last non-empty line of an open binary file (read backwards, in blocks)."""
    f.seek(0, os.SEEK_END)
    end = f.tell()
    buf = b""
    pos = end
    while pos > 0:
        step = min(4096, pos)
        pos -= step
        f.seek(pos)
        buf = f.read(step) + buf
        stripped = buf.rstrip(b"\n")
        if b"\n" in stripped:
            return stripped.rsplit(b"\n", 1)[1]
    return buf.rstrip(b"\n")


class AuditLog:
    """An append-only, hash-chained JSON-lines file."""

    def __init__(self, path: str | os.PathLike[str], timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.timeout_s = float(timeout_s)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    def append(self, entries: Iterable[dict[str, Any]], timeout_s: float | None = None
               ) -> list[dict[str, Any]]:
        """Chain and write records (all or none, fsync-ed); AuditUnavailable on failure."""
        items = [dict(e) for e in entries]
        for e in items:
            extra = set(e) - set(FIELDS)
            if extra:
                raise ValueError(f"audit record fields not allowed: {sorted(extra)}")
        if not items:
            return []
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not _THREAD_LOCK.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise AuditUnavailable("The audit log is busy; the prediction was not released",
                                       hint="Retry shortly")
            try:
                with open(self.lock_path, "a+b") as lock:
                    _flock(lock, deadline)
                    try:
                        return self._append_locked(items)
                    finally:
                        _funlock(lock)
            finally:
                _THREAD_LOCK.release()
        except AuditUnavailable:
            raise
        except OSError as exc:
            raise AuditUnavailable(f"Cannot write the audit log {self.path}: "
                                   f"{exc.strerror or exc}",
                                   hint="Check the disk and the folder's permissions") from exc

    def _append_locked(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        with open(self.path, "a+b") as f:
            last = _last_line(f)
            if last:
                try:
                    prev_rec = json.loads(last)
                    prev, seq = str(prev_rec["hash"]), int(prev_rec["seq"]) + 1
                except (ValueError, KeyError, TypeError) as exc:
                    raise AuditUnavailable(
                        f"The audit log {self.path} ends in a damaged record",
                        hint="Run `skin audit verify` and keep the file for review; start a "
                        "new log with --audit-log") from exc
            else:
                prev, seq = GENESIS, 0
            out, lines = [], []
            for e in items:
                rec = {"seq": seq, **e, "prev": prev}
                rec["hash"] = record_hash(rec)
                prev, seq = rec["hash"], seq + 1
                out.append(rec)
                lines.append(json.dumps(rec, sort_keys=True, separators=(",", ":"),
                                        ensure_ascii=False).encode("utf-8") + b"\n")
            f.seek(0, os.SEEK_END)
            f.write(b"".join(lines))
            f.flush()
            os.fsync(f.fileno())
        return out


def _flock(f: Any, deadline: float) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: the thread lock alone (one process)
        return
    while True:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise AuditUnavailable("The audit log is busy (locked by another process); "
                                       "the prediction was not released",
                                       hint="Retry shortly") from None
            time.sleep(0.005)


def _funlock(f: Any) -> None:
    try:
        import fcntl

        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    except ImportError:
        pass


@dataclass
class Verification:
    """The outcome of `verify`."""

    ok: bool
    records: int
    first_bad_line: int | None = None
    first_bad_seq: int | None = None
    reason: str | None = None
    last_hash: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return dict(self.__dict__)


def verify(path: str | os.PathLike[str]) -> Verification:
    """Check every record's hash and link; name the first broken one (1-based line)."""
    path = Path(path)
    if not path.is_file():
        raise SkinError(f"No audit log at {path}",
                        hint="Pass the log file (default: runs/audit.jsonl)")
    prev, expected_seq, n = GENESIS, 0, 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            reason, seq = _check_line(raw, prev, expected_seq)
            if reason is not None:
                return Verification(False, n, lineno, seq, reason, prev)
            prev, expected_seq, n = json.loads(raw)["hash"], expected_seq + 1, n + 1
    return Verification(True, n, last_hash=prev)


def _check_line(raw: bytes, prev: str, expected_seq: int) -> tuple[str | None, int | None]:
    """(why the line is broken, its seq) or (None, seq) when it checks out."""
    if not raw.endswith(b"\n"):
        return "the last record is cut off (no end of line)", None
    try:
        rec = json.loads(raw)
    except ValueError:
        return "not valid JSON", None
    if not isinstance(rec, dict) or "hash" not in rec:
        return "not an audit record", None
    seq = rec.get("seq")
    if seq != expected_seq:
        return f"sequence number {seq!r}, expected {expected_seq}", None
    if rec.get("prev") != prev:
        return ("its 'prev' does not match the previous record's hash (a record was removed, "
                "inserted or reordered)"), seq
    if record_hash(rec) != rec["hash"]:
        return "its content does not match its hash (the record was changed)", seq
    return None, seq


def default_path(runs_dir: str | os.PathLike[str] = "runs") -> Path:
    """Where the log lives unless told otherwise: <runs_dir>/audit.jsonl (or $SKIN_AUDIT_LOG)."""
    env = os.environ.get("SKIN_AUDIT_LOG")
    return Path(env) if env else Path(runs_dir) / DEFAULT_NAME
