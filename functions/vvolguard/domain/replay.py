"""Policy impact (docs/policy-impact.md): recorded host events replayed through two policies. Pure, no I/O.

The same engine as the webhook (``engine.decide``) decides each replayed event, once over the current
policies and once over the draft, each side keeping its own state (attached, created, failed passwords,
locks, inventory, grants) as the events walk forward in order. A provider call is taken to succeed (a
``pending`` decision is replayed as ``done``). A recorded password attach carries the password's verdict
(ok | bad | none), never the password: the replay presents a stand-in that passes or fails the check.
"""
from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Iterable

from vvolguard.domain.engine import Decision, VolumeView, decide, refuse_attaches
from vvolguard.domain.events import Event, Software

# A stand-in password hash (the engine's scrypt format with the cheapest parameters) and the two
# passwords that pass or fail it: a replay never holds a real password or runs a real scrypt.
_SALT = b"vvg-replay"
_OK, _BAD = "replay-ok", "replay-bad"
REPLAY_HASH = "scrypt$2$1$1${}${}".format(
    base64.b64encode(_SALT).decode("ascii"),
    base64.b64encode(hashlib.scrypt(_OK.encode(), salt=_SALT, n=2, r=1, p=1, dklen=32)).decode("ascii"))
VERDICTS = ("ok", "bad", "none")


# ---- what is replayed

@dataclass
class RecordedEvent:
    """One host event rebuilt from its audit records (one record per decision it made)."""

    host_id: str
    event: Event
    at: datetime
    verdict: str = "none"


def parse_apps(text: str | None) -> tuple[Software, ...]:
    out = []
    for part in (text or "").split(","):
        name, _, rest = part.partition(":")
        typ, _, bits = rest.partition(":")
        if name and typ and bits.isdigit():
            out.append(Software(name, typ, int(bits)))
    return tuple(out)


@dataclass
class Side:
    """One policy's replay: its volumes (with their replayed state) by VM, and its quarantined VMs."""

    by_vm: dict[str, dict[str, VolumeView]] = field(default_factory=dict)
    quarantined: set[str] = field(default_factory=set)

    def volume(self, volume_id: str) -> VolumeView | None:
        for vols in self.by_vm.values():
            if volume_id in vols:
                return vols[volume_id]
        return None


def start_view(view: VolumeView) -> VolumeView:
    """A volume as the replay starts it (docs/policy-impact.md): nothing attached, no lock, no failed passwords,
    no inventory, no grants; created if the provider holds it now; any password becomes the stand-in."""
    return replace(view, attached=False, last_event_at=None, failed_passwords=0, locked_until=None, busy_until=None,
                   grants=(), inventory=None, inventory_at=None,
                   password_hash=REPLAY_HASH if view.password_hash else None)


def _mine(side: Side, rec: RecordedEvent) -> list[VolumeView]:
    """The volumes the event is decided over, as the webhook chooses them (services/events.py _authorize);
    [] where the webhook would refuse the event (no decision)."""
    ev = rec.event
    vols = list(side.by_vm.get(ev.vm_id, {}).values())
    mine = [v for v in vols if v.host_id == rec.host_id]
    if ev.type.startswith("volume."):
        target = next((v for v in vols if v.volume_id == ev.volume_id), None)
        if target is None or target.host_id != rec.host_id:
            return []
        return [target] if ev.type == "volume.detach_request" else mine
    if ev.type == "vm.migrate.complete":
        moving = [v for v in vols if v.host_id == ev.source_host and rec.host_id in v.grants]
        return moving
    return mine


def _decide(side: Side, rec: RecordedEvent) -> list[Decision]:
    ev = rec.event
    if ev.type == "volume.attach_request":
        pw = {"ok": _OK, "bad": _BAD}.get(rec.verdict)
        ev = replace(ev, password=pw)
    decisions = decide(ev, _mine(side, rec), rec.at)
    if ev.vm_id in side.quarantined:
        decisions = refuse_attaches(decisions)
    return decisions


def _apply(side: Side, rec: RecordedEvent, decisions: list[Decision]) -> None:
    """Move one side's state as the webhook would after a provider call that succeeded."""
    vols = side.by_vm.get(rec.event.vm_id, {})
    when = rec.event.occurred_at or rec.at
    for d in decisions:
        v = vols.get(d.volume_id)
        if v is None:
            continue
        ch: dict[str, Any] = {}
        if d.failed_passwords is not None:
            ch["failed_passwords"] = d.failed_passwords
        if d.locked_until is not None:
            ch["locked_until"] = d.locked_until
        elif d.failed_passwords == 0:
            ch["locked_until"] = None
        if d.inventory is not None:
            ch.update(inventory=d.inventory, inventory_at=d.inventory_at or when)
        if d.outcome == "pending":
            ch["last_event_at"] = when
            if d.action == "attach":
                ch.update(attached=True, exists=True)
            elif d.action == "detach":
                ch["attached"] = False
            elif d.action == "create":
                ch["exists"] = True
            elif d.action == "grant":
                ch["grants"] = tuple(sorted(set(v.grants) | {rec.event.destination_host or ""}))
            elif d.action == "revoke":
                ch.update(host_id=rec.host_id, grants=tuple(g for g in v.grants if g != rec.host_id))
        if ch:
            vols[d.volume_id] = replace(v, **ch)


def _shown(d: Decision | None) -> dict[str, str] | None:
    if d is None:
        return None
    return {"action": d.action, "outcome": "done" if d.outcome == "pending" else d.outcome, "reason": d.reason}


@dataclass
class Replay:
    """Both sides of an impact analysis, fed one recorded event at a time, in order."""

    now: Side
    draft: Side
    events_replayed: int = 0
    not_replayable: int = 0
    changed: list[dict[str, Any]] = field(default_factory=list)

    def event(self, rec: RecordedEvent, event_id: str) -> None:
        """Replay one event through both sides; note each volume whose decision differs."""
        self.events_replayed += 1
        a, b = _decide(self.now, rec), _decide(self.draft, rec)
        _apply(self.now, rec, a)
        _apply(self.draft, rec, b)
        sa, sb = {d.volume_id: _shown(d) for d in a}, {d.volume_id: _shown(d) for d in b}
        if sa == sb:
            return
        at = rec.at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        for vid in sorted(set(sa) | set(sb)):
            if sa.get(vid) != sb.get(vid):
                self.changed.append({"event_id": event_id, "at": at, "vm_id": rec.event.vm_id, "volume_id": vid,
                                     "event_type": rec.event.type, "now": sa.get(vid), "draft": sb.get(vid)})

    def outside(self, action: str, vm_id: str | None, volume_id: str | None) -> None:
        """What happened outside host events, true on both sides: a quarantine or release, or a detach done by
        the reconciler, a quarantine, a host revoke or a policy delete."""
        for side in (self.now, self.draft):
            if action == "vm_quarantine" and vm_id:
                side.quarantined.add(vm_id)
            elif action == "vm_release" and vm_id:
                side.quarantined.discard(vm_id)
            elif action == "detach" and volume_id:
                for vols in side.by_vm.values():
                    if volume_id in vols:
                        vols[volume_id] = replace(vols[volume_id], attached=False)

    def result(self) -> dict[str, Any]:
        return {"events_replayed": self.events_replayed, "not_replayable": self.not_replayable,
                "changed": self.changed}


def build_side(views: Iterable[VolumeView]) -> Side:
    side = Side()
    for v in views:
        side.by_vm.setdefault(v.vm_id, {})[v.volume_id] = start_view(v)
    return side
