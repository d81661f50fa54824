"""Crash injection for docs/crash-safety.md: an operation runs in a forked child against a moto SERVER (the
child's writes are the server's, so the parent sees them), and a botocore hook on every vvolguard client
(``vvolguard.adapters.aws.add_hook``) kills the child with ``os._exit`` just before its Nth AWS call (or just
after the Nth call returned): true process death, no undo, no ``finally``, no answer.

The parent then does what production does after a crash: waits out the claim's lease (every service takes
``now``, so the clock is advanced, not slept), runs one reconciler pass, and checks that the provider equals
the records (:func:`check_world`). Then it sends the same request again (same event_id) and checks again.

Adding an operation is one :class:`Operation` in the list the test walks (tests/test_crash_safety.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from tests.conftest import free_port

CRASH_EXIT = 70


class MotoServer:
    """``python -m infra.motoserver`` (what the local stack runs) on a free port; reset between runs."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "infra.motoserver", "-H", "127.0.0.1", "-p",
                                      str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1)  # noqa: S310 - loopback
                return
            except Exception:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("the moto server did not start")

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"),  # noqa: S310
                               timeout=10).read()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class World:
    """One fresh emulation: Table 1 seeded, host-1 (the demo host) and host-2 enrolled, a clock origin."""

    settings: Any
    secrets: dict[str, str]
    t0: datetime
    events: list[tuple] = field(default_factory=list)  # (host, doc, at): what the operation sent, to replay

    def at(self, seconds: float) -> datetime:
        return self.t0 + timedelta(seconds=seconds)

    def send(self, host: str, type_: str, vm_id: str, event_id: str, at: datetime, **fields: Any) -> dict:
        """One signed event through EventService.handle (the webhook's service), at server time ``at``."""
        from vvolguard.domain.secrets import sign
        from vvolguard.errors import VvgError
        from vvolguard.services.events import EventService

        raw = json.dumps({"event_id": event_id, "type": type_, "vm_id": vm_id, **fields}).encode()
        headers = {"content-type": "application/json", "x-vvg-host": host,
                   "x-vvg-signature": sign(self.secrets[host], int(at.timestamp()), raw)}
        try:
            return EventService(self.settings).handle(headers, raw, now=at)
        except VvgError as exc:
            return {"error": exc.code}

    def reconcile(self, at: datetime) -> dict:
        from vvolguard.services.reconcile import Reconciler

        return Reconciler(self.settings).run(now=at)


def new_world(server: MotoServer) -> World:
    """Table 1 (infra/demo-policies.yaml) and the VMs the walk uses as instances; the demo host (host-1) and
    host-2 enrolled. No dashboard user: nothing here signs in."""
    from infra.bootstrap import DEMO_POLICIES, bootstrap, ensure_instance
    from vvolguard.adapters import aws
    from vvolguard.domain.policy import parse_policy_text
    from vvolguard.services.hosts import HostService
    from vvolguard.services.policies import PolicyService
    from vvolguard.settings import Settings

    server.reset()
    aws.reset_clients()
    settings = Settings.from_env()
    bootstrap(settings)
    for vm_id in ("vm-1", "vm-2", "vm-3"):
        ensure_instance(settings, vm_id)
    PolicyService(settings).apply(parse_policy_text(DEMO_POLICIES.read_bytes(), DEMO_POLICIES.name), actor="cli")
    hosts = HostService(settings)
    secrets = {h: hosts.enroll(h, f"02:00:00:00:00:0{i}", f"SN-{i}")["secret"] for i, h in ((1, "host-1"), (2, "host-2"))}
    return World(settings, secrets, datetime.now(timezone.utc).replace(microsecond=0))


@dataclass(frozen=True)
class Operation:
    """One operation to crash: ``setup`` (uncrashed, in the parent) brings the world to where it starts;
    ``run`` is the operation itself (in the child, the clock at ``world.at(start)``); ``again`` repeats it
    after recovery (the same event ids; None: run it again as is)."""

    name: str
    setup: Callable[[World], None]
    run: Callable[[World, datetime], Any]
    start: float = 0.0
    again: Callable[[World, datetime], Any] | None = None


# ---- the crash itself


# Calls that change nothing anywhere: a crash just before one of them leaves the same AWS state as a crash
# just before the next call that does (docs/crash-safety.md). Anything not listed counts as a write.
READS = ("Describe", "Get", "List", "Query", "Scan", "BatchGet", "TransactGet", "Decrypt", "Encrypt",
         "AssumeRole", "Sign", "Verify", "Head", "GenerateDataKey")


def is_write(operation: str) -> bool:
    return not operation.split(".", 1)[-1].startswith(READS)


