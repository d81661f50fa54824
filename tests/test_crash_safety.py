"""Crash safety (docs/crash-safety.md): the process dies between any two AWS calls of an operation; after the
claim's lease and one reconciler pass the provider equals the records, no volume is left without a record,
nothing is left claimed and the audit verifies; the same request sent again ends consistent too.

Which crash points (docs/testing.md), by ``VVG_CRASH_WALK``:
- ``sample`` (the default, what ``make test`` runs): per operation, the crash just before its first write at
  the provider (claimed, nothing done) and just before the write that follows it (the provider moved, the
  next step did not happen);
- ``writes``: every distinct state: a crash before each write call, and after the last call (a crash before
  a read leaves the same AWS state as one before the next write);
- ``all``: before and after every single call.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest

from tests.crash_harness import (CRASH_EXIT, MotoServer, Operation, World, check_world, is_write, new_world,
                                 run_in_child)
from vvolguard.domain.engine import BUSY_SECONDS

WALK = os.environ.get("VVG_CRASH_WALK", "sample")
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300 if WALK == "sample" else 3600)]
LEASE = 900  # Table 1's max_attach_seconds (docs/policy-file.md)


def _preboot(w: World, at: datetime, eid: str = "c-preboot", vm: str = "vm-1") -> dict:
    return w.send("host-1", "vm.preboot", vm, eid, at)


def _created_then_preboot(w: World, at: datetime) -> None:
    w.send("host-1", "vm.created", "vm-1", "c-created", at)
    _preboot(w, at)


def _booted(w: World, at: datetime) -> dict:
    return w.send("host-1", "vm.booted", "vm-1", "c-booted", at)


def _migrate_start(w: World, at: datetime) -> dict:
    return w.send("host-1", "vm.migrate.start", "vm-2", "c-mstart", at, destination_host="host-2")


def _migrate_complete(w: World, at: datetime) -> dict:
    return w.send("host-2", "vm.migrate.complete", "vm-2", "c-mdone", at, source_host="host-1")


def _orphan(w: World) -> None:
    """vvol-3 created by its event, then attached at the provider behind vvolguard's back."""
    from vvolguard.adapters import aws
    from vvolguard.adapters.models import PolicyItem

    assert "error" not in w.send("host-1", "vm.created", "vm-3", "s-created", w.at(-120))
    item = next(iter(PolicyItem.query("VM#vm-3")))
    ec2 = aws.client("ec2", w.settings.region)
    inst = ec2.describe_instances(Filters=[{"Name": "tag:vvg:vm-id", "Values": ["vm-3"]}])
    ec2.attach_volume(VolumeId=item.provider_volume_id, Device="/dev/sdz",
                      InstanceId=inst["Reservations"][0]["Instances"][0]["InstanceId"])


def _setup_attached(w: World) -> None:
    assert "error" not in _preboot(w, w.at(-120), "s-preboot")


def _setup_migrating(w: World) -> None:
    assert "error" not in _preboot(w, w.at(-120), "s-preboot-2", vm="vm-2")


def _setup_migration_granted(w: World) -> None:
    _setup_migrating(w)
    assert "error" not in w.send("host-1", "vm.migrate.start", "vm-2", "s-mstart", w.at(-60), destination_host="host-2")


EC2_POLICY = b"""volumes:
  - {volume_id: vvol-ec2, vm_id: vm-ec2, host_id: aws-ec2, storage_array: S1, size_mb: 10,
     attach_on: preboot, detach_on: postboot, os_disk_encryption: true}
"""


def _setup_ec2_vm_stopped(w: World) -> None:
    """An EC2 VM (docs/ec2-vms.md): its policy on the reserved host aws-ec2 and its instance stopped."""
    from infra.bootstrap import ensure_instance
    from vvolguard.adapters import aws
    from vvolguard.domain.policy import parse_policy_text
    from vvolguard.services.policies import PolicyService

    PolicyService(w.settings).apply(parse_policy_text(EC2_POLICY, "ec2.yaml"), actor="cli")
    iid = ensure_instance(w.settings, "vm-ec2")
    aws.client("ec2", w.settings.region).stop_instances(InstanceIds=[iid])


