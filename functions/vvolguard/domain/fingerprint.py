"""What the events table keeps of a body, for idempotency, without letting anyone test password guesses. Pure.

A repeated ``event_id`` must be told apart as "the same body" (a duplicate) or "another body" (a conflict),
also when the bodies differ only in their password (docs/webhook-hardening.md):

- ``body_mac``: HMAC-SHA256 under a key held outside the tables (derived from the audit key in Secrets
  Manager) of the raw body, or, when the body carries a password, of the body *without* it (canonical JSON).
  Someone who reads the table cannot compute it, and it holds nothing of the password even for the key's holder.
- ``password_tag``: only when the body carries a password, a salted scrypt of the raw body (the same cost as
  the policy's own password hash), so a repeat with another password is a conflict, never a duplicate.
  Testing one guess against it costs what testing it against the policy's hash costs.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from vvolguard.domain.secrets import scrypt_tag

CONTEXT = b"vvg:event-body-mac:v1"


def body_key(audit_key: bytes) -> bytes:
    """The key of body MACs, derived from (and separate in purpose from) the audit chain's key."""
    return hmac.new(audit_key, CONTEXT, hashlib.sha256).digest()


def body_mac(key: bytes, raw: bytes, doc: dict[str, Any] | None) -> str:
    """The keyed MAC of a body: of ``raw`` when ``doc`` carries no password, else of ``doc`` without it."""
    if doc is None or "password" not in doc:
        return "r1:" + hmac.new(key, raw, hashlib.sha256).hexdigest()
    rest = {k: v for k, v in doc.items() if k != "password"}
    canon = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return "p1:" + hmac.new(key, canon, hashlib.sha256).hexdigest()


def password_tag(raw: bytes) -> str:
    """A salted scrypt of a body that carries a password (``scrypt$n$r$p$salt$hash``), at the cost of the
    policy's own password hash (vvolguard.domain.secrets.hash_cost)."""
    return scrypt_tag(raw)


def same_body(raw: bytes, tag: str | None) -> bool:
    """Whether ``raw`` is the body ``tag`` was made of (constant time); True when no tag was needed."""
    if tag is None:
        return True
    try:
        scheme, n, r, p, salt, digest = tag.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(raw, salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)
