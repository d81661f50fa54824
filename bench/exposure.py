"""Measured exposure: a fleet's day on a compressed clock, and how long each kind of key volume was attached.

Plays a fleet of VMs on a few hosts against moto (in-process ``mock_aws``, for speed: the same services,
tables and provider calls as the local stack, without its HTTP hop) and the real services, passing an
explicit simulated ``now`` to every call: signed webhook requests through ``EventService.handle`` (the
service behind ``POST /v1/events``; signed as each host at the simulated time), and one reconciler pass
(``Services.reconciler().run(now)``) every simulated 60 s, the reconciler's interval.

What happens in the day (seeded, reproducible):

- boots: ``vm.created`` once, then for each run ``vm.preboot`` and, 30 to 120 s later, ``vm.booted``;
  a run lasts 2 to 10 h, the VM is off 2 to 20 min between runs; ``vm.shutdown`` ends a run;
- app sessions (app VMs): ``app.started`` / ``app.stopped``, 10 to 60 min each, 5 to 60 min apart;
- request attaches (request VMs): ``volume.attach_request`` with the volume's password, held 5 to 30 min,
  then ``volume.detach_request``;
- heartbeats: the host sends ``vm.heartbeat`` every 60 s for each running VM whose volume may be renewed
  (those with only a postboot volume are left out: the heartbeat changes nothing for them, docs/webhook-api.md);
- host deaths: a host stops sending anything (no heartbeat, no shutdown); its VMs are down; it comes back
  20 to 60 min later and boots them again;
- lost events: a ``vm.booted`` or an ``app.stopped`` that is never sent (``--lost`` of them).

Attachment truth is sampled, never assumed: the state record (``attached``, ``lease_expires_at``) and the
provider's ``DescribeVolumes`` of each volume right after every event that touches it and of every volume
after every reconciler pass (each simulated minute). State changes only at those moments, so the samples
give exact attached intervals. A volume counts as attached when either the record or the provider says so.

Figures, per volume kind (docs/benchmarks.md): ``exposure_pct`` = attached time / its VM's uptime x 100
(``preboot_exposure_pct`` for preboot/postboot: goal under 1%), and ``max_overrun_s``: the longest a volume
stayed attached past its lease (goal: at most one reconciler interval, 60 s).

    .venv/bin/python -m bench.exposure                    # defaults: 8 VMs on 4 hosts, 2.5 simulated hours
    .venv/bin/python -m bench.exposure --vms 40 --hours 24
    .venv/bin/python -m bench.exposure --merge FILE       # make bench: the last JSON line of FILE merged in
"""
from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from bench import emulated, last_json

INTERVAL = 60  # the reconciler's interval (template.yaml: every minute)
LEASE = 900    # max_attach_seconds, the default lease
PASSWORD = "bench-pass-1"
KINDS = ("preboot/postboot", "preboot/shutdown", "app", "request")
POLICY = {
    "preboot/postboot": dict(attach_on="preboot", detach_on="postboot", os_disk_encryption=True),
    "preboot/shutdown": dict(attach_on="preboot", detach_on="shutdown", os_disk_encryption=True),
    "app": dict(attach_on="app_start", detach_on="app_stop", app="A1", authorized_apps=["A1"]),
    "request": dict(attach_on="request", detach_on="request", password=PASSWORD),
}
FIGURE = {"preboot/postboot": "preboot_postboot", "preboot/shutdown": "preboot_shutdown", "app": "app",
          "request": "request"}


@dataclass
class Vm:
    vm_id: str
    host: str
    kind: str
    volume_id: str
    running: bool = False
    epoch: int = 0            # bumped on every boot and host death: stale scheduled actions are dropped
    up_since: float | None = None
    uptime: float = 0.0
    app_on: bool = False
    req_on: bool = False


@dataclass
class Truth:
    """One volume's sampled truth."""

    attached: bool = False
    since: float = 0.0
    lease_end: float | None = None
    seconds: float = 0.0
    overrun: float = 0.0
    intervals: int = 0
    disagreements: int = 0  # samples where the record and the provider differ


