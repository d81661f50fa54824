"""EC2 VMs (docs/ec2-vms.md): `vvg vm start` / `vvg vm stop`, and the lifecycle that turns an instance's
state into events for its VM.

AWS offers no hook before an EC2 instance boots, so for a VM whose policies name the reserved host
``aws-ec2`` vvolguard acts as that VM's host itself: it sends the VM's events through
``EventService.handle_internal`` (the webhook's path after authentication: the same decisions, claims,
provider calls and audit records, actor ``host:aws-ec2``). Every EC2 call is made with the provider role's
session for ``aws-ec2`` (vvolguard.adapters.provider), never with the caller's own credentials.

Event ids are derived from the instance, what happened and a time, so that the lifecycle function, the
local poller and the reconciler, seeing the same thing, send the same event once (a repeat is answered
from the events table as a duplicate).
"""
from __future__ import annotations

import logging
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable

from botocore.exceptions import BotoCoreError, ClientError

from vvolguard.adapters.audit import AuditLog, AuditRecord
from vvolguard.adapters.models import QUARANTINE_SK, PolicyItem, QuarantineItem
from vvolguard.adapters.provider import TAG_VM, EbsProvider, HostIdentity, reserved_identity  # noqa: F401 (re-exported)
from vvolguard.domain.constants import rfc3339
from vvolguard.domain.policy import ID_RE
from vvolguard.errors import Conflict, InvalidInput, NotFound, ProviderUnavailable, UnknownHost, VvgError
from vvolguard.services.auth import AuthenticatedHost
from vvolguard.settings import Settings

log = logging.getLogger("vvg.vms")
EC2_HOST = "aws-ec2"  # the reserved host of EC2 VMs (vvolguard itself); `vvg host enroll aws-ec2` is refused
INSTANCE_RE = re.compile(r"^i-[0-9a-f]{8,17}\Z")
STOPPED_STATES = ("stopping", "stopped", "shutting-down", "terminated")
STATES = ("pending", "running", *STOPPED_STATES)
STOP_WAIT_S = 120.0  # `vvg vm stop` waits this long for the instance to stop before it detaches anyway
HEARTBEAT_BUCKET_S = 60  # one vm.heartbeat per running EC2 VM and minute, whoever notices it first



def _second(dt: datetime) -> datetime:
    return dt.astimezone(timezone.utc).replace(microsecond=0)


def internal_host(settings: Settings, host_id: str) -> AuthenticatedHost:
    """vvolguard acting as the reserved host ``host_id``: no enrolled secret, so the provider's external id is
    derived from the audit key (a server-side secret), never from anything a caller could present
    (adapters/provider.py: ``reserved_identity``)."""
    who = reserved_identity(settings, host_id)
    if who is None:
        raise UnknownHost("only a reserved host's events are sent internally")
    return AuthenticatedHost(host_id=host_id, secret_version=0, cred_hash=who.cred_hash)


def validate_vm(vm_id: Any) -> str:
    if not isinstance(vm_id, str) or not ID_RE.match(vm_id):
        raise InvalidInput("VM id must match [A-Za-z0-9._-]{1,64}")
    return vm_id


def is_ec2_vm(policies: Iterable[PolicyItem]) -> bool:
    """Every volume of the VM is on the host ``aws-ec2`` and attaches to the VM itself (attach_to vm)."""
    items = list(policies)
    return bool(items) and all(p.host_id == EC2_HOST and (getattr(p, "attach_to", None) or "vm") == "vm"
                               for p in items)


@dataclass(frozen=True)
class Ec2Instance:
    instance_id: str
    state: str
    vm_id: str | None


