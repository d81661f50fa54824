"""Host authentication for webhooks: X-VVG-Host and X-VVG-Signature (docs/webhook-api.md)."""
from __future__ import annotations

import re
import secrets
import threading
import time
from typing import NamedTuple

from vvolguard.adapters import aws
from vvolguard.adapters.models import HostItem
from vvolguard.domain.constants import ID_RE, RESERVED_HOSTS
from vvolguard.domain.secrets import signature_matches
from vvolguard.errors import AuthError, BadSignature, MissingSignature, StaleSignature, UnknownHost
from vvolguard.settings import Settings

TOLERANCE_S = 300
# How long a cached host record is used since it was last proven current: read, or re-checked by a claiming
# transaction (services/event_stores.HostGuard), which is what keeps the cache safe (docs/webhook-hardening.md).
CACHE_S = 300.0
UNKNOWN_MESSAGE = "the host is not enrolled or was revoked"
_DECOY_SECRET = secrets.token_urlsafe(32)  # never any host's: the decoy check of an unknown host
SIG_RE = re.compile(r"^t=(\d{1,12}),v1=([0-9a-f]{64})\Z")
ED25519_PREFIX = "ed25519="
# A key host's header (docs/host-keys.md): standard base64 of 64 bytes, with padding. The same pattern as
# domain/hostkeys.ED25519_SIG_RE, repeated so that a secret host's request never imports cryptography.
ED25519_SIG_RE = re.compile(r"^t=(\d{1,12}),ed25519=([A-Za-z0-9+/]{86}==)\Z")


class AuthenticatedHost(NamedTuple):  # a NamedTuple: see adapters/provider.py HostIdentity
    """A host whose signature checked out."""

    host_id: str
    secret_version: int
    cred_hash: str
    fingerprint: str | None = None  # a key host's (docs/host-keys.md); re-checked in the claim