@dataclass
class Day:
    settings: Any
    vms: int = 8
    hosts: int = 4
    hours: float = 2.5
    seed: int = 7
    lost: float = 0.03             # share of vm.booted never sent
    lost_app: float | None = None  # share of app.stopped never sent (default: ``lost``)
    deaths: int = 1
    death_hosts: tuple[int, ...] = ()  # which hosts die (default: host 1, 2, ... in turn)
    start: datetime = field(default_factory=lambda: datetime.now(timezone.utc).replace(microsecond=0))

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.queue: list[tuple[float, int, Callable[[float], None]]] = []
        self.n = 0
        self.fleet: dict[str, Vm] = {}
        self.truth: dict[str, Truth] = {}
        self.owner: dict[str, str] = {}
        self.host_dead: dict[str, bool] = {}
        self.secrets: dict[str, str] = {}
        self.counts = {"events": 0, "heartbeats": 0, "reconciler_passes": 0, "errors": 0, "lost_booted": 0,
                       "lost_app_stopped": 0, "host_deaths": 0, "lease_expired": 0}
        self.errors: list[str] = []
        self.wall = {"events": 0.0, "reconciler": 0.0}

    # ---- clock
    def at(self, t: float) -> datetime:
        return self.start + timedelta(seconds=t)

    def schedule(self, t: float, fn: Callable[[float], None]) -> None:
        self.n += 1
        heapq.heappush(self.queue, (t, self.n, fn))

    # ---- set-up: hosts, instances, policies
    def setup(self) -> None:
        from vvolguard.adapters import aws
        from vvolguard.domain.policy import parse_policy_text
        from vvolguard.services.root import Services

        self.services = Services.build(self.settings)
        hosts = self.services.hosts
        for i in range(self.hosts):
            hid = f"xh-{i:02d}"
            self.secrets[hid] = hosts.enroll(hid, f"02:00:00:0e:00:{i:02x}", f"XSN-{i}")["secret"]
            self.host_dead[hid] = False
        ec2 = aws.client("ec2", self.settings.region)
        entries = []
        for i in range(self.vms):
            kind = KINDS[i % len(KINDS)]
            # Kinds in turn, hosts shifted every round of kinds: each host runs VMs of several kinds.
            vm = Vm(f"xvm-{i:04d}", f"xh-{(i + i // len(KINDS)) % self.hosts:02d}", kind, f"xvol-{i:04d}")
            self.fleet[vm.vm_id] = vm
            self.truth[vm.volume_id] = Truth()
            self.owner[vm.volume_id] = vm.vm_id
            ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="t3.micro",
                              Placement={"AvailabilityZone": "us-east-1a"},
                              TagSpecifications=[{"ResourceType": "instance",
                                                  "Tags": [{"Key": "vvg:vm-id", "Value": vm.vm_id}]}])
            entries.append({"volume_id": vm.volume_id, "vm_id": vm.vm_id, "host_id": vm.host, "storage_array": "S1",
                            "size_mb": 10, "max_attach_seconds": LEASE, **POLICY[kind]})
        self.services.policies.apply(parse_policy_text(json.dumps({"volumes": entries}).encode()), actor="cli")
        self.events = self.services.events
        self.ec2 = ec2

    # ---- the webhook, signed as the host at the simulated time
    def send(self, vm: Vm, type_: str, t: float, **fields: Any) -> dict | None:
        from vvolguard.domain.secrets import sign
        from vvolguard.errors import VvgError

        self.counts["events"] += 1
        doc = {"event_id": f"x{self.counts['events']}-{type_}", "type": type_, "vm_id": vm.vm_id, **fields}
        raw = json.dumps(doc).encode()
        now = self.at(t)
        headers = {"content-type": "application/json", "x-vvg-host": vm.host,
                   "x-vvg-signature": sign(self.secrets[vm.host], int(now.timestamp()), raw)}
        w = time.perf_counter()
        try:
            answer = self.events.handle(headers, raw, now)
        except VvgError as exc:
            self.counts["errors"] += 1
            self.errors.append(f"{type_} {vm.vm_id}: {exc.code}")
            answer = None
        self.wall["events"] += time.perf_counter() - w
        self.sample(t, [vm.volume_id])
        return answer

    # ---- truth
    def sample(self, t: float, volume_ids: list[str] | None = None) -> None:
        """The records and the provider of ``volume_ids`` (default: every volume) at simulated time ``t``."""
        from vvolguard.adapters.models import PolicyItem

        filters = [{"Name": "tag:vvg:volume-id", "Values": volume_ids}] if volume_ids else \
            [{"Name": "tag-key", "Values": ["vvg:volume-id"]}]
        at_provider: set[str] = set()
        for page in self.ec2.get_paginator("describe_volumes").paginate(Filters=filters):
            for v in page["Volumes"]:
                tags = {x["Key"]: x["Value"] for x in v.get("Tags", [])}
                if any(a["State"] in ("attaching", "attached", "detaching") for a in v.get("Attachments", [])):
                    at_provider.add(tags.get("vvg:volume-id", ""))
        if volume_ids:
            recs = [PolicyItem.get(f"VM#{self.owner[vid]}", f"POLICY#{vid}", consistent_read=True) for vid in volume_ids]
        else:
            recs = [r for r in PolicyItem.scan(PolicyItem.sk.startswith("POLICY#"), consistent_read=True, page_size=500)
                    if r.volume_id in self.truth]
        base = self.start.timestamp()
        for rec in recs:
            self.observe(rec.volume_id, t, bool(rec.attached), rec.volume_id in at_provider,
                         rec.lease_expires_at.timestamp() - base if rec.attached and rec.lease_expires_at else None)

    def observe(self, vid: str, t: float, recorded: bool, provider: bool, lease_end: float | None) -> None:
        tr = self.truth[vid]
        if recorded != provider:
            tr.disagreements += 1
        if tr.attached:  # attached from the previous sample until now (counted inside the window only)
            tr.seconds += max(0.0, t - max(tr.since, 0.0))
            if tr.lease_end is not None and t > tr.lease_end:
                tr.overrun = max(tr.overrun, t - tr.lease_end)
        now_attached = recorded or provider
        if now_attached and not tr.attached:
            tr.intervals += 1
        tr.attached, tr.since = now_attached, t
        if lease_end is not None:
            tr.lease_end = lease_end
        elif not now_attached:
            tr.lease_end = None

    # ---- the fleet's behaviour
    def alive(self, vm: Vm, epoch: int) -> bool:
        return vm.running and vm.epoch == epoch and not self.host_dead[vm.host]

    def boot(self, vm: Vm, t: float, run_s: float | None = None) -> None:
        if self.host_dead[vm.host]:
            return
        vm.epoch += 1
        epoch = vm.epoch
        vm.running, vm.up_since, vm.app_on, vm.req_on = True, t, False, False
        self.send(vm, "vm.preboot", t)
        boot_s = self.rng.uniform(30, 120)
        if vm.kind == "preboot/postboot" and self.rng.random() < self.lost:
            self.counts["lost_booted"] += 1  # the host never sends it
        else:
            self.schedule(t + boot_s, lambda t2: self.alive(vm, epoch) and self.send(vm, "vm.booted", t2))
        if vm.kind != "preboot/postboot":
            self.schedule(t + self.rng.uniform(1, 60), lambda t2: self.heartbeat(vm, epoch, t2))
        if vm.kind == "app":
            self.schedule(t + boot_s + self.rng.uniform(60, 1800), lambda t2: self.app(vm, epoch, t2))
        if vm.kind == "request":
            self.schedule(t + boot_s + self.rng.uniform(60, 1800), lambda t2: self.request(vm, epoch, t2))
        run_s = self.rng.uniform(2 * 3600, 10 * 3600) if run_s is None else run_s
        self.schedule(t + run_s, lambda t2: self.shutdown(vm, epoch, t2))

    def heartbeat(self, vm: Vm, epoch: int, t: float) -> None:
        if not self.alive(vm, epoch):
            return
        self.counts["heartbeats"] += 1
        self.send(vm, "vm.heartbeat", t)
        self.schedule(t + 60, lambda t2: self.heartbeat(vm, epoch, t2))

    def app(self, vm: Vm, epoch: int, t: float) -> None:
        if not self.alive(vm, epoch):
            return
        if not vm.app_on:
            vm.app_on = True
            self.send(vm, "app.started", t, app="A1")
            self.schedule(t + self.rng.uniform(600, 3600), lambda t2: self.app(vm, epoch, t2))
            return
        vm.app_on = False
        if self.rng.random() < (self.lost if self.lost_app is None else self.lost_app):
            self.counts["lost_app_stopped"] += 1  # never sent: the lease ends it (heartbeats renew it meanwhile)
        else:
            self.send(vm, "app.stopped", t, app="A1")
        self.schedule(t + self.rng.uniform(300, 3600), lambda t2: self.app(vm, epoch, t2))

    def request(self, vm: Vm, epoch: int, t: float) -> None:
        if not self.alive(vm, epoch):
            return
        if not vm.req_on:
            vm.req_on = True
            self.send(vm, "volume.attach_request", t, volume_id=vm.volume_id, password=PASSWORD)
            self.schedule(t + self.rng.uniform(300, 1800), lambda t2: self.request(vm, epoch, t2))
            return
        vm.req_on = False
        self.send(vm, "volume.detach_request", t, volume_id=vm.volume_id)
        self.schedule(t + self.rng.uniform(300, 3600), lambda t2: self.request(vm, epoch, t2))

    def down(self, vm: Vm, t: float) -> None:
        if vm.running and vm.up_since is not None:
            vm.uptime += max(0.0, t - max(vm.up_since, 0.0))
        vm.running, vm.up_since = False, None
        vm.epoch += 1

    def shutdown(self, vm: Vm, epoch: int, t: float) -> None:
        if not self.alive(vm, epoch):
            return
        self.down(vm, t)
        self.send(vm, "vm.shutdown", t)
        self.schedule(t + self.rng.uniform(120, 1200), lambda t2: self.boot(vm, t2))

    def host_death(self, host: str, t: float) -> None:
        self.counts["host_deaths"] += 1
        self.host_dead[host] = True
        for vm in self.fleet.values():
            if vm.host == host:
                self.down(vm, t)  # the VM dies with its host: no shutdown event, no more heartbeats
        self.schedule(t + self.rng.uniform(1200, 3600), lambda t2: self.host_back(host, t2))

    def host_back(self, host: str, t: float) -> None:
        self.host_dead[host] = False
        for vm in self.fleet.values():
            if vm.host == host and not vm.running:
                self.schedule(t + self.rng.uniform(5, 300), lambda t2, v=vm: self.boot(v, t2))

    def reconcile(self, t: float) -> None:
        w = time.perf_counter()
        out = self.services.reconciler().run(self.at(t))
        self.wall["reconciler"] += time.perf_counter() - w
        self.counts["reconciler_passes"] += 1
        self.counts["lease_expired"] += out["expired_leases"]
        if not out["ok"]:
            self.errors.extend(f"reconcile: {e}" for e in out["errors"] if not e.startswith("tamper"))
        self.sample(t)
        if t + INTERVAL <= self.end:
            self.schedule(t + INTERVAL, self.reconcile)

    # ---- the day
    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.setup()
        self.end = self.hours * 3600
        # The day starts in the fleet's steady state: every VM booted shortly before the window (its preboot
        # 2 to 10 min before 0) and runs for 30 min to 10 h more; only the window [0, end] is measured.
        for vm in self.fleet.values():
            first = -self.rng.uniform(130, 600)
            self.send(vm, "vm.created", first - 1)
            self.schedule(first, lambda t, v=vm, r=self.rng.uniform(1800, 10 * 3600) - first: self.boot(v, t, r))
        hosts = sorted(self.host_dead)
        dying = [hosts[i % len(hosts)] for i in (self.death_hosts or range(1, self.deaths + 1))]
        for h in dying:
            self.schedule(self.rng.uniform(0.2, 0.8) * self.end, lambda t, h=h: self.host_death(h, t))
        self.schedule(INTERVAL, self.reconcile)
        while self.queue and self.queue[0][0] <= self.end:
            t, _, fn = heapq.heappop(self.queue)
            fn(t)
        self.sample(self.end)
        for vm in self.fleet.values():
            if vm.running and vm.up_since is not None:
                vm.uptime += self.end - max(vm.up_since, 0.0)
        return self.figures(time.perf_counter() - t0)

    def figures(self, wall: float) -> dict[str, Any]:
        per: dict[str, dict[str, Any]] = {}
        for kind in KINDS:
            vms = [v for v in self.fleet.values() if v.kind == kind]
            attached = sum(self.truth[v.volume_id].seconds for v in vms)
            uptime = sum(v.uptime for v in vms)
            per[kind] = {"vms": len(vms), "uptime_h": round(uptime / 3600, 2), "attached_h": round(attached / 3600, 3),
                         "exposure_pct": round(100 * attached / uptime, 3) if uptime else 0.0,
                         "attachments": sum(self.truth[v.volume_id].intervals for v in vms),
                         "max_overrun_s": round(max((self.truth[v.volume_id].overrun for v in vms), default=0.0), 1)}
        out: dict[str, Any] = {
            "preboot_exposure_pct": per["preboot/postboot"]["exposure_pct"],
            "max_overrun_s": max(p["max_overrun_s"] for p in per.values()),
        }
        for kind, p in per.items():
            out[f"exposure_pct_{FIGURE[kind]}"] = p["exposure_pct"]
            out[f"max_overrun_s_{FIGURE[kind]}"] = p["max_overrun_s"]
        out.update({"exposure_vms": self.vms, "exposure_hours": self.hours, "exposure_events": self.counts["events"],
                    "exposure_reconciler_passes": self.counts["reconciler_passes"],
                    "exposure_record_provider_disagreements": sum(t.disagreements for t in self.truth.values()),
                    "exposure_errors": self.counts["errors"], "exposure_wall_s": round(wall, 1),
                    "exposure_events_wall_s": round(self.wall["events"], 1),
                    "exposure_reconciler_wall_s": round(self.wall["reconciler"], 1)})
        self.per_kind = per
        return out

    def table(self) -> str:
        lines = [f"{'kind':<18} {'VMs':>4} {'uptime h':>9} {'attached h':>11} {'exposure %':>11} "
                 f"{'attachments':>12} {'max overrun s':>14}"]
        for kind, p in self.per_kind.items():
            lines.append(f"{kind:<18} {p['vms']:>4} {p['uptime_h']:>9.2f} {p['attached_h']:>11.3f} "
                         f"{p['exposure_pct']:>11.3f} {p['attachments']:>12} {p['max_overrun_s']:>14.1f}")
        c = self.counts
        lines.append(f"{c['events']} events ({c['heartbeats']} heartbeats), {c['reconciler_passes']} reconciler passes "
                     f"({c['lease_expired']} leases ended), {c['host_deaths']} host death(s), lost: "
                     f"{c['lost_booted']} vm.booted, {c['lost_app_stopped']} app.stopped; {c['errors']} refused events")
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=int, default=8)
    ap.add_argument("--hosts", type=int, default=4)
    ap.add_argument("--hours", type=float, default=2.5)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--lost", type=float, default=0.03, help="share of vm.booted / app.stopped never sent")
    ap.add_argument("--deaths", type=int, default=1, help="host deaths in the day")
    ap.add_argument("--merge", help="a file whose last JSON line is merged into this one's (make bench)")
    args = ap.parse_args(argv)
    with emulated() as settings:
        day = Day(settings, vms=args.vms, hosts=args.hosts, hours=args.hours, seed=args.seed, lost=args.lost,
                  deaths=args.deaths)
        res = day.run()
    print(f"[exposure]  {args.vms} VMs on {args.hosts} hosts, {args.hours:g} simulated hours "
          f"(moto in-process), {res['exposure_wall_s']:.0f} s")
    print(day.table())
    for e in day.errors[:10]:
        print("  error:", e)
    print(f"[exposure]  preboot/postboot exposure {res['preboot_exposure_pct']:.3f}% of uptime (goal < 1%); "
          f"longest overrun past a lease {res['max_overrun_s']:.0f} s (goal <= {INTERVAL} s)", flush=True)
    merged = {**(last_json(args.merge) if args.merge else {}), **res}
    print(json.dumps(merged))
    return 0


if __name__ == "__main__":
    sys.exit(main())
