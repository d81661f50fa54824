"""The webhook's domain service: authenticate, decide, claim, act at the provider, record.

A warm event costs three DynamoDB round trips: one Query of the VM's partition (policies, their state
and the audit chain head), one transaction that claims the event and the volumes it will change (so
duplicates and races lose there, before any provider call), and one transaction that records the
outcome, the audit records and the event's answer. Events that need no provider call take two.
"""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from pynamodb.exceptions import TransactWriteError

from vvolguard.adapters.audit import HEAD_SK, AuditLog, AuditRecord
from vvolguard.adapters.models import (
    ChainHead,
    EventItem,
    GrantItem,
    HostItem,
    PolicyItem,
    QUARANTINE_SK,
    QuarantineItem,
    RefusalItem,
    SigFailItem,
    StateItem,
    connection,
    expiry_key,
    expiry_shard,
)
from vvolguard.adapters.tx import Tx
from vvolguard.adapters.provider import EbsProvider, HostIdentity, Instance, ProviderRefused, StorageProvider
from vvolguard.domain.engine import BUSY_SECONDS, Decision, VolumeView, decide, refuse_attaches
from vvolguard.domain.events import MAX_BODY, Event, loads, parse_doc
from vvolguard.domain.fingerprint import body_key, body_mac, password_tag, same_body
from vvolguard.domain.policy import ID_RE
from vvolguard.domain.replay import replay_fields
from vvolguard.errors import (
    AuthError,
    EventConflict,
    EventInProgress,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    ProviderUnavailable,
    UnknownHost,
    VvgError,
)
from vvolguard.adapters import aws
from vvolguard.services.alerts import audit_ref, raise_alert
from vvolguard.services.auth import AuthenticatedHost, HostAuthenticator
from vvolguard.settings import Settings

log = logging.getLogger("vvg.events")
EVENT_TTL_S = 7 * 86400
ATTEMPTS = 12
TOUCH_EVERY_S = 60.0
REFUSAL_WINDOW_S = 60  # unauthenticated refusals naming one host are counted per minute (docs/webhook-hardening.md)


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


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


@dataclass
class Outcome:
    """What the provider phase did to one decision."""

    decision: Decision
    item: PolicyItem
    updates: dict[str, Any] = field(default_factory=dict)
    undo: list[tuple] = field(default_factory=list)


