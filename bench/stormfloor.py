"""The boot storm's floor: every round trip the storm's events made, replayed as bare boto3 calls.

``bench/fleet.py`` records, for each event of the boot storm, the AWS calls the event path made (service,
operation and parameters, taken by a botocore ``before-parameter-build`` hook on vvolguard's clients, in
order, 503 retries included). :class:`StormFloor` then replays them against the same moto server with the
same concurrency (one thread per host, each host's events in the storm's order) and nothing between the
calls: no signature check, no parsing, no decision, no audit chain, no retry, no lock. Our storm throughput
over this floor's is ``storm_floor_ratio`` (docs/benchmarks.md).

What is replayed as it was and what is redirected, so the replay changes nothing the rest of the run reads:

- reads (DynamoDB ``Query``/``GetItem``/``BatchGetItem``, EC2 ``Describe*``, STS, KMS, Secrets Manager) and
  the transactions' ``ConditionCheck``\\s and host-table writes (``last_seen_at``) go as they were;
- every other DynamoDB write keeps its table, kind, attributes and update expression but goes to a floor
  key: in the state table (which the event path's ``Query`` walks in moto) a few items per host thread,
  re-used, so the table does not grow; in the events and audit tables a new key per write (as the storm's
  own writes), deleted after the replay. Conditions are dropped (a bare call), except ``attribute_not_exists``
  on a new key's ``Put``;
- ``CreateVolume`` creates a floor volume (the same size and type, its tags' values prefixed ``floor~``);
  ``AttachVolume``/``DetachVolume`` move floor volumes on floor instances (one per VM instance, the same
  device), ``CreateTags``/``DeleteTags``/``DeleteVolume`` act on floor volumes. Floor volumes and their tags are
  deleted after the replay (untimed).
"""
from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore import xform_name

Op = tuple[str, str, dict]  # (service, operation, API parameters)

READ_PREFIXES = ("Describe", "Get", "List", "Query", "Scan", "BatchGet", "TransactGet")
_REF = re.compile(r"[#:][A-Za-z0-9_]+")


class Recorder:
    """Per-thread log of the API calls made by vvolguard's clients (a ``before-parameter-build`` hook)."""

    def __init__(self) -> None:
        self.local = threading.local()

    def hook(self, params: dict, model: Any, **_: object) -> None:
        ops = getattr(self.local, "ops", None)
        if ops is not None:
            # a shallow copy (a deep one would slow the storm it records): nothing changes a call's parameters
            # after it is made
            ops.append((model.service_model.service_name, model.name, dict(params)))

    def start(self) -> None:
        self.local.ops = []

    def stop(self) -> list[Op]:
        """This thread's calls since :meth:`start` (also kept for :meth:`last`)."""
        self.local.last, self.local.ops = getattr(self.local, "ops", None) or [], None
        return self.local.last

    def last(self) -> list[Op]:
        return getattr(self.local, "last", [])


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def summary(lat: list[float], wall: float) -> dict[str, Any]:
    """events, events/s over ``wall`` and the p50/p99 latencies (ms) of per-event latencies ``lat`` (s)."""
    n = len(lat)
    return {"events": n, "events_per_s": n / wall if wall else 0.0, "p50_ms": pct(lat, 50) * 1000,
            "p99_ms": pct(lat, 99) * 1000}


class _Thread:
    """One host thread's floor resources and the clients it calls with (its own: no shared pool)."""

    def __init__(self, name: str, clients: dict[str, Any]) -> None:
        self.name = name
        self.clients = clients
        self.available: list[str] = []  # floor volumes not attached
        self.attached: dict[str, str] = {}  # floor instance -> floor volume attached there
        self.n = 0
        self.written: dict[tuple[str, str], dict] = {}  # (table, key as JSON) -> key: deleted after the replay
        self.errors = 0