def _vm_start(w: World, at: datetime) -> dict:
    from vvolguard.services.vms import VmService

    return VmService(w.settings).start("vm-ec2", actor="cli:crash-walk", now=at)


def _vm_start_again(w: World, at: datetime) -> dict:
    """`vvg vm start` again after recovery: it starts a still-stopped instance, or is refused (the instance
    runs), changing nothing."""
    from vvolguard.errors import VvgError

    try:
        return _vm_start(w, at)
    except VvgError as exc:
        return {"error": exc.code}


OPERATIONS = [
    Operation("event vm.created then vm.preboot (create, attach)", lambda w: None, _created_then_preboot),
    Operation("event vm.preboot cold (lazy create and attach in one event)", lambda w: None, _preboot),
    Operation("event vm.booted (detach)", _setup_attached, _booted),
    Operation("event vm.migrate.start (grant)", _setup_migrating, _migrate_start),
    Operation("event vm.migrate.complete (revoke)", _setup_migration_granted, _migrate_complete),
    Operation("reconciler: expired lease detach", _setup_attached, lambda w, at: w.reconcile(at), start=LEASE + 1),
    Operation("reconciler: orphan detach", _orphan, lambda w, at: w.reconcile(at)),
    Operation("vvg vm start (create, attach to the stopped instance, start it)", _setup_ec2_vm_stopped, _vm_start,
              again=_vm_start_again),
]


@pytest.fixture(scope="module")
def server():
    from vvolguard.adapters import aws

    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL",)}
    srv = MotoServer()
    os.environ["AWS_ENDPOINT_URL"] = srv.url
    try:
        yield srv
    finally:
        srv.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        aws.reset_clients()


def _calls(server: MotoServer, op: Operation) -> list[str]:
    w = new_world(server)
    op.setup(w)
    code, calls = run_in_child(w, op, None)
    assert code == 0 and calls
    assert check_world(w, w.at(op.start)) == [], f"{op.name}: inconsistent without any crash"
    return calls


def _crash_and_recover(server: MotoServer, op: Operation, n: int, after: bool) -> list[str]:
    w = new_world(server)
    op.setup(w)
    code, _ = run_in_child(w, op, n, after)
    assert code == CRASH_EXIT, f"{op.name}: call {n} was never reached"
    # The claim's lease has passed, and so has a lease from the moment the child made its calls (a loaded
    # machine may be seconds behind the operation's clock: a volume it created must count as settled).
    later = max(w.at(op.start), datetime.now(timezone.utc)) + timedelta(seconds=BUSY_SECONDS + 5)
    summary = w.reconcile(later)
    where = f"{op.name}, crash {'after' if after else 'before'} AWS call {n}"
    problems = [f"{where}: {p}" for p in check_world(w, later)]
    if summary["errors"]:
        problems.append(f"{where}: reconciler errors {summary['errors']}")
    if problems:
        return problems
    again = later
    (op.again or op.run)(w, again)  # the same request (same event ids) after recovery
    return [f"{where}, sent again: {p}" for p in check_world(w, again)]


def crash_points(calls: list[str], walk: str) -> list[tuple[int, bool]]:
    """(call number, crash after it returned?) to walk, for the calls an uncrashed run made."""
    k = len(calls)
    if walk == "all":
        return [(n, after) for n in range(1, k + 1) for after in (False, True)]
    writes = [n for n in range(1, k + 1) if is_write(calls[n - 1])]
    if walk == "writes":
        return [(n, False) for n in writes] + [(k, True)]
    first = next((n for n in writes if calls[n - 1].startswith("ec2.")), writes[0])
    return [(n, False) for n in [first, *[w for w in writes if w > first][:1]]]


@pytest.mark.parametrize("op", OPERATIONS, ids=lambda o: o.name)
def test_a_crash_between_any_two_aws_calls_is_repaired_by_one_reconciler_pass(server, op):
    calls = _calls(server, op)
    k = len(calls)
    points = crash_points(calls, WALK)
    problems: list[str] = []
    for n, after in points:
        problems += _crash_and_recover(server, op, n, after)
    print(f"{op.name}: {k} AWS calls {calls}; {len(points)} crash points walked")
    assert not problems, f"{len(problems)} problem(s) over {len(points)} crash points:\n" + "\n".join(problems)