class HostAuthenticator:
    """Verifies signatures; host records are cached in a warm container for CACHE_S since they were last
    proven current. The claiming transaction re-checks the host (HostGuard: active, same credential version,
    credential digest and scheme or key), so the cache never outlives a revocation or a rotation, and a claim
    that holds proves the cached record current again (:meth:`confirm`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cache: dict[str, tuple[HostItem, object, float]] = {}
        self._lock = threading.Lock()

    def _load(self, host_id: str, fresh: bool = False) -> tuple[HostItem, str] | None:
        """The active host and its secret, or None for a host never enrolled *and* for a revoked one: both
        cost one consistent read and no decryption, so the answer's timing does not tell them apart."""
        if host_id in RESERVED_HOSTS:  # vvolguard's own (docs/ec2-vms.md): never signs a webhook, whatever is stored
            return None
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(host_id)
        if hit and not fresh and now - hit[2] < CACHE_S:
            return hit[0], hit[1]
        try:
            host = HostItem.get(host_id, consistent_read=True)
        except HostItem.DoesNotExist:
            host = None
        if host is None or host.status != "active":
            with self._lock:
                self._cache.pop(host_id, None)
            return None
        secret = self._credential(host)
        with self._lock:
            if len(self._cache) > 10000:
                self._cache.clear()
            self._cache[host_id] = (host, secret, now)
        return host, secret

    def confirm(self, host: AuthenticatedHost, at: float) -> None:
        """A transaction holding HostGuard's condition for ``host`` committed: the host item then had exactly
        the standing ``host`` was authenticated with (every attribute the event path takes from the cached
        record), so that record is current as of ``at`` (Unix seconds: the event's clock, read before the
        transaction was sent) and its lifetime restarts there. Only a cached entry of that very credential
        is refreshed (not one replaced meanwhile by a newer read); none is created."""
        age = min(max(0.0, time.time() - at), CACHE_S)
        proven = time.monotonic() - age
        with self._lock:
            hit = self._cache.get(host.host_id)
            if hit is not None and hit[2] < proven and authenticated(hit[0]) == host:
                self._cache[host.host_id] = (hit[0], hit[1], proven)

    def forget(self, host_id: str) -> None:
        with self._lock:
            self._cache.pop(host_id, None)

    def identify(self, host_header: str | None, sig_header: str | None) -> tuple[str, int, str]:
        """(host id, timestamp, hex signature) from the headers, or the 401 the contract names."""
        if not host_header or not sig_header:
            raise MissingSignature("X-VVG-Host and X-VVG-Signature are required")
        if not ID_RE.match(host_header):
            raise UnknownHost(UNKNOWN_MESSAGE)
        m = SIG_RE.match(sig_header.strip())
        if not m:
            k = ED25519_SIG_RE.match(sig_header.strip())
            if k:  # a key host's signature (docs/host-keys.md); which scheme the host uses is checked later
                return host_header, int(k.group(1)), ED25519_PREFIX + k.group(2)
            raise BadSignature("X-VVG-Signature must be t=UNIX_SECONDS,v1=64 lower-case hex digits "
                               "(or ed25519=BASE64 from a key host)")
        return host_header, int(m.group(1)), m.group(2)

    def authenticate(self, host_id: str, timestamp: int, signature: str, body: bytes,
                     now: float | None = None) -> AuthenticatedHost:
        """The host, if enrolled, active, in time and correctly signed; else the matching AuthError.

        A host never enrolled and a revoked one take the same path (one read, one decoy signature check)
        and get the same answer, so neither the code, the message nor the timing tells them apart."""
        loaded = self._load(host_id)
        if loaded is None:
            raise self._unknown(timestamp, body, signature)
        host, secret = loaded
        now = time.time() if now is None else now
        if abs(now - timestamp) > TOLERANCE_S:
            raise StaleSignature(f"the signature's timestamp is more than {TOLERANCE_S} s from the server's clock")
        if not self._matches(secret, timestamp, body, signature):
            # The secret may have been rotated, or the host revoked, since it was cached: check a fresh read.
            loaded = self._load(host_id, fresh=True)
            if loaded is None:
                raise self._unknown(timestamp, body, signature)
            host, secret = loaded
            if not self._matches(secret, timestamp, body, signature):
                raise BadSignature("the signature does not match")
        return authenticated(host)

    def _unknown(self, timestamp: int, body: bytes, signature: str) -> UnknownHost:
        """The one answer to a host that is not enrolled or was revoked, after the same work as a real check."""
        self._matches(_DECOY_SECRET, timestamp, body, signature)
        return UnknownHost(UNKNOWN_MESSAGE)

    def recheck(self, host_id: str, timestamp: int, signature: str, body: bytes) -> AuthError | None:
        """Authenticate again from a fresh read: the 401 a cached host would have got, or None if it holds."""
        loaded = self._load(host_id, fresh=True)
        if loaded is None:
            return self._unknown(timestamp, body, signature)
        if not self._matches(loaded[1], timestamp, body, signature):
            return BadSignature("the signature does not match")
        return None

    def _credential(self, host: HostItem):
        """What verifies the host's signatures: its decrypted secret, or a key host's public key."""
        if getattr(host, "auth", None) == "ed25519":
            from vvolguard.domain import hostkeys

            return hostkeys.public_from_raw(host.public_key)
        return aws.decrypt_secret(self.settings, host.secret_enc,
                                  {"vvg:host-id": host.host_id, "vvg:secret-version": str(int(host.secret_version))})

    @staticmethod
    def _matches(secret, timestamp: int, body: bytes, signature: str) -> bool:
        # Each host uses exactly its own scheme: v1= from a key host, or ed25519= from a secret host, fails.
        if not isinstance(secret, str):  # a key host's Ed25519PublicKey
            from vvolguard.domain import hostkeys

            if not signature.startswith(ED25519_PREFIX):
                return False
            sig = hostkeys.decode_signature(signature[len(ED25519_PREFIX):])
            return sig is not None and hostkeys.verify(secret, timestamp, body, sig)
        if signature.startswith(ED25519_PREFIX):
            return False
        return signature_matches(secret, timestamp, body, signature)


def authenticated(host: HostItem) -> AuthenticatedHost:
    """What the event path keeps of a host record it authenticated a request with."""
    return AuthenticatedHost(host.host_id, int(host.secret_version), host.cred_hash,
                             host.fingerprint if getattr(host, "auth", None) == "ed25519" else None)
