"""The webhook's stores, each contributing operations to one shared transaction (``adapters/tx.py``).

As Powertools keeps idempotency apart from the handler it guards, the event path's writes are split by
what they are about: the :class:`IdempotencyStore` (the events table: claim an event id, keep its answer,
release it after a provider outage), the :class:`VolumeStateStore` (the VM's partition: policies' state,
busy marks, leases, migration grants) and the :class:`HostGuard` (the sending host is still active with the
same secret). None of them commits: the orchestrator (``services/events.py``) opens one ``Tx``, lets each
store add its operations, and commits once, so claiming an event stays one atomic round trip
(docs/webhook-api.md, docs/architecture.md).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from vvolguard.adapters import aws
from vvolguard.adapters.audit import HEAD_SK
from vvolguard.adapters.models import (
    ChainHead,
    ClaimItem,
    EventItem,
    GrantItem,
    HostItem,
    PolicyItem,
    QUARANTINE_SK,
    QuarantineItem,
    StateItem,
    connection,
    expiry_key,
    expiry_shard,
)
from vvolguard.adapters.tx import Tx
from vvolguard.domain.constants import Action, Outcome
from vvolguard.domain.engine import BUSY_SECONDS, Decision, VolumeView
from vvolguard.domain.events import MAX_BODY, Event
from vvolguard.domain.fingerprint import body_key, body_mac, password_tag, same_body
from vvolguard.errors import EventConflict, EventInProgress, PayloadTooLarge
from vvolguard.services.auth import AuthenticatedHost
from vvolguard.domain.constants import RESERVED_HOSTS
from vvolguard.settings import Settings

EVENT_TTL_S = 7 * 86400
TOUCH_EVERY_S = 60.0


def view_of(item: PolicyItem, grants: tuple[str, ...] = ()) -> VolumeView:
    """The engine's view of a stored policy item."""
    return VolumeView(
        volume_id=item.volume_id, vm_id=item.vm_id, host_id=item.host_id, attach_on=item.attach_on,
        detach_on=item.detach_on, size_mb=int(item.size_mb), app=item.app,
        authorized_apps=tuple(item.authorized_apps or ()), password_hash=item.password_hash,
        max_attach_seconds=int(item.max_attach_seconds),
        min_key_bits=int(item.min_key_bits) if item.min_key_bits is not None else None,
        policy_version=int(item.policy_version), exists=bool(item.provider_volume_id), attached=bool(item.attached),
        last_event_at=item.last_event_at, failed_passwords=int(item.failed_passwords or 0),
        locked_until=item.locked_until, busy_until=item.busy_until, grants=grants,
        inventory=inventory_of(item), inventory_at=item.inventory_at,
    )


def inventory_of(item: PolicyItem) -> tuple[tuple[str, int], ...] | None:
    """The recorded (name, key_bits) products of the VM's latest guest.inventory, or None if it never sent one."""
    if item.inventory is None:
        return None
    out = []
    for entry in item.inventory:
        name, _, bits = str(entry).rpartition(":")
        if name and bits.isdigit():
            out.append((name, int(bits)))
    return tuple(out)


@dataclass
class Partition:
    """One read of a VM's partition."""

    policies: dict[str, PolicyItem]
    head: tuple[int, str]
    grants: dict[str, GrantItem] = field(default_factory=dict)
    quarantine: QuarantineItem | None = None

    def live_grants(self, now: datetime) -> dict[str, GrantItem]:
        return {h: g for h, g in self.grants.items() if g.expires_at > now}


@dataclass(frozen=True)
class BodyPrint:
    """What the events table keeps of a body (vvolguard.domain.fingerprint), and the raw body to compare."""

    mac: str
    tag: str | None
    raw: bytes = field(repr=False)

    @classmethod
    def of(cls, settings: Settings, raw: bytes, doc: dict[str, Any]) -> BodyPrint:
        key = body_key(aws.audit_key(settings.region, settings.audit_key_secret_id))
        return cls(body_mac(key, raw, doc), password_tag(raw) if "password" in doc else None, raw)

    @classmethod
    def internal(cls, settings: Settings, doc: dict[str, Any]) -> BodyPrint:
        """The print of an event vvolguard sends itself (docs/ec2-vms.md): its canonical JSON, held to the
        webhook's size limit."""
        raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        if len(raw) > MAX_BODY:
            raise PayloadTooLarge(f"the body is over {MAX_BODY} bytes")
        return cls.of(settings, raw, doc)


