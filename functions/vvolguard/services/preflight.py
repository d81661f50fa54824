"""Preflight (docs/preflight.md): will this VM boot? Each check named, with a detail a person can act on.

Reads only: one Query of the VM's partition (its policies and quarantine), one read of its host, one
BatchGet of its key volumes, one DescribeInstances and one DescribeVolumes — the provider's reads in the
host's own provider session (the storage provider's role, as every EBS call), so the dashboard and the CLI
need no EC2 permission of their own.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from vvolguard.adapters import aws
from vvolguard.adapters import preflight as reads
from vvolguard.adapters.provider import EbsProvider, HostIdentity
from vvolguard.adapters.models import HostItem, PolicyItem, QuarantineItem, StateItem
from vvolguard.domain.policy import ID_RE
from vvolguard.domain.policy_diff import RESERVED_HOSTS
from vvolguard.errors import InvalidInput, VvgError
from vvolguard.services.keys import key_states
from vvolguard.services.policies import vm_pk
from vvolguard.settings import Settings

CHECKS = ("host", "quarantine", "policies", "instance", "volumes", "key_volumes", "locks")


def validate_vm_id(vm_id: Any) -> str:
    if not isinstance(vm_id, str) or not ID_RE.match(vm_id):
        raise InvalidInput("vm id must match [A-Za-z0-9._-]{1,64}")
    return vm_id


def _check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "ok": bool(ok), "detail": detail}


def _names(ids: list[str], shown: int = 5) -> str:
    text = ", ".join(ids[:shown])
    return text + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


class PreflightService:
    """``vvg preflight VM_ID`` and the checks on /vms/<vm_id>."""

    def __init__(self, settings: Settings, provider: EbsProvider | None = None) -> None:
        self.settings = settings
        self.provider = provider or EbsProvider(settings)

    def run(self, vm_id: str, now: datetime | None = None) -> dict[str, Any]:
        """``{"vm_id", "ready", "checks": [{"name", "ok", "detail"}]}``; ready only when every check passes."""
        validate_vm_id(vm_id)
        now = now or datetime.now(timezone.utc)
        policies: list[PolicyItem] = []
        quarantine: QuarantineItem | None = None
        for item in StateItem.query(vm_pk(vm_id), consistent_read=True):  # the one Query of the partition
            if isinstance(item, PolicyItem):
                policies.append(item)
            elif isinstance(item, QuarantineItem):
                quarantine = item
        policies.sort(key=lambda p: p.volume_id)
        host_check, hosts = self._host(vm_id, policies)
        checks = [host_check, self._quarantine(vm_id, quarantine), self._policies(vm_id, policies)]
        if policies:
            ec2, why = self._ec2(policies, hosts)
            if ec2 is None:
                checks += [_check("instance", False, f"not checked: {why}"), _check("volumes", False, f"not checked: {why}")]
            else:
                checks += self._provider_checks(ec2, vm_id, policies)
            checks.append(self._keys(policies))
            checks.append(self._locks(policies, now))
        else:
            for name in CHECKS[3:]:
                checks.append(_check(name, False, f"not checked: {vm_id} has no policies"))
        return {"vm_id": vm_id, "ready": all(c["ok"] for c in checks), "checks": checks}

    def _provider_checks(self, ec2: Any, vm_id: str, policies: list[PolicyItem]) -> list[dict[str, Any]]:
        """The instance and volumes checks; a provider that cannot be read fails them, saying so."""
        def unread(name: str, exc: Exception) -> dict[str, Any]:
            text = getattr(exc, "message", None) or (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            return _check(name, False, f"not checked: the provider could not be read ({text}); retry")

        try:
            instance_check, instance = self._instance(ec2, vm_id, policies)
        except (ClientError, BotoCoreError, VvgError) as exc:
            return [unread("instance", exc), _check("volumes", False, "not checked: the instance could not be read")]
        try:
            return [instance_check, self._volumes(ec2, policies, instance)]
        except (ClientError, BotoCoreError, VvgError) as exc:
            return [instance_check, unread("volumes", exc)]

    # ---- the checks, in the order docs/preflight.md lists them

    @staticmethod
    def _host(vm_id: str, policies: list[PolicyItem]) -> tuple[dict[str, Any], dict[str, HostItem | None]]:
        hosts = sorted({p.host_id for p in policies})
        found: dict[str, HostItem | None] = {}
        if not hosts:
            return _check("host", False, f"{vm_id} has no policies, so no host: apply a policy file naming its "
                          "host_id"), found
        problems = []
        for host_id in hosts:
            if host_id in RESERVED_HOSTS:
                continue  # EC2 VMs' host is vvolguard itself, never enrolled
            try:
                host = found[host_id] = HostItem.get(host_id, consistent_read=True)
            except HostItem.DoesNotExist:
                found[host_id] = None
                problems.append(f"host {host_id} is not enrolled: run 'vvg host enroll {host_id} …' on it, or "
                                "change the policies' host_id")
                continue
            if (host.status or "active") != "active":
                problems.append(f"host {host_id} was revoked: its events are refused; enroll a host again and "
                                "move the VM's policies to it")
        if problems:
            return _check("host", False, "; ".join(problems)), found
        return _check("host", True, f"host {', '.join(hosts)} is enrolled and active"), found

    def _ec2(self, policies: list[PolicyItem], hosts: dict[str, HostItem | None]) -> tuple[Any, str]:
        """The EC2 client to read with: the provider's session for the VM's host (as every EBS call), the control
        plane's own for EC2 VMs' reserved host; None and why when vvolguard does not act for the host."""
        host_id = policies[0].host_id
        if host_id in RESERVED_HOSTS:
            return aws.client("ec2", self.settings.region), ""
        host = hosts.get(host_id)
        if host is None:
            return None, f"host {host_id} is not enrolled, so vvolguard does not act for it"
        if (host.status or "active") != "active":
            return None, f"host {host_id} is revoked, so vvolguard does not act for it"
        try:
            return self.provider.ec2(HostIdentity(host.host_id, host.cred_hash)), ""
        except (ClientError, BotoCoreError, VvgError) as exc:
            text = getattr(exc, "message", None) or str(exc).splitlines()[0][:200]
            return None, f"the provider session for {host_id} could not be opened ({text}); retry"

    @staticmethod
    def _quarantine(vm_id: str, q: QuarantineItem | None) -> dict[str, Any]:
        if q is None:
            return _check("quarantine", True, f"{vm_id} is not quarantined")
        why = f" ({q.reason})" if q.reason else ""
        return _check("quarantine", False, f"{vm_id} is quarantined since {q.since:%Y-%m-%d %H:%M}Z by {q.actor}{why}: "
                      f"every attach is refused until 'vvg vm release {vm_id}'")

    @staticmethod
    def _policies(vm_id: str, policies: list[PolicyItem]) -> dict[str, Any]:
        if not policies:
            return _check("policies", False, f"{vm_id} has no policies: nothing would attach; apply a policy file "
                          "with its volumes")
        ids = [p.volume_id for p in policies]
        return _check("policies", True, f"{len(ids)} volume(s): {_names(ids)}")

    def _instance(self, ec2: Any, vm_id: str, policies: list[PolicyItem]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        # attach_to: host volumes go to the host's instance (docs/preflight.md); every volume of a VM has one value
        to_host = any(getattr(p, "attach_to", None) == "host" for p in policies)
        host_id = policies[0].host_id
        found = reads.find_instances(ec2, None if to_host else vm_id, host_id if to_host else None)
        tag = f"vvg:host-id={host_id}" if to_host else f"vvg:vm-id={vm_id}"
        if not found:
            return _check("instance", False, f"no instance is tagged {tag}: tag the "
                          f"{'host' if to_host else 'VM'}'s instance {tag}, or launch it"), None
        if len(found) > 1:
            ids = [i["instance_id"] for i in found]
            return _check("instance", False, f"{len(found)} instances are tagged {tag} ({_names(ids)}): "
                          "leave the tag on one"), None
        inst = found[0]
        return _check("instance", True, f"{inst['instance_id']} ({inst['state']}) in {inst['zone']}, tagged {tag}"), inst

    def _volumes(self, ec2: Any, policies: list[PolicyItem], instance: dict[str, Any] | None) -> dict[str, Any]:
        have = reads.find_volumes(ec2, [p.volume_id for p in policies])
        problems, fine = [], []
        for p in policies:
            vol = have.get(p.volume_id)
            if vol is None:
                if p.provider_volume_id:
                    problems.append(f"{p.volume_id} is gone at the provider ({p.provider_volume_id}): "
                                    f"restore it, or run 'vvg reconcile' so it is created again")
                else:
                    fine.append(f"{p.volume_id} will be created at its first attach"
                                + (f" in {instance['zone']}" if instance else ""))
                continue
            if instance is not None and vol["zone"] != instance["zone"]:
                problems.append(f"{p.volume_id} is in {vol['zone']} but {instance['instance_id']} is in "
                                f"{instance['zone']}: move the volume or the instance")
                continue
            if p.host_id not in vol["hosts"] and p.host_id not in RESERVED_HOSTS:
                shown = ",".join(vol["hosts"]) or "nobody"
                problems.append(f"{p.volume_id} ({vol['provider_volume_id']}) lists {shown} in vvg:hosts, not "
                                f"{p.host_id}: run 'vvg reconcile', or migrate the VM back")
                continue
            fine.append(f"{p.volume_id} exists ({vol['provider_volume_id']}, {vol['zone']})")
        if problems:
            return _check("volumes", False, "; ".join(problems))
        return _check("volumes", True, "; ".join(fine))

    @staticmethod
    def _keys(policies: list[PolicyItem]) -> dict[str, Any]:
        need = [p.volume_id for p in policies if p.os_disk_encryption]
        if not need:
            return _check("key_volumes", True, "no volume has os_disk_encryption: no key volume needed")
        states = key_states(need)  # one BatchGet, never key bytes
        missing = [v for v in need if not states.get(v, {}).get("provisioned")]
        if missing:
            return _check("key_volumes", False, "; ".join(
                f"{v} has os_disk_encryption but no key volume: run 'vvg key provision {v} --generate luks'"
                for v in missing[:5]) + (f"; and {len(missing) - 5} more" if len(missing) > 5 else ""))
        return _check("key_volumes", True, f"key volume provisioned for {_names(need)}")

    @staticmethod
    def _locks(policies: list[PolicyItem], now: datetime) -> dict[str, Any]:
        locked = [p for p in policies if p.locked_until is not None and p.locked_until > now]
        if locked:
            return _check("locks", False, "; ".join(
                f"{p.volume_id} is locked after wrong passwords until {p.locked_until:%Y-%m-%d %H:%M:%S}Z: wait, "
                "or have an editor set its password again" for p in locked[:5]))
        return _check("locks", True, "no volume is locked")
