"""The event registry: everything vvolguard knows about one host event type, in one entry (docs/webhook-api.md).

Each entry holds the type's fields (beyond the common ``event_id``, ``type``, ``vm_id``, ``occurred_at``),
its documentation and example, who may send it (an authorization rule) and its decide function. The parser
(``domain/events.py``), the engine's ``decide``, the webhook's authorization, the simulator, the OpenAPI
document (``infra/openapi.py``) and the dashboard's event lists all read it; adding an event type is one
entry here (plus an executor in ``services/executors.py`` when it has a new action), as Cloud Custodian
registers each action with its schema. Pure: the one lookup an authorization rule needs (is a host
enrolled and active) is passed in.
"""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Callable, NamedTuple

from vvolguard.domain import engine as en  # its rules are read at call time (engine imports this module)
from vvolguard.domain.constants import Action, Outcome
from vvolguard.domain.events import Event
from vvolguard.errors import Forbidden, InvalidEvent, NotFound


class Scope(NamedTuple):  # immutable records as NamedTuples: see adapters/provider.py HostIdentity
    """The VM's partition as an authorization rule sees it: policies by volume, live grants by destination."""

    policies: dict[str, Any]
    grants: dict[str, Any]
    active: Callable[[str | None], bool]  # is this host enrolled and active (one read; only migrations ask)


Authorize = Callable[[str, Event, Scope], list]
Decide = Callable[[Event, "list[en.VolumeView]", datetime, "str | None"], "list[en.Decision]"]


# ---------------------------------------------------------------- authorization rules

def _not_vm_host(sender: str, event: Event) -> Forbidden:
    return Forbidden(f"host {sender} is not the host of {event.vm_id}")


def vm_host(sender: str, event: Event, scope: Scope) -> list:
    """The VM's host (a VM with no policies yet: anyone authenticated, and nothing is decided)."""
    policies = list(scope.policies.values())
    mine = [p for p in policies if p.host_id == sender]
    if policies and not mine:
        raise _not_vm_host(sender, event)
    return mine


def volume_host(sender: str, event: Event, scope: Scope) -> list:
    """The host of the named volume, which must be the VM's: decided over all the host's volumes of the VM."""
    target = scope.policies.get(event.volume_id or "")
    if target is None:
        raise NotFound(f"volume {event.volume_id} is not a volume of {event.vm_id}")
    if target.host_id != sender:
        raise _not_vm_host(sender, event)
    return [p for p in scope.policies.values() if p.host_id == sender]


def volume_host_one(sender: str, event: Event, scope: Scope) -> list:
    """:func:`volume_host`, decided over the named volume only."""
    volume_host(sender, event, scope)
    return [scope.policies[event.volume_id or ""]]


def migration_source(sender: str, event: Event, scope: Scope) -> list:
    """The VM's host, moving it to another enrolled, active host."""
    mine = [p for p in scope.policies.values() if p.host_id == sender]
    if not mine:
        raise _not_vm_host(sender, event)
    dest = event.destination_host
    if dest == sender or not scope.active(dest):
        raise Forbidden(f"destination {dest} is not another enrolled, active host")
    return mine


def migration_destination(sender: str, event: Event, scope: Scope) -> list:
    """The host a live grant names, completing a move from that grant's (still active) source; or the host
    that already completed it (a redelivery under a new id: decided ``already_complete``)."""
    policies = list(scope.policies.values())
    grant = scope.grants.get(sender)
    if grant is None:
        mine = [p for p in policies if p.host_id == sender]
        if policies and len(mine) == len(policies):
            return mine
        raise Forbidden(f"host {sender} holds no live migration grant for {event.vm_id}")
    if grant.source_host != event.source_host:
        raise Forbidden(f"{event.source_host} is not the host {event.vm_id} is moving from")
    if not scope.active(grant.source_host):
        raise Forbidden(f"the grant of {event.vm_id} died with its revoked source host")
    return [p for p in policies if p.host_id == grant.source_host]


# ---------------------------------------------------------------- decide functions (vols in volume order)

def _created(event: Event, vols: list[en.VolumeView], now: datetime, sender: str | None) -> list[en.Decision]:
    out = []
    for v in vols:
        d = en.Decision(v.volume_id, Action.CREATE, Outcome.PENDING, "vm.created", policy_version=v.policy_version)
        out.append(replace(d, outcome=Outcome.SKIPPED, reason="exists") if v.exists else d)
    return out


def _attach_on(trigger: str) -> Decide:
    def run(event: Event, vols: list[en.VolumeView], now: datetime, sender: str | None) -> list[en.Decision]:
        return [en.attach(v, event, now, f"attach_on={trigger}", vols) for v in vols if v.attach_on == trigger]
    return run