@dataclass(frozen=True)
class EventContext:
    """One authenticated event on its way through the path: who sent what, its idempotency key (host/event id),
    its body's print, the partition read for this attempt and the server's clock."""

    host: AuthenticatedHost
    event: Event
    key: str
    fp: BodyPrint
    part: Partition
    now: datetime

    @property
    def vm_pk(self) -> str:
        return f"VM#{self.event.vm_id}"


def new_tx(settings: Settings) -> Tx:
    return Tx(connection=connection(settings))


class IdempotencyStore:
    """The events table: one item per host/event id, claimed before anything is done."""

    def claim(self, tx: Tx, ctx: EventContext, answer: dict[str, Any] | None = None) -> None:
        """Claim the id: ``in_progress`` while the provider works, or straight ``done`` with ``answer``. Holds
        for a new id, a failed attempt (any body: a refused request does not use up its id), or the same body
        whose worker died past its lease."""
        now_s = int(ctx.now.timestamp())
        item = EventItem(event_id=ctx.key, body_mac=ctx.fp.mac, password_tag=ctx.fp.tag, host_id=ctx.host.host_id,
                         status="in_progress" if answer is None else "done",
                         response=json.dumps(answer) if answer is not None else None,
                         lease_until=now_s + BUSY_SECONDS, expires_at=now_s + EVENT_TTL_S)
        same = EventItem.body_mac == ctx.fp.mac
        cond = (EventItem.event_id.does_not_exist() | (EventItem.status == "failed")
                | (same & (EventItem.status == "in_progress") & (EventItem.lease_until < now_s)))
        tx.save(item, condition=cond, label="event")
        if answer is None:  # provider work follows: findable by the reconciler if this process dies
            ends = ctx.now + timedelta(seconds=BUSY_SECONDS)
            tx.save(self._marker(ctx, ends), label="marker")

    @staticmethod
    def _marker(ctx: EventContext, ends: datetime | None = None) -> ClaimItem:
        """The claim's entry in the expiry index (docs/crash-safety.md)."""
        return ClaimItem(pk=ctx.vm_pk, sk=f"CLAIM#{ctx.key}", event_key=ctx.key,
                         expiry_shard=expiry_shard("C", ctx.key), expiry_at=expiry_key(ends or ctx.now))

    def finish(self, tx: Tx, ctx: EventContext, answer: dict[str, Any]) -> None:
        tx.update(EventItem(event_id=ctx.key), actions=[EventItem.status.set("done"),
                                                        EventItem.response.set(json.dumps(answer))])
        tx.delete(self._marker(ctx), label="marker")

    def release(self, tx: Tx, ctx: EventContext) -> None:
        """Mark a claimed event failed, so it can be retried."""
        tx.update(EventItem(event_id=ctx.key), actions=[EventItem.status.set("failed")],
                  condition=EventItem.status == "in_progress", label="event")
        tx.delete(self._marker(ctx), label="marker")

    @staticmethod
    def stored_answer(ctx: EventContext) -> dict[str, Any]:
        """The answer of an id already used: the stored one for the same body (``duplicate: true``)."""
        try:
            ev = EventItem.get(ctx.key, consistent_read=True)
        except EventItem.DoesNotExist:
            raise EventInProgress("the event is being processed right now") from None
        if ev.body_mac != ctx.fp.mac or not same_body(ctx.fp.raw, ev.password_tag):
            raise EventConflict("this event_id was already used with another body")
        if ev.status != "done" or not ev.response:
            raise EventInProgress("the event is being processed right now")
        answer = json.loads(ev.response)
        answer["duplicate"] = True
        return answer


