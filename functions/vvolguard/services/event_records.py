"""What an event leaves besides state: its answer, one audit record per decision, and its alerts
(docs/webhook-api.md, docs/audit-export.md, docs/alerts.md)."""
from __future__ import annotations

from typing import Any

from vvolguard.adapters.audit import AuditRecord
from vvolguard.adapters.metrics import Metrics
from vvolguard.domain.constants import Outcome, rfc3339
from vvolguard.domain.engine import Decision
from vvolguard.domain.events import Event
from vvolguard.domain.events import replay_fields
from vvolguard.services.alerts import raise_alert
from vvolguard.services.event_stores import EventContext
from vvolguard.services.executors import Job
from vvolguard.settings import Settings


def answer_of(event: Event, decisions: list[Decision]) -> dict[str, Any]:
    return {"event_id": event.event_id, "duplicate": False, "decisions": [d.answer() for d in decisions]}


def records_of(ctx: EventContext, decisions: list[Decision], jobs: dict[str, Job]) -> list[AuditRecord]:
    """One audit record per decision, in decision order."""
    recs = []
    for d in decisions:
        detail = {}
        if d.device and d.outcome == Outcome.DONE:
            detail["device"] = d.device
        if d.lease_expires_at and d.outcome == Outcome.DONE:
            detail["lease_expires_at"] = rfc3339(d.lease_expires_at)
        if d.software is not None:
            detail["software"] = ",".join(d.software)
        job = jobs.get(d.volume_id)
        if job and job.updates.get("provider_volume_id"):
            detail["created"] = job.updates["provider_volume_id"]
        recs.append(AuditRecord(actor=f"host:{ctx.host.host_id}", action=d.action, outcome=d.outcome, reason=d.reason,
                                vm_id=ctx.event.vm_id, volume_id=d.volume_id, host_id=ctx.host.host_id,
                                event_id=ctx.event.event_id, event_type=ctx.event.type,
                                policy_version=d.policy_version, detail=detail,
                                **replay_fields(ctx.event, d)))  # what a replay needs (docs/policy-impact.md)
    return recs


def raise_alerts(settings: Settings, ctx: EventContext, decisions: list[Decision], head: tuple[int, str]) -> None:
    """After the event is recorded, never inside its transaction: its decisions are counted (``Decisions`` by
    action and outcome, one flush per event: docs/metrics.md), and a volume it locked raises volume_locked, its
    audit record being the decision's (one record per decision, appended after ``head``)."""
    counts = Metrics(settings.metrics_namespace)
    for d in decisions:
        counts.add("Decisions", action=d.action, outcome=d.outcome)
    counts.flush()
    for i, d in enumerate(decisions):
        if d.locked_until is not None:
            raise_alert(settings, "volume_locked", vm_id=ctx.event.vm_id, volume_id=d.volume_id,
                        host_id=ctx.host.host_id, ref=f"VM#{ctx.event.vm_id}/{head[0] + i + 1}", now=ctx.now,
                        detail=f"{d.volume_id} locked until {rfc3339(d.locked_until)} after wrong passwords")