class StormFloor:
    """Replays recorded storm events (host -> events -> ops) as bare boto3 calls; see the module docstring."""

    def __init__(self, url: str, region: str, settings: Any, recorded: dict[str, list[list[Op]]]) -> None:
        self.url, self.region, self.settings = url, region, settings
        self.recorded = recorded
        self.verbatim_tables = {settings.hosts_table}
        self.bounded_tables = {settings.state_table}
        self.keys: dict[str, tuple[str, str | None, str | None]] = {}  # table -> (hash, range, range type)
        self.threads: dict[str, _Thread] = {}
        self.instances: dict[str, str] = {}  # VM instance -> its floor instance
        self.volumes: list[str] = []

    # ---- set-up and clean-up (untimed)
    def _client(self, service: str):
        import boto3

        return boto3.client(service, endpoint_url=self.url, region_name=self.region)

    def setup(self) -> None:
        ddb, ec2 = self._client("dynamodb"), self._client("ec2")
        for table in {t for evs in self.recorded.values() for ops in evs for t in _tables(ops)}:
            desc = ddb.describe_table(TableName=table)["Table"]
            types = {a["AttributeName"]: a["AttributeType"] for a in desc["AttributeDefinitions"]}
            hash_ = next(k["AttributeName"] for k in desc["KeySchema"] if k["KeyType"] == "HASH")
            range_ = next((k["AttributeName"] for k in desc["KeySchema"] if k["KeyType"] == "RANGE"), None)
            self.keys[table] = (hash_, range_, types.get(range_) if range_ else None)
        vm_instances = sorted({op[2]["InstanceId"] for evs in self.recorded.values() for ops in evs for op in ops
                               if op[1] in ("AttachVolume", "DetachVolume") and op[2].get("InstanceId")})
        if vm_instances:
            made = ec2.run_instances(ImageId="ami-12c6146b", MinCount=len(vm_instances), MaxCount=len(vm_instances),
                                     InstanceType="t3.micro", Placement={"AvailabilityZone": "us-east-1a"})
            for vm_inst, inst in zip(vm_instances, made["Instances"]):
                self.instances[vm_inst] = inst["InstanceId"]
        services = {op[0] for evs in self.recorded.values() for ops in evs for op in ops}
        for host, events in self.recorded.items():
            th = self.threads[host] = _Thread(host, {s: self._client(s) for s in services})
            need_free, need_attached = self._pool(events)
            for _ in range(need_free):
                th.available.append(self._volume(ec2))
            for floor_inst, device in need_attached:
                vol = self._volume(ec2)
                ec2.attach_volume(VolumeId=vol, InstanceId=floor_inst, Device=device)
                th.attached[floor_inst] = vol

    def _volume(self, ec2) -> str:
        vol = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
        self.volumes.append(vol)
        return vol

    def _pool(self, events: list[list[Op]]) -> tuple[int, list[tuple[str, str]]]:
        """How many free floor volumes, and which floor instances need one attached, before the replay, so that
        every recorded attach finds a free volume and every detach an attached one."""
        free, need_free, attached, need_attached = 0, 0, set(), []
        for ops in events:
            for service, name, params in ops:
                if service != "ec2":
                    continue
                if name == "CreateVolume":
                    free += 1
                elif name in ("AttachVolume", "DeleteVolume"):
                    if free:
                        free -= 1
                    else:
                        need_free += 1
                    if name == "AttachVolume":
                        attached.add(self.instances[params["InstanceId"]])
                elif name == "DetachVolume":
                    inst = self.instances[params["InstanceId"]]
                    if inst in attached:
                        attached.discard(inst)
                    else:
                        need_attached.append((inst, "/dev/sdf"))
                    free += 1
        return need_free, need_attached

    def cleanup(self) -> None:
        """Delete what the replay wrote: floor items, volumes (detached first), their tags; stop floor instances."""
        ddb, ec2 = self._client("dynamodb"), self._client("ec2")
        by_table: dict[str, list[dict]] = {}
        for th in self.threads.values():
            for (table, _), key in th.written.items():
                by_table.setdefault(table, []).append(key)
        for table, keys in by_table.items():
            for i in range(0, len(keys), 25):
                ddb.batch_write_item(RequestItems={table: [{"DeleteRequest": {"Key": k}} for k in keys[i:i + 25]]})
        for th in self.threads.values():
            for inst, vol in th.attached.items():
                ec2.detach_volume(VolumeId=vol, InstanceId=inst)
        for i in range(0, len(self.volumes), 200):
            chunk = self.volumes[i:i + 200]
            ec2.delete_tags(Resources=chunk)
            for vol in chunk:
                try:
                    ec2.delete_volume(VolumeId=vol)
                except Exception:  # deleted by a replayed DeleteVolume
                    pass
        if self.instances:
            ec2.terminate_instances(InstanceIds=list(self.instances.values()))

    # ---- the replay (timed)
    def run(self) -> dict[str, Any]:
        """Replay every host's events at once, one thread each: per-event latencies, wall time, failed calls."""
        lat: list[float] = []
        lock = threading.Lock()

        def work(host: str) -> None:
            th = self.threads[host]
            mine = []
            for ops in self.recorded[host]:
                t0 = time.perf_counter()
                for op in ops:
                    self._call(th, op)
                mine.append(time.perf_counter() - t0)
            with lock:
                lat.extend(mine)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(len(self.recorded)) as pool:
            list(pool.map(work, list(self.recorded)))
        wall = time.perf_counter() - t0
        return {"lat": lat, "wall": wall, "errors": sum(th.errors for th in self.threads.values()),
                "calls": sum(len(ops) for evs in self.recorded.values() for ops in evs)}

    def _call(self, th: _Thread, op: Op) -> None:
        service, name, params = op
        try:
            if service == "dynamodb":
                params = self._ddb(th, name, params)
            elif service == "ec2":
                params = self._ec2(th, name, params)
            method = getattr(th.clients[service], xform_name(name))
            out = method(**params)
            if service == "ec2":
                self._after_ec2(th, name, params, out)
        except Exception:  # counted: a replayed call should not fail; the figure says if any did
            th.errors += 1

    # DynamoDB
    def _ddb(self, th: _Thread, name: str, params: dict) -> dict:
        if name in ("PutItem", "UpdateItem", "DeleteItem"):
            kind = {"PutItem": "Put", "UpdateItem": "Update", "DeleteItem": "Delete"}[name]
            out = self._write(th, kind, params, {})
            return out if out is not None else params
        if name == "TransactWriteItems":
            seen: dict[tuple[str, str], int] = {}
            items = []
            for item in params["TransactItems"]:
                (kind, body), = item.items()
                new = self._write(th, kind, body, seen)
                items.append({kind: new if new is not None else body})
            return {**{k: v for k, v in params.items() if k != "ClientRequestToken"}, "TransactItems": items}
        return params

    def _write(self, th: _Thread, kind: str, body: dict, seen: dict) -> dict | None:
        """The floor version of one write (None: as it was)."""
        table = body["TableName"]
        if kind == "ConditionCheck" or table in self.verbatim_tables:
            return None
        hash_, range_, range_type = self.keys[table]
        old = body["Item"] if kind == "Put" else body["Key"]
        if table in self.bounded_tables:
            prefix = str(next(iter(old[range_].values())) if range_ else "").split("#")[0]
            k = seen.get((table, prefix), 0)
            seen[(table, prefix)] = k + 1
            key = {hash_: {"S": f"FLOOR~{th.name}"}}
            if range_:
                key[range_] = {"S": f"{prefix}#{k}"}
            unique = False
        else:
            th.n += 1
            if range_:
                key = {hash_: {"S": f"FLOOR~{th.name}"},
                       range_: {"N": str(th.n)} if range_type == "N" else {"S": f"floor{th.n}"}}
            else:
                key = {hash_: {"S": f"FLOOR~{th.name}~{th.n}"}}
            unique = True
        th.written[(table, json.dumps(key, sort_keys=True))] = key
        out = {k: v for k, v in body.items()
               if k not in ("ConditionExpression", "ExpressionAttributeNames", "ExpressionAttributeValues",
                            "ReturnValuesOnConditionCheckFailure", "Expected", "ConditionalOperator")}
        if kind == "Put":
            out["Item"] = {**body["Item"], **key}
            if unique:
                out["ConditionExpression"] = "attribute_not_exists(#fk)"
                out["ExpressionAttributeNames"] = {"#fk": hash_}
            return out
        out["Key"] = key
        if kind == "Update":
            refs = set(_REF.findall(body.get("UpdateExpression", "")))
            names = {k: v for k, v in (body.get("ExpressionAttributeNames") or {}).items() if k in refs}
            values = {k: v for k, v in (body.get("ExpressionAttributeValues") or {}).items() if k in refs}
            if names:
                out["ExpressionAttributeNames"] = names
            if values:
                out["ExpressionAttributeValues"] = values
        return out

    # EC2
    def _ec2(self, th: _Thread, name: str, params: dict) -> dict:
        params = {k: v for k, v in params.items() if k not in ("ClientToken", "DryRun")}
        if name.startswith(READ_PREFIXES):
            return params
        if name == "CreateVolume":
            specs = [{**s, "Tags": [{**t, "Value": "floor~" + t["Value"]} for t in s.get("Tags", [])]}
                     for s in params.get("TagSpecifications", [])]
            return {**params, "TagSpecifications": specs}
        if name == "AttachVolume":
            inst = self.instances[params["InstanceId"]]
            return {**params, "VolumeId": th.available.pop() if th.available else "vol-none", "InstanceId": inst}
        if name == "DetachVolume":
            inst = self.instances[params["InstanceId"]]
            return {**params, "VolumeId": th.attached.get(inst, "vol-none"), "InstanceId": inst}
        if name in ("CreateTags", "DeleteTags"):
            vol = next(iter(th.attached.values()), None) or (th.available[-1] if th.available else "vol-none")
            return {**params, "Resources": [vol]}
        if name == "DeleteVolume":
            return {**params, "VolumeId": th.available.pop() if th.available else "vol-none"}
        out = dict(params)
        if "VolumeId" in out:
            out["VolumeId"] = th.available[-1] if th.available else "vol-none"
        if "InstanceId" in out:
            out["InstanceId"] = self.instances.get(out["InstanceId"], out["InstanceId"])
        return out

    def _after_ec2(self, th: _Thread, name: str, params: dict, out: dict) -> None:
        if name == "CreateVolume":
            th.available.append(out["VolumeId"])
            self.volumes.append(out["VolumeId"])
        elif name == "AttachVolume":
            th.attached[params["InstanceId"]] = params["VolumeId"]
        elif name == "DetachVolume":
            th.available.append(th.attached.pop(params["InstanceId"]))


def _tables(ops: list[Op]) -> set[str]:
    out = set()
    for service, name, params in ops:
        if service != "dynamodb":
            continue
        if name == "TransactWriteItems":
            out.update(next(iter(i.values()))["TableName"] for i in params["TransactItems"])
        elif "TableName" in params:
            out.add(params["TableName"])
    return out
