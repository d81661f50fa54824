"""Salted password hashes (scrypt), host credential digests and webhook signatures. Pure functions."""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# The scrypt cost (N, r, p) of every new hash: passwords here, event bodies that carry one in
# vvolguard.domain.fingerprint. A stored hash names its own cost, so checking never depends on this.
PRODUCTION_COST = (2**14, 8, 1)
_cost = PRODUCTION_COST


def hash_cost() -> tuple[int, int, int]:
    """The (N, r, p) new hashes are made with: PRODUCTION_COST unless a test lowered it."""
    return _cost


def set_hash_cost(cost: tuple[int, int, int]) -> tuple[int, int, int]:
    """Make new hashes at ``cost`` (N, r, p) in this process; returns the previous cost. Only the test suite
    calls it (tests/conftest.py), so that thousands of fixture hashes stay cheap; nothing in vvolguard reads
    a cost from the environment or the settings, so a deployment always hashes at PRODUCTION_COST."""
    global _cost
    n, r, p = (int(v) for v in cost)
    if n < 2 or n & (n - 1) or r < 1 or p < 1:
        raise ValueError("scrypt cost: N must be a power of 2 above 1, r and p at least 1")
    previous, _cost = _cost, (n, r, p)
    return previous


def scrypt_tag(material: bytes) -> str:
    """A salted scrypt of ``material`` at :func:`hash_cost`, self-describing: ``scrypt$n$r$p$salt$hash``."""
    n, r, p = _cost
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(material, salt=salt, n=n, r=r, p=p, dklen=32)
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"scrypt${n}${r}${p}${b64(salt)}${b64(digest)}"


def hash_password(password: str) -> str:
    """A salted scrypt hash of ``password``, self-describing: ``scrypt$n$r$p$salt$hash``."""
    return scrypt_tag(password.encode("utf-8"))


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
    """A fresh webhook secret (256 bits, URL-safe), never starting with ``-``: a secret that did would read as an
    option after ``vvg event send --secret`` (argparse) and in most shells' tools."""
    while True:
        secret = secrets.token_urlsafe(32)
        if not secret.startswith("-"):
            return secret


def _signature_mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode("ascii") + body, hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-VVG-Signature`` header value for ``body`` at ``timestamp`` (docs/webhook-api.md)."""
    return f"t={timestamp},v1={_signature_mac(secret, timestamp, body)}"


def signature_matches(secret: str, timestamp: int, body: bytes, v1: str) -> bool:
    """Whether ``v1`` (the hex MAC of a ``t=...,v1=...`` header) is ``sign``'s for ``body`` at ``timestamp``;
    compared in constant time."""
    return hmac.compare_digest(_signature_mac(secret, timestamp, body), v1)
