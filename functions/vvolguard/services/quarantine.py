"""Break-glass (docs/break-glass.md): quarantine a VM (detach every volume now, refuse its attaches) and
release it; both audited on the VM's chain."""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from vvolguard.domain.constants import rfc3339
from vvolguard.adapters.audit import AuditLog, AuditRecord
from vvolguard.services.alerts import audit_ref, raise_alert
from vvolguard.adapters.models import QUARANTINE_SK, HostItem, PolicyItem, QuarantineItem
from vvolguard.adapters.provider import EbsProvider, HostIdentity, ProviderRefused, StorageProvider
from vvolguard.adapters.tx import Tx
from vvolguard.domain.engine import BUSY_SECONDS
from vvolguard.domain.policy import ID_RE
from vvolguard.errors import ConcurrentModification, InvalidInput, NotFound, ProviderUnavailable
from vvolguard.settings import Settings

MAX_REASON = 256
ALERT_ACTIONS = ("vm_quarantine", "vm_release")  # what a security alert is raised for


def validate_vm(vm_id: str) -> str:
    if not isinstance(vm_id, str) or not ID_RE.match(vm_id):
        raise InvalidInput("VM id must match [A-Za-z0-9._-]{1,64}")
    return vm_id


def validate_reason(reason: str | None) -> str:
    reason = (reason or "").strip()
    if len(reason) > MAX_REASON or not reason.isprintable():
        raise InvalidInput(f"--reason must be printable text of at most {MAX_REASON} characters")
    return reason