class HostGuard:
    """The sending host is still active with the same secret (or key) when the event is claimed.

    The condition covers every attribute the event path takes from a host record (services/auth.py caches
    it): its status, credential version, credential digest (the provider identity) and signing scheme, and
    for a key host the key's fingerprint. A claim that commits therefore proves the cached record current
    (``HostAuthenticator.confirm``)."""

    def __init__(self) -> None:
        self._touched: dict[str, float] = {}

    def check(self, tx: Tx, host: AuthenticatedHost, now: datetime) -> None:
        """A condition on the host's item; at most once a minute an update of its last_seen_at instead (a write
        on every event would make one host's concurrent events conflict on its item)."""
        if host.host_id in RESERVED_HOSTS:  # vvolguard itself (EventService.handle_internal): no host record
            return
        cond = ((HostItem.status == "active") & (HostItem.secret_version == host.secret_version)
                & (HostItem.cred_hash == host.cred_hash))
        if host.fingerprint:  # a key host: the very key it was verified with
            cond = cond & (HostItem.auth == "ed25519") & (HostItem.fingerprint == host.fingerprint)
        else:  # a secret host (an absent auth means hmac: docs/host-keys.md)
            cond = cond & ~(HostItem.auth == "ed25519")
        if time.monotonic() - self._touched.get(host.host_id, 0.0) > TOUCH_EVERY_S:
            self._touched[host.host_id] = time.monotonic()
            tx.update(HostItem(host_id=host.host_id), actions=[HostItem.last_seen_at.set(now)], condition=cond,
                      label="host")
        else:
            tx.condition_check(HostItem, host.host_id, condition=cond, label="host")

    @staticmethod
    def active(host_id: str | None) -> bool:
        """Enrolled and not revoked (one consistent read)."""
        if not host_id:
            return False
        try:
            return HostItem.get(host_id, consistent_read=True).status == "active"
        except HostItem.DoesNotExist:
            return False