class _Crasher:
    def __init__(self, n: int, after: bool) -> None:
        self.n, self.after, self.calls = n, after, 0
        self.names: list[str] = []

    def before(self, event_name: str = "", **_: Any) -> None:
        self.calls += 1
        self.names.append(event_name.split(".", 1)[-1])
        if not self.after and self.calls == self.n:
            os._exit(CRASH_EXIT)

    def done(self, **_: Any) -> None:
        if self.after and self.calls == self.n:
            os._exit(CRASH_EXIT)


def run_in_child(world: World, op: Operation, crash_at: int | None, after: bool = False) -> tuple[int, list[str]]:
    """Fork; the child runs ``op`` with a crash before (or after) AWS call ``crash_at`` (None: no crash) and
    reports the calls it made. Returns (exit code, "service.Operation" of each call when it did not crash)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns, never runs a finally of the parent's stack
        code = 1
        try:
            os.close(r)
            from vvolguard.adapters import aws

            crasher = _Crasher(crash_at or 0, after)
            aws.add_hook("before-call", crasher.before)
            aws.add_hook("after-call", crasher.done)
            op.run(world, world.at(op.start))
            os.write(w, json.dumps(crasher.names).encode())
            code = 0
        except BaseException as exc:  # noqa: BLE001 - report and die
            try:
                os.write(w, f"error {type(exc).__name__}: {exc}".encode()[:4000])
            except Exception:
                pass
        os._exit(code)
    os.close(w)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, CRASH_EXIT):
        raise AssertionError(f"{op.name}: the child failed ({code}): {out.decode(errors='replace')}")
    return code, json.loads(out) if code == 0 else []


# ---- what must hold after recovery


def check_world(world: World, now: datetime) -> list[str]:
    """Every way the provider and the records disagree (empty: they agree), as readable lines.

    (a) each recorded volume exists, attached exactly where its record says (and not elsewhere), its
    vvg:hosts = its host and the VM's live migration grantees; (b) no managed volume without a record
    naming it; (c) no claim left: no event in progress, no volume marked busy; (d) the audit verifies."""
    from vvolguard.adapters import aws
    from vvolguard.adapters.audit import AuditLog
    from vvolguard.adapters.models import EventItem, GrantItem, PolicyItem

    ec2 = aws.client("ec2", world.settings.region)
    vols = {}
    for page in ec2.get_paginator("describe_volumes").paginate(
            Filters=[{"Name": "tag-key", "Values": ["vvg:volume-id"]}]):
        for v in page["Volumes"]:
            if v["State"] not in ("deleting", "deleted"):
                vols[v["VolumeId"]] = v
    problems: list[str] = []
    grants: dict[str, set[str]] = {}
    for g in GrantItem.scan():
        if g.expires_at > now:
            grants.setdefault(g.vm_id, set()).add(g.destination_host)
    recorded: set[str] = set()
    for p in PolicyItem.scan():
        if p.busy_event or p.busy_until:
            problems.append(f"{p.volume_id}: still claimed by {p.busy_event}")
        if not p.provider_volume_id:
            if p.attached:
                problems.append(f"{p.volume_id}: recorded attached but no provider volume")
            continue
        recorded.add(p.provider_volume_id)
        v = vols.get(p.provider_volume_id)
        if v is None:
            problems.append(f"{p.volume_id}: recorded {p.provider_volume_id} does not exist")
            continue
        atts = [(a["InstanceId"], a["State"]) for a in v.get("Attachments", [])
                if a["State"] in ("attaching", "attached", "detaching")]
        want = [(p.instance_id, "attached")] if p.attached else []
        if sorted(atts) != want:
            problems.append(f"{p.volume_id}: provider attachments {atts}, record says {want}")
        tags = {t["Key"]: t["Value"] for t in v.get("Tags", [])}
        hosts = {h for h in tags.get("vvg:hosts", "").split(",") if h}
        if hosts != {p.host_id} | grants.get(p.vm_id, set()):
            problems.append(f"{p.volume_id}: vvg:hosts {sorted(hosts)}, records say "
                            f"{sorted({p.host_id} | grants.get(p.vm_id, set()))}")
    for vid, v in vols.items():
        if vid not in recorded:
            tags = {t["Key"]: t["Value"] for t in v.get("Tags", [])}
            problems.append(f"{vid} ({tags.get('vvg:volume-id')}): at the provider with no record")
    for e in EventItem.scan():
        if e.status == "in_progress":
            problems.append(f"event {e.event_id} still in progress")
    verdict = AuditLog(world.settings).verify()
    if not verdict["ok"]:
        problems.append(f"audit does not verify: {json.dumps(verdict, default=str)[:500]}")
    return problems
