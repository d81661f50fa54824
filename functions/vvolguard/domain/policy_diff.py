"""What applying a policy file would change (docs/policy-apply.md): pure, no I/O.

``vvg policy apply --dry-run`` and the dashboard's move confirmation both show this diff; the service
reads the stored policies and the hosts, this module only compares them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from vvolguard.domain.constants import RESERVED_HOSTS  # noqa: F401 - defined in constants.py, imported from here too
from vvolguard.domain.policy import DEFAULTS, PolicySpec
from vvolguard.domain.secrets import check_password

# The fields a policy file sets, in the order a diff lists them (the password comes last).
DIFF_FIELDS = ("vm_id", "host_id", "storage_array", "size_mb", "attach_on", "detach_on", "app",
               "authorized_apps", "os_disk_encryption", "max_attach_seconds", "min_key_bits", "attach_to")
_NAMED = 5


@dataclass(frozen=True)
class StoredPolicy:
    """What the diff needs of a stored policy: its values, whether it has a password, where it is attached."""

    spec: PolicySpec
    password_hash: str | None = None
    attached: bool = False


def values(spec: PolicySpec) -> dict[str, Any]:
    """A spec's fields as JSON values (lists, not tuples)."""
    return {f: (list(getattr(spec, f)) if f == "authorized_apps" else getattr(spec, f)) for f in DIFF_FIELDS}


def password_change(spec: PolicySpec, stored_hash: str | None) -> list[str] | None:
    """[OLD, NEW] for the password, never the password or its hash: OLD is "set" or "none", NEW is "set"
    (none before), "changed", or "removed"; None when apply would leave it as it is (absent keeps it)."""
    if not spec.password_given:
        return None
    if spec.password is None:
        return ["set", "removed"] if stored_hash else None
    if not stored_hash:
        return ["none", "set"]
    return None if check_password(spec.password, stored_hash) else ["set", "changed"]


def changes(spec: PolicySpec, stored: StoredPolicy) -> dict[str, list[Any]]:
    """{FIELD: [OLD, NEW]} for every field apply would change, the password last."""
    old, new = values(stored.spec), values(spec)
    out: dict[str, list[Any]] = {f: [old[f], new[f]] for f in DIFF_FIELDS if old[f] != new[f]}
    pw = password_change(spec, stored.password_hash)
    if pw:
        out["password"] = pw
    return out


def is_move(change: dict[str, list[Any]]) -> bool:
    """True when a change moves the volume to another VM or host."""
    return "vm_id" in change or "host_id" in change


def _names(ids: list[str]) -> str:
    text = ", ".join(ids[:_NAMED])
    return text + (f" and {len(ids) - _NAMED} more" if len(ids) > _NAMED else "")


def diff(specs: Iterable[PolicySpec], stored: dict[str, StoredPolicy],
         host_status: dict[str, str | None]) -> dict[str, Any]:
    """The dry-run answer: ``{"created", "updated", "unchanged", "warnings"}``.

    ``stored`` maps a volume id to its stored policy (absent: apply creates it); ``host_status`` maps every
    host_id the specs name to "active", "revoked" or None (not enrolled)."""
    created: list[str] = []
    updated: list[dict[str, Any]] = []
    unchanged = 0
    warnings: list[str] = []
    hosts: dict[str, list[str]] = {}
    for spec in specs:
        hosts.setdefault(spec.host_id, []).append(spec.volume_id)
        old = stored.get(spec.volume_id)
        if old is None:
            created.append(spec.volume_id)
            continue
        change = changes(spec, old)
        if not change:
            unchanged += 1
            continue
        updated.append({"volume_id": spec.volume_id, "changes": change})
        if "vm_id" in change:
            warnings.append(f"{spec.volume_id}: moves to another VM: {old.spec.vm_id} -> {spec.vm_id}")
            if old.attached:
                warnings.append(f"{spec.volume_id}: is attached to {old.spec.vm_id} now: apply will refuse to move "
                                "it until it is detached")
        if "host_id" in change:
            warnings.append(f"{spec.volume_id}: moves to another host: {old.spec.host_id} -> {spec.host_id}")
        for key in spec.absent:
            if key in change:
                warnings.append(f"{spec.volume_id}: {key} is absent, so it takes its default "
                                f"{_show(DEFAULTS[key])} (stored: {_show(change[key][0])})")
    for host_id, vids in hosts.items():
        if host_id in RESERVED_HOSTS:
            continue
        status = host_status.get(host_id)
        if status is None:
            warnings.append(f"host_id {host_id} is not enrolled: its events will be refused "
                            f"(named by {_names(vids)})")
        elif status != "active":
            warnings.append(f"host_id {host_id} is not enrolled any more ({status}): its events will be refused "
                            f"(named by {_names(vids)})")
    return {"created": created, "updated": updated, "unchanged": unchanged, "warnings": warnings}


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(value) + "]"
    return str(value)
