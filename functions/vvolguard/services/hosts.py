"""Host enrollment, secret rotation and revocation; every change audited."""
from __future__ import annotations

import re
import secrets as _secrets
from datetime import datetime, timezone

from vvolguard.adapters.tx import Tx

from vvolguard.adapters import aws
from vvolguard.adapters.audit import AuditLog, AuditRecord
from vvolguard.adapters.models import HostItem
from vvolguard.domain.policy import ID_RE
from vvolguard.domain.secrets import credential_digest, new_host_secret, normalize_mac
from vvolguard.errors import AlreadyExists, InvalidInput, NotFound
from vvolguard.settings import Settings

MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}\Z")
SERIAL_RE = re.compile(r"^[A-Za-z0-9._:/-]{1,128}\Z")
MAX_HARDWARE = 256


def validate_host_id(host_id: str) -> str:
    """Refuse a host id outside the contract's pattern."""
    if not isinstance(host_id, str) or not ID_RE.match(host_id):
        raise InvalidInput("host id must match [A-Za-z0-9._-]{1,64}")
    return host_id


def validate_credentials(mac: str, serial: str, hardware: str) -> None:
    """Refuse malformed hardware credentials (never echoing them)."""
    if not isinstance(mac, str) or not MAC_RE.match(mac):
        raise InvalidInput("--mac must be six hex pairs separated by ':' or '-', e.g. 02:00:00:00:00:01")
    if not isinstance(serial, str) or not SERIAL_RE.match(serial):
        raise InvalidInput("--serial must be 1 to 128 characters of [A-Za-z0-9._:/-]")
    if not isinstance(hardware, str) or len(hardware) > MAX_HARDWARE or not hardware.isprintable():
        raise InvalidInput(f"--hardware must be printable text of at most {MAX_HARDWARE} characters")


def _context(host_id: str, version: int) -> dict[str, str]:
    return {"vvg:host-id": host_id, "vvg:secret-version": str(version)}


class HostService:
    """The host registry."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.audit = AuditLog(settings)

    def get(self, host_id: str) -> HostItem:
        """The host's record, or NotFound."""
        validate_host_id(host_id)
        try:
            return HostItem.get(host_id, consistent_read=True)
        except HostItem.DoesNotExist:
            raise NotFound(f"host {host_id} is not enrolled") from None

    def list(self) -> list[HostItem]:
        """All hosts (the fleet's host list is small next to its volumes)."""
        return sorted(HostItem.scan(page_size=500), key=lambda h: h.host_id)

    def secret_of(self, host: HostItem) -> str:
        """The host's current webhook secret (decrypted; cached in a warm container)."""
        return aws.decrypt_secret(self.settings, host.secret_enc, _context(host.host_id, int(host.secret_version)))

    def enroll(self, host_id: str, mac: str, serial: str, hardware: str = "", actor: str = "cli") -> dict[str, str]:
        """Enroll a new host; returns its id and secret (the only time the secret is shown)."""
        validate_host_id(host_id)
        validate_credentials(mac, serial, hardware)
        if HostItem.count(host_id, consistent_read=True):
            raise AlreadyExists(f"host {host_id} is already enrolled (use 'vvg host rotate' for a new secret)")
        secret = new_host_secret()
        now = datetime.now(timezone.utc)
        salt = _secrets.token_hex(16)
        item = HostItem(
            host_id=host_id, cred_salt=salt, cred_hash=credential_digest(salt, normalize_mac(mac), serial, hardware),
            secret_enc=aws.encrypt_secret(self.settings, secret, _context(host_id, 1)), secret_version=1,
            status="active", enrolled_at=now, updated_at=now,
        )
        rec = AuditRecord(actor=actor, action="host_enroll", outcome="done", host_id=host_id, reason="enrolled")

        def write(tx: Tx) -> int:
            tx.save(item, condition=HostItem.host_id.does_not_exist())
            return 1

        try:
            self.audit.append([rec], extra=write)
        except Exception as exc:  # a lost race for the same id
            from vvolguard.errors import ConcurrentModification
            if isinstance(exc, ConcurrentModification):
                raise AlreadyExists(f"host {host_id} is already enrolled") from None
            raise
        return {"host_id": host_id, "secret": secret}

    def rotate(self, host_id: str, actor: str = "cli") -> dict[str, str]:
        """A new secret; the old one stops working at once (the version in the KMS context moves)."""
        host = self.get(host_id)
        if host.status != "active":
            raise InvalidInput(f"host {host_id} is revoked; enroll it again under a new id")
        version = int(host.secret_version) + 1
        secret = new_host_secret()
        enc = aws.encrypt_secret(self.settings, secret, _context(host_id, version))
        rec = AuditRecord(actor=actor, action="host_rotate", outcome="done", host_id=host_id, reason="secret rotated")

        def write(tx: Tx) -> int:
            tx.update(host, actions=[HostItem.secret_enc.set(enc), HostItem.secret_version.set(version),
                                     HostItem.updated_at.set(datetime.now(timezone.utc))],
                      condition=(HostItem.secret_version == host.secret_version) & (HostItem.status == "active"))
            return 1

        self.audit.append([rec], extra=write)
        return {"host_id": host_id, "secret": secret, "secret_version": str(version)}

    def revoke(self, host_id: str, actor: str = "cli") -> dict[str, str]:
        """Refuse the host's requests from now on."""
        host = self.get(host_id)
        if host.status == "revoked":
            return {"host_id": host_id, "status": "revoked", "changed": "false"}
        rec = AuditRecord(actor=actor, action="host_revoke", outcome="done", host_id=host_id, reason="revoked")

        def write(tx: Tx) -> int:
            tx.update(host, actions=[HostItem.status.set("revoked"), HostItem.updated_at.set(datetime.now(timezone.utc))],
                      condition=HostItem.status == "active")
            return 1

        self.audit.append([rec], extra=write)
        return {"host_id": host_id, "status": "revoked", "changed": "true"}