def _app_attach(trigger: str) -> Decide:
    def run(event: Event, vols: list[en.VolumeView], now: datetime, sender: str | None) -> list[en.Decision]:
        out = []
        for v in vols:
            if v.attach_on == trigger and v.app == event.app:
                if not en.app_allowed(v, event.app):
                    out.append(en.Decision(v.volume_id, Action.ATTACH, Outcome.DENIED, "not_authorized_app",
                                        v.policy_version))
                else:
                    out.append(en.attach(v, event, now, f"attach_on={trigger}", vols))
        return out
    return run


def _app_detach(trigger: str) -> Decide:
    def run(event: Event, vols: list[en.VolumeView], now: datetime, sender: str | None) -> list[en.Decision]:
        return [en.detach(v, event, now, f"detach_on={trigger}") for v in vols
                if v.detach_on == trigger and v.app == event.app]
    return run


def _booted(event: Event, vols: list[en.VolumeView], now: datetime, sender: str | None) -> list[en.Decision]:
    return [en.detach(v, event, now, "detach_on=postboot") for v in vols if v.detach_on == "postboot"]


def _shutdown(event: Event, vols: list[en.VolumeView], now: datetime, sender: str | None) -> list[en.Decision]:
    return [en.detach(v, event, now, "vm.shutdown") for v in vols if v.attached or en.busy(v, now)]


def _attach_request(event: Event, vols: list[en.VolumeView], now: datetime, sender: str | None) -> list[en.Decision]:
    return [en.request_attach(v, event, now, vols) for v in vols if v.volume_id == event.volume_id]


def _detach_request(event: Event, vols: list[en.VolumeView], now: datetime, sender: str | None) -> list[en.Decision]:
    return [en.detach(v, event, now, "volume.detach_request") for v in vols if v.volume_id == event.volume_id]


def _inventory(event: Event, vols: list[en.VolumeView], now: datetime, sender: str | None) -> list[en.Decision]:
    return [en.select(v, event, now) for v in vols]


def _migrate_start(event: Event, vols: list[en.VolumeView], now: datetime, sender: str | None) -> list[en.Decision]:
    out = []
    for v in vols:
        d = en.Decision(v.volume_id, Action.GRANT, Outcome.PENDING, f"vm.migrate.start to {event.destination_host}",
                     policy_version=v.policy_version)
        if not v.exists:
            d = replace(d, outcome=Outcome.SKIPPED, reason="not_created")
        elif event.destination_host in v.grants:
            d = replace(d, outcome=Outcome.SKIPPED, reason="already_granted")
        out.append(d)
    return out


def _migrate_complete(event: Event, vols: list[en.VolumeView], now: datetime, sender: str | None) -> list[en.Decision]:
    if sender is not None and vols and sender not in vols[0].grants:
        # Already completed (a redelivery under a new id): nothing left to revoke.
        return [en.Decision(v.volume_id, Action.REVOKE, Outcome.SKIPPED, "already_complete", v.policy_version)
                for v in vols]
    out = []
    for v in vols:
        d = en.Decision(v.volume_id, Action.REVOKE, Outcome.PENDING, f"vm.migrate.complete from {event.source_host}",
                     policy_version=v.policy_version)
        out.append(replace(d, outcome=Outcome.DONE, reason="not_created") if not v.exists else d)
    return out


def _heartbeat(event: Event, vols: list[en.VolumeView], now: datetime, sender: str | None) -> list[en.Decision]:
    """Renew the lease of every attached volume that stays attached while the VM runs (not ``postboot``):
    no provider call, written with the event (docs/webhook-api.md)."""
    out = []
    for v in vols:
        if not v.attached or v.detach_on == "postboot":
            continue
        d = en.Decision(v.volume_id, Action.RENEW, Outcome.DONE, "vm.heartbeat", v.policy_version)
        if en.stale(v, event):
            d = replace(d, outcome=Outcome.SKIPPED, reason="stale")
        elif en.busy(v, now):
            d = replace(d, outcome=Outcome.SKIPPED, reason="in_progress")
        else:
            d.lease_expires_at = now + timedelta(seconds=v.max_attach_seconds)
        out.append(d)
    return out


# ---------------------------------------------------------------- the registry

class EventType(NamedTuple):
    """One host event type."""

    name: str
    doc: str  # what it does (the OpenAPI document's description; docs/webhook-api.md says the same)
    example: dict[str, Any]
    decide: Decide
    required: tuple[str, ...] = ()  # fields beyond the common ones
    optional: tuple[str, ...] = ()
    authorize: Authorize = vm_host

    @property
    def fields(self) -> tuple[str, ...]:
        return self.required + self.optional


def _ex(n: str, etype: str, vm: str, host: str = "host-1", **fields: Any) -> dict[str, Any]:
    return {"event_id": f"{host}:{vm}:{n}", "type": etype, "vm_id": vm, **fields}


