"""SMART Backend Services: an access token for a FHIR server, system to system.

OAuth2 client credentials with a signed JWT client assertion (RS384 or ES384; header `kid`;
claims iss = sub = client_id, aud = the token URL, exp at most 5 minutes ahead, a unique jti).
The token is cached until shortly before it expires; `refresh()` (called by the outbound
client after a 401) drops it so the next call fetches a new one. Neither the key, the assertion
nor the token is ever put in a message or a log line.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from skincli.clinical.outbound import Endpoint, Outbound, OutboundError
from skincli.errors import SkinError

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_LIFETIME_S = 300  # SMART: the assertion's exp no more than five minutes ahead


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def load_key(path: Path, alg: str) -> Any:
    """The private key for `alg` (RS384: RSA, ES384: EC P-384), one line error otherwise."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise SkinError(f"Cannot read the SMART private key {path}: {exc.strerror or exc}",
                        hint="Check the path in the clinical configuration") from None
    except (ValueError, TypeError):
        raise SkinError(f"{path} is not an unencrypted PEM private key",
                        hint="Use an RSA (RS384) or P-384 EC (ES384) key") from None
    want = rsa.RSAPrivateKey if alg == "RS384" else ec.EllipticCurvePrivateKey
    if alg not in ("RS384", "ES384") or not isinstance(key, want):
        raise SkinError(f"{path} does not fit alg {alg}",
                        hint="RS384 needs an RSA key, ES384 a P-384 EC key")
    return key


def client_assertion(key: Any, alg: str, kid: str, client_id: str, token_url: str,
                     lifetime_s: int = MAX_LIFETIME_S) -> str:
    """A signed JWT (compact form) asserting the client's identity to the token endpoint."""
    now = int(time.time())
    header = {"alg": alg, "kid": kid, "typ": "JWT"}
    claims = {"iss": client_id, "sub": client_id, "aud": token_url, "iat": now,
              "exp": now + min(int(lifetime_s), MAX_LIFETIME_S), "jti": uuid.uuid4().hex}
    signing_input = (_b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
                     + _b64url(json.dumps(claims, separators=(",", ":")).encode()))
    if alg == "RS384":
        sig = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA384())
    else:  # ES384: JWS wants r || s, 48 bytes each, not DER
        r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA384())))
        sig = r.to_bytes(48, "big") + s.to_bytes(48, "big")
    return signing_input + "." + _b64url(sig)


class SmartBackendAuth:
    """Bearer headers from a SMART Backend Services token, cached and refreshed on demand."""

    def __init__(self, *, token_url: str, client_id: str, key_path: Path, kid: str,
                 scope: str = "system/*.write", alg: str = "RS384") -> None:
        self.token_url, self.client_id, self.kid = token_url, client_id, kid
        self.scope, self.alg, self.key_path = scope, alg, key_path
        self._key: Any = None
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()
        self.fetched = 0  # how many tokens were fetched (tests, metrics)
        self.allow_loopback = False
        self.allow_private = True

    def __repr__(self) -> str:
        return f"SmartBackendAuth(client_id={self.client_id!r}, kid={self.kid!r}, ***)"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}"}

    def refresh(self) -> None:
        """Drop the cached token (after a 401): the next call gets a new one."""
        with self._lock:
            self._token, self._expires = None, 0.0

    def secrets(self) -> list[str]:
        return [self._token] if self._token else []

    def token(self) -> str:
        """The cached access token, or a new one from the token endpoint."""
        with self._lock:
            if self._token and time.monotonic() < self._expires:
                return self._token
            if self._key is None:
                self._key = load_key(self.key_path, self.alg)
            assertion = client_assertion(self._key, self.alg, self.kid, self.client_id,
                                         self.token_url)
            ep = Endpoint("token endpoint", self.token_url, allow_loopback=self.allow_loopback,
                          allow_private=self.allow_private)
            out = Outbound(ep)
            try:
                resp = out.request("POST", "", content=(
                    f"grant_type=client_credentials&scope={_form(self.scope)}"
                    f"&client_assertion_type={_form(ASSERTION_TYPE)}"
                    f"&client_assertion={assertion}").encode(),
                    headers={"Content-Type": "application/x-www-form-urlencoded",
                             "Accept": "application/json"})
            except OutboundError as exc:
                raise OutboundError(f"SMART token request refused: {exc.message}",
                                    status=exc.status,
                                    hint="Check client_id, kid and the key registered with "
                                    "the FHIR server") from None
            finally:
                out.close()
            try:
                body = resp.json()
                token = str(body["access_token"])
                lifetime = float(body.get("expires_in", 300))
            except (ValueError, KeyError, TypeError):
                raise OutboundError("SMART token endpoint answered without an access_token",
                                    hint="Check token_url") from None
            self._token = token
            self._expires = time.monotonic() + max(0.0, lifetime - 30)
            self.fetched += 1
            return token


def _form(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")
