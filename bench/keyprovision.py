"""One `vvg key provision` against the floor of its own round trips, in the same run (docs/key-volume.md).

The floor is the bare boto3 calls a provisioning cannot avoid, against the same AWS emulation: StartSnapshot,
PutSnapshotBlock (one block), CompleteSnapshot, CreateVolume from the snapshot, DeleteSnapshot, DeleteVolume
(the volume it replaces) and one TransactWriteItems (the switch with its audit record). Measured
alternately with the real provisioning (KeyService.provision, as the CLI calls it, with a warm provider
session). Prints a line of figures; `measure()` is also called by `make bench` (bench/fleet.py).

    python -m bench.keyprovision [--pairs 20]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections import Counter
from typing import Any

VM, VOLUME, HOST = "kp-vm", "kp-vol", "host-00"


class _Count:
    """Round trips per service while on (a botocore before-call hook)."""

    def __init__(self) -> None:
        self.on, self.c, self.lock = False, Counter(), threading.Lock()

    def __call__(self, model, **_: Any) -> None:
        if self.on:
            with self.lock:
                self.c[model.service_model.service_name] += 1


def measure(settings: Any, pairs: int = 20, tmpdir: str | None = None) -> dict[str, Any]:
    """Provision ``pairs`` times, each followed by one floor sequence; the figures as a dict."""
    import tempfile

    import boto3

    from infra.bootstrap import ensure_instance
    from vvolguard.adapters import aws
    from vvolguard.adapters.models import connection
    from vvolguard.adapters.provider import EbsProvider
    from vvolguard.domain.policy import validate_document
    from vvolguard.services.hosts import HostService
    from vvolguard.services.keys import KeyService
    from vvolguard.services.policies import PolicyService

    try:
        HostService(settings).get(HOST)
    except Exception:  # noqa: BLE001 - not enrolled yet (a standalone run)
        HostService(settings).enroll(HOST, "02:00:00:00:00:aa", "SN-KP")
    ensure_instance(settings, VM)
    PolicyService(settings).apply(validate_document({"volumes": [
        {"volume_id": VOLUME, "vm_id": VM, "host_id": HOST, "storage_array": "S1", "size_mb": 10,
         "attach_on": "preboot", "detach_on": "postboot", "os_disk_encryption": True}]}))
    keyfile = os.path.join(tmpdir or tempfile.mkdtemp(), "luks.key")
    with open(keyfile, "wb") as fh:
        fh.write(os.urandom(64))

    provider = EbsProvider(settings)
    keys = KeyService(settings, provider)
    keys.provision(VOLUME, files=[f"luks={keyfile}"])  # warm: the host's session, the clients, the key's ARN

    ec2 = boto3.client("ec2", region_name=settings.region)
    ebs = boto3.client("ebs", region_name=settings.region)
    ddb = connection(settings).client
    zone = settings.region + "a"
    block = os.urandom(64) + b"\0" * (512 * 1024 - 64)
    floor_prev = ec2.create_volume(AvailabilityZone=zone, Size=1, Encrypted=True,
                                   KmsKeyId=settings.key_volumes_key_id)["VolumeId"]

    def floor_once(prev: str) -> tuple[float, str]:
        import base64
        import hashlib

        t = time.perf_counter()
        snap = ebs.start_snapshot(VolumeSize=1, Encrypted=True, Timeout=60)["SnapshotId"]
        digest = hashlib.sha256(block).digest()
        ebs.put_snapshot_block(SnapshotId=snap, BlockIndex=0, BlockData=block, DataLength=len(block),
                               Checksum=base64.b64encode(digest).decode(), ChecksumAlgorithm="SHA256")
        ebs.complete_snapshot(SnapshotId=snap, ChangedBlocksCount=1)
        vol = ec2.create_volume(AvailabilityZone=zone, Size=1, SnapshotId=snap, Encrypted=True,
                                KmsKeyId=settings.key_volumes_key_id)["VolumeId"]
        ec2.delete_snapshot(SnapshotId=snap)
        ddb.transact_write_items(TransactItems=[{"Put": {"TableName": settings.state_table, "Item": {
            "pk": {"S": "BENCH#floor"}, "sk": {"S": "KEYVOL"}, "kind": {"S": "bench"}, "v": {"S": vol}}}}])
        ec2.delete_volume(VolumeId=prev)
        return time.perf_counter() - t, vol

    count = _Count()
    aws.add_hook("before-call", count)
    real, floor, calls = [], [], []
    try:
        for _ in range(pairs):
            count.c.clear()
            count.on = True
            t = time.perf_counter()
            keys.provision(VOLUME, files=[f"luks={keyfile}"])
            real.append(time.perf_counter() - t)
            count.on = False
            calls.append(Counter(count.c))
            elapsed, floor_prev = floor_once(floor_prev)
            floor.append(elapsed)
    finally:
        aws.remove_hook("before-call", count)
    p50, f50 = statistics.median(real) * 1000, statistics.median(floor) * 1000
    provider_calls = max(sum(v for k, v in c.items() if k in ("ec2", "ebs", "kms", "sts")) for c in calls)
    return {"key_provision_p50_ms": round(p50, 2), "key_provision_floor_p50_ms": round(f50, 2),
            "key_provision_floor_ratio": round(p50 / f50, 3) if f50 else None,
            "key_provision_provider_calls": provider_calls, "key_provision_floor_calls": 7,
            "key_provision_ddb_calls": max(c.get("dynamodb", 0) for c in calls), "key_provision_pairs": pairs}


def line(figures: dict[str, Any]) -> str:
    """The human line `make bench` prints."""
    return (f"[key provision]  p50 {figures['key_provision_p50_ms']:.1f} ms vs floor "
            f"{figures['key_provision_floor_p50_ms']:.1f} ms (ratio {figures['key_provision_floor_ratio']:.2f}); "
            f"{figures['key_provision_provider_calls']} provider and {figures['key_provision_ddb_calls']} DynamoDB "
            f"calls vs {figures['key_provision_floor_calls']} in the floor")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=20)
    args = ap.parse_args()
    from bench.fleet import Fleet

    fleet = Fleet(argparse.Namespace(hosts=1))
    try:
        fleet.start()
        figures = measure(fleet.settings, args.pairs)
    finally:
        fleet.stop()
    print(line(figures), flush=True)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
