"""The reconciler: ends expired leases and grants, and makes the provider and the tables agree.

Run every minute in AWS (template.yaml) and by `vvg reconcile` locally. It pages through the expiry
index and the provider (never an unbounded read), changes state only by conditional writes, and audits
each thing it does as actor ``reconciler``; two runs at once do each thing once.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from vvolguard.domain.constants import rfc3339
from vvolguard.adapters.audit import AuditLog, AuditRecord
from vvolguard.adapters.models import (EXPIRY_SHARDS, ClaimItem, EventItem, GrantItem, HostItem, PolicyItem,
                                       RefusalItem, expiry_key)
from vvolguard.adapters.provider import STUCK_DETACH_S, EbsProvider, HostIdentity, ProviderRefused, StorageProvider
from vvolguard.adapters.tx import Tx
from vvolguard.domain.engine import BUSY_SECONDS
from vvolguard.errors import ConcurrentModification, ProviderUnavailable, VvgError
from vvolguard.services.alerts import audit_ref, bad_signature_alerts, raise_alert, republish
from vvolguard.adapters.metrics import count
from vvolguard.settings import Settings

log = logging.getLogger("vvg.reconcile")
ACTOR = "reconciler"
PAGE = 100


@dataclass
class Summary:
    """What one pass did (printed as JSON)."""

    expired_leases: int = 0
    grants_expired: int = 0
    orphans_detached: int = 0
    states_corrected: int = 0
    skipped_busy: int = 0
    attachments_seen: int = 0
    refusal_windows: int = 0
    checkpoint: dict[str, Any] | None = None
    provisioning_leftovers: int = 0
    alerts_republished: int = 0
    ec2_booted: int = 0
    stuck_detaches_forced: int = 0
    tamper_check: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)
    claims_released: int = 0
    volumes_recorded: int = 0
    volumes_removed: int = 0
    hosts_corrected: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"expired_leases": self.expired_leases, "grants_expired": self.grants_expired,
                "orphans_detached": self.orphans_detached, "states_corrected": self.states_corrected,
                "skipped_busy": self.skipped_busy, "attachments_seen": self.attachments_seen,
                "refusal_windows": self.refusal_windows, "provisioning_leftovers": self.provisioning_leftovers,
                "alerts_republished": self.alerts_republished, "ec2_booted": self.ec2_booted,
                "stuck_detaches_forced": self.stuck_detaches_forced, "claims_released": self.claims_released,
                "volumes_recorded": self.volumes_recorded, "volumes_removed": self.volumes_removed,
                "hosts_corrected": self.hosts_corrected, "checkpoint": self.checkpoint,
                "tamper_check": self.tamper_check, "errors": self.errors[:20], "ok": not self.errors}


class Reconciler:
    """One pass of (a) lease expiry, (b) grant expiry, (c) orphan detach, (d) state correction, (e) one audit
    record per closed window of unauthenticated webhook refusals, (f) the audit checkpoint (after the steps
    that write, so it signs what this pass wrote), (i) the tamper check when due (docs/audit-check.md)."""

    def __init__(self, settings: Settings, provider: StorageProvider | None = None, tamper: Any = None,
                 lifecycle: Any = None) -> None:
        from vvolguard.services.tamper import TamperCheck

        self.settings = settings
        self.provider: Any = provider or EbsProvider(settings)
        self.audit = AuditLog(settings)
        self.tamper = tamper or TamperCheck(settings, self.audit)
        self._who: dict[str, HostIdentity | None] = {}
        self._lifecycle = lifecycle  # services.vms.Ec2Lifecycle (the root's), built here when none is given

    def who(self, host_id: str | None) -> HostIdentity | None:
        """The enrolled identity to act for ``host_id`` (cached per pass)."""
        if not host_id:
            return None
        if host_id not in self._who:
            from vvolguard.services.vms import reserved_identity

            reserved = reserved_identity(self.settings, host_id)  # aws-ec2 (EC2 VMs): vvolguard itself
            try:
                h = reserved or HostItem.get(host_id)
                self._who[host_id] = reserved or HostIdentity(h.host_id, h.cred_hash)
            except HostItem.DoesNotExist:
                self._who[host_id] = None
        return self._who[host_id]

    def run(self, now: datetime | None = None) -> dict[str, Any]:
        now = now or datetime.now(timezone.utc)
        s = Summary()
        for step in (self._release_claims, self._expire_leases, self._expire_grants, self._force_stuck_detaches,
                     self._detach_orphans_and_correct, self._volumes_match_records,
                     self._bad_signatures, self._fold_refusals, self._remove_provisioning_leftovers,
                     self._republish_alerts, self._ec2_booted,
                     self._checkpoint, self._tamper_check):
            try:
                step(now, s)
            except Exception as exc:  # one broken step must not stop the others
                log.exception("reconcile step %s failed", step.__name__)
                s.errors.append(f"{step.__name__}: {type(exc).__name__}")
        count(self.settings.metrics_namespace, "ReconcileProblems", len(s.errors))  # 0 when clean: docs/metrics.md
        return s.as_dict()

    # ---- (g) what a key volume provisioning that died halfway left (docs/key-volume.md)

    def _remove_provisioning_leftovers(self, now: datetime, s: Summary) -> None:
        from vvolguard.services.keys import KeyService

        provider = self.provider if isinstance(self.provider, EbsProvider) else EbsProvider(self.settings)
        done, errors = KeyService(self.settings, provider).remove_leftovers(now.timestamp())
        s.provisioning_leftovers += done
        s.errors.extend(errors)
        if done:
            self.audit.append([AuditRecord(actor=ACTOR, action="key_cleanup", outcome="done",
                                           reason="provisioning_leftover", detail={"removed": str(done)})])

    # ---- alerts stored but not published (SNS was unreachable when they were raised): docs/alerts.md

    def _republish_alerts(self, now: datetime, s: Summary) -> None:
        s.alerts_republished += republish(self.settings, now)

    def _bad_signatures(self, now: datetime, s: Summary) -> None:
        bad_signature_alerts(self.settings, now)

    # ---- EC2 VMs (docs/ec2-vms.md): vm.booted once the status checks pass, if no notification brought it

    def _ec2_booted(self, now: datetime, s: Summary) -> None:
        """Every running EC2 VM whose postboot volumes are still attached gets its vm.booted once
        DescribeInstanceStatus reports both checks passed (the same event, and id, the lifecycle sends); one
        with other volumes attached gets this minute's vm.heartbeat (in AWS, no notification comes while an
        instance runs). A stopped one is left to its notification and its lease."""
        from vvolguard.services.vms import EC2_HOST, Ec2Lifecycle

        instances = sorted({hit.instance_id for hit in self._all_attached_records()
                            if hit.host_id == EC2_HOST and hit.instance_id})
        if not instances:
            return
        lifecycle = self._lifecycle = self._lifecycle or Ec2Lifecycle(self.settings)
        for iid in instances:
            try:
                out = lifecycle.on_state(iid, now, now, shutdown=False)
            except VvgError as exc:
                s.errors.append(f"ec2 {iid}: {exc.code}")
                continue
            s.ec2_booted += sum(1 for e in out.get("sent", []) if e["type"] == "vm.booted" and not e["duplicate"]
                                and any(d["outcome"] == "done" for d in e["decisions"]))

    # ---- (h) the signed checkpoint of the audit chains' heads, after this pass's own records

    def _checkpoint(self, now: datetime, s: Summary) -> None:
        cp = self.audit.checkpoint()
        s.checkpoint = {k: cp[k] for k in ("at", "chains", "location")}
        if cp["held_back"]:
            raise_alert(self.settings, "tamper_check_failed", now=now,
                        detail=f"the scheduled checkpoint held back {cp['held_back']} chain(s) "
                               f"({', '.join(cp['held_back_chains'][:5])}): run 'vvg audit verify'")
            s.errors.append(f"audit checkpoint: {cp['held_back']} chain(s) behind the previous checkpoint "
                            f"(tampered with? run 'vvg audit verify'): {', '.join(cp['held_back_chains'][:5])}")

    # ---- (i) the tamper check of the whole history, when its stored result is stale or a run was asked for

    def _tamper_check(self, now: datetime, s: Summary) -> None:
        s.tamper_check = self.tamper.run_if_due(now)
        if s.tamper_check and s.tamper_check["ok"] is False:
            p = s.tamper_check["first_problem"] or {}
            s.errors.append(f"tamper check: record {p.get('seq')} of chain {p.get('chain')}: {p.get('problem')} "
                            f"(run 'vvg audit verify')")

    def run_tamper_check(self, now: datetime | None = None) -> dict[str, Any]:
        """Only the tamper check, for a request (the dashboard's "Check now" invokes the function with it)."""
        return {"tamper_check": self.tamper.run_if_due(now or datetime.now(timezone.utc), requested_only=True)}

    # ---- (0) the claims of events whose process died mid-way (docs/crash-safety.md)

    def _release_claims(self, now: datetime, s: Summary) -> None:
        """An event's claim whose lease passed while its provider work never recorded an outcome: the event
        becomes ``failed`` (its id may be sent again) and its volumes are no longer busy, in one transaction
        with one audit record per volume. What the provider did meanwhile is repaired by the later steps."""
        now_s = int(now.timestamp())
        for hit in self._expired("C", now):
            try:
                marker = ClaimItem.get(hit.pk, hit.sk, consistent_read=True)
            except ClaimItem.DoesNotExist:
                continue
            if marker.expiry_at > expiry_key(now):
                continue  # taken over by the same event sent again: a new lease
            key = marker.event_key
            try:
                event = EventItem.get(key, consistent_read=True)
            except EventItem.DoesNotExist:
                event = None
            running = event is not None and event.status == "in_progress"
            if running and event.lease_until is not None and int(event.lease_until) >= now_s:
                continue
            busy = [p for p in PolicyItem.query(marker.pk, PolicyItem.sk.startswith("POLICY#"), consistent_read=True)
                    if p.busy_event == key]
            vm_id, (host_id, _, event_id) = marker.pk.split("#", 1)[1], key.partition("/")
            recs = [AuditRecord(actor=ACTOR, action="release", outcome="done", reason="claim_expired", vm_id=vm_id,
                                volume_id=p.volume_id, host_id=host_id, event_id=event_id,
                                policy_version=int(p.policy_version)) for p in busy] or \
                [AuditRecord(actor=ACTOR, action="release", outcome="done", reason="claim_expired", vm_id=vm_id,
                             host_id=host_id, event_id=event_id)]

            def write(tx: Tx, m=marker, items=busy, k=key, update_event=running) -> None:
                tx.delete(m, condition=ClaimItem.expiry_at == m.expiry_at)
                if update_event:
                    tx.update(EventItem(event_id=k), actions=[EventItem.status.set("failed")],
                              condition=(EventItem.status == "in_progress") & (EventItem.lease_until < now_s))
                for p in items:
                    tx.update(p, actions=[PolicyItem.busy_event.remove(), PolicyItem.busy_until.remove(),
                                          PolicyItem.state_version.add(1)], condition=PolicyItem.busy_event == k)

            try:
                self.audit.append(recs, extra=write)
                s.claims_released += 1
            except ConcurrentModification:
                pass  # finished, taken over or released meanwhile: the next pass looks again

    # ---- (a) leases

    def _expired(self, kind: str, now: datetime):
        cutoff = expiry_key(now)
        model = {"L": PolicyItem, "G": GrantItem, "R": RefusalItem, "C": ClaimItem}[kind]
        for shard in range(EXPIRY_SHARDS):
            yield from model.by_expiry.query(f"{kind}#{shard}", model.expiry_at <= cutoff, page_size=PAGE)

    def _expire_leases(self, now: datetime, s: Summary) -> None:
        for hit in self._expired("L", now):
            try:
                item = PolicyItem.get(hit.pk, hit.sk, consistent_read=True)
            except PolicyItem.DoesNotExist:
                continue
            if not item.attached or not item.lease_expires_at or item.lease_expires_at > now:
                continue
            if item.busy_until and item.busy_until > now:
                s.skipped_busy += 1
                continue
            try:
                who = self.who(item.host_id)
                if who and item.provider_volume_id:
                    self.provider.detach(who, item.provider_volume_id, item.instance_id)
                items = self._mark_detached(item, "lease_expired", "detach")
                if items:
                    s.expired_leases += 1
                    raise_alert(self.settings, "lease_expired", vm_id=item.vm_id, volume_id=item.volume_id,
                                host_id=item.host_id, ref=audit_ref(items[0]),
                                detail=f"{item.volume_id} detached from {item.instance_id or '?'}: its lease ended "
                                       f"{rfc3339(item.lease_expires_at)}")
            except (ProviderUnavailable, ProviderRefused) as exc:
                s.errors.append(f"lease {item.volume_id}: {exc.code}")

    def _mark_detached(self, item: PolicyItem, reason: str, action: str) -> list | None:
        """Record a volume as detached (conditional on its state version) with its audit record (returned)."""
        rec = AuditRecord(actor=ACTOR, action=action, outcome="done", reason=reason, vm_id=item.vm_id,
                          volume_id=item.volume_id, host_id=item.host_id, policy_version=int(item.policy_version),
                          detail={"instance": item.instance_id or "", "device": item.device or ""})

        def write(tx: Tx) -> None:
            tx.update(item, actions=PolicyItem.detached_actions(),
                      condition=PolicyItem.state_version == item.state_version)

        try:
            return self.audit.append([rec], extra=write)
        except ConcurrentModification:
            return None  # another pass or an event got there first

    # ---- (b) grants

    def _expire_grants(self, now: datetime, s: Summary) -> None:
        from vvolguard.services.policies import PolicyService

        policies = PolicyService(self.settings)
        for grant in self._expired("G", now):
            if grant.expires_at > now:
                continue
            vols = policies.for_vm(grant.vm_id)
            try:
                for p in vols:
                    who = self.who(p.host_id)
                    if who and p.provider_volume_id:
                        self.provider.set_hosts(who, p.provider_volume_id, (p.host_id,))
            except (ProviderUnavailable, ProviderRefused) as exc:
                s.errors.append(f"grant {grant.vm_id}->{grant.destination_host}: {exc.code}")
                continue
            recs = [AuditRecord(actor=ACTOR, action="revoke", outcome="done", reason="grant_expired", vm_id=grant.vm_id,
                                volume_id=p.volume_id, host_id=grant.destination_host,
                                policy_version=int(p.policy_version),
                                detail={"restored_hosts": p.host_id}) for p in vols]
            if not recs:
                recs = [AuditRecord(actor=ACTOR, action="revoke", outcome="done", reason="grant_expired",
                                    vm_id=grant.vm_id, host_id=grant.destination_host)]

            def write(tx: Tx, g=grant) -> None:
                tx.delete(g, condition=GrantItem.sk.exists())

            try:
                self.audit.append(recs, extra=write)
                s.grants_expired += 1
            except ConcurrentModification:
                pass

    # ---- a detach that never finished (docs/architecture.md): still `detaching` 60 s after it was first
    # seen so (the provider's tag vvg:detaching-since), it is force-detached and audited

    def _force_stuck_detaches(self, now: datetime, s: Summary) -> None:
        from vvolguard.services.policies import PolicyService

        if not hasattr(self.provider, "stuck_detaching"):
            return
        policies = PolicyService(self.settings)
        for att, since in self.provider.stuck_detaching():
            item = policies.find(att.volume_id) if att.volume_id else None
            if item is not None and item.busy_until and item.busy_until > now:
                s.skipped_busy += 1  # an event's own detach is still waiting for it
                continue
            host = item.host_id if item is not None else next((h for h in att.hosts if self.who(h)), None)
            who = self.who(host)
            if who is None:
                s.errors.append(f"detaching {att.provider_volume_id}: no enrolled host to act for")
                continue
            try:
                if since is None:
                    self.provider.mark_detaching(who, att.provider_volume_id, now.timestamp())
                    continue
                if now.timestamp() - since < STUCK_DETACH_S:
                    continue
                self.provider.force_detach(who, att.provider_volume_id, att.instance_id)
            except (ProviderUnavailable, ProviderRefused) as exc:
                s.errors.append(f"detaching {att.provider_volume_id}: {exc.code}")
                continue
            s.stuck_detaches_forced += 1
            if (item is not None and item.attached and item.provider_volume_id == att.provider_volume_id
                    and item.instance_id == att.instance_id and self._mark_detached(item, "stuck_detaching", "detach")):
                continue
            self.audit.append([AuditRecord(
                actor=ACTOR, action="detach", outcome="done", reason="stuck_detaching",
                vm_id=item.vm_id if item is not None else None, volume_id=att.volume_id or None, host_id=host,
                policy_version=int(item.policy_version) if item is not None else None,
                detail={"provider_volume": att.provider_volume_id, "instance": att.instance_id, "forced": "true"})])

    # ---- (c) and (d)

    def _detach_orphans_and_correct(self, now: datetime, s: Summary) -> None:
        from vvolguard.services.policies import PolicyService

        policies = PolicyService(self.settings)
        seen: set[str] = set()
        for att in self.provider.attachments():
            s.attachments_seen += 1
            seen.add(att.provider_volume_id)
            item = policies.find(att.volume_id) if att.volume_id else None
            if item is not None and item.busy_until and item.busy_until > now:
                s.skipped_busy += 1
                continue
            live = (item is not None and item.attached and item.provider_volume_id == att.provider_volume_id
                    and item.instance_id == att.instance_id)
            if live:
                continue
            host = item.host_id if item is not None else next((h for h in att.hosts if self.who(h)), None)
            who = self.who(host)
            if who is None:
                s.errors.append(f"orphan {att.provider_volume_id}: no enrolled host to act for")
                continue
            try:
                if self.provider.detach(who, att.provider_volume_id, att.instance_id):
                    s.orphans_detached += 1
                    items = self.audit.append([AuditRecord(
                        actor=ACTOR, action="detach", outcome="done", reason="no_attachment_record",
                        vm_id=item.vm_id if item is not None else None, volume_id=att.volume_id or None,
                        host_id=host, policy_version=int(item.policy_version) if item is not None else None,
                        detail={"provider_volume": att.provider_volume_id, "instance": att.instance_id})])
                    raise_alert(self.settings, "orphan_detached", vm_id=item.vm_id if item is not None else None,
                                volume_id=att.volume_id or None, host_id=host,
                                ref=audit_ref(items[0]) if items else None,
                                detail=f"{att.provider_volume_id} was attached to {att.instance_id} with no "
                                       f"attachment record; detached")
            except (ProviderUnavailable, ProviderRefused) as exc:
                s.errors.append(f"orphan {att.provider_volume_id}: {exc.code}")
        # (d) recorded attached, but the provider shows no such attachment: check that one volume again.
        for hit in self._all_attached_records():
            if hit.provider_volume_id in seen:
                continue
            try:
                item = PolicyItem.get(hit.pk, hit.sk, consistent_read=True)
            except PolicyItem.DoesNotExist:
                continue
            if not item.attached or (item.busy_until and item.busy_until > now) or \
                    (item.attached_at and item.attached_at > now):
                continue
            who = self.who(item.host_id)
            if who is None or not item.provider_volume_id:
                continue
            try:
                still = self.provider.is_attached(who, item.provider_volume_id, item.instance_id)
            except VvgError as exc:
                s.errors.append(f"check {item.volume_id}: {exc.code}")
                continue
            if not still and self._mark_detached(item, "not_attached_at_provider", "state_corrected"):
                s.states_corrected += 1

    # ---- (i) every managed volume at the provider against its record (docs/crash-safety.md)

    def _volumes_match_records(self, now: datetime, s: Summary) -> None:
        """A volume whose creation was never recorded is recorded (the event path adopts such a volume
        too: it may be a re-applied policy's, with data); a second one beside the recorded volume is deleted
        once unattached; a vvg:hosts tag that is not the policy's host plus the VM's live migration grantees
        is set back. A volume younger than a claim's lease, or of a busy policy, is left to its event; one
        whose policy was deleted is kept (docs/policy-file.md)."""
        from vvolguard.services.policies import PolicyService

        volumes = getattr(self.provider, "volumes", None)
        if volumes is None:
            return
        policies = PolicyService(self.settings)
        settled = now - timedelta(seconds=BUSY_SECONDS)
        grants: dict[str, tuple[str, ...]] = {}
        page: list[dict[str, Any]] = []
        for vol in volumes():
            if vol["volume_id"] and (vol["created"] is None or vol["created"] <= settled):
                page.append(vol)
            if len(page) == PAGE:
                self._check_volumes(page, policies, now, s, grants)
                page = []
        if page:
            self._check_volumes(page, policies, now, s, grants)

    def _check_volumes(self, page: list[dict[str, Any]], policies: Any, now: datetime, s: Summary,
                       grants: dict[str, tuple[str, ...]]) -> None:
        """One page of provider volumes against their policies (one BatchGetItem by the vvg:vm-id tag; a
        volume whose policy is not where its tag says is looked up by volume id)."""
        keys = {(f"VM#{v['vm_id']}", f"POLICY#{v['volume_id']}") for v in page if v["vm_id"]}
        found = {p.volume_id: p for p in PolicyItem.batch_get(list(keys), consistent_read=True)} if keys else {}
        for vol in page:
            item = found.get(vol["volume_id"]) or policies.find(vol["volume_id"])
            if item is None:
                continue
            if item.busy_until and item.busy_until > now:
                s.skipped_busy += 1
                continue
            pvid = vol["provider_volume_id"]
            provisioning = vol["provisioning"] not in (None, "done")  # a key volume being written: step (g)
            try:
                if item.provider_volume_id == pvid:
                    self._match_hosts(item, vol["hosts"], now, s, grants)
                elif provisioning:
                    continue
                elif not item.provider_volume_id:
                    if self._record_volume(item, vol):
                        s.volumes_recorded += 1
                elif not vol["attached"] and vol["state"] == "available":
                    who = self.who(item.host_id)
                    if who is None:
                        s.errors.append(f"volume {pvid}: no enrolled host to act for")
                        continue
                    self.provider.delete(who, pvid)
                    s.volumes_removed += 1
                    self.audit.append([AuditRecord(
                        actor=ACTOR, action="delete", outcome="done", reason="unrecorded_volume", vm_id=item.vm_id,
                        volume_id=item.volume_id, host_id=item.host_id, policy_version=int(item.policy_version),
                        detail={"provider_volume": pvid, "recorded": item.provider_volume_id or ""})])
            except (ProviderUnavailable, ProviderRefused) as exc:
                s.errors.append(f"volume {pvid}: {exc.code}")

    def _record_volume(self, item: PolicyItem, vol: dict[str, Any]) -> bool:
        rec = AuditRecord(actor=ACTOR, action="state_corrected", outcome="done", reason="unrecorded_volume",
                          vm_id=item.vm_id, volume_id=item.volume_id, host_id=item.host_id,
                          policy_version=int(item.policy_version), detail={"provider_volume": vol["provider_volume_id"]})

        def write(tx: Tx) -> None:
            tx.update(item, actions=[PolicyItem.provider_volume_id.set(vol["provider_volume_id"]),
                                     PolicyItem.zone.set(vol["zone"]), PolicyItem.state_version.add(1)],
                      condition=(PolicyItem.state_version == item.state_version)
                      & PolicyItem.provider_volume_id.does_not_exist())

        try:
            self.audit.append([rec], extra=write)
            return True
        except ConcurrentModification:
            return False

    def _match_hosts(self, item: PolicyItem, hosts: tuple[str, ...], now: datetime, s: Summary,
                     grants: dict[str, tuple[str, ...]]) -> None:
        if item.vm_id not in grants:
            grants[item.vm_id] = tuple(sorted(
                g.destination_host for g in GrantItem.query(f"VM#{item.vm_id}", GrantItem.sk.startswith("GRANT#"),
                                                            consistent_read=True) if g.expires_at > now))
        want = tuple(dict.fromkeys((item.host_id, *grants[item.vm_id])))
        if set(hosts) == set(want):
            return
        who = self.who(item.host_id)
        if who is None:
            s.errors.append(f"hosts of {item.volume_id}: no enrolled host to act for")
            return
        self.provider.set_hosts(who, item.provider_volume_id, want)
        s.hosts_corrected += 1
        self.audit.append([AuditRecord(actor=ACTOR, action="state_corrected", outcome="done", reason="hosts_drift",
                                       vm_id=item.vm_id, volume_id=item.volume_id, host_id=item.host_id,
                                       policy_version=int(item.policy_version),
                                       detail={"was": ",".join(hosts), "now": ",".join(want)})])

    # ---- (e) unauthenticated refusals

    def _fold_refusals(self, now: datetime, s: Summary) -> None:
        """Each closed minute of refused, unauthenticated requests naming an enrolled host becomes one audit
        record (actor ``reconciler``: the senders proved nothing, so none is recorded as ``host:ID``); the
        counter goes in the same transaction, conditional on the count it was read with."""
        for hit in self._expired("R", now):
            try:
                item = RefusalItem.get(hit.pk, hit.sk, consistent_read=True)
            except RefusalItem.DoesNotExist:
                continue
            n = int(item.refusals or 0)
            rec = AuditRecord(actor=ACTOR, action="refuse", outcome="denied", reason="unauthenticated",
                              host_id=item.named_host,
                              detail={"count": str(n), "window": item.window, "window_seconds": "60",
                                      "codes": ",".join(sorted(item.codes or ())), "authenticated": "false"})

            def write(tx: Tx, it=item, count=n) -> None:
                tx.delete(it, condition=RefusalItem.refusals == count)

            try:
                self.audit.append([rec], extra=write)
                s.refusal_windows += 1
            except ConcurrentModification:
                pass  # counted meanwhile, or folded by another pass: the next pass sees it

    def _all_attached_records(self):
        for shard in range(EXPIRY_SHARDS):
            yield from PolicyItem.by_expiry.query(f"L#{shard}", page_size=PAGE)
