"""The webhook's domain service: authenticate, decide, claim, act at the provider, record (docs/webhook-api.md).

A warm event costs three DynamoDB round trips: one Query of the VM's partition (policies, their state and the
audit chain head), one transaction that claims the event and the volumes it will change (so duplicates and
races lose there, before any provider call), and one transaction that records the outcome, the audit records
and the answer. Events needing no provider call (a heartbeat's renewals, a denial) take two. Each event type is
an entry of ``domain/registry.py``; writes belong to ``services/event_stores.py`` (one shared transaction per
step), provider work to ``services/executors.py``.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from pynamodb.exceptions import TransactWriteError

from vvolguard.adapters.audit import AuditLog
from vvolguard.adapters.provider import EbsProvider, HostIdentity, StorageProvider
from vvolguard.domain.constants import ID_RE
from vvolguard.domain.engine import Decision, decide, refuse_attaches
from vvolguard.domain.events import MAX_BODY, Event, loads, parse_doc
from vvolguard.domain.registry import Scope, entry
from vvolguard.errors import AuthError, EventInProgress, PayloadTooLarge, ProviderUnavailable, UnknownHost, VvgError
from vvolguard.services.auth import AuthenticatedHost, HostAuthenticator
from vvolguard.services.event_records import answer_of, raise_alerts, records_of
from vvolguard.services.event_refusals import Refusals, backoff
from vvolguard.services.event_stores import (BodyPrint, Duplicate, EventContext, HostChanged, HostGuard,
                                             IdempotencyStore, Partition, VolumeStateStore, decision_state,
                                             new_tx, view_of)
from vvolguard.services.executors import Job, Run, carry_out, immediate_state
from vvolguard.settings import Settings

log = logging.getLogger("vvg.events")
ATTEMPTS = 12


class EventService:
    """Handles one signed host event end to end."""

    def __init__(self, settings: Settings, provider: StorageProvider | None = None) -> None:
        self.settings = settings
        self.auth = HostAuthenticator(settings)
        self.audit = AuditLog(settings)
        self.provider: StorageProvider = provider or EbsProvider(settings)
        self.idempotency, self.state, self.hosts = IdempotencyStore(), VolumeStateStore(settings), HostGuard()
        self.refusals = Refusals(settings, self.audit)

    def handle_internal(self, host_id: str, doc: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
        """An event vvolguard sends itself as a reserved host (``aws-ec2``: docs/ec2-vms.md), on the path after
        authentication; the webhook answers any request naming a reserved host ``401 unknown_host``."""
        from vvolguard.services.vms import internal_host

        now = now or datetime.now(timezone.utc)
        return self._process(internal_host(self.settings, host_id), parse_doc(doc, now),
                             BodyPrint.internal(self.settings, doc), now)

    def handle(self, headers: dict[str, str], body: bytes, now: datetime | None = None) -> dict[str, Any]:
        """The answer to one request, or a VvgError carrying the contract's status and code.

        The sender is authenticated before anything else, a repeated event_id included (a replay with a
        rotated-away secret or from a revoked host gets its 401, never the stored answer). Refusals are written
        as ``services/event_refusals.py`` says; nothing else is."""
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
                return self._process(host, event, BodyPrint.of(self.settings, body, doc), now)
            except HostChanged:
                raise self.auth.recheck(host_id, ts, sig, body) or UnknownHost("the host changed; retry") from None
        except VvgError as exc:
            if host is not None and not isinstance(exc, AuthError):
                # Authenticated from a warm cache: a revoked host or a rotated secret still gets its 401 first.
                exc = self.auth.recheck(host.host_id, ts, sig, body) or exc
            if named and ID_RE.match(named) and not isinstance(exc, ProviderUnavailable):
                if host is None or isinstance(exc, AuthError):
                    self.refusals.count_unauthenticated(named, exc, now)
                else:
                    self.refusals.audit_refusal(host.host_id, event, exc)
            raise exc from None

    def read_partition(self, vm_id: str) -> Partition:
        return self.state.read(vm_id)

    def decisions(self, host: AuthenticatedHost, event: Event, part: Partition, now: datetime) -> list[Decision]:
        """The event type's authorization rule (raises Forbidden / NotFound), then its decisions over the
        volumes it lets the host act on; no write. The webhook and the dashboard's simulator both use it."""
        grants = part.live_grants(now)
        mine = entry(event.type).authorize(host.host_id, event, Scope(part.policies, grants, self.hosts.active))
        return decide(event, [view_of(p, tuple(grants)) for p in mine], now, sender=host.host_id)

    # ---- the event path (after authentication; internal senders enter here too)

    def _process(self, host: AuthenticatedHost, event: Event, fp: BodyPrint, now: datetime) -> dict[str, Any]:
        key = f"{host.host_id}/{event.event_id}"
        for attempt in range(ATTEMPTS):
            if attempt:
                backoff(attempt)
            ctx = EventContext(host, event, key, fp, self.read_partition(event.vm_id), now)
            decisions = self.decisions(host, event, ctx.part, now)
            if ctx.part.quarantine is not None:
                decisions = refuse_attaches(decisions)
            direct = None if any(d.needs_provider for d in decisions) else answer_of(event, decisions)
            try:
                if not self._claim(ctx, decisions, direct):
                    continue
            except Duplicate as dup:
                return dup.args[0]
            if direct is not None:  # nothing for the provider: the claim recorded it all
                raise_alerts(self.settings, ctx, decisions, ctx.part.head)
                return direct
            jobs = self._act(ctx, decisions)
            answer = answer_of(event, decisions)
            raise_alerts(self.settings, ctx, decisions, self._record(ctx, jobs, decisions, answer))
            return answer
        raise EventInProgress("the VM's state is changing under concurrent events; retry with the same event_id")

    def _claim(self, ctx: EventContext, decisions: list[Decision], answer: dict | None = None) -> bool:
        """One transaction: the event id, the host's standing and each decided volume's state. With ``answer``
        (no provider call needed) also the records, so the event is done; without, the volumes the provider
        will change are marked busy. False: the state moved under us (retry)."""
        def updates(d: Decision, item) -> dict[str, Any]:
            return {**decision_state(d, item, ctx.event, ctx.now), **immediate_state(d, item)}

        tx = new_tx(self.settings)
        try:
            with tx:
                self.idempotency.claim(tx, ctx, answer)
                self.hosts.check(tx, ctx.host, ctx.now)
                self.state.claim(tx, ctx, decisions, updates)
                if answer is not None:
                    records = records_of(ctx, decisions, {})
                    if records:
                        items, new_head = self.audit.build(ctx.vm_pk, ctx.part.head, records)
                        self.audit.add_to(tx, ctx.part.head, items, new_head)
                    self.state.migration(tx, ctx, decisions, set())
        except TransactWriteError as exc:
            why = tx.cancellation(exc)
            if "host" in why.failed:  # first: a revoked host or an old secret never gets a stored answer
                self.auth.forget(ctx.host.host_id)
                raise HostChanged() from None
            if "event" in why.failed:
                raise Duplicate(self.idempotency.stored_answer(ctx)) from None
            if not why.failed and not why.conflict:
                raise
            return False
        self.auth.confirm(ctx.host, ctx.now.timestamp())  # the claim re-checked the host: its record is current
        return True

    def _act(self, ctx: EventContext, decisions: list[Decision]) -> dict[str, Job]:
        """The provider phase; after an outage, free what the event claimed and mark it failed, so it can be
        retried (with the same or another body: a refused request does not use up its id)."""
        claimed = [d.volume_id for d in decisions if d.needs_provider]  # before carry_out changes the decisions
        try:
            return carry_out(Run(self.provider, ctx, HostIdentity(ctx.host.host_id, ctx.host.cred_hash)), decisions)
        except ProviderUnavailable:
            tx = new_tx(self.settings)
            try:
                with tx:
                    self.idempotency.release(tx, ctx)
                    self.state.release(tx, ctx, claimed)
            except TransactWriteError:
                log.exception("could not release event %s", ctx.key)
            raise

    def _record(self, ctx: EventContext, jobs: dict[str, Job], decisions: list[Decision],
                answer: dict[str, Any]) -> tuple[int, str]:
        """The outcome, the records and the answer in one transaction; the chain head it appended after."""
        records = records_of(ctx, decisions, jobs)
        head = ctx.part.head
        for attempt in range(ATTEMPTS * 2):
            if attempt:
                backoff(attempt)
            items, new_head = self.audit.build(ctx.vm_pk, head, records)
            tx = new_tx(self.settings)
            try:
                with tx:
                    self.idempotency.finish(tx, ctx, answer)
                    for job in jobs.values():
                        self.state.finish(tx, ctx, job.item, job.decision.outcome == "done", job.updates)
                    self.audit.add_to(tx, head, items, new_head)
                    self.state.migration(tx, ctx, decisions, set(jobs))
                return head
            except TransactWriteError as exc:
                if "claim" in tx.cancellation(exc).failed:
                    log.error("event %s lost its claim on a volume; the reconciler will repair", ctx.key)
                    raise ProviderUnavailable("the event's claim expired while the provider was slow; retry") from None
                head = self.audit.head(ctx.vm_pk)
        raise EventInProgress("the VM's audit chain is busy; retry with the same event_id")

