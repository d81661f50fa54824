"""One executor per decision action: what the event does at the storage provider (``do``), how that is taken
back (``undo``), and the state it leaves on the volume's item.

The orchestrator (``services/events.py``) runs the pending decisions of a claimed event through
:func:`carry_out`. A refusal the provider cannot get past (``ProviderRefused``: instance gone, device name
taken, volume in another zone ...) makes that volume's decision ``failed`` with the refusal's reason, and what
the event already did for it is undone (a volume created for an attach that failed is deleted); an outage
(``ProviderUnavailable``) undoes everything the event did, newest first, and is re-raised (the event is
released and may be retried). docs/webhook-api.md
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

from vvolguard.adapters.models import PolicyItem
from vvolguard.adapters.provider import HostIdentity, Instance, StorageProvider
from vvolguard.domain.constants import Action, Outcome
from vvolguard.domain.engine import Decision
from vvolguard.errors import ProviderRefused, ProviderUnavailable
from vvolguard.services.event_stores import EventContext, lease_state

log = logging.getLogger("vvg.events")


@dataclass
class Run:
    """One event's provider phase: who acts, for which event, and the VM's instance once looked up."""

    provider: StorageProvider
    ctx: EventContext
    who: HostIdentity
    _instance: Instance | None = None

    def instance(self, item: PolicyItem) -> Instance:
        """Where the volume attaches: the VM's own instance, or for ``attach_to: host`` the sending host's
        instance (tagged vvg:host-id; docs/deployment-modes.md)."""
        if self._instance is None:
            if (item.attach_to or "vm") == "host":
                self._instance = self.provider.find_host_instance(self.who, self.ctx.host.host_id)
            elif item.instance_id and item.zone:
                self._instance = Instance(item.instance_id, item.zone)
            else:
                self._instance = self.provider.find_instance(self.who, self.ctx.event.vm_id)
        return self._instance


@dataclass
class Job:
    """One pending decision being carried out: the item it claimed, the state to record, what was done."""

    decision: Decision
    item: PolicyItem
    updates: dict[str, Any] = field(default_factory=dict)
    created: str | None = None  # the provider volume this event created
    attached_to: Instance | None = None
    detached: bool = False
    granted: str | None = None
    revoked: str | None = None
    moved_from: Instance | None = None  # attach_to host: the source host's instance it left at migrate.complete
    moved_to: Instance | None = None

    @property
    def volume(self) -> str | None:
        return self.updates.get("provider_volume_id") or self.item.provider_volume_id


class Executor:
    """Carries out one action. ``immediate`` is the state a decision of this action writes with the claim
    when it needs no provider call (outcome already final)."""

    action: ClassVar[Action]

    def do(self, run: Run, job: Job) -> None:
        raise NotImplementedError

    def undo(self, run: Run, job: Job) -> None:
        """Take back what ``do`` did (only that: safe after a partial ``do`` and when called twice)."""

    def immediate(self, d: Decision, item: PolicyItem) -> dict[str, Any]:
        return {}


class Create(Executor):
    action = Action.CREATE

    def do(self, run: Run, job: Job) -> None:
        instance = run.instance(job.item)
        self.ensure(run, job, instance)
        job.updates.update(instance_id=instance.instance_id, zone=instance.zone)

    @staticmethod
    def ensure(run: Run, job: Job, instance: Instance) -> str:
        """The volume at the provider, created (usable by this host and the VM's live grants) if missing."""
        if job.volume:
            return job.volume
        item = job.item
        job.created = run.provider.create(run.who, item.volume_id, item.vm_id, int(item.size_mb), instance.zone,
                                          also=tuple(run.ctx.part.live_grants(run.ctx.now)))
        job.updates["provider_volume_id"] = job.created
        return job.created

    def undo(self, run: Run, job: Job) -> None:
        if job.created:
            run.provider.delete(run.who, job.created)
            job.created = None


class Attach(Executor):
    action = Action.ATTACH

    def do(self, run: Run, job: Job) -> None:
        d, now = job.decision, run.ctx.now
        instance = run.instance(job.item)
        vol = Create.ensure(run, job, instance)
        d.device = run.provider.attach(run.who, vol, instance, d.device)
        job.attached_to = instance
        d.provider_volume_id = vol
        job.updates.update(attached=True, instance_id=instance.instance_id, zone=instance.zone, device=d.device,
                           attached_at=now, **lease_state(d.lease_expires_at, job.item.volume_id))

    def undo(self, run: Run, job: Job) -> None:
        if job.attached_to is not None:
            run.provider.detach(run.who, job.volume, job.attached_to.instance_id)
            job.attached_to = None
        CREATE.undo(run, job)


class Detach(Executor):
    action = Action.DETACH

    def do(self, run: Run, job: Job) -> None:
        item = job.item
        if item.provider_volume_id:
            run.provider.detach(run.who, item.provider_volume_id, item.instance_id)
            job.detached = bool(item.instance_id and item.device)
        job.updates.update(attached=False, device=None, attached_at=None, lease_expires_at=None, expiry_shard=None,
                           expiry_at=None)

    def undo(self, run: Run, job: Job) -> None:
        item = job.item
        if job.detached:
            run.provider.attach(run.who, item.provider_volume_id, Instance(item.instance_id, item.zone or ""),
                                item.device)
            job.detached = False


class Grant(Executor):
    action = Action.GRANT

    def do(self, run: Run, job: Job) -> None:
        dest = run.ctx.event.destination_host or ""
        run.provider.grant(run.who, job.volume, dest)
        job.granted = dest

    def undo(self, run: Run, job: Job) -> None:
        if job.granted:
            run.provider.revoke(run.who, job.volume, job.granted)
            job.granted = None


class Revoke(Executor):
    action = Action.REVOKE

    def do(self, run: Run, job: Job) -> None:
        item = job.item
        if (item.attach_to or "vm") == "host" and item.attached and job.volume:
            self.move(run, job)
        source = run.ctx.event.source_host or ""
        run.provider.revoke(run.who, job.volume, source)
        job.revoked = source
        job.updates["host_id"] = run.ctx.host.host_id

    @staticmethod
    def move(run: Run, job: Job) -> None:
        """attach_to host: the volume leaves the source host's instance for this (destination) host's, same
        device (docs/deployment-modes.md)."""
        item, vol = job.item, job.volume
        dest = run.provider.find_host_instance(run.who, run.ctx.host.host_id)
        if dest.instance_id == item.instance_id:
            return
        if item.instance_id and run.provider.detach(run.who, vol, item.instance_id):
            job.moved_from = Instance(item.instance_id, item.zone or "")
        device = run.provider.attach(run.who, vol, dest, item.device or "/dev/sdf")
        job.moved_to = dest
        job.updates.update(instance_id=dest.instance_id, zone=dest.zone, device=device)

    def undo(self, run: Run, job: Job) -> None:
        if job.revoked:
            run.provider.grant(run.who, job.volume, job.revoked)
            job.revoked = None
        if job.moved_to is not None:
            run.provider.detach(run.who, job.volume, job.moved_to.instance_id)
            job.moved_to = None
        if job.moved_from is not None:
            run.provider.attach(run.who, job.volume, job.moved_from, job.item.device)
            job.moved_from = None


class Renew(Executor):
    """vm.heartbeat: a new lease, written with the event; never a provider call."""

    action = Action.RENEW

    def immediate(self, d: Decision, item: PolicyItem) -> dict[str, Any]:
        return lease_state(d.lease_expires_at, item.volume_id) if d.outcome == Outcome.DONE else {}


class Select(Executor):
    """guest.inventory: what it keeps is the decision's inventory (services.event_stores.decision_state)."""

    action = Action.SELECT


CREATE = Create()
EXECUTORS: dict[str, Executor] = {e.action: e for e in (CREATE, Attach(), Detach(), Grant(), Revoke(), Renew(),
                                                        Select())}


def immediate_state(d: Decision, item: PolicyItem) -> dict[str, Any]:
    return EXECUTORS[d.action].immediate(d, item)


def carry_out(run: Run, decisions: list[Decision]) -> dict[str, Job]:
    """Do every pending decision at the provider, in volume order; volume id -> its job."""
    jobs: dict[str, Job] = {}
    try:
        for d in decisions:
            if not d.needs_provider:
                continue
            job = jobs[d.volume_id] = Job(d, run.ctx.part.policies[d.volume_id])
            executor = EXECUTORS[d.action]
            try:
                executor.do(run, job)
                d.outcome = Outcome.DONE
            except ProviderRefused as exc:
                _undo(run, [job])
                job.updates.clear()
                d.fail(exc.reason)
    except ProviderUnavailable:
        _undo(run, list(jobs.values()))
        raise
    return jobs


def _undo(run: Run, jobs: list[Job]) -> None:
    """Undo, newest first, what this event did at the provider; the reconciler repairs what cannot be."""
    for job in reversed(jobs):
        try:
            EXECUTORS[job.decision.action].undo(run, job)
        except Exception:
            log.exception("undo of %s failed", job.decision.volume_id)

