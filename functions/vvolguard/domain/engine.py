"""The policy engine: (the VM's policies and their state, an event, now) -> decisions with reasons.

Pure functions, no I/O: the webhook, the dashboard's simulator and the reconciler all call ``decide``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

from vvolguard.domain.events import Event
from vvolguard.domain.secrets import check_password

MAX_FAILED_PASSWORDS = 5
LOCK_SECONDS = 15 * 60
BUSY_SECONDS = 60
DEVICES = [f"/dev/sd{c}" for c in "fghijklmnop"] + [f"/dev/xvd{a}{b}" for a in "bc" for b in "abcdefghijklmnopqrstuvwxyz"]


@dataclass(frozen=True)
class VolumeView:
    """What the engine knows of one volume: its policy and its attachment state."""

    volume_id: str
    vm_id: str
    host_id: str
    attach_on: str
    detach_on: str
    size_mb: int = 10
    app: str | None = None
    authorized_apps: tuple[str, ...] = ()
    password_hash: str | None = field(default=None, repr=False)
    max_attach_seconds: int = 900
    min_key_bits: int | None = None
    policy_version: int = 1
    exists: bool = False
    attached: bool = False
    last_event_at: datetime | None = None
    failed_passwords: int = 0
    locked_until: datetime | None = None
    busy_until: datetime | None = None
    grants: tuple[str, ...] = ()
    # The disk_encryption products (name, key_bits) of the VM's latest guest.inventory, as recorded with this
    # volume's state; None: the VM never sent one (its first boot is not refused). docs/guest-channel.md
    inventory: tuple[tuple[str, int], ...] | None = None
    inventory_at: datetime | None = None


@dataclass
class Decision:
    """One decision about one volume; ``needs_provider`` ones are carried out before they are answered."""

    volume_id: str
    action: str
    outcome: str
    reason: str
    policy_version: int | None = None
    device: str | None = None
    lease_expires_at: datetime | None = None
    software: list[str] | None = None
    provider_volume_id: str | None = None  # a done attach: the provider's id, so the host finds the device
    # state effects the service writes (not part of the answer)
    failed_passwords: int | None = None
    locked_until: datetime | None = None
    touch: bool = False
    inventory: tuple[tuple[str, int], ...] | None = None  # a select: what to record with the volume's state
    inventory_at: datetime | None = None

    @property
    def needs_provider(self) -> bool:
        return self.outcome == "pending"

    def answer(self) -> dict:
        """The decision as the webhook answers it (docs/webhook-api.md)."""
        out: dict = {"volume_id": self.volume_id, "action": self.action, "outcome": self.outcome, "reason": self.reason}
        if self.device:
            out["device"] = self.device
        if self.lease_expires_at:
            out["lease_expires_at"] = self.lease_expires_at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        if self.provider_volume_id and self.action == "attach" and self.outcome == "done":
            out["provider_volume_id"] = self.provider_volume_id
        if self.software is not None:
            out["software"] = list(self.software)
        return out


def device_for(volume_id: str, volumes: list[VolumeView]) -> str:
    """A stable device name per volume of the VM (its position among the VM's volumes)."""
    ids = sorted(v.volume_id for v in volumes)
    idx = ids.index(volume_id) if volume_id in ids else 0
    return DEVICES[idx % len(DEVICES)]


def _stale(v: VolumeView, event: Event) -> bool:
    return bool(event.occurred_at and v.last_event_at and event.occurred_at < v.last_event_at)


def _busy(v: VolumeView, now: datetime) -> bool:
    return bool(v.busy_until and v.busy_until > now)


def _attach(v: VolumeView, event: Event, now: datetime, reason: str, volumes: list[VolumeView]) -> Decision:
    d = Decision(v.volume_id, "attach", "pending", reason, policy_version=v.policy_version, touch=True)
    if _stale(v, event):
        return replace(d, outcome="skipped", reason="stale", touch=False)
    if _busy(v, now):
        return replace(d, outcome="skipped", reason="in_progress", touch=False)
    if v.attached:
        return replace(d, outcome="skipped", reason="already_attached", device=device_for(v.volume_id, volumes))
    if v.min_key_bits is not None and v.inventory is not None:
        software = selection(v.inventory, v.min_key_bits)
        if not software:
            return replace(d, outcome="denied", reason="no_qualifying_software", touch=False)
        d.software = software
    d.device = device_for(v.volume_id, volumes)
    d.lease_expires_at = now + timedelta(seconds=v.max_attach_seconds)
    return d


def _detach(v: VolumeView, event: Event, now: datetime, reason: str) -> Decision:
    d = Decision(v.volume_id, "detach", "pending", reason, policy_version=v.policy_version, touch=True)
    if _stale(v, event):
        return replace(d, outcome="skipped", reason="stale", touch=False)
    if _busy(v, now):
        return replace(d, outcome="skipped", reason="in_progress", touch=False)
    if not v.attached:
        return replace(d, outcome="skipped", reason="not_attached")
    return d


def _app_allowed(v: VolumeView, app: str | None) -> bool:
    return not v.authorized_apps or (app is not None and app in v.authorized_apps)


def decide(event: Event, volumes: list[VolumeView], now: datetime) -> list[Decision]:
    """Decisions for ``event`` over the VM's ``volumes`` (those of the sending host), in volume order."""
    vols = sorted(volumes, key=lambda v: v.volume_id)
    t = event.type
    out: list[Decision] = []
    if t == "vm.created":
        for v in vols:
            d = Decision(v.volume_id, "create", "pending", "vm.created", policy_version=v.policy_version)
            out.append(replace(d, outcome="skipped", reason="exists") if v.exists else d)
    elif t == "vm.preboot":
        out = [_attach(v, event, now, "attach_on=preboot", vols) for v in vols if v.attach_on == "preboot"]
    elif t == "vm.booted":
        out = [_detach(v, event, now, "detach_on=postboot") for v in vols if v.detach_on == "postboot"]
    elif t == "vm.shutdown":
        out = [_detach(v, event, now, "vm.shutdown") for v in vols if v.attached or _busy(v, now)]
    elif t in ("app.started", "license.check"):
        trigger = "app_start" if t == "app.started" else "license_check"
        for v in vols:
            if v.attach_on == trigger and v.app == event.app:
                if not _app_allowed(v, event.app):
                    out.append(Decision(v.volume_id, "attach", "denied", "not_authorized_app", v.policy_version))
                else:
                    out.append(_attach(v, event, now, f"attach_on={trigger}", vols))
    elif t in ("app.stopped", "license.verified"):
        trigger = "app_stop" if t == "app.stopped" else "license_verified"
        out = [_detach(v, event, now, f"detach_on={trigger}", ) for v in vols
               if v.detach_on == trigger and v.app == event.app]
    elif t == "volume.attach_request":
        out = [_request_attach(v, event, now, vols) for v in vols if v.volume_id == event.volume_id]
    elif t == "volume.detach_request":
        out = [_detach(v, event, now, "volume.detach_request") for v in vols if v.volume_id == event.volume_id]
    elif t == "guest.inventory":
        out = [_select(v, event, now) for v in vols]
    elif t == "vm.migrate.start":
        for v in vols:
            d = Decision(v.volume_id, "grant", "pending", f"vm.migrate.start to {event.destination_host}",
                         policy_version=v.policy_version)
            if not v.exists:
                d = replace(d, outcome="skipped", reason="not_created")
            elif event.destination_host in v.grants:
                d = replace(d, outcome="skipped", reason="already_granted")
            out.append(d)
    elif t == "vm.migrate.complete":
        for v in vols:
            d = Decision(v.volume_id, "revoke", "pending", f"vm.migrate.complete from {event.source_host}",
                         policy_version=v.policy_version)
            out.append(replace(d, outcome="done", reason="not_created") if not v.exists else d)
    return out


def refuse_attaches(decisions: list[Decision], reason: str = "quarantined") -> list[Decision]:
    """A quarantined VM (docs/break-glass.md): every attach is denied; detaches and the rest stand."""
    return [Decision(d.volume_id, "attach", "denied", reason, d.policy_version) if d.action == "attach" else d
            for d in decisions]


def _request_attach(v: VolumeView, event: Event, now: datetime, vols: list[VolumeView]) -> Decision:
    base = Decision(v.volume_id, "attach", "denied", "", v.policy_version)
    if v.attach_on != "request":
        return replace(base, reason="not_a_request_volume")
    if _stale(v, event):
        return replace(base, outcome="skipped", reason="stale")
    if v.locked_until and v.locked_until > now:
        return replace(base, reason="locked")
    if v.password_hash:
        if not event.password or not check_password(event.password, v.password_hash):
            fails = v.failed_passwords + 1
            locked = now + timedelta(seconds=LOCK_SECONDS) if fails >= MAX_FAILED_PASSWORDS else None
            return replace(base, reason="bad_password", failed_passwords=0 if locked else fails, locked_until=locked)
    d = _attach(v, event, now, "attach_on=request", vols)
    if v.password_hash and (v.failed_passwords or v.locked_until):
        d.failed_passwords = 0
    return d


def selection(products, min_key_bits: int | None) -> list[str]:
    """The names of the (name, key_bits) disk_encryption products meeting ``min_key_bits``, strongest first."""
    picks = [(n, b) for n, b in products if min_key_bits is None or b >= min_key_bits]
    picks.sort(key=lambda p: (-p[1], p[0]))
    return [n for n, _ in picks]


def _select(v: VolumeView, event: Event, now: datetime) -> Decision:
    """Select this volume's software and record the VM's disk_encryption products with its state: a later attach
    of a volume with ``min_key_bits`` is decided against them (``_attach``). An inventory older than the one
    recorded is ``stale`` and changes nothing."""
    if event.occurred_at and v.inventory_at and event.occurred_at < v.inventory_at:
        return Decision(v.volume_id, "select", "skipped", "stale", v.policy_version)
    best: dict[str, int] = {}  # one entry per product name: its strongest report
    for s in event.apps:
        if s.type == "disk_encryption":
            best[s.name] = max(best.get(s.name, 0), s.key_bits)
    offered = tuple(sorted(best.items(), key=lambda p: (-p[1], p[0])))
    picks = selection(offered, v.min_key_bits)
    d = Decision(v.volume_id, "select", "done", "", v.policy_version, software=picks, inventory=offered,
                 inventory_at=event.occurred_at or now)
    if not picks:
        return replace(d, outcome="denied", reason="no_qualifying_software")
    d.reason = f"min_key_bits={v.min_key_bits}" if v.min_key_bits else "disk_encryption"
    return d
