"""The webhook under a fleet: a boot storm against the local stack's AWS emulation (moto server, HTTP).

Prints events/s, p50/p99 latency, DynamoDB and provider calls per event (counted with botocore's
before-call hooks); the storm's floor: every AWS call of the storm's events replayed as bare boto3 calls
at the same concurrency, in slices alternating with the storm (bench/stormfloor.py, ``storm_floor_ratio``);
and the warm floor: the bare boto3 round trips a warm single-volume preboot cannot avoid
(Query, two TransactWriteItems, DescribeVolumes, AttachVolume) against the same server, measured
alternately with the event path in the same run, for shared-secret (HMAC) hosts and for Ed25519 key
hosts (docs/host-keys.md) side by side. Also p50 with 100 vs 100,000 policies in the table, and
one `vvg key provision` against the floor of its own round trips (bench/keyprovision.py).
The last line is one JSON object.

    make bench                      # defaults: 1,000 VMs, 16 hosts
    python -m bench.fleet --vms 200 --hosts 4 --pairs 50 --big 5000   # a quick run
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

HOST = "127.0.0.1"
PATTERNS = [  # Table 1, one row per VM in turn
    dict(size_mb=10, attach_on="preboot", detach_on="postboot", os_disk_encryption=True),
    dict(size_mb=100, attach_on="preboot", detach_on="shutdown", os_disk_encryption=True),
    dict(size_mb=10, attach_on="preboot", detach_on="postboot", os_disk_encryption=True),
    dict(size_mb=10, attach_on="app_start", detach_on="app_stop", app="A1", authorized_apps=["A1"]),
    dict(size_mb=10, attach_on="app_start", detach_on="app_stop", app="A2", authorized_apps=["A2"]),
]


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


class Counts:
    """Per-thread call counters fed by a botocore before-call hook."""

    def __init__(self) -> None:
        self.local = threading.local()

    def hook(self, model, **_: object) -> None:
        c = getattr(self.local, "c", None)
        if c is not None:
            c[model.service_model.service_name] += 1

    def start(self) -> None:
        self.local.c = Counter()

    def stop(self) -> Counter:
        c, self.local.c = self.local.c, None
        return c


class Fleet:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stack = None
        self.retries = 0

    # ---- set-up
    def start(self) -> None:
        """The local stack's emulation only (infra.local.LocalStack without gateway, dashboard or reconciler:
        the events go through the handler in-process), then the hosts."""
        from infra.local import LocalStack

        self.stack = LocalStack(seed=False, gateway=False, dashboard=False, reconcile_seconds=0,
                                environ={"VVG_LOG_EVENTS": "0", "VVG_EC2_POLL_SECONDS": "0"})
        self.stack.__enter__()
        self.url = self.stack.aws_url
        from vvolguard.adapters import aws

        self.settings = self.stack.settings
        from vvolguard.services.hosts import HostService

        hosts = HostService(self.settings)
        self.secrets = {}
        for i in range(self.args.hosts):
            hid = f"host-{i:02d}"
            self.secrets[hid] = hosts.enroll(hid, f"02:00:00:00:{i // 256:02x}:{i % 256:02x}", f"SN-{i}")["secret"]
        # Ed25519 key hosts (docs/host-keys.md): the server holds only their public keys.
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self.keys = {}
        for i in range(getattr(self.args, "key_hosts", 0)):
            hid = f"key-{i:02d}"
            key = Ed25519PrivateKey.generate()
            pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            hosts.enroll(hid, f"02:00:00:01:{i // 256:02x}:{i % 256:02x}", f"SNK-{i}", public_key=pub)
            self.keys[hid] = key
        self.counts = Counts()
        aws.add_hook("before-call", self.counts.hook)
        from bench.stormfloor import Recorder

        self.recorder = Recorder()  # the storm's calls, replayed as its floor (bench/stormfloor.py)
        aws.add_hook("before-parameter-build", self.recorder.hook)

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.__exit__(None, None, None)
            self.stack = None

    def vm(self, i: int) -> tuple[str, str]:
        return f"vm-{i:05d}", f"host-{i % self.args.hosts:02d}"

    def add_vms(self, start: int, stop: int) -> None:
        """EC2 instances tagged vvg:vm-id and one Table-1-like policy each (bulk-loaded: set-up, not measured)."""
        from vvolguard.adapters import aws

        ec2 = aws.client("ec2", self.settings.region)

        def run(i: int) -> None:
            vm, _ = self.vm(i)
            ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="t3.micro",
                              Placement={"AvailabilityZone": "us-east-1a"},
                              TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "vvg:vm-id", "Value": vm}]}])

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(run, range(start, stop)))
        self.load_policies(start, stop)

    def load_policies(self, start: int, stop: int, prefix: str = "vm") -> None:
        from vvolguard.adapters.models import PolicyItem

        now = datetime.now(timezone.utc)
        with PolicyItem.batch_write() as batch:
            for i in range(start, stop):
                vm = f"{prefix}-{i:05d}"
                host = f"host-{i % self.args.hosts:02d}"
                p = PATTERNS[i % len(PATTERNS)]
                batch.save(PolicyItem(pk=f"VM#{vm}", sk=f"POLICY#vvol-{vm}", volume_id=f"vvol-{vm}", vm_id=vm,
                                      host_id=host, storage_array="S1", policy_version=1, updated_at=now,
                                      updated_by="cli", max_attach_seconds=900, **p))

    def add_key_vms(self, n: int) -> list[tuple[str, str]]:
        """n VMs of the key hosts, each with one preboot/postboot volume, warmed once (created, attached,
        detached); returns (vm, host) pairs."""
        from vvolguard.adapters import aws
        from vvolguard.adapters.models import PolicyItem

        ec2 = aws.client("ec2", self.settings.region)
        now = datetime.now(timezone.utc)
        pairs = [(f"kvm-{i:05d}", f"key-{i % self.args.key_hosts:02d}") for i in range(n)]
        for vm, host in pairs:
            ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="t3.micro",
                              Placement={"AvailabilityZone": "us-east-1a"},
                              TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "vvg:vm-id", "Value": vm}]}])
            PolicyItem(pk=f"VM#{vm}", sk=f"POLICY#vvol-{vm}", volume_id=f"vvol-{vm}", vm_id=vm, host_id=host,
                       storage_array="S1", policy_version=1, updated_at=now, updated_by="cli", max_attach_seconds=900,
                       **PATTERNS[0]).save()
        for vm, host in pairs:
            self.send("vm.preboot", vm, host, f"kwarm-{vm}")
            self.send("vm.booted", vm, host, f"kwarm-{vm}-b")
        return pairs

    # ---- the event path
    def _sign(self, host: str, t: int, raw: bytes) -> str:
        from vvolguard.domain.hostkeys import sign_ed25519
        from vvolguard.domain.secrets import sign

        if host in self.keys:
            return sign_ed25519(self.keys[host], t, raw)
        return sign(self.secrets[host], t, raw)

    def send(self, type_: str, vm: str, host: str, event_id: str, record: bool = False) -> tuple[float, Counter, dict]:
        from vvolguard.handlers import events

        raw = json.dumps({"event_id": event_id, "type": type_, "vm_id": vm}).encode()
        ev = {"version": "2.0", "routeKey": "POST /v1/events", "rawPath": "/v1/events", "isBase64Encoded": False,
              "headers": {"content-type": "application/json", "x-vvg-host": host,
                          "x-vvg-signature": self._sign(host, int(time.time()), raw)},
              "body": raw.decode(), "requestContext": {"http": {"method": "POST", "path": "/v1/events"}}}
        self.counts.start()
        if record:
            self.recorder.start()
        t0 = time.perf_counter()
        r = events.handler(ev, None)
        for _ in range(3):  # a host retries a 503 with the same event_id
            if r["statusCode"] != 503:
                break
            self.retries += 1
            time.sleep(0.2)
            ev["headers"]["x-vvg-signature"] = self._sign(host, int(time.time()), raw)
            r = events.handler(ev, None)
        dt = time.perf_counter() - t0
        c = self.counts.stop()
        if record:
            self.recorder.stop()
        if r["statusCode"] != 200:
            raise RuntimeError(f"{type_} {vm}: {r['statusCode']} {r['body']}")
        return dt, c, json.loads(r["body"])

    def storm(self, vms: list[int], rounds: int = 0) -> dict:
        """Every VM: preboot then booted; one thread per host, all hosts at once.

        With ``rounds``, also the storm's floor (bench/stormfloor.py): the VMs are stormed in that many
        slices, each followed by the bare replay of the AWS calls its events made (same threads, same order),
        so a machine whose load drifts weighs on both alike; ``floor`` holds its figures and ``floor_ratio``
        our throughput over the floor's. The floor's set-up and clean-up are not timed."""
        from bench.stormfloor import StormFloor, summary

        k = max(1, rounds)  # contiguous slices: each has every host's share of VMs (VM i is host i mod hosts)
        slices = [part for part in (vms[j * len(vms) // k:(j + 1) * len(vms) // k] for j in range(k)) if part]
        lat: list[float] = []
        calls = Counter()
        wall = 0.0
        f_lat: list[float] = []
        f_wall, f_calls, f_errors = 0.0, 0, 0
        for part in slices:
            ops, r_lat, r_calls, r_wall = self._storm_round(part, record=rounds > 0)
            lat += r_lat
            calls.update(r_calls)
            wall += r_wall
            if rounds > 0:
                floor = StormFloor(self.url, self.settings.region, self.settings, ops)
                floor.setup()
                try:
                    fl = floor.run()
                finally:
                    floor.cleanup()
                f_lat += fl["lat"]
                f_wall += fl["wall"]
                f_calls += fl["calls"]
                f_errors += fl["errors"]
        n = len(lat)
        out = {**summary(lat, wall), "ddb_calls_per_event": calls["dynamodb"] / n,
               "provider_calls_per_event": (calls["ec2"] + calls["sts"]) / n}
        if rounds > 0:
            out["floor"] = {**summary(f_lat, f_wall), "calls": f_calls, "errors": f_errors, "rounds": len(slices)}
            out["floor_ratio"] = out["events_per_s"] / out["floor"]["events_per_s"]
        return out

    def _storm_round(self, vms: list[int], record: bool) -> tuple[dict, list[float], Counter, float]:
        """One storm over ``vms``: (host -> events -> recorded AWS calls, latencies, calls, wall time)."""
        by_host: dict[str, list[str]] = {}
        for i in vms:
            vm, host = self.vm(i)
            by_host.setdefault(host, []).append(vm)
        lat: list[float] = []
        calls = Counter()
        lock = threading.Lock()
        ops: dict[str, list] = {host: [] for host in by_host}

        def work(host: str) -> None:
            for vm in by_host[host]:
                for t in ("vm.preboot", "vm.booted"):
                    dt, c, _ = self.send(t, vm, host, f"storm-{t}-{vm}", record=record)
                    if record:
                        ops[host].append(self.recorder.last())
                    with lock:
                        lat.append(dt)
                        calls.update(c)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(len(by_host)) as pool:
            list(pool.map(work, list(by_host)))
        return ops, lat, calls, time.perf_counter() - t0

    # ---- the warm floor
    def floor_setup(self) -> None:
        import boto3

        self.raw_ddb = boto3.client("dynamodb", endpoint_url=self.url, region_name="us-east-1")
        self.raw_ec2 = boto3.client("ec2", endpoint_url=self.url, region_name="us-east-1")
        inst = self.raw_ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1,
                                          Placement={"AvailabilityZone": "us-east-1a"})["Instances"][0]["InstanceId"]
        vol = self.raw_ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
        self.floor_inst, self.floor_vol = inst, vol
        self.floor_n = 0

    def floor_once(self, vm: str, host: str) -> float:
        """The same round trips as a warm preboot, with no logic between them."""
        s = self.settings
        self.floor_n += 1
        n = self.floor_n
        now = str(int(time.time()))
        t0 = time.perf_counter()
        self.raw_ddb.query(TableName=s.state_table, KeyConditionExpression="pk = :pk",
                           ExpressionAttributeValues={":pk": {"S": f"VM#{vm}"}}, ConsistentRead=True)
        self.raw_ddb.transact_write_items(TransactItems=[
            {"ConditionCheck": {"TableName": s.hosts_table, "Key": {"host_id": {"S": host}},
                                "ConditionExpression": "attribute_exists(host_id)"}},
            {"Put": {"TableName": s.events_table, "Item": {"event_id": {"S": f"floor/{n}"}, "status": {"S": "in_progress"},
                                                               "body_mac": {"S": "r1:" + "0" * 64}, "host_id": {"S": host}},
                     "ConditionExpression": "attribute_not_exists(event_id)"}},
            {"Update": {"TableName": s.state_table, "Key": {"pk": {"S": "FLOOR"}, "sk": {"S": "POLICY#floor"}},
                        "UpdateExpression": "SET busy_event = :e ADD state_version :one",
                        "ExpressionAttributeValues": {":e": {"S": f"floor/{n}"}, ":one": {"N": "1"}}}},
        ])
        self.raw_ec2.describe_volumes(VolumeIds=[self.floor_vol])
        self.raw_ec2.attach_volume(VolumeId=self.floor_vol, InstanceId=self.floor_inst, Device="/dev/sdf")
        self.raw_ddb.transact_write_items(TransactItems=[
            {"Update": {"TableName": s.events_table, "Key": {"event_id": {"S": f"floor/{n}"}},
                        "UpdateExpression": "SET #s = :d, #r = :r", "ExpressionAttributeNames": {"#s": "status", "#r": "response"},
                        "ExpressionAttributeValues": {":d": {"S": "done"}, ":r": {"S": "{}" * 100}}}},
            {"Update": {"TableName": s.state_table, "Key": {"pk": {"S": "FLOOR"}, "sk": {"S": "POLICY#floor"}},
                        "UpdateExpression": "SET attached = :t REMOVE busy_event ADD state_version :one",
                        "ExpressionAttributeValues": {":t": {"BOOL": True}, ":one": {"N": "1"}}}},
            {"Put": {"TableName": s.audit_table, "Item": {"chain": {"S": "FLOOR"}, "seq": {"N": str(n)},
                                                              "mac": {"S": "0" * 64}, "at": {"S": now}},
                     "ConditionExpression": "attribute_not_exists(chain)"}},
            {"Put": {"TableName": s.state_table, "Item": {"pk": {"S": "FLOOR"}, "sk": {"S": "~AUDIT"},
                                                              "head_seq": {"N": str(n)}}}},
        ])
        dt = time.perf_counter() - t0
        self.raw_ec2.detach_volume(VolumeId=self.floor_vol, InstanceId=self.floor_inst)
        return dt

    def heartbeats(self, vms: list[int], n: int) -> dict:
        """vm.heartbeat of VMs whose preboot volume stays attached until shutdown (attached since the storm),
        counted the way a warm preboot's calls are (docs/webhook-api.md: at most 2 DynamoDB, no provider call)."""
        held = [i for i in vms if PATTERNS[i % len(PATTERNS)]["attach_on"] == "preboot"
                and PATTERNS[i % len(PATTERNS)]["detach_on"] != "postboot"]
        ddb_each: list[int] = []
        prov_each: list[int] = []
        for k in range(n):
            vm, host = self.vm(held[k % len(held)])
            _, c, body = self.send("vm.heartbeat", vm, host, f"hb-{self.args.tag}-{k}")
            assert [(d["action"], d["outcome"]) for d in body["decisions"]] == [("renew", "done")], body
            ddb_each.append(c["dynamodb"])
            prov_each.append(c["ec2"] + c["sts"])
        return {"ddb_calls_per_event": max(ddb_each), "provider_calls_per_event": max(prov_each)}

    def warm(self, vms: list[int], pairs: int, with_floor: bool, pick=None) -> dict:
        """Warm single-volume preboots (volume exists, sessions cached), alternating with the floor; ``pick(k)``
        chooses the (vm, host) of the k-th instead (the key hosts' VMs)."""
        ev_lat, fl_lat = [], []
        calls = Counter()
        ddb_each: list[int] = []
        prov_each: list[int] = []
        singles = [i for i in vms if PATTERNS[i % len(PATTERNS)]["detach_on"] == "postboot"]
        for k in range(pairs):
            vm, host = pick(k) if pick else self.vm(singles[k % len(singles)])
            dt, c, body = self.send("vm.preboot", vm, host, f"warm-{self.args.tag}-{k}")
            assert body["decisions"][0]["outcome"] == "done", body
            ev_lat.append(dt)
            calls.update(c)
            ddb_each.append(c["dynamodb"])
            prov_each.append(c["ec2"] + c["sts"])
            if with_floor:
                fl_lat.append(self.floor_once(vm, host))
            self.send("vm.booted", vm, host, f"warm-{self.args.tag}-{k}-b")
        out = {"p50_ms": statistics.median(ev_lat) * 1000, "ddb_calls_per_event": max(ddb_each),
               "provider_calls_per_event": max(prov_each), "ddb_calls_mean": calls["dynamodb"] / pairs,
               "provider_calls_mean": (calls["ec2"] + calls["sts"]) / pairs}
        if with_floor:
            out["floor_p50_ms"] = statistics.median(fl_lat) * 1000
            out["floor_ratio"] = statistics.median(ev_lat) / statistics.median(fl_lat)
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=int, default=1000)
    ap.add_argument("--hosts", type=int, default=16)
    ap.add_argument("--pairs", type=int, default=200, help="warm preboots measured against the floor")
    ap.add_argument("--small", type=int, default=100)
    ap.add_argument("--big", type=int, default=100_000)
    ap.add_argument("--tag", default="a")
    ap.add_argument("--storm-rounds", dest="storm_rounds", type=int, default=4,
                    help="slices of the boot storm, each followed by its floor (bench/stormfloor.py)")
    ap.add_argument("--key-hosts", dest="key_hosts", type=int, default=4, help="Ed25519 key hosts")
    ap.add_argument("--key-vms", dest="key_vms", type=int, default=40, help="VMs of the key hosts")
    ap.add_argument("--key-pairs", dest="key_pairs", type=int, default=20,
                    help="key provisionings measured against their floor")
    args = ap.parse_args()
    fleet = Fleet(args)
    t_start = time.perf_counter()
    try:
        fleet.start()
        fleet.floor_setup()
        # 1. 100 policies: warm the first VMs once, then measure (event path and floor, alternately).
        fleet.add_vms(0, args.small)
        fleet.storm(list(range(args.small)))
        args.tag = "small"
        small = fleet.warm(list(range(args.small)), max(30, args.pairs // 4), with_floor=True)
        print(f"[{args.small} policies]  warm preboot p50 {small['p50_ms']:.1f} ms, floor {small['floor_p50_ms']:.1f} ms",
              flush=True)
        # 2. The fleet: the rest of the VMs, then a boot storm of every VM from all hosts at once
        #    (cold for most: each volume is created at the provider on its first preboot).
        fleet.add_vms(args.small, args.vms)
        #    In slices, each followed by its floor: the same AWS calls as bare boto3 (bench/stormfloor.py).
        storm = fleet.storm(list(range(args.vms)), rounds=args.storm_rounds)
        sfloor = storm["floor"]
        print(f"[boot storm]    {storm['events']} events from {args.hosts} hosts over {args.vms} VMs: "
              f"{storm['events_per_s']:.1f} events/s, p50 {storm['p50_ms']:.1f} ms, p99 {storm['p99_ms']:.1f} ms, "
              f"{storm['ddb_calls_per_event']:.2f} DynamoDB and {storm['provider_calls_per_event']:.2f} provider calls/event",
              flush=True)
        print(f"[storm floor]   the same {sfloor['calls']} AWS calls as bare boto3 from {args.hosts} threads, "
              f"{sfloor['rounds']} slices alternating with the storm's: {sfloor['events_per_s']:.1f} events/s, "
              f"p50 {sfloor['p50_ms']:.1f} ms, p99 {sfloor['p99_ms']:.1f} ms ({sfloor['errors']} calls failed); "
              f"storm throughput over the floor's {storm['floor_ratio']:.2f}", flush=True)
        # 3. Warm single-volume preboots, alternating with the floor.
        args.tag = "warm"
        warm = fleet.warm(list(range(args.vms)), args.pairs, with_floor=True)
        print(f"[warm preboot]  p50 {warm['p50_ms']:.1f} ms vs floor {warm['floor_p50_ms']:.1f} ms "
              f"(ratio {warm['floor_ratio']:.2f}); at most {warm['ddb_calls_per_event']} DynamoDB round trips and "
              f"{warm['provider_calls_per_event']} provider calls per event (mean {warm['ddb_calls_mean']:.2f} and "
              f"{warm['provider_calls_mean']:.2f})", flush=True)
        # 3a. Heartbeats of the VMs whose volume the storm left attached (detach_on: shutdown).
        beat = fleet.heartbeats(list(range(args.vms)), max(5, args.pairs // 10))
        print(f"[heartbeat]     at most {beat['ddb_calls_per_event']} DynamoDB round trips and "
              f"{beat['provider_calls_per_event']} provider calls per vm.heartbeat", flush=True)
        # 3b. The same for Ed25519 key hosts, alternating with the same floor.
        kv = fleet.add_key_vms(args.key_vms)
        args.tag = "warm-ed25519"
        warm_ed = fleet.warm([], args.pairs, with_floor=True, pick=lambda k: kv[k % len(kv)])
        print(f"[warm preboot, Ed25519 host]  p50 {warm_ed['p50_ms']:.1f} ms vs floor {warm_ed['floor_p50_ms']:.1f} ms "
              f"(ratio {warm_ed['floor_ratio']:.2f}, HMAC host {warm['floor_ratio']:.2f}); at most "
              f"{warm_ed['ddb_calls_per_event']} DynamoDB round trips and {warm_ed['provider_calls_per_event']} "
              f"provider calls per event", flush=True)
        # 4. 100,000 policies: fill the table, measure again. moto's Query walks the whole table, so the
        #    floor's Query slows down too; the event path's ratio to that floor is what shows no scan.
        fleet.load_policies(0, max(0, args.big - args.vms), prefix="filler")
        args.tag = "big"
        big = fleet.warm(list(range(args.small)), max(30, args.pairs // 4), with_floor=True)
        ratio = big["p50_ms"] / small["p50_ms"]
        normalized = big["floor_ratio"] / small["floor_ratio"]
        print(f"[{args.big} policies] warm preboot p50 {big['p50_ms']:.1f} ms (x{ratio:.2f} of {args.small} policies), "
              f"floor {big['floor_p50_ms']:.1f} ms (x{big['floor_p50_ms'] / small['floor_p50_ms']:.2f}); "
              f"event path over floor x{big['floor_ratio']:.2f} vs x{small['floor_ratio']:.2f} -> {normalized:.2f}",
              flush=True)
        # 5. One `vvg key provision` against the floor of its own round trips (bench/keyprovision.py).
        from bench import keyprovision

        keyprov = keyprovision.measure(fleet.settings, args.key_pairs)
        print(keyprovision.line(keyprov), flush=True)
        # 6. `vvg policy impact` over 100,000 recorded events (bench/impact.py).
        from bench import impact as impact_bench

        impact = impact_bench.measure(fleet.settings)
        print(impact_bench.line(impact), flush=True)
    finally:
        fleet.stop()
    print(f"[total]         {time.perf_counter() - t_start:.0f} s; {fleet.retries} events retried after a 503", flush=True)
    print(json.dumps({
        "events_per_s": round(storm["events_per_s"], 1), "p50_ms": round(storm["p50_ms"], 2),
        "p99_ms": round(storm["p99_ms"], 2), "ddb_calls_per_event": round(warm["ddb_calls_per_event"], 2),
        "provider_calls_per_event": round(warm["provider_calls_per_event"], 2),
        "floor_ratio": round(warm["floor_ratio"], 3), "warm_p50_ms": round(warm["p50_ms"], 2),
        "floor_ratio_ed25519": round(warm_ed["floor_ratio"], 3), "warm_p50_ms_ed25519": round(warm_ed["p50_ms"], 2),
        "ddb_calls_per_event_ed25519": round(warm_ed["ddb_calls_per_event"], 2),
        "floor_p50_ms": round(warm["floor_p50_ms"], 2), "storm_ddb_calls_per_event": round(storm["ddb_calls_per_event"], 2),
        "storm_provider_calls_per_event": round(storm["provider_calls_per_event"], 2),
        f"p50_ms_{args.small}_policies": round(small["p50_ms"], 2), f"p50_ms_{args.big}_policies": round(big["p50_ms"], 2),
        "policies_p50_ratio": round(ratio, 3), "retried_503": fleet.retries,
        "storm_floor_ratio": round(storm["floor_ratio"], 3), "storm_floor_events_per_s": round(sfloor["events_per_s"], 1),
        "storm_floor_p50_ms": round(sfloor["p50_ms"], 2), "storm_floor_p99_ms": round(sfloor["p99_ms"], 2),
        "heartbeat_ddb_calls": beat["ddb_calls_per_event"], "heartbeat_provider_calls": beat["provider_calls_per_event"], "policies_floor_normalized_ratio": round(normalized, 3),
        **keyprov,
        **impact,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
