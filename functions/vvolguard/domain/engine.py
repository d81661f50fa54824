"""The policy engine: (the VM's policies and their state, an event, now) -> decisions with reasons.

Pure functions, no I/O: the webhook, the dashboard's simulator and the reconciler all call ``decide``, which
dispatches to the event type's entry in ``vvolguard.domain.registry``; this module holds the rules those
entries share (attach, detach, a password request, a selection).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from vvolguard.domain.constants import DEFAULT_LEASE_S, Action, Outcome, rfc3339
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
    max_attach_seconds: int = DEFAULT_LEASE_S
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
    action: Action
    outcome: Outcome
    reason: str
    policy_version: int | None = None
    device: str | None = None
    lease_expires_at: datetime | None = None
    software: list[str] | None = None
    provider_volume_id: str | None = None  # a done attach: the provider's id, so the host finds the device
    # state effects the service writes (not part of the answer)
    failed_passwords: int | None = None
    locked_until: datetime | None = None
    inventory: tuple[tuple[str, int], ...] | None = None  # a select: what to record with the volume's state
    inventory_at: datetime | None = None

    @property
    def needs_provider(self) -> bool:
        return self.outcome == Outcome.PENDING

    def fail(self, reason: str) -> None:
        """The provider refused it (docs/webhook-api.md): ``failed`` with the reason, and nothing in the answer
        that only a done attach has (device, provider id, lease, software)."""
        if self.action == Action.ATTACH:
            self.device, self.software = None, None
        self.outcome, self.reason = Outcome.FAILED, reason
        self.provider_volume_id = None
        self.lease_expires_at = None

    def answer(self) -> dict:
        """The decision as the webhook answers it (docs/webhook-api.md)."""
        out: dict = {"volume_id": self.volume_id, "action": self.action, "outcome": self.outcome, "reason": self.reason}
        if self.device:
            out["device"] = self.device
        if self.lease_expires_at:
            out["lease_expires_at"] = rfc3339(self.lease_expires_at)
        if self.provider_volume_id and self.action == Action.ATTACH and self.outcome == Outcome.DONE:
            out["provider_volume_id"] = self.provider_volume_id
        if self.software is not None:
            out["software"] = list(self.software)
        return out


def device_for(volume_id: str, volumes: list[VolumeView]) -> str:
    """A stable device name per volume of the VM (its position among the VM's volumes)."""
    ids = sorted(v.volume_id for v in volumes)
    idx = ids.index(volume_id) if volume_id in ids else 0
    return DEVICES[idx % len(DEVICES)]


def stale(v: VolumeView, event: Event) -> bool:
    return bool(event.occurred_at and v.last_event_at and event.occurred_at < v.last_event_at)


def busy(v: VolumeView, now: datetime) -> bool:
    return bool(v.busy_until and v.busy_until > now)


def attach(v: VolumeView, event: Event, now: datetime, reason: str, volumes: list[VolumeView]) -> Decision:
    d = Decision(v.volume_id, Action.ATTACH, Outcome.PENDING, reason, policy_version=v.policy_version)
    if stale(v, event):
        return replace(d, outcome=Outcome.SKIPPED, reason="stale")
    if busy(v, now):
        return replace(d, outcome=Outcome.SKIPPED, reason="in_progress")
    if v.attached:
        return replace(d, outcome=Outcome.SKIPPED, reason="already_attached", device=device_for(v.volume_id, volumes))
    if v.min_key_bits is not None and v.inventory is not None:
        software = selection(v.inventory, v.min_key_bits)
        if not software:
            return replace(d, outcome=Outcome.DENIED, reason="no_qualifying_software")
        d.software = software
    d.device = device_for(v.volume_id, volumes)
    d.lease_expires_at = now + timedelta(seconds=v.max_attach_seconds)
    return d


def detach(v: VolumeView, event: Event, now: datetime, reason: str) -> Decision:
    d = Decision(v.volume_id, Action.DETACH, Outcome.PENDING, reason, policy_version=v.policy_version)
    if stale(v, event):
        return replace(d, outcome=Outcome.SKIPPED, reason="stale")
    if busy(v, now):
        return replace(d, outcome=Outcome.SKIPPED, reason="in_progress")
    if not v.attached:
        return replace(d, outcome=Outcome.SKIPPED, reason="not_attached")
    return d


def app_allowed(v: VolumeView, app: str | None) -> bool:
    return not v.authorized_apps or (app is not None and app in v.authorized_apps)


def decide(event: Event, volumes: list[VolumeView], now: datetime, sender: str | None = None) -> list[Decision]:
    """Decisions for ``event`` over the VM's ``volumes`` (those of the sending host ``sender``), in volume order:
    the event type's own rule from the registry."""
    vols = sorted(volumes, key=lambda v: v.volume_id)
    return registry.entry(event.type).decide(event, vols, now, sender)


def refuse_attaches(decisions: list[Decision], reason: str = "quarantined") -> list[Decision]:
    """A quarantined VM (docs/break-glass.md): every attach is denied; detaches and the rest stand."""
    return [Decision(d.volume_id, Action.ATTACH, Outcome.DENIED, reason, d.policy_version) if d.action == Action.ATTACH
            else d
            for d in decisions]


def request_attach(v: VolumeView, event: Event, now: datetime, vols: list[VolumeView]) -> Decision:
    base = Decision(v.volume_id, Action.ATTACH, Outcome.DENIED, "", v.policy_version)
    if v.attach_on != "request":
        return replace(base, reason="not_a_request_volume")
    if stale(v, event):
        return replace(base, outcome=Outcome.SKIPPED, reason="stale")
    if v.locked_until and v.locked_until > now:
        return replace(base, reason="locked")
    if v.password_hash:
        if not event.password or not check_password(event.password, v.password_hash):
            fails = v.failed_passwords + 1
            locked = now + timedelta(seconds=LOCK_SECONDS) if fails >= MAX_FAILED_PASSWORDS else None
            return replace(base, reason="bad_password", failed_passwords=0 if locked else fails, locked_until=locked)
    d = attach(v, event, now, "attach_on=request", vols)
    if v.password_hash and (v.failed_passwords or v.locked_until):
        d.failed_passwords = 0
    return d


def selection(products, min_key_bits: int | None) -> list[str]:
    """The names of the (name, key_bits) disk_encryption products meeting ``min_key_bits``, strongest first."""
    picks = [(n, b) for n, b in products if min_key_bits is None or b >= min_key_bits]
    picks.sort(key=lambda p: (-p[1], p[0]))
    return [n for n, _ in picks]


def select(v: VolumeView, event: Event, now: datetime) -> Decision:
    """Select this volume's software and record the VM's disk_encryption products with its state: a later attach
    of a volume with ``min_key_bits`` is decided against them (``attach``). An inventory older than the one
    recorded is ``stale`` and changes nothing."""
    if event.occurred_at and v.inventory_at and event.occurred_at < v.inventory_at:
        return Decision(v.volume_id, Action.SELECT, Outcome.SKIPPED, "stale", v.policy_version)
    best: dict[str, int] = {}  # one entry per product name: its strongest report
    for s in event.apps:
        if s.type == "disk_encryption":
            best[s.name] = max(best.get(s.name, 0), s.key_bits)
    offered = tuple(sorted(best.items(), key=lambda p: (-p[1], p[0])))
    picks = selection(offered, v.min_key_bits)
    d = Decision(v.volume_id, Action.SELECT, Outcome.DONE, "", v.policy_version, software=picks, inventory=offered,
                 inventory_at=event.occurred_at or now)
    if not picks:
        return replace(d, outcome=Outcome.DENIED, reason="no_qualifying_software")
    d.reason = f"min_key_bits={v.min_key_bits}" if v.min_key_bits else "disk_encryption"
    return d


from vvolguard.domain import registry  # noqa: E402 (the registry's entries use the rules above)
