"""The audit log's rotation digests: one signed line per closed segment, chained.

A plain hash chain can be recomputed by anyone who can write the log folder, so each rotation
also appends a digest to `<stem>.digests.jsonl`: the closed segment's number, file name,
SHA-256 (of its uncompressed bytes), first and last seq, last hash, record count, the hash of
the next segment's opening record, and the previous digest's hash; signed with an Ed25519 key
that lives outside the log folder (`SKIN_AUDIT_KEY` or `signing_key=`). `skin audit verify`
checks the signatures with the public half (`--key`, a private or public PEM).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from skincli.errors import SkinError

GENESIS = "0" * 64
KEY_ENV = "SKIN_AUDIT_KEY"


def canonical(record: dict[str, Any], drop: str) -> bytes:
    """The canonical JSON of a record without the field `drop` (its own hash or signature)."""
    body = {k: v for k, v in record.items() if k != drop}
    return json.dumps(body, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def line(record: dict[str, Any]) -> bytes:
    """One JSON line as written to the log."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8") + b"\n"


# --- files -----------------------------------------------------------------------------------

def digests_path(log: Path) -> Path:
    """Where the signed digests of `log`'s closed segments live."""
    return log.with_name(f"{log.stem}.digests.jsonl")


def segment_path(log: Path, number: int, compress: bool) -> Path:
    """The file a closed segment is kept in: <stem>.<number:06d><suffix>[.gz]."""
    return log.with_name(f"{log.stem}.{number:06d}{log.suffix}" + (".gz" if compress else ""))


def segments(log: Path) -> dict[int, list[Path]]:
    """The closed segments beside `log`, by number (a number may wrongly have two files)."""
    pattern = re.compile(re.escape(log.stem) + r"\.(\d{6})" + re.escape(log.suffix)
                         + r"(\.gz)?$")
    found: dict[int, list[Path]] = {}
    if not log.parent.is_dir():
        return found
    for p in sorted(log.parent.iterdir()):
        m = pattern.match(p.name)
        if m:
            found.setdefault(int(m.group(1)), []).append(p)
    return found


# --- keys ------------------------------------------------------------------------------------

def _read_pem(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SkinError(f"Cannot read the audit signing key {path}: {exc.strerror or exc}",
                        hint=f"Pass an Ed25519 PEM key file (or set ${KEY_ENV}); make one "
                        "with `skin audit keygen PATH`") from None


def key_path(given: str | os.PathLike[str] | None) -> Path | None:
    """The signing key's path: the one given, else $SKIN_AUDIT_KEY, else None."""
    value = given if given is not None else os.environ.get(KEY_ENV)
    return Path(value) if value else None


def check_outside(key: Path, log: Path) -> None:
    """Refuse a key inside the log folder: whoever can write the log could then re-sign it."""
    folder = log.parent.resolve()
    where = key.resolve()
    if folder == where.parent or folder in where.parents:
        raise SkinError(f"The audit signing key {key} is inside the audit log's folder "
                        f"{log.parent}", hint="Keep the key elsewhere (e.g. a secrets mount)")


def load_private(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file (one line error otherwise; no key material)."""
    try:
        key = serialization.load_pem_private_key(_read_pem(path), password=None)
    except (ValueError, TypeError):
        raise SkinError(f"{path} is not an unencrypted PEM private key",
                        hint="Make one with `skin audit keygen PATH`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SkinError(f"{path} is not an Ed25519 key", hint="Make one with "
                        "`skin audit keygen PATH`")
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    """The public half from a PEM file holding either the private or the public key."""
    raw = _read_pem(path)
    if b"PRIVATE KEY" in raw:
        return load_private(path).public_key()
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, TypeError):
        raise SkinError(f"{path} is not a PEM public key", hint="Pass the key the log was "
                        "signed with (private or public PEM)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SkinError(f"{path} is not an Ed25519 key", hint="Pass the key the log was "
                        "signed with")
    return key


def key_id(public: Ed25519PublicKey) -> str:
    """A short fingerprint of a public key (names the key in each digest)."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519-" + hashlib.sha256(raw).hexdigest()[:16]


def keygen(path: Path) -> Path:
    """Write a new Ed25519 private key (mode 0600) and its public half beside it (.pub)."""
    if path.exists():
        raise SkinError(f"{path} already exists", hint="Choose another path; an existing key "
                        "is never overwritten")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub = path.with_name(path.name + ".pub")
    pub.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return pub


# --- digests ---------------------------------------------------------------------------------

def digest_hash(digest: dict[str, Any]) -> str:
    """The hash the next digest chains to (over the whole digest, signature included)."""
    return hashlib.sha256(canonical(digest, drop="")).hexdigest()


def sign(key: Ed25519PrivateKey, digest: dict[str, Any]) -> dict[str, Any]:
    """The digest with its key id and signature."""
    out = {**digest, "key_id": key_id(key.public_key())}
    out["signature"] = base64.b64encode(key.sign(canonical(out, "signature"))).decode()
    return out


def read_digests(log: Path) -> list[dict[str, Any]]:
    """Every digest line (an unreadable line is returned as {} so verify can name it)."""
    path = digests_path(log)
    if not path.is_file():
        return []
    out = []
    for raw in path.read_bytes().splitlines():
        try:
            d = json.loads(raw)
        except ValueError:
            d = {}
        out.append(d if isinstance(d, dict) else {})
    return out


def last_digest_hash(log: Path) -> str:
    """The hash the next digest chains to (GENESIS when none)."""
    found = read_digests(log)
    return digest_hash(found[-1]) if found else GENESIS


def check_digests(digests: list[dict[str, Any]], public: Ed25519PublicKey) -> str | None:
    """Why the digest chain does not check out (signature, link, numbering), or None."""
    prev = GENESIS
    for i, d in enumerate(digests):
        where = f"digest {i + 1} of {len(digests)}"
        try:
            public.verify(base64.b64decode(d["signature"]), canonical(d, "signature"))
        except (KeyError, ValueError, TypeError, InvalidSignature):
            return f"{where}: its signature does not verify with the given key"
        if d.get("prev_digest") != prev:
            return f"{where}: it does not chain to the digest before it (one was removed)"
        if d.get("segment") != i:
            return f"{where}: it names segment {d.get('segment')!r}, expected {i}"
        prev = digest_hash(d)
    return None