class Ec2:
    """The EC2 instance calls of EC2 VMs, made with the provider role's session for ``aws-ec2``."""

    def __init__(self, settings: Settings, provider: EbsProvider | None = None) -> None:
        self.settings = settings
        self.provider = provider if isinstance(provider, EbsProvider) else EbsProvider(settings)
        self._who: HostIdentity | None = None

    def who(self) -> HostIdentity:
        if self._who is None:
            host = internal_host(self.settings, EC2_HOST)
            self._who = HostIdentity(host.host_id, host.cred_hash)
        return self._who

    def _call(self, fn):
        try:
            return self.provider._call(fn)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if "NotFound" in code or code == "InvalidInstanceID.Malformed":
                return None
            raise Conflict(f"EC2 refused: {code}") from None
        except BotoCoreError:
            raise ProviderUnavailable("EC2 could not be reached") from None

    @staticmethod
    def _of(i: dict[str, Any]) -> Ec2Instance:
        tags = {t["Key"]: t["Value"] for t in i.get("Tags", [])}
        return Ec2Instance(i["InstanceId"], i.get("State", {}).get("Name", ""), tags.get(TAG_VM))

    def for_vm(self, vm_id: str) -> Ec2Instance | None:
        """The VM's instance (tagged vvg:vm-id), terminated ones aside; more than one is refused."""
        ec2 = self.provider.ec2(self.who())
        resp = self._call(lambda: ec2.describe_instances(Filters=[
            {"Name": f"tag:{TAG_VM}", "Values": [vm_id]},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped", "shutting-down"]}]))
        found = [self._of(i) for r in (resp or {}).get("Reservations", []) for i in r.get("Instances", [])]
        if len(found) > 1:
            raise Conflict(f"{len(found)} instances are tagged {TAG_VM}={vm_id}; tag exactly one")
        return found[0] if found else None

    def get(self, instance_id: str) -> Ec2Instance | None:
        ec2 = self.provider.ec2(self.who())
        resp = self._call(lambda: ec2.describe_instances(InstanceIds=[instance_id]))
        found = [self._of(i) for r in (resp or {}).get("Reservations", []) for i in r.get("Instances", [])]
        return found[0] if found else None

    def managed(self) -> list[Ec2Instance]:
        """Every instance tagged vvg:vm-id (the local poller's view), page by page."""
        ec2 = self.provider.ec2(self.who())
        out: list[Ec2Instance] = []
        token = None
        while True:
            kw: dict[str, Any] = {"Filters": [{"Name": "tag-key", "Values": [TAG_VM]}], "MaxResults": 1000}
            if token:
                kw["NextToken"] = token
            resp = self._call(lambda: ec2.describe_instances(**kw)) or {}
            out += [self._of(i) for r in resp.get("Reservations", []) for i in r.get("Instances", [])]
            token = resp.get("NextToken")
            if not token:
                return out

    def status_ok(self, instance_id: str) -> bool:
        """Both status checks (instance and system) passed, as DescribeInstanceStatus reports them."""
        ec2 = self.provider.ec2(self.who())
        resp = self._call(lambda: ec2.describe_instance_status(InstanceIds=[instance_id])) or {}
        for st in resp.get("InstanceStatuses", []):
            if st.get("InstanceState", {}).get("Name") == "running" and \
                    st.get("InstanceStatus", {}).get("Status") == "ok" and st.get("SystemStatus", {}).get("Status") == "ok":
                return True
        return False

    def start(self, instance_id: str) -> str:
        ec2 = self.provider.ec2(self.who())
        resp = self._call(lambda: ec2.start_instances(InstanceIds=[instance_id]))
        if resp is None:
            raise NotFound(f"instance {instance_id} is gone")
        return resp["StartingInstances"][0]["CurrentState"]["Name"]

    def stop(self, instance_id: str) -> str:
        ec2 = self.provider.ec2(self.who())
        resp = self._call(lambda: ec2.stop_instances(InstanceIds=[instance_id]))
        if resp is None:
            raise NotFound(f"instance {instance_id} is gone")
        return resp["StoppingInstances"][0]["CurrentState"]["Name"]


def _events(settings: Settings, events: Any = None):
    if events is not None:
        return events
    from vvolguard.services.events import EventService

    return EventService(settings)


def _sent(doc: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    return {"type": doc["type"], "event_id": doc["event_id"], "duplicate": bool(answer.get("duplicate")),
            "decisions": answer.get("decisions", [])}


class VmService:
    """`vvg vm start` / `vvg vm stop` and the dashboard's Start and Stop (docs/ec2-vms.md)."""

    def __init__(self, settings: Settings, provider: Any = None, events: Any = None, ec2: Ec2 | None = None) -> None:
        self.settings = settings
        self.events = _events(settings, events)
        self.ec2 = ec2 or Ec2(settings, provider if isinstance(provider, EbsProvider) else self.events.provider)
        self.audit = AuditLog(settings)

    def policies(self, vm_id: str) -> list[PolicyItem]:
        """The EC2 VM's policies; an unknown VM or one on another host is refused (nothing is changed)."""
        validate_vm(vm_id)
        items = sorted(PolicyItem.query(f"VM#{vm_id}", PolicyItem.sk.startswith("POLICY#"), consistent_read=True),
                       key=lambda p: p.volume_id)
        if not items:
            raise NotFound(f"no policy names VM {vm_id}")
        if not is_ec2_vm(items):
            hosts = ", ".join(sorted({p.host_id for p in items}))
            raise Conflict(f"{vm_id} is not an EC2 VM (its host is {hosts}, not {EC2_HOST}): its host's hook starts "
                           f"and stops it")
        return items

    def _instance(self, vm_id: str) -> Ec2Instance:
        inst = self.ec2.for_vm(vm_id)
        if inst is None:
            raise NotFound(f"no instance is tagged {TAG_VM}={vm_id}")
        return inst

    def _send(self, type_: str, vm_id: str, stamp: str, now: datetime) -> dict[str, Any]:
        doc = {"event_id": f"{stamp}:{type_.split('.')[-1]}", "type": type_, "vm_id": vm_id, "occurred_at": rfc3339(now)}
        return _sent(doc, self.events.handle_internal(EC2_HOST, doc, now))

    def _record(self, action: str, vm_id: str, actor: str, outcome: str, reason: str, detail: dict[str, str]) -> None:
        self.audit.append([AuditRecord(actor=actor, action=action, outcome=outcome, reason=reason, vm_id=vm_id,
                                       host_id=EC2_HOST, detail=detail)])

    def start(self, vm_id: str, actor: str, now: datetime | None = None) -> dict[str, Any]:
        """Create the missing volumes, attach the preboot ones to the stopped instance, start it (``now``: the
        server's clock, given by tests)."""
        self.policies(vm_id)
        try:
            QuarantineItem.get(f"VM#{vm_id}", QUARANTINE_SK, consistent_read=True)
            raise Conflict(f"{vm_id} is quarantined: release it first (vvg vm release {vm_id})")
        except QuarantineItem.DoesNotExist:
            pass
        inst = self._instance(vm_id)
        if inst.state != "stopped":
            raise Conflict(f"{vm_id}'s instance {inst.instance_id} is {inst.state}; only a stopped instance is started "
                           f"(its volumes are attached before it boots)")
        now = now or datetime.now(timezone.utc)
        stamp = f"vm-start:{inst.instance_id}:{int(now.timestamp())}:{secrets.token_hex(4)}"
        sent = [self._send("vm.created", vm_id, stamp, now), self._send("vm.preboot", vm_id, stamp, now)]
        bad = [d for d in sent[1]["decisions"] if d.get("action") == "attach" and d.get("outcome") in ("failed", "denied")]
        detail = {"instance": inst.instance_id, "events": ",".join(s["event_id"] for s in sent)}
        if bad:
            sent.append(self._send("vm.shutdown", vm_id, stamp, now))  # undo: nothing stays attached to a VM not started
            self._record("vm_start", vm_id, actor, "failed", "attach_" + bad[0]["outcome"], detail)
            raise Conflict(f"{vm_id} was not started: {bad[0]['volume_id']} attach {bad[0]['outcome']} "
                           f"({bad[0].get('reason') or '?'}); what was attached was detached again")
        try:
            state = self.ec2.start(inst.instance_id)
        except VvgError as exc:
            sent.append(self._send("vm.shutdown", vm_id, stamp, now))
            self._record("vm_start", vm_id, actor, "failed", exc.code, detail)
            raise type(exc)(f"{vm_id} was not started ({exc.message}); its preboot volumes were detached again") from None
        self._record("vm_start", vm_id, actor, "done", "started", detail)
        return {"vm_id": vm_id, "instance_id": inst.instance_id, "instance_state": state, "events": sent,
                "decisions": [d for s in sent for d in s["decisions"]]}

    def stop(self, vm_id: str, actor: str, wait_s: float = STOP_WAIT_S) -> dict[str, Any]:
        """Stop the instance, wait (bounded) until it is stopped, then detach every volume still attached."""
        self.policies(vm_id)
        inst = self._instance(vm_id)
        state = inst.state
        if state in ("pending", "running"):
            state = self.ec2.stop(inst.instance_id)
        deadline, pause = time.monotonic() + wait_s, 0.2
        while state != "stopped" and time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(pause * 2, 5.0)
            now_inst = self.ec2.get(inst.instance_id)
            state = now_inst.state if now_inst else "terminated"
        now = datetime.now(timezone.utc)
        stamp = f"vm-stop:{inst.instance_id}:{int(now.timestamp())}:{secrets.token_hex(4)}"
        sent = [self._send("vm.shutdown", vm_id, stamp, now)]
        self._record("vm_stop", vm_id, actor, "done", "stopped",
                     {"instance": inst.instance_id, "events": sent[0]["event_id"], "state": state})
        return {"vm_id": vm_id, "instance_id": inst.instance_id, "instance_state": state, "events": sent,
                "decisions": sent[0]["decisions"]}


class Ec2Lifecycle:
    """What an EC2 instance's state means for its VM: the lifecycle function's work (in AWS, for each
    EventBridge state-change notification; locally, for each change the poller sees; and in every
    reconciler pass). It acts on the instance's *current* state, read again, so that notifications that
    arrive late or out of order do no harm."""

    def __init__(self, settings: Settings, events: Any = None, ec2: Ec2 | None = None) -> None:
        self.settings = settings
        self.events = _events(settings, events)
        self.ec2 = ec2 or Ec2(settings, self.events.provider)

    def _send(self, doc: dict[str, Any], now: datetime) -> dict[str, Any]:
        return _sent(doc, self.events.handle_internal(EC2_HOST, doc, now))

    def on_state(self, instance_id: str, at: datetime, now: datetime | None = None,
                 shutdown: bool = True) -> dict[str, Any]:
        """Send the events the instance's state calls for: ``vm.shutdown`` when it stops or terminates,
        ``vm.booted`` once it runs with both status checks passed and postboot volumes are still attached,
        ``vm.heartbeat`` (one a minute) while it runs with other volumes attached."""
        now = now or datetime.now(timezone.utc)
        if not isinstance(instance_id, str) or not INSTANCE_RE.match(instance_id):
            return {"ignored": "bad_instance_id"}
        inst = self.ec2.get(instance_id)
        if inst is None:
            return {"instance_id": instance_id, "ignored": "instance_not_found"}
        out: dict[str, Any] = {"instance_id": instance_id, "vm_id": inst.vm_id, "state": inst.state, "sent": []}
        if not inst.vm_id or not ID_RE.match(inst.vm_id):
            out["ignored"] = "not_tagged"
            return out
        part = self.events.read_partition(inst.vm_id)
        policies = list(part.policies.values())
        if not is_ec2_vm(policies):
            out["ignored"] = "not_an_ec2_vm"
            return out
        if inst.state in STOPPED_STATES:
            if shutdown:
                doc = {"event_id": f"ec2:{instance_id}:shutdown:{int(at.timestamp())}", "type": "vm.shutdown",
                       "vm_id": inst.vm_id, "occurred_at": rfc3339(at)}
                out["sent"].append(self._send(doc, now))
            return out
        if inst.state != "running":
            return out
        postboot = [p for p in policies if p.attached and p.detach_on == "postboot" and p.attached_at]
        if postboot:
            if self.ec2.status_ok(instance_id):
                # One boot's vm.booted has one id, whoever sends it: its anchor is when its volumes were attached.
                anchor = _second(min(p.attached_at for p in postboot))
                doc = {"event_id": f"ec2:{instance_id}:booted:{int(anchor.timestamp())}", "type": "vm.booted",
                       "vm_id": inst.vm_id, "occurred_at": rfc3339(anchor)}
                out["sent"].append(self._send(doc, now))
            else:
                out["waiting"] = "status_checks"
        if any(p.attached and p.detach_on != "postboot" for p in policies):
            # vm.heartbeat: its server side comes with the event registry (docs/webhook-api.md); until then
            # this build answers invalid_event and the lease runs its course.
            bucket = datetime.fromtimestamp(int(now.timestamp()) // HEARTBEAT_BUCKET_S * HEARTBEAT_BUCKET_S, timezone.utc)
            doc = {"event_id": f"ec2:{instance_id}:heartbeat:{int(bucket.timestamp())}", "type": "vm.heartbeat",
                   "vm_id": inst.vm_id, "occurred_at": rfc3339(bucket)}
            try:
                out["sent"].append(self._send(doc, now))
            except InvalidInput as exc:
                out["heartbeat"] = exc.code
        return out


class Ec2Poller:
    """The local stack's stand-in for the EventBridge rule (docs/ec2-vms.md): reads the emulation's instance
    states and feeds each change, and each running instance (for vm.booted and heartbeats), to the lifecycle
    handler, in the notification's own shape. ``feed`` is that handler (infra/local.py passes it: a service
    never imports a handler)."""

    def __init__(self, settings: Settings, feed) -> None:
        self.settings = settings
        self.ec2 = Ec2(settings)
        self.seen: dict[str, str] = {}
        self.feed = feed

    def poll(self, now: datetime | None = None) -> list[dict[str, Any]]:
        now = now or datetime.now(timezone.utc)
        out = []
        for inst in self.ec2.managed():
            before = self.seen.get(inst.instance_id)
            self.seen[inst.instance_id] = inst.state
            changed = before is not None and before != inst.state
            if changed or inst.state == "running":
                out.append(self.feed(notification(inst.instance_id, inst.state, now, self.settings.region)))
        return out


def notification(instance_id: str, state: str, at: datetime, region: str = "us-east-1") -> dict[str, Any]:
    """An EventBridge "EC2 Instance State-change Notification" (the shape AWS delivers)."""
    return {"version": "0", "id": f"local-{instance_id}-{state}-{int(at.timestamp())}",
            "detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2", "account": "123456789012",
            "time": rfc3339(at), "region": region, "resources": [f"arn:aws:ec2:{region}:123456789012:instance/{instance_id}"],
            "detail": {"instance-id": instance_id, "state": state}}
