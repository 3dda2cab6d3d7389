"""Optional API-key auth: SKIN_API_KEY and/or a keys file; keys compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from fastapi import Request

from skincli.errors import SkinError
from skincli.serve.errors import ApiError

HEADER = "X-API-Key"


def load_keys(api_key: str | None = None, keys_file: str | None = None) -> list[str]:
    """All accepted keys: the single key plus one per non-comment line of the keys file."""
    keys = [api_key.strip()] if api_key and api_key.strip() else []
    if keys_file:
        try:
            text = Path(keys_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise SkinError(f"Cannot read API keys file {keys_file}: {exc.strerror}",
                            hint="Pass a readable file with one key per line") from exc
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                keys.append(line)
        if not keys:
            raise SkinError(f"API keys file {keys_file} has no keys",
                            hint="Put one key per line (lines starting with # are comments)")
    return keys


class KeyChecker:
    """Checks the key a request presents against the configured keys."""

    def __init__(self, keys: list[str]) -> None:
        # Compare fixed-length digests so neither the key length nor its content leaks by time.
        self._digests = [hashlib.sha256(k.encode("utf-8")).digest() for k in keys]

    @property
    def enabled(self) -> bool:
        """True when at least one key is configured."""
        return bool(self._digests)

    def valid(self, presented: str | None) -> bool:
        """True if the presented key matches one configured key (constant-time per key)."""
        if not presented:
            return False
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        ok = False
        for known in self._digests:  # no early exit: time does not depend on which key matched
            ok |= hmac.compare_digest(digest, known)
        return ok

    def require(self, request: Request, *, always: bool = False) -> None:
        """Raise 401 unless the request carries a valid key (when keys are configured).

        With always=True (admin actions), refuse with 403 when no keys are configured at all.
        """
        if not self.enabled:
            if always:
                raise ApiError("forbidden", "This action needs an API key, and the server has "
                               "none configured; set SKIN_API_KEY or --api-keys-file")
            return
        if not self.valid(presented_key(request)):
            raise ApiError("unauthorized", f"Missing or wrong API key; send it in the {HEADER} "
                           "header or as 'Authorization: Bearer <key>'",
                           headers={"WWW-Authenticate": 'Bearer realm="skin"'})


def presented_key(request: Request) -> str | None:
    """The key from X-API-Key or an Authorization: Bearer header."""
    key = request.headers.get(HEADER)
    if key:
        return key.strip()
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None
