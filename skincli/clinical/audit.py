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

Rotation (`max_bytes`, or $SKIN_AUDIT_ROTATE_BYTES; `rotate()`) keeps one chain and one
sequence that never resets: the active file gets a closing record (last seq, last hash, count),
is kept as `<stem>.NNNNNN.jsonl.gz`, and the next file opens with a record holding the
previous hash and the closed file's SHA-256; each rotation appends an Ed25519-signed digest
chained to the one before (auditsign.py).

`verify` re-reads every segment and names the first record that does not check out. What it
cannot see: records cut from the end of the active file after the last rotation, or the
active file's records recomputed after its signed opening record (only the hash chain guards
them until the next rotation signs them).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import threading
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from skincli.clinical import auditsign
from skincli.errors import SkinError
from skincli.fsutil import atomic_path

GENESIS = auditsign.GENESIS
ROTATE_ENV = "SKIN_AUDIT_ROTATE_BYTES"
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


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 of the record's canonical JSON without its own hash."""
    return hashlib.sha256(auditsign.canonical(record, "hash")).hexdigest()


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
    """An append-only, hash-chained JSON-lines file that rotates into signed segments."""

    def __init__(self, path: str | os.PathLike[str], timeout_s: float = 10.0, *,
                 max_bytes: int | None = None, signing_key: str | os.PathLike[str] | None = None,
                 compress: bool = True) -> None:
        self.path = Path(path)
        self.timeout_s = float(timeout_s)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        env_max = os.environ.get(ROTATE_ENV)
        if max_bytes is None and env_max:
            try:
                max_bytes = int(env_max)
            except ValueError:
                raise SkinError(f"${ROTATE_ENV} must be a number of bytes, not {env_max!r}",
                                hint="e.g. 50000000 for about 50 MB per segment") from None
        self.max_bytes = max_bytes
        self.compress = compress
        self.key_path = auditsign.key_path(signing_key)
        self._key: Any = None
        if self.max_bytes is not None and self.key_path is None:
            raise SkinError("Audit log rotation needs a signing key",
                            hint=f"Set ${auditsign.KEY_ENV} to an Ed25519 key kept outside the "
                            "log folder (make one with `skin audit keygen PATH`)")
        if self.key_path is not None:
            auditsign.check_outside(self.key_path, self.path)

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
        return self._locked(lambda: self._append_locked(items), timeout_s)

    def rotate(self, timeout_s: float | None = None) -> dict[str, Any] | None:
        """Close the current segment now (its signed digest is returned; None if empty)."""
        def run() -> dict[str, Any] | None:
            last = self._last_record()
            return self._rotate_locked(last) if last is not None else None
        return self._locked(run, timeout_s)

    def _locked(self, fn: Any, timeout_s: float | None) -> Any:
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
                        return fn()
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

    def _last_record(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        with open(self.path, "rb") as f:
            last = _last_line(f)
        if not last:
            return None
        try:
            rec = json.loads(last)
            int(rec["seq"]), str(rec["hash"])
            return dict(rec)
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditUnavailable(
                f"The audit log {self.path} ends in a damaged record",
                hint="Run `skin audit verify` and keep the file for review; start a "
                "new log with --audit-log") from exc

    def _append_locked(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        last = self._last_record()
        if last is not None and (last.get("type") == "close" or (
                self.max_bytes is not None and self.path.stat().st_size >= self.max_bytes)):
            # A close record last means a rotation was cut short: finish it first.
            self._rotate_locked(last)
            last = self._last_record()
        prev, seq = (GENESIS, 0) if last is None else (str(last["hash"]), int(last["seq"]) + 1)
        out, lines = [], []
        for e in items:
            rec = {"seq": seq, **e, "prev": prev}
            rec["hash"] = record_hash(rec)
            prev, seq = rec["hash"], seq + 1
            out.append(rec)
            lines.append(auditsign.line(rec))
        self._write(b"".join(lines))
        return out

    def _write(self, data: bytes) -> None:
        with open(self.path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def _rotate_locked(self, last: dict[str, Any]) -> dict[str, Any]:
        """Close the active segment, keep it (gzip), sign its digest, open the next one.

        Every step can be redone: a crash leaves the close record last, and the next append
        finishes the rotation with the same bytes (no time in the open record, gzip mtime 0).
        """
        if self.key_path is None:
            raise SkinError("Audit log rotation needs a signing key",
                            hint=f"Set ${auditsign.KEY_ENV} (make one with `skin audit keygen`)")
        if self._key is None:
            self._key = auditsign.load_private(self.key_path)
        data = self.path.read_bytes()
        lines = data.splitlines()
        first = json.loads(lines[0])
        number = int(first["segment"]) if first.get("type") == "open" else 0
        if last.get("type") != "close":
            close = {"seq": int(last["seq"]) + 1, "type": "close", "segment": number,
                     "last_seq": int(last["seq"]), "last_hash": str(last["hash"]),
                     "count": len(lines) + 1, "prev": str(last["hash"])}
            close["hash"] = record_hash(close)
            self._write(auditsign.line(close))
            data += auditsign.line(close)
            last = close
        sha = hashlib.sha256(data).hexdigest()
        closed = auditsign.segment_path(self.path, number, self.compress)
        with atomic_path(closed) as tmp:
            if self.compress:
                with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb",
                                                           mtime=0) as gz:
                    gz.write(data)
            else:
                tmp.write_bytes(data)
        opening = {"seq": int(last["seq"]) + 1, "type": "open", "segment": number + 1,
                   "prev_segment_sha256": sha, "prev": str(last["hash"])}
        opening["hash"] = record_hash(opening)
        digests = auditsign.read_digests(self.path)
        if digests and digests[-1].get("segment") == number:
            digest = digests[-1]  # signed before an interrupted rotation
        else:
            digest = auditsign.sign(self._key, {
                "segment": number, "file": closed.name, "sha256": sha,
                "first_seq": int(first["seq"]), "last_seq": int(last["seq"]),
                "last_hash": str(last["hash"]), "count": int(last["count"]),
                "next_open_hash": opening["hash"],
                "prev_digest": auditsign.digest_hash(digests[-1]) if digests else GENESIS,
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds")})
            with open(auditsign.digests_path(self.path), "ab") as f:
                f.write(auditsign.line(digest))
                f.flush()
                os.fsync(f.fileno())
        with atomic_path(self.path) as tmp:
            tmp.write_bytes(auditsign.line(opening))
        return digest


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
    file: str | None = None
    segments: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return dict(self.__dict__)


class _Bad(Exception):
    """The first record (file, 1-based line, seq) that does not check out, and why."""

    def __init__(self, file: Path, line: int | None, seq: int | None, reason: str) -> None:
        super().__init__(reason)
        self.file, self.line, self.seq, self.reason = file, line, seq, reason


class _Walk:
    """The running state over every segment: the chain is one, across files."""

    def __init__(self) -> None:
        self.prev, self.seq, self.records = GENESIS, 0, 0

    def lines(self, file: Path, data: bytes, opening: str | None, closing: bool
              ) -> dict[str, Any] | None:
        """Check one segment's lines; return its last record. `opening`: the signed hash its
        first record must have; `closing`: whether it must end with its close record."""
        rec: dict[str, Any] | None = None
        count = 0
        for lineno, raw in enumerate(data.splitlines(keepends=True), start=1):
            reason, seq = _check_line(raw, self.prev, self.seq)
            if reason is None:
                rec = json.loads(raw)
                reason = _structure(rec, lineno, opening, closing, count)
            if reason is not None:
                raise _Bad(file, lineno, seq, reason)
            assert rec is not None
            self.prev, self.seq, count = rec["hash"], self.seq + 1, count + 1
            self.records += 1
        if opening is not None and count == 0:
            raise _Bad(file, 1, None, "the segment is empty: its signed opening record is gone")
        if closing and (rec is None or rec.get("type") != "close"):
            raise _Bad(file, count + 1, self.seq, "the segment ends without its closing "
                       "record (it was truncated)")
        return rec


def _structure(rec: dict[str, Any], lineno: int, opening: str | None, closing: bool,
               count: int) -> str | None:
    """Why a record that hashes right is still out of place (open/close rules), or None."""
    kind = rec.get("type")
    if lineno == 1 and opening is not None:
        if kind != "open" or rec["hash"] != opening:
            return ("the segment does not start with the opening record its signed digest "
                    "names (the segment was replaced or reordered)")
    elif kind == "open":
        return "an opening record in the middle of a segment"
    if kind == "close":
        if not closing:
            return "a closing record in the active segment"
        if rec.get("count") != count + 1 or rec.get("last_hash") != rec.get("prev"):
            return "its closing record's count or last hash does not match the segment"
    return None


def _read_segment(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise _Bad(path, None, None, f"the segment cannot be read ({exc})") from None


def verify(path: str | os.PathLike[str],
           key: str | os.PathLike[str] | None = None) -> Verification:
    """Check every record of every segment (rotated ones, gzip-compressed or not, then the
    active file) and the signed digests; name the first record that does not check out."""
    path = Path(path)
    found = auditsign.segments(path)
    digests = auditsign.read_digests(path)
    if not path.is_file() and not found:
        raise SkinError(f"No audit log at {path}",
                        hint="Pass the log file (default: runs/audit.jsonl)")
    walk = _Walk()
    try:
        if found or digests:
            kp = auditsign.key_path(key)
            if kp is None:
                raise SkinError(f"{path} has rotated segments: their signed digests need the "
                                "key to be checked", hint=f"Pass --key (or set "
                                f"${auditsign.KEY_ENV}) with the signing key or its .pub")
            reason = auditsign.check_digests(digests, auditsign.load_public(kp))
            if reason is not None:
                raise _Bad(auditsign.digests_path(path), None, None, reason)
        opening: str | None = None
        for number, d in enumerate(digests):
            files = found.pop(number, [])
            name = auditsign.segment_path(path, number, False).name
            if len(files) != 1:
                raise _Bad(path.with_name(name), None, d.get("first_seq"),
                           f"segment {number} is missing (its signed digest names it)"
                           if not files else f"segment {number} is kept twice")
            data = _read_segment(files[0])
            last = walk.lines(files[0], data, opening, closing=True)
            assert last is not None
            if hashlib.sha256(data).hexdigest() != d.get("sha256") or \
                    last["hash"] != d.get("last_hash"):
                raise _Bad(files[0], None, last["seq"], "the segment differs from its signed "
                           "digest (its records were recomputed, or the file replaced)")
            opening = d.get("next_open_hash")
        if found:
            number = min(found)
            raise _Bad(found[number][0], None, None,
                       f"segment {number} has no signed digest (it was not made by rotation)")
        if opening is not None and not path.is_file():
            raise _Bad(path, 1, walk.seq, "the active segment is missing")
        if path.is_file():
            walk.lines(path, path.read_bytes(), opening, closing=False)
    except _Bad as bad:
        return Verification(False, walk.records, bad.line, bad.seq, bad.reason, walk.prev,
                            str(bad.file), len(digests))
    return Verification(True, walk.records, last_hash=walk.prev, file=str(path),
                        segments=len(digests))


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