class VolumeStateStore:
    """The VM's partition: its policies' state, their busy marks and leases, and its migration grants."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @staticmethod
    def read(vm_id: str) -> Partition:
        """The VM's policies, grants, quarantine and audit chain head: one consistent Query."""
        policies: dict[str, PolicyItem] = {}
        grants: dict[str, GrantItem] = {}
        head = (0, "")
        quarantine = None
        for item in StateItem.query(f"VM#{vm_id}", consistent_read=True):
            if isinstance(item, PolicyItem):
                policies[item.volume_id] = item
            elif isinstance(item, GrantItem):
                grants[item.destination_host] = item
            elif isinstance(item, ChainHead) and item.sk == HEAD_SK:
                head = (int(item.head_seq), item.head_mac)
            elif isinstance(item, QuarantineItem):
                quarantine = item
        return Partition(policies, head, grants, quarantine)

    def claim(self, tx: Tx, ctx: EventContext, decisions: list[Decision], updates_of) -> None:
        """Each decided volume's immediate state (``updates_of(decision, item)``: attribute -> value, None
        removes) and, for one the provider must act on, a busy mark; conditional on the version read. An
        attach also holds only while the VM is not quarantined (docs/break-glass.md)."""
        busy_until = ctx.now + timedelta(seconds=BUSY_SECONDS)
        if any(d.action == Action.ATTACH and d.outcome in (Outcome.PENDING, Outcome.SKIPPED) for d in decisions):
            tx.condition_check(QuarantineItem, ctx.vm_pk, QUARANTINE_SK,
                               condition=QuarantineItem.sk.does_not_exist(), label="quarantine")
        for d in decisions:
            item = ctx.part.policies[d.volume_id]
            acts = _actions(updates_of(d, item))
            if d.needs_provider:
                acts += [PolicyItem.busy_event.set(ctx.key), PolicyItem.busy_until.set(busy_until)]
            if acts:
                tx.update(item, actions=acts + [PolicyItem.state_version.add(1)],
                          condition=PolicyItem.state_version == item.state_version, label="state")

    @staticmethod
    def finish(tx: Tx, ctx: EventContext, item: PolicyItem, done: bool, updates: dict[str, Any]) -> None:
        """What the provider phase did to one claimed volume, freeing it; holds only while the claim does."""
        acts = [PolicyItem.busy_event.remove(), PolicyItem.busy_until.remove(), PolicyItem.state_version.add(1)]
        if done:
            acts.append(PolicyItem.last_event_at.set(ctx.event.occurred_at or ctx.now))
        tx.update(item, actions=acts + _actions(updates), condition=PolicyItem.busy_event == ctx.key, label="claim")

    @staticmethod
    def release(tx: Tx, ctx: EventContext, volume_ids: list[str]) -> None:
        """Free volumes this event claimed, changing nothing else."""
        for vid in volume_ids:
            tx.update(ctx.part.policies[vid], actions=[PolicyItem.busy_event.remove(), PolicyItem.busy_until.remove(),
                                                       PolicyItem.state_version.add(1)],
                      condition=PolicyItem.busy_event == ctx.key, label="claim")

    def migration(self, tx: Tx, ctx: EventContext, decisions: list[Decision], finished: set[str]) -> None:
        """The table side of a migration (other types: none), in the same transaction as its audit records: a
        grant for the destination, or (completed) the grant's removal and the VM's volumes handed over."""
        event, host = ctx.event, ctx.host
        if event.type == "vm.migrate.start":
            expires = ctx.now + timedelta(seconds=self.settings.migration_grant_seconds)
            dest = event.destination_host or ""
            tx.save(GrantItem(pk=ctx.vm_pk, sk=f"GRANT#{dest}", vm_id=event.vm_id, source_host=host.host_id,
                              destination_host=dest, event_id=event.event_id, granted_at=ctx.now, expires_at=expires,
                              expiry_shard=expiry_shard("G", f"{event.vm_id}/{dest}"), expiry_at=expiry_key(expires)),
                    label="grant")
        elif event.type == "vm.migrate.complete" and any(d.reason != "already_complete" for d in decisions):
            grant = ctx.part.grants[host.host_id]
            tx.delete(grant, condition=GrantItem.sk.exists(), label="grant")
            for p in ctx.part.policies.values():
                if p.host_id == grant.source_host and p.volume_id not in finished:
                    tx.update(p, actions=[PolicyItem.host_id.set(host.host_id), PolicyItem.state_version.add(1)],
                              condition=PolicyItem.host_id == grant.source_host, label="claim")


def decision_state(d: Decision, item: PolicyItem, event: Event, now: datetime) -> dict[str, Any]:
    """The state every decision writes whatever its action: a password's failure count and lock, and a
    selection's inventory (kept with the volume's state)."""
    out: dict[str, Any] = {}
    if d.failed_passwords is not None:
        out["failed_passwords"] = d.failed_passwords
    if d.locked_until is not None:
        out["locked_until"] = d.locked_until
    elif d.failed_passwords == 0 and item.locked_until is not None:
        out["locked_until"] = None
    if d.inventory is not None:
        out["inventory"] = [f"{name}:{bits}" for name, bits in d.inventory]
        out["inventory_at"] = d.inventory_at or event.occurred_at or now
    return out


def lease_state(lease_expires_at: datetime, volume_id: str) -> dict[str, Any]:
    """A lease and its place in the reconciler's expiry index."""
    return {"lease_expires_at": lease_expires_at, "expiry_shard": expiry_shard("L", volume_id),
            "expiry_at": expiry_key(lease_expires_at)}


def _actions(updates: dict[str, Any]) -> list:
    return [getattr(PolicyItem, k).set(v) if v is not None else getattr(PolicyItem, k).remove()
            for k, v in updates.items()]


class HostChanged(Exception):
    """The host was revoked or its secret rotated since it was authenticated from the cache."""


class Duplicate(Exception):
    """Carries the stored answer of a repeated event (its only argument)."""