class EventService:
    """Handles one signed host event end to end."""

    def __init__(self, settings: Settings, provider: StorageProvider | None = None) -> None:
        self.settings = settings
        self.auth = HostAuthenticator(settings)
        self.audit = AuditLog(settings)
        self.provider: StorageProvider = provider or EbsProvider(settings)
        self._touched: dict[str, float] = {}

    # ---- entry point

    def handle(self, headers: dict[str, str], body: bytes, now: datetime | None = None) -> dict[str, Any]:
        """The answer to one request, or a VvgError carrying the contract's status and code.

        The sender is authenticated before anything else, a repeated event_id included (a replay with a
        rotated-away secret or from a revoked host gets its 401, never the stored answer). A refusal of an
        authenticated host is one audit record; refusals of requests that did not authenticate are counted
        per named host and minute (the reconciler writes one audit record per window); nothing else is written."""
        now = now or datetime.now(timezone.utc)
        named = headers.get("x-vvg-host")
        event: Event | None = None
        host: AuthenticatedHost | None = None
        ts, sig = 0, ""
        try:
            if len(body) > MAX_BODY:
                raise PayloadTooLarge(f"the body is over {MAX_BODY} bytes")
            host_id, ts, sig = self.auth.identify(named, headers.get("x-vvg-signature"))
            host = self.auth.authenticate(host_id, ts, sig, body, now.timestamp())
            doc = loads(body)
            event = parse_doc(doc, now)
            try:
                return self._process(host, event, self._print(body, doc), now)
            except _HostChanged:
                raise self.auth.recheck(host_id, ts, sig, body) or UnknownHost("the host changed; retry") from None
        except VvgError as exc:
            if host is not None and not isinstance(exc, AuthError):
                # Authenticated from a warm cache: a revoked host or a rotated secret still gets its 401 first.
                exc = self.auth.recheck(host.host_id, ts, sig, body) or exc
            if named and ID_RE.match(named) and not isinstance(exc, ProviderUnavailable):
                if host is None or isinstance(exc, AuthError):
                    self._count_unauthenticated(named, exc, now)
                else:
                    self._audit_refusal(host.host_id, event, exc)
            raise exc from None

    def _print(self, raw: bytes, doc: dict[str, Any]) -> BodyPrint:
        key = body_key(aws.audit_key(self.settings.region, self.settings.audit_key_secret_id))
        return BodyPrint(body_mac(key, raw, doc), password_tag(raw) if "password" in doc else None, raw)

    def _audit_refusal(self, host_id: str, event: Event | None, exc: VvgError) -> None:
        """One record for a refusal of an authenticated host."""
        items = None
        try:
            items = self.audit.append([AuditRecord(
                actor=f"host:{host_id}", action="refuse", outcome="denied", reason=exc.code, host_id=host_id,
                vm_id=event.vm_id if event and isinstance(exc, (Forbidden, NotFound)) else None,
                volume_id=event.volume_id if event else None, event_id=event.event_id if event else None,
                event_type=event.type if event else None)])
        except Exception:  # the refusal itself must still be answered
            log.exception("could not audit a refusal")
        if isinstance(exc, Forbidden) and event is not None:
            raise_alert(self.settings, "foreign_host", vm_id=event.vm_id, volume_id=event.volume_id, host_id=host_id,
                        ref=audit_ref(items[0]) if items else None,
                        detail=f"{event.type} refused: {exc.message}"[:300])

    def _count_unauthenticated(self, host_id: str, exc: VvgError, now: datetime) -> None:
        """Add one to the named host's refusal count of this minute, in one transaction that holds only if
        the host is enrolled (revoked included): a name never enrolled writes nothing, after the same work.
        The sender did not prove it is the host, so nothing here speaks as ``host:ID``."""
        start = now.replace(second=0, microsecond=0)
        end = start + timedelta(seconds=REFUSAL_WINDOW_S)
        window = start.strftime("%Y-%m-%dT%H:%MZ")
        item = RefusalItem(pk=f"HOST#{host_id}", sk=f"REFUSED#{window}")
        sig = SigFailItem(pk=f"HOST#{host_id}", sk=f"SIGFAIL#{window}")
        sig_actions = [SigFailItem.kind.set(SigFailItem), SigFailItem.named_host.set(host_id), SigFailItem.n.add(1),
                       SigFailItem.expiry_shard.set(expiry_shard("S", host_id)),
                       SigFailItem.expiry_at.set(expiry_key(start)), SigFailItem.purge_at.set(int(end.timestamp()) + 3600)]
        actions = [RefusalItem.kind.set(RefusalItem), RefusalItem.named_host.set(host_id),
                   RefusalItem.window.set(window), RefusalItem.refusals.add(1), RefusalItem.codes.add({exc.code}),
                   RefusalItem.expiry_shard.set(expiry_shard("R", host_id)), RefusalItem.expiry_at.set(expiry_key(end))]
        for attempt in range(3):
            tx = Tx(connection=connection(self.settings))
            try:
                with tx:
                    tx.condition_check(HostItem, host_id, condition=HostItem.host_id.exists(), label="host")
                    tx.update(item, actions=actions, label="count")
                    tx.update(sig, actions=sig_actions, label="count")  # read by the reconciler (docs/alerts.md)
                return
            except TransactWriteError as exc_tx:
                failed, conflict = tx.failed(exc_tx)
                if "host" in failed or not conflict:
                    return  # never enrolled: nothing to count, nothing written
                _backoff(attempt + 1)
            except Exception:  # the refusal itself must still be answered
                log.exception("could not count a refusal")
                return

    # ---- reads

    def read_partition(self, vm_id: str) -> Partition:
        """The VM's policies and its audit chain head: one consistent Query."""
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

    # ---- the event path

    def _process(self, host: AuthenticatedHost, event: Event, fp: BodyPrint, now: datetime) -> dict[str, Any]:
        try:
            return self._attempt(host, event, fp, now)
        except _Duplicate as dup:
            return dup.answer

    def _attempt(self, host: AuthenticatedHost, event: Event, fp: BodyPrint, now: datetime) -> dict[str, Any]:
        key = f"{host.host_id}/{event.event_id}"
        for attempt in range(ATTEMPTS):
            if attempt:
                _backoff(attempt)
            part = self.read_partition(event.vm_id)
            mine = self._authorize(host, event, part, now)
            grants = tuple(part.live_grants(now))
            if event.type == "vm.migrate.complete" and host.host_id not in grants:
                # Already completed (a redelivery under a new id): nothing left to revoke.
                decisions = [Decision(p.volume_id, "revoke", "skipped", "already_complete", int(p.policy_version))
                             for p in sorted(mine, key=lambda p: p.volume_id)]
            else:
                decisions = decide(event, [view_of(p, grants) for p in mine], now)
            if part.quarantine is not None:
                decisions = refuse_attaches(decisions)
            pending = [d for d in decisions if d.needs_provider]
            if not pending:
                answer = self._answer(event, decisions)
                if self._claim_and_record(host, event, key, fp, part, decisions, answer, now):
                    self._alerts(host, event, decisions, part.head, now)
                    return answer
                continue
            if not self._claim(host, event, key, fp, part, decisions, now):
                continue
            outcomes = self._act(host, event, part, decisions, now, key)
            answer = self._answer(event, decisions)
            head = self._record(host, event, key, part, outcomes, decisions, answer, now)
            self._alerts(host, event, decisions, head, now)
            return answer
        raise EventInProgress("the VM's state is changing under concurrent events; retry with the same event_id")

    def _authorize(self, host: AuthenticatedHost, event: Event, part: Partition, now: datetime) -> list[PolicyItem]:
        policies = list(part.policies.values())
        mine = [p for p in policies if p.host_id == host.host_id]
        if event.type.startswith("volume."):
            target = part.policies.get(event.volume_id or "")
            if target is None:
                raise NotFound(f"volume {event.volume_id} is not a volume of {event.vm_id}")
            if target.host_id != host.host_id:
                raise Forbidden(f"host {host.host_id} is not the host of {event.vm_id}")
            return [target] if event.type == "volume.detach_request" else mine
        if event.type == "vm.migrate.start":
            if not mine:
                raise Forbidden(f"host {host.host_id} is not the host of {event.vm_id}")
            dest = event.destination_host
            if dest == host.host_id or not self._active_host(dest):
                raise Forbidden(f"destination {dest} is not another enrolled, active host")
            return mine
        if event.type == "vm.migrate.complete":
            grant = part.live_grants(now).get(host.host_id)
            if grant is None:
                if policies and len(mine) == len(policies):
                    return mine  # this host already completed the move
                raise Forbidden(f"host {host.host_id} holds no live migration grant for {event.vm_id}")
            if grant.source_host != event.source_host:
                raise Forbidden(f"{event.source_host} is not the host {event.vm_id} is moving from")
            if not self._active_host(grant.source_host):
                raise Forbidden(f"the grant of {event.vm_id} died with its revoked source host")
            return [p for p in policies if p.host_id == grant.source_host]
        if policies and not mine:
            raise Forbidden(f"host {host.host_id} is not the host of {event.vm_id}")
        return mine

    @staticmethod
    def _active_host(host_id: str | None) -> bool:
        if not host_id:
            return False
        try:
            return HostItem.get(host_id, consistent_read=True).status == "active"
        except HostItem.DoesNotExist:
            return False

    def _migration_writes(self, tx: Tx, host: AuthenticatedHost, event: Event, part: Partition,
                          decisions: list[Decision], now: datetime, in_outcomes: set[str]) -> None:
        """The table side of a migration, in the same transaction as its audit records."""
        if event.type == "vm.migrate.start":
            expires = now + timedelta(seconds=self.settings.migration_grant_seconds)
            dest = event.destination_host or ""
            tx.save(GrantItem(pk=f"VM#{event.vm_id}", sk=f"GRANT#{dest}", vm_id=event.vm_id, source_host=host.host_id,
                              destination_host=dest, event_id=event.event_id, granted_at=now, expires_at=expires,
                              expiry_shard=expiry_shard("G", f"{event.vm_id}/{dest}"), expiry_at=expiry_key(expires)),
                    label="grant")
        elif event.type == "vm.migrate.complete" and any(d.reason != "already_complete" for d in decisions):
            grant = part.grants[host.host_id]
            tx.delete(grant, condition=GrantItem.sk.exists(), label="grant")
            for p in part.policies.values():
                if p.host_id == grant.source_host and p.volume_id not in in_outcomes:
                    tx.update(p, actions=[PolicyItem.host_id.set(host.host_id), PolicyItem.state_version.add(1)],
                              condition=PolicyItem.host_id == grant.source_host, label="claim")

    @staticmethod
    def _answer(event: Event, decisions: list[Decision]) -> dict[str, Any]:
        return {"event_id": event.event_id, "duplicate": False, "decisions": [d.answer() for d in decisions]}

    def _event_item(self, host: AuthenticatedHost, key: str, fp: BodyPrint, status: str, now: datetime,
                    answer: dict | None = None) -> EventItem:
        return EventItem(event_id=key, body_mac=fp.mac, password_tag=fp.tag, host_id=host.host_id, status=status,
                         response=json.dumps(answer) if answer is not None else None,
                         lease_until=int(now.timestamp()) + BUSY_SECONDS,
                         expires_at=int(now.timestamp()) + EVENT_TTL_S)

    def _event_condition(self, fp: BodyPrint, now: datetime):
        # New, or a failed attempt (any body: a refused request does not use up its id), or the same body
        # whose worker died past its lease.
        same = EventItem.body_mac == fp.mac
        return (EventItem.event_id.does_not_exist() | (EventItem.status == "failed")
                | (same & (EventItem.status == "in_progress") & (EventItem.lease_until < int(now.timestamp()))))

    def _host_check(self, tx: Tx, host: AuthenticatedHost, now: datetime) -> None:
        """The host is still active with the same secret; at most once a minute also its last_seen_at
        (a write on every event would make one host's concurrent events conflict on its item)."""
        cond = (HostItem.status == "active") & (HostItem.secret_version == host.secret_version)
        if host.fingerprint:  # a key host: the very key it was verified with
            cond = cond & (HostItem.fingerprint == host.fingerprint)
        last = self._touched.get(host.host_id, 0.0)
        if time.monotonic() - last > TOUCH_EVERY_S:
            self._touched[host.host_id] = time.monotonic()
            tx.update(HostItem(host_id=host.host_id), actions=[HostItem.last_seen_at.set(now)], condition=cond,
                      label="host")
        else:
            tx.condition_check(HostItem, host.host_id, condition=cond, label="host")

    @staticmethod
    def _quarantine_check(tx: Tx, event: Event, decisions: list[Decision]) -> None:
        """An attach also holds only while the VM is not quarantined: a quarantine written after this event
        read the partition makes the claim lose, and the retry reads it (docs/break-glass.md)."""
        if any(d.action == "attach" and d.outcome in ("pending", "skipped") for d in decisions):
            tx.condition_check(QuarantineItem, f"VM#{event.vm_id}", QUARANTINE_SK,
                               condition=QuarantineItem.sk.does_not_exist(), label="quarantine")

    def _on_cancel(self, tx: Tx, exc: TransactWriteError, host: AuthenticatedHost, key: str, fp: BodyPrint) -> None:
        """Turn a lost claim into the contract's answer; return (to retry) when only the state moved."""
        failed, conflict = tx.failed(exc)
        if "host" in failed:  # first: a revoked host or an old secret never gets a stored answer
            self.auth.forget(host.host_id)
            raise _HostChanged()
        if "event" in failed:
            raise _Duplicate(self._existing(key, fp))
        if not failed and not conflict:
            raise exc

    def _existing(self, key: str, fp: BodyPrint) -> dict[str, Any]:
        try:
            ev = EventItem.get(key, consistent_read=True)
        except EventItem.DoesNotExist:
            raise EventInProgress("the event is being processed right now") from None
        if ev.body_mac != fp.mac or not same_body(fp.raw, ev.password_tag):
            raise EventConflict("this event_id was already used with another body")
        if ev.status != "done" or not ev.response:
            raise EventInProgress("the event is being processed right now")
        answer = json.loads(ev.response)
        answer["duplicate"] = True
        return answer

    def _state_updates(self, d: Decision, item: PolicyItem, event: Event, now: datetime) -> list:
        acts = []
        if d.failed_passwords is not None:
            acts.append(PolicyItem.failed_passwords.set(d.failed_passwords))
        if d.locked_until is not None:
            acts.append(PolicyItem.locked_until.set(d.locked_until))
        elif d.failed_passwords == 0 and item.locked_until is not None:
            acts.append(PolicyItem.locked_until.remove())
        if d.inventory is not None:  # a select: the VM's latest inventory, kept with the volume's state
            acts.append(PolicyItem.inventory.set([f"{name}:{bits}" for name, bits in d.inventory]))
            acts.append(PolicyItem.inventory_at.set(d.inventory_at or event.occurred_at or now))
        return acts

    def _claim_and_record(self, host, event, key, fp, part, decisions, answer, now) -> bool:
        """No provider call needed: claim, state and record in one transaction."""
        records = self._records(host, event, decisions, {})
        items, new_head = self.audit.build(f"VM#{event.vm_id}", part.head, records) if records else ([], None)
        tx = Tx(connection=connection(self.settings))
        try:
            with tx:
                tx.save(self._event_item(host, key, fp, "done", now, answer),
                        condition=self._event_condition(fp, now), label="event")
                self._host_check(tx, host, now)
                self._quarantine_check(tx, event, decisions)
                for d in decisions:
                    item = part.policies[d.volume_id]
                    acts = self._state_updates(d, item, event, now)
                    if acts:
                        tx.update(item, actions=acts + [PolicyItem.state_version.add(1)],
                                  condition=PolicyItem.state_version == item.state_version, label="state")
                if items:
                    self.audit.add_to(tx, part.head, items, new_head)
                if event.type.startswith("vm.migrate."):
                    self._migration_writes(tx, host, event, part, decisions, now, set())
        except TransactWriteError as exc:
            self._on_cancel(tx, exc, host, key, fp)
            return False
        return True

    def _claim(self, host, event, key, fp, part, decisions, now) -> bool:
        """Claim the event and mark the volumes it will change busy (conditional on their version)."""
        busy_until = now + timedelta(seconds=BUSY_SECONDS)
        tx = Tx(connection=connection(self.settings))
        try:
            with tx:
                tx.save(self._event_item(host, key, fp, "in_progress", now),
                        condition=self._event_condition(fp, now), label="event")
                self._host_check(tx, host, now)
                self._quarantine_check(tx, event, decisions)
                for d in decisions:
                    item = part.policies[d.volume_id]
                    acts = self._state_updates(d, item, event, now)
                    if d.needs_provider:
                        acts += [PolicyItem.busy_event.set(key), PolicyItem.busy_until.set(busy_until)]
                    if acts:
                        tx.update(item, actions=acts + [PolicyItem.state_version.add(1)],
                                  condition=PolicyItem.state_version == item.state_version, label="state")
        except TransactWriteError as exc:
            self._on_cancel(tx, exc, host, key, fp)
            return False
        return True

    # ---- the provider phase

    def _act(self, host, event, part, decisions, now, key) -> dict[str, Outcome]:
        who = HostIdentity(host.host_id, host.cred_hash)
        done: list[Outcome] = []
        outcomes: dict[str, Outcome] = {}
        instance: Instance | None = None
        claimed = [d.volume_id for d in decisions if d.needs_provider]
        try:
            for d in decisions:
                if not d.needs_provider:
                    continue
                item = part.policies[d.volume_id]
                o = Outcome(d, item)
                try:
                    if d.action in ("attach", "create") and instance is None:
                        instance = (Instance(item.instance_id, item.zone) if item.instance_id and item.zone
                                    else self.provider.find_instance(who, event.vm_id))
                    vol_id = item.provider_volume_id
                    if d.action in ("attach", "create") and not vol_id:
                        vol_id = self.provider.create(who, item.volume_id, item.vm_id, int(item.size_mb), instance.zone,
                                                      also=tuple(part.live_grants(now)))
                        o.updates["provider_volume_id"] = vol_id
                        o.undo.append(("delete", vol_id))
                        done.append(o)
                    if d.action == "attach":
                        d.device = self.provider.attach(who, vol_id, instance, d.device)
                        d.provider_volume_id = vol_id
                        o.updates.update(attached=True, instance_id=instance.instance_id, zone=instance.zone,
                                         device=d.device, attached_at=now, lease_expires_at=d.lease_expires_at,
                                         expiry_shard=expiry_shard("L", item.volume_id),
                                         expiry_at=expiry_key(d.lease_expires_at))
                        o.undo.append(("detach", vol_id, instance.instance_id))
                    elif d.action == "detach":
                        if vol_id:
                            self.provider.detach(who, vol_id, item.instance_id)
                        o.updates.update(attached=False, device=None, attached_at=None, lease_expires_at=None,
                                         expiry_shard=None, expiry_at=None)
                        if item.instance_id and item.device:
                            o.undo.append(("attach", vol_id, Instance(item.instance_id, item.zone or ""), item.device))
                    elif d.action == "create":
                        o.updates.update(instance_id=instance.instance_id, zone=instance.zone)
                    elif d.action == "grant":
                        self.provider.grant(who, vol_id, event.destination_host)
                        o.undo.append(("revoke", vol_id, event.destination_host))
                    elif d.action == "revoke":
                        self.provider.revoke(who, vol_id, event.source_host)
                        o.updates["host_id"] = host.host_id
                    d.outcome = "done"
                except ProviderRefused as exc:
                    d.outcome, d.reason = "failed", exc.reason
                    d.device = d.device if d.action != "attach" else None
                    d.provider_volume_id = None
                    d.lease_expires_at = None
                    d.software = None if d.action == "attach" else d.software
                outcomes[d.volume_id] = o
                if d.outcome == "done" and o not in done:
                    done.append(o)
        except ProviderUnavailable:
            self._rollback(who, done)
            self._release(host, event, key, part, claimed)
            raise
        return outcomes

    def _rollback(self, who: HostIdentity, done: list[Outcome]) -> None:
        """Undo, newest first, what this event did at the provider before it failed."""
        for o in reversed(done):
            for step in reversed(o.undo):
                try:
                    if step[0] == "detach":
                        self.provider.detach(who, step[1], step[2])
                    elif step[0] == "attach":
                        self.provider.attach(who, step[1], step[2], step[3])
                    elif step[0] == "revoke":
                        self.provider.revoke(who, step[1], step[2])
                    elif step[0] == "delete":
                        self.provider.delete(who, step[1])
                except Exception:  # the reconciler repairs what cannot be undone now
                    log.exception("rollback of %s failed", o.decision.volume_id)

    def _release(self, host, event, key, part, claimed: list[str]) -> None:
        """After a provider outage: free every volume this event claimed and mark the event failed,
        so it can be retried (with the same or another body: a refused request does not use up its id)."""
        tx = Tx(connection=connection(self.settings))
        try:
            with tx:
                tx.update(EventItem(event_id=key), actions=[EventItem.status.set("failed")],
                          condition=EventItem.status == "in_progress", label="event")
                for vid in claimed:
                    item = part.policies[vid]
                    tx.update(item, actions=[PolicyItem.busy_event.remove(), PolicyItem.busy_until.remove(),
                                             PolicyItem.state_version.add(1)],
                              condition=PolicyItem.busy_event == key, label="claim")
        except TransactWriteError:
            log.exception("could not release event %s", key)

    # ---- alerts (docs/alerts.md): after the event is recorded, never inside its transaction

    def _alerts(self, host, event, decisions, head: tuple[int, str], now: datetime) -> None:
        """A volume this event locked raises volume_locked; its audit record is the decision's (one record
        per decision, appended after ``head``)."""
        for i, d in enumerate(decisions):
            if d.locked_until is not None:
                raise_alert(self.settings, "volume_locked", vm_id=event.vm_id, volume_id=d.volume_id,
                            host_id=host.host_id, ref=f"VM#{event.vm_id}/{head[0] + i + 1}", now=now,
                            detail=f"{d.volume_id} locked until {_iso(d.locked_until)} after wrong passwords")

    # ---- recording

    def _records(self, host, event, decisions, outcomes) -> list[AuditRecord]:
        recs = []
        for d in decisions:
            detail = {}
            if d.device and d.outcome == "done":
                detail["device"] = d.device
            if d.lease_expires_at and d.outcome == "done":
                detail["lease_expires_at"] = _iso(d.lease_expires_at)
            if d.software is not None:
                detail["software"] = ",".join(d.software)
            o = outcomes.get(d.volume_id)
            if o and o.updates.get("provider_volume_id"):
                detail["created"] = o.updates["provider_volume_id"]
            recs.append(AuditRecord(actor=f"host:{host.host_id}", action=d.action, outcome=d.outcome, reason=d.reason,
                                    vm_id=event.vm_id, volume_id=d.volume_id, host_id=host.host_id,
                                    event_id=event.event_id, event_type=event.type, policy_version=d.policy_version,
                                    detail=detail, **replay_fields(event, d)))  # docs/policy-impact.md
        return recs

    def _record(self, host, event, key, part, outcomes, decisions, answer, now) -> tuple[int, str]:
        records = self._records(host, event, decisions, outcomes)
        head = part.head
        for attempt in range(ATTEMPTS * 2):
            if attempt:
                _backoff(attempt)
            items, new_head = self.audit.build(f"VM#{event.vm_id}", head, records)
            tx = Tx(connection=connection(self.settings))
            try:
                with tx:
                    tx.update(EventItem(event_id=key), actions=[EventItem.status.set("done"),
                                                                EventItem.response.set(json.dumps(answer))])
                    for vid, o in outcomes.items():
                        acts = [PolicyItem.busy_event.remove(), PolicyItem.busy_until.remove(),
                                PolicyItem.state_version.add(1)]
                        if o.decision.outcome == "done":
                            acts.append(PolicyItem.last_event_at.set(event.occurred_at or now))
                        for k, v in o.updates.items():
                            attr = getattr(PolicyItem, k)
                            acts.append(attr.set(v) if v is not None else attr.remove())
                        tx.update(o.item, actions=acts, condition=PolicyItem.busy_event == key, label="claim")
                    self.audit.add_to(tx, head, items, new_head)
                    if event.type.startswith("vm.migrate."):
                        self._migration_writes(tx, host, event, part, decisions, now, set(outcomes))
                return head
            except TransactWriteError as exc:
                failed, _conflict = tx.failed(exc)
                if "claim" in failed:
                    log.error("event %s lost its claim on a volume; the reconciler will repair", key)
                    raise ProviderUnavailable("the event's claim expired while the provider was slow; retry") from None
                head = self.audit.head(f"VM#{event.vm_id}")
        raise EventInProgress("the VM's audit chain is busy; retry with the same event_id")


def _backoff(attempt: int) -> None:
    """Jittered exponential pause before retrying a transaction lost to a concurrent writer."""
    time.sleep(random.uniform(0, min(0.2, 0.005 * (2 ** attempt))))


class _HostChanged(Exception):
    """The host was revoked or its secret rotated since it was authenticated from the cache."""


class _Duplicate(Exception):
    """Carries the stored answer of a repeated event."""

    def __init__(self, answer: dict[str, Any]) -> None:
        super().__init__("duplicate")
        self.answer = answer
