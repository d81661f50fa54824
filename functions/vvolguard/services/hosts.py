"""Host enrollment, secret rotation and revocation; every change audited."""
from __future__ import annotations

import re
import secrets as _secrets
from datetime import datetime, timezone
from typing import Any

from vvolguard.domain.constants import rfc3339
from vvolguard.adapters.tx import Tx

from vvolguard.adapters import aws
from vvolguard.adapters.audit import AuditLog, AuditRecord
from vvolguard.adapters.models import EXPIRY_SHARDS, HOSTS_PART, GrantItem, HostItem, PolicyItem
from vvolguard.domain import hostkeys
from vvolguard.domain.policy import ID_RE
from vvolguard.domain.policy_diff import RESERVED_HOSTS  # EC2 VMs' host: vvolguard itself, never enrolled
from vvolguard.domain.secrets import credential_digest, new_host_secret, normalize_mac
from vvolguard.errors import AlreadyExists, ConcurrentModification, InvalidInput, NotFound
from vvolguard.services.alerts import audit_ref, raise_alert
from vvolguard.services.listing_pages import ListingPage, backfill, read_all, read_listing
from vvolguard.services.policies import PolicyService
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

    def __init__(self, settings: Settings, provider: Any = None) -> None:
        self.settings = settings
        self.audit = AuditLog(settings)
        self.provider = provider  # built on first revocation (tests inject their own)

    def get(self, host_id: str) -> HostItem:
        """The host's record, or NotFound."""
        validate_host_id(host_id)
        try:
            return HostItem.get(host_id, consistent_read=True)
        except HostItem.DoesNotExist:
            raise NotFound(f"host {host_id} is not enrolled") from None

    def all_hosts(self) -> list[HostItem]:
        """All hosts in id order, page by page of the by-listing index (docs/host-user-pages.md): no scan."""
        return list(read_all(HostItem, HOSTS_PART))

    def page(self, position: dict | None = None, limit: int = 50) -> ListingPage:
        """One page of hosts in id order from ``position`` (/hosts): one Query and one BatchGetItem."""
        return read_listing(HostItem, HOSTS_PART, position, limit)

    def backfill_listing(self) -> int:
        """The one-off upgrade of hosts enrolled before the by-listing index (docs/host-user-pages.md)."""
        return backfill(HostItem, HOSTS_PART)

    def rows(self) -> list[dict[str, str | None]]:
        """`vvg host list`: one row per host, revoked ones included."""
        return [{"host_id": h.host_id, "status": h.status, "auth": auth_of(h),
                 "last_seen": rfc3339(h.last_seen_at) if h.last_seen_at else None} for h in self.all_hosts()]

    def secret_of(self, host: HostItem) -> str:
        """The host's current webhook secret (decrypted; cached in a warm container)."""
        return aws.decrypt_secret(self.settings, host.secret_enc, _context(host.host_id, int(host.secret_version)))

    def enroll(self, host_id: str, mac: str, serial: str, hardware: str = "", actor: str = "cli",
               public_key: bytes | str | None = None) -> dict[str, str]:
        """Enroll a new host; returns its id and secret (the only time the secret is shown). With
        ``public_key`` (docs/host-keys.md) the host signs with its Ed25519 key and no secret exists."""
        validate_host_id(host_id)
        if host_id in RESERVED_HOSTS:
            raise InvalidInput(f"host id {host_id} is reserved: vvolguard itself acts as the host of EC2 VMs "
                               "(docs/architecture.md#where-a-volume-attaches)")
        validate_credentials(mac, serial, hardware)
        key = parse_key(public_key) if public_key is not None else None
        if HostItem.count(host_id, consistent_read=True):
            raise AlreadyExists(f"host {host_id} is already enrolled (use 'vvg host rotate' for a new secret)")
        now = datetime.now(timezone.utc)
        salt = _secrets.token_hex(16)
        item = HostItem(
            host_id=host_id, cred_salt=salt, cred_hash=credential_digest(salt, normalize_mac(mac), serial, hardware),
            secret_version=1, status="active", enrolled_at=now, updated_at=now, list_part=HOSTS_PART,
        )
        if key is None:
            secret = new_host_secret()
            item.secret_enc = aws.encrypt_secret(self.settings, secret, _context(host_id, 1))
            rec = AuditRecord(actor=actor, action="host_enroll", outcome="done", host_id=host_id, reason="enrolled")
        else:
            fp = hostkeys.fingerprint(key)
            item.auth, item.public_key, item.fingerprint = "ed25519", _raw_b64(key), fp
            item.hw_mac, item.hw_serial, item.hw_text = normalize_mac(mac), serial, hardware
            item.key_binding = hostkeys.binding(fp, normalize_mac(mac), serial, hardware)
            rec = AuditRecord(actor=actor, action="host_enroll", outcome="done", host_id=host_id, reason="enrolled",
                              detail=_key_detail(item))

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
        if key is not None:
            return {"host_id": host_id, "auth": "ed25519", "fingerprint": item.fingerprint}
        return {"host_id": host_id, "secret": secret}

    def rotate(self, host_id: str, actor: str = "cli", public_key: bytes | str | None = None) -> dict[str, str]:
        """A new secret; the old one stops working at once (the version in the KMS context moves). A key
        host is rotated to a new public key instead (and only that way)."""
        key = parse_key(public_key) if public_key is not None else None
        host = self.get(host_id)
        if host.status != "active":
            raise InvalidInput(f"host {host_id} is revoked; enroll it again under a new id")
        if auth_of(host) == "ed25519" and key is None:
            raise InvalidInput(f"host {host_id} signs with a key: rotate it with --public-key FILE (it has no secret)")
        if auth_of(host) != "ed25519" and key is not None:
            raise InvalidInput(f"host {host_id} signs with a secret: rotate it without --public-key, or enroll the key "
                               "under a new host id")
        version = int(host.secret_version) + 1
        if key is not None:
            return self._rotate_key(host, key, version, actor)
        secret = new_host_secret()
        enc = aws.encrypt_secret(self.settings, secret, _context(host_id, version))
        rec = AuditRecord(actor=actor, action="host_rotate", outcome="done", host_id=host_id, reason="secret rotated")

        def write(tx: Tx) -> int:
            tx.update(host, actions=[HostItem.secret_enc.set(enc), HostItem.secret_version.set(version),
                                     HostItem.updated_at.set(datetime.now(timezone.utc)),
                                     HostItem.list_part.set(HOSTS_PART)],
                      condition=(HostItem.secret_version == host.secret_version) & (HostItem.status == "active"))
            return 1

        self.audit.append([rec], extra=write)
        return {"host_id": host_id, "secret": secret, "secret_version": str(version)}

    def _rotate_key(self, host: HostItem, key, version: int, actor: str) -> dict[str, str]:
        fp = hostkeys.fingerprint(key)
        if fp == host.fingerprint:
            raise InvalidInput(f"host {host.host_id} already uses the key {fp}")
        bound = hostkeys.binding(fp, host.hw_mac or "", host.hw_serial or "", host.hw_text or "")
        old_fp = host.fingerprint
        host.public_key, host.fingerprint, host.key_binding = _raw_b64(key), fp, bound
        rec = AuditRecord(actor=actor, action="host_rotate", outcome="done", host_id=host.host_id, reason="key rotated",
                          detail={**_key_detail(host), "previous_fingerprint": old_fp or ""})

        def write(tx: Tx) -> int:
            tx.update(host, actions=[HostItem.public_key.set(host.public_key), HostItem.fingerprint.set(fp),
                                     HostItem.key_binding.set(bound), HostItem.secret_version.set(version),
                                     HostItem.updated_at.set(datetime.now(timezone.utc)),
                                     HostItem.list_part.set(HOSTS_PART)],
                      condition=(HostItem.secret_version == version - 1) & (HostItem.status == "active")
                      & (HostItem.auth == "ed25519"))
            return 1

        self.audit.append([rec], extra=write)
        return {"host_id": host.host_id, "auth": "ed25519", "fingerprint": fp}

    def revoke(self, host_id: str, actor: str = "cli") -> dict[str, Any]:
        """Refuse the host's requests from now on, and take back what it holds (docs/webhook-hardening.md):
        every volume attached for its VMs is detached, it leaves every volume's vvg:hosts, and every
        migration grant it gave or received dies. Each step is audited. Running it again finishes what an
        interrupted run left (a provider outage midway), and answers the same shape."""
        host = self.get(host_id)
        if host.status != "revoked":
            rec = AuditRecord(actor=actor, action="host_revoke", outcome="done", host_id=host_id, reason="revoked")

            def write(tx: Tx) -> int:
                tx.update(host, actions=[HostItem.status.set("revoked"),
                                         HostItem.updated_at.set(datetime.now(timezone.utc)),
                                         HostItem.list_part.set(HOSTS_PART)],
                          condition=HostItem.status == "active")
                return 1

            try:
                items = self.audit.append([rec], extra=write)
                raise_alert(self.settings, "host_revoked", host_id=host_id, detail=f"revoked by {actor}",
                            ref=audit_ref(items[0]) if items else None)
            except ConcurrentModification:
                host = self.get(host_id)  # revoked meanwhile by another admin: go on taking back
                if host.status != "revoked":
                    raise
        detached, untagged = HostRevocation(self.settings, host, actor, self.provider).run()
        return {"host_id": host_id, "revoked": True, "detached": detached, "untagged": untagged}


