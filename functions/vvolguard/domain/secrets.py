"""Salted password hashes (scrypt), host credential digests and webhook signatures. Pure functions."""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

_N, _R, _P = 2**14, 8, 1


def hash_password(password: str) -> str:
    """A salted scrypt hash of ``password``, self-describing: ``scrypt$n$r$p$salt$hash``."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"scrypt${_N}${_R}${_P}${b64(salt)}${b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a hash from :func:`hash_password`."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def normalize_mac(mac: str) -> str:
    """``AA-bb-...`` -> ``aa:bb:...``."""
    return mac.strip().lower().replace("-", ":")


def credential_digest(salt: str, mac: str, serial: str, hardware: str) -> str:
    """Keyed digest of a host's hardware credentials; the table stores this, never the credentials."""
    material = "\x1f".join((normalize_mac(mac), serial, hardware)).encode("utf-8")
    return hmac.new(bytes.fromhex(salt), material, hashlib.sha256).hexdigest()


def new_host_secret() -> str:
    """A fresh webhook secret (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def _signature_mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode("ascii") + body, hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-VVG-Signature`` header value for ``body`` at ``timestamp`` (docs/webhook-api.md)."""
    return f"t={timestamp},v1={_signature_mac(secret, timestamp, body)}"


def signature_matches(secret: str, timestamp: int, body: bytes, v1: str) -> bool:
    """Whether ``v1`` (the hex MAC of a ``t=...,v1=...`` header) is ``sign``'s for ``body`` at ``timestamp``;
    compared in constant time."""
    return hmac.compare_digest(_signature_mac(secret, timestamp, body), v1)