class QuarantineService:
    """Quarantine and release; the event path refuses a quarantined VM's attaches (services/events.py)."""

    def __init__(self, settings: Settings, provider: StorageProvider | None = None) -> None:
        self.settings = settings
        self.audit = AuditLog(settings)
        self.provider: Any = provider or EbsProvider(settings)

    @staticmethod
    def _pk(vm_id: str) -> str:
        return f"VM#{vm_id}"

    def state(self, vm_id: str) -> QuarantineItem | None:
        """The VM's quarantine, or None."""
        validate_vm(vm_id)
        try:
            return QuarantineItem.get(self._pk(vm_id), QUARANTINE_SK, consistent_read=True)
        except QuarantineItem.DoesNotExist:
            return None

    def _policies(self, vm_id: str) -> list[PolicyItem]:
        return sorted(PolicyItem.query(self._pk(vm_id), PolicyItem.sk.startswith("POLICY#"), consistent_read=True),
                      key=lambda p: p.volume_id)

    def quarantine(self, vm_id: str, reason: str | None = None, actor: str = "cli",
                   wait_s: float = BUSY_SECONDS + 5) -> dict[str, Any]:
        """Refuse every attach for ``vm_id`` from now on and detach every volume attached to it now."""
        validate_vm(vm_id)
        reason = validate_reason(reason)
        if not self._policies(vm_id):
            raise NotFound(f"no policy names VM {vm_id}")
        changed = self.state(vm_id) is None
        if changed:
            now = datetime.now(timezone.utc)
            item = QuarantineItem(pk=self._pk(vm_id), sk=QUARANTINE_SK, vm_id=vm_id, reason=reason or None,
                                  actor=actor, since=now)
            rec = AuditRecord(actor=actor, action="vm_quarantine", outcome="done", vm_id=vm_id,
                              reason=reason or "quarantined", detail={"alert": "break_glass"})

            def write(tx: Tx) -> None:
                tx.save(item, condition=QuarantineItem.sk.does_not_exist())

            try:
                items = self.audit.append([rec], extra=write)
                raise_alert(self.settings, "quarantine", vm_id=vm_id, ref=audit_ref(items[0]) if items else None,
                            detail=f"quarantined by {actor}" + (f": {reason}" if reason else ""))
            except ConcurrentModification:
                changed = False  # quarantined at the same moment by someone else: detach all the same
        detached, errors = self._detach_all(vm_id, actor, wait_s)
        out = {"vm_id": vm_id, "quarantined": True, "changed": changed, "detached": detached}
        if errors:
            raise ProviderUnavailable(f"{vm_id} is quarantined (its attaches are refused), but {len(errors)} volume(s) "
                                      f"could not be detached yet ({', '.join(errors[:5])}); run the command again")
        return out

    def _detach_all(self, vm_id: str, actor: str, wait_s: float) -> tuple[int, list[str]]:
        """Detach every attached volume of the VM; one an event is changing right now is waited for (its claim
        was taken before the quarantine, its outcome lands within its busy lease)."""
        deadline = time.monotonic() + wait_s
        detached, hosts = 0, {}
        while True:
            now = datetime.now(timezone.utc)
            pending = [p for p in self._policies(vm_id) if p.attached or (p.busy_until and p.busy_until > now)]
            if not pending:
                return detached, []
            errors, busy = [], False
            for p in pending:
                if p.busy_until and p.busy_until > now:
                    busy = True
                    continue
                try:
                    if p.provider_volume_id:
                        who = hosts.get(p.host_id) or self._who(p.host_id)
                        hosts[p.host_id] = who
                        self.provider.detach(who, p.provider_volume_id, p.instance_id)
                    if self._mark_detached(p, actor):
                        detached += 1
                    else:
                        busy = True  # it moved under us: read it again
                except (ProviderUnavailable, ProviderRefused) as exc:
                    errors.append(f"{p.volume_id}: {exc.code}")
            if errors:
                return detached, errors
            if time.monotonic() > deadline:
                return detached, [f"{p.volume_id}: busy" for p in pending if p.busy_until and p.busy_until > now]
            if busy:
                time.sleep(0.2)

    @staticmethod
    def _who(host_id: str) -> HostIdentity:
        from vvolguard.services.vms import reserved_identity
        from vvolguard.settings import Settings

        reserved = reserved_identity(Settings.from_env(), host_id)  # an EC2 VM's volume: vvolguard acts as aws-ec2
        if reserved is not None:
            return reserved
        try:
            h = HostItem.get(host_id)
        except HostItem.DoesNotExist:
            return HostIdentity(host_id, "")
        return HostIdentity(h.host_id, h.cred_hash)

    def _mark_detached(self, item: PolicyItem, actor: str) -> bool:
        rec = AuditRecord(actor=actor, action="detach", outcome="done", reason="quarantined", vm_id=item.vm_id,
                          volume_id=item.volume_id, host_id=item.host_id, policy_version=int(item.policy_version),
                          detail={"instance": item.instance_id or "", "device": item.device or ""})

        def write(tx: Tx) -> None:
            tx.update(item, actions=PolicyItem.detached_actions(),
                      condition=PolicyItem.state_version == item.state_version)

        try:
            self.audit.append([rec], extra=write)
            return True
        except ConcurrentModification:
            return False

    def release(self, vm_id: str, actor: str = "cli") -> dict[str, Any]:
        """Lift the quarantine: the VM's attaches are decided by its policies again."""
        validate_vm(vm_id)
        item = self.state(vm_id)
        if item is None:
            raise InvalidInput(f"VM {vm_id} is not quarantined")
        rec = AuditRecord(actor=actor, action="vm_release", outcome="done", vm_id=vm_id, reason="released",
                          detail={"alert": "break_glass", "quarantined_since": rfc3339(item.since)})

        def write(tx: Tx) -> None:
            tx.delete(item, condition=QuarantineItem.sk.exists())

        try:
            items = self.audit.append([rec], extra=write)
        except ConcurrentModification:
            raise InvalidInput(f"VM {vm_id} is not quarantined") from None
        raise_alert(self.settings, "release", vm_id=vm_id, ref=audit_ref(items[0]) if items else None,
                    detail=f"released by {actor}")
        return {"vm_id": vm_id, "quarantined": False, "changed": True}