class HostRevocation:
    """What revoking one host takes back at the provider and in the tables. It acts with the revoked
    host's own enrolled identity (its record keeps the credential digest), as every provider call does."""

    def __init__(self, settings: Settings, host: HostItem, actor: str, provider: Any = None) -> None:
        from vvolguard.adapters.provider import EbsProvider, HostIdentity

        self.settings, self.host, self.actor = settings, host, actor
        self.provider = provider or EbsProvider(settings)
        self.who = HostIdentity(host.host_id, host.cred_hash)

    def run(self) -> tuple[int, int]:
        """(volumes detached, volumes whose vvg:hosts lost the host)."""
        hid = self.host.host_id
        if hasattr(self.provider, "forget"):
            self.provider.forget(hid)
        drop: dict[str, set[str]] = {}  # vm id -> hosts to take off its volumes' vvg:hosts
        for grant in self._grants():
            drop.setdefault(grant.vm_id, set()).add(grant.destination_host)
            self._kill_grant(grant)
        own = list(PolicyItem.by_host.query(hid, page_size=100))  # the index: never a scan
        vms = {p.vm_id for p in own} | set(drop)
        detached = untagged = 0
        seen: set[str] = set()
        for vm_id in sorted(vms):
            for p in PolicyService(self.settings).for_vm(vm_id):
                if p.host_id == hid and p.attached and self._detach(p):
                    detached += 1
                if p.provider_volume_id:
                    seen.add(p.provider_volume_id)
                    if self._untag(p.provider_volume_id, drop.get(vm_id, set()) | {hid}, p):
                        untagged += 1
        # Any other volume still naming the host (the provider's tag lookup, not a listing).
        for vol in self.provider.volumes_for_host(self.who, hid):
            if vol not in seen and self._untag(vol, {hid}, None):
                untagged += 1
        return detached, untagged

    def _grants(self) -> list[GrantItem]:
        """Every migration grant the host gave or received (the expiry index holds each live grant)."""
        hid = self.host.host_id
        out = []
        for shard in range(EXPIRY_SHARDS):
            for g in GrantItem.by_expiry.query(f"G#{shard}", page_size=100):
                if hid in (g.source_host, g.destination_host):
                    out.append(g)
        return out

    def _kill_grant(self, grant: GrantItem) -> None:
        rec = AuditRecord(actor=self.actor, action="revoke", outcome="done", reason="host_revoked", vm_id=grant.vm_id,
                          host_id=grant.destination_host,
                          detail={"source_host": grant.source_host, "destination_host": grant.destination_host,
                                  "revoked_host": self.host.host_id})

        def write(tx: Tx) -> None:
            tx.delete(grant, condition=GrantItem.sk.exists())

        try:
            AuditLog(self.settings).append([rec], extra=write)
        except ConcurrentModification:
            pass  # completed or expired meanwhile: gone either way

    def _detach(self, item: PolicyItem) -> bool:
        """Detach at the provider, then record it (clearing any claim of an event in flight, whose own
        record then fails and leaves any late attach to the reconciler's orphan sweep)."""
        if item.provider_volume_id:
            self.provider.detach(self.who, item.provider_volume_id, item.instance_id)
        for _ in range(5):
            rec = AuditRecord(actor=self.actor, action="detach", outcome="done", reason="host_revoked",
                              vm_id=item.vm_id, volume_id=item.volume_id, host_id=item.host_id,
                              policy_version=int(item.policy_version),
                              detail={"instance": item.instance_id or "", "device": item.device or ""})

            def write(tx: Tx, it=item) -> None:
                tx.update(it, actions=PolicyItem.detached_actions(clear_busy=True),
                          condition=PolicyItem.state_version == it.state_version)

            try:
                AuditLog(self.settings).append([rec], extra=write)
                return True
            except ConcurrentModification:
                try:
                    item = PolicyItem.get(item.pk, item.sk, consistent_read=True)
                except PolicyItem.DoesNotExist:
                    return False
                if not item.attached:
                    return False
                if item.provider_volume_id:
                    self.provider.detach(self.who, item.provider_volume_id, item.instance_id)
        raise ConcurrentModification(f"volume {item.volume_id} kept changing; run the revocation again")

    def _untag(self, provider_volume_id: str, hosts: set[str], item: PolicyItem | None) -> bool:
        """Take ``hosts`` off the volume's vvg:hosts; True when the revoked host was on it."""
        current = self.provider.hosts(self.who, provider_volume_id)
        keep = tuple(h for h in current if h not in hosts)
        if keep == tuple(current):
            return False
        self.provider.set_hosts(self.who, provider_volume_id, keep)
        AuditLog(self.settings).append([AuditRecord(
            actor=self.actor, action="revoke", outcome="done", reason="host_revoked",
            vm_id=item.vm_id if item else None, volume_id=item.volume_id if item else None, host_id=self.host.host_id,
            policy_version=int(item.policy_version) if item else None,
            detail={"provider_volume": provider_volume_id, "removed_hosts": ",".join(sorted(set(current) - set(keep))),
                    "hosts": ",".join(keep)})])
        return self.host.host_id in current


def auth_of(host: HostItem) -> str:
    """``hmac`` (a shared secret) or ``ed25519`` (a key host)."""
    return "ed25519" if getattr(host, "auth", None) == "ed25519" else "hmac"


def parse_key(public_key: bytes | str):
    """The Ed25519 public key of ``--public-key`` / the dashboard's pasted key, or InvalidInput."""
    try:
        return hostkeys.parse_public_key(public_key)
    except hostkeys.HostKeyError as exc:
        raise InvalidInput(str(exc)) from None


def _raw_b64(key) -> str:
    import base64

    return base64.b64encode(hostkeys.public_raw(key)).decode("ascii")


def _key_detail(item: HostItem) -> dict[str, str]:
    """What the audit chain keeps of a key enrolment: the key and the machine it was bound to."""
    return {"auth": "ed25519", "fingerprint": item.fingerprint or "", "public_key": item.public_key or "",
            "mac": item.hw_mac or "", "serial": item.hw_serial or "", "hardware": item.hw_text or "",
            "binding": item.key_binding or ""}