_INVENTORY = [{"name": "BitLocker", "type": "disk_encryption", "key_bits": 256},
              {"name": "LUKS", "type": "disk_encryption", "key_bits": 512},
              {"name": "ClamAV", "type": "antivirus", "key_bits": 1}]

ENTRIES: tuple[EventType, ...] = (
    EventType("vm.created", "Creates the VM's volumes that do not exist yet at the provider, assigned to this host "
              "only.", {**_ex("0001", "vm.created", "vm-1"), "occurred_at": "2026-11-27T05:00:00Z"}, _created),
    EventType("vm.preboot", "Attaches the VM's volumes with `attach_on: preboot`.",
              {**_ex("0002", "vm.preboot", "vm-1"), "occurred_at": "2026-11-27T05:00:01Z"}, _attach_on("preboot")),
    EventType("vm.booted", "Detaches the VM's volumes with `detach_on: postboot`.",
              {**_ex("0003", "vm.booted", "vm-1"), "occurred_at": "2026-11-27T05:00:30Z"}, _booted),
    EventType("vm.shutdown", "Detaches every volume still attached to the VM, whatever its `detach_on`.",
              _ex("0004", "vm.shutdown", "vm-2"), _shutdown),
    EventType("app.started", "Attaches the volumes whose `app` matches and whose `attach_on` is `app_start` "
              "(denied `not_authorized_app` when the volume's `authorized_apps` does not list it).",
              _ex("0005", "app.started", "vm-4", app="A1"), _app_attach("app_start"), ("app",)),
    EventType("app.stopped", "Detaches the volumes whose `app` matches and whose `detach_on` is `app_stop`.",
              _ex("0006", "app.stopped", "vm-4", app="A1"), _app_detach("app_stop"), ("app",)),
    EventType("license.check", "Attaches the license volumes of that app (`attach_on: license_check`).",
              _ex("0007", "license.check", "vm-3", app="L1"), _app_attach("license_check"), ("app",)),
    EventType("license.verified", "Detaches the license volumes of that app (`detach_on: license_verified`).",
              _ex("0008", "license.verified", "vm-3", app="L1"), _app_detach("license_verified"), ("app",)),
    EventType("volume.attach_request", "Attaches one `request` volume, checking its password; 5 wrong passwords "
              "in a row lock it for 15 minutes (denied `bad_password` / `locked`).",
              _ex("0009", "volume.attach_request", "vm-1", volume_id="vvol-6", password="s3cret"),
              _attach_request, ("volume_id",), ("password",), volume_host),
    EventType("volume.detach_request", "Detaches one volume.",
              _ex("0010", "volume.detach_request", "vm-1", volume_id="vvol-6"), _detach_request, ("volume_id",),
              (), volume_host_one),
    EventType("vm.migrate.start", "Sent by the VM's host: grants `destination_host` access to every volume of the "
              "VM (until `vm.migrate.complete`, or at most 3600 s).",
              _ex("0011", "vm.migrate.start", "vm-2", destination_host="host-2"), _migrate_start,
              ("destination_host",), (), migration_source),
    EventType("vm.migrate.complete", "Sent by the destination: revokes `source_host`; the destination becomes the "
              "VM's host.", _ex("0001", "vm.migrate.complete", "vm-2", host="host-2", source_host="host-1"),
              _migrate_complete, ("source_host",), (), migration_destination),
    EventType("guest.inventory", "Selects, per volume, every installed product of type `disk_encryption` whose "
              "`key_bits` meets the volume's `min_key_bits` (all of them when it has none), strongest first; none "
              "qualifying is `denied` (`no_qualifying_software`). The inventory is kept with the VM's state: while "
              "the latest one offers no qualifying product, every attach of a volume with `min_key_bits` is "
              "`denied` (`no_qualifying_software`); a VM that never sent one is not refused. An inventory older "
              "than the kept one is `skipped` (`stale`).",
              _ex("0012", "guest.inventory", "vm-1", apps=_INVENTORY), _inventory, ("apps",)),
    EventType("vm.heartbeat", "Sent by the VM's host while the VM runs (the host hook: every 60 s): renews the lease "
              "of each attached volume whose `detach_on` is not `postboot` to now + `max_attach_seconds` (action "
              "`renew`, outcome `done`, with the new `lease_expires_at`); `postboot` volumes are never renewed "
              "and get no decision. No provider call.",
              _ex("0013", "vm.heartbeat", "vm-2"), _heartbeat),
)
REGISTRY: dict[str, EventType] = {e.name: e for e in ENTRIES}


def entry(etype: str) -> EventType:
    """The registered type ``etype`` (InvalidEvent when there is none)."""
    found = REGISTRY.get(etype)
    if found is None:
        raise InvalidEvent(f"type must be one of {', '.join(REGISTRY)}")
    return found

