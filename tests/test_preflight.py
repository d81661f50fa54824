"""`vvg preflight VM_ID` (docs/preflight.md): every check named with what to do, exit 0 only when ready, one
Query of the VM's partition and one provider call per kind of resource."""
from __future__ import annotations

import boto3
import pytest


@pytest.fixture
def ready(webhook):
    """Table 1 with instances; vm-1's key volume provisioned and vm-1 booted once (its volume exists)."""
    from infra.bootstrap import provision_demo_keys

    provision_demo_keys(webhook.settings)
    assert webhook.send("vm.preboot", "vm-1")[0] == 200
    assert webhook.send("vm.booted", "vm-1")[0] == 200
    return webhook


def by_name(out: dict) -> dict[str, dict]:
    return {c["name"]: c for c in out["checks"]}


def test_ready_vm__every_check_passes_exit_0(ready, vvg):
    r = vvg("preflight", "vm-1")
    assert r.code == 0, r
    out = r.json()
    assert out["vm_id"] == "vm-1" and out["ready"] is True
    assert [c["name"] for c in out["checks"]] == ["host", "quarantine", "policies", "instance", "volumes",
                                                  "key_volumes", "locks"]
    assert all(c["ok"] and c["detail"] for c in out["checks"])


def test_revoked_host__names_the_host_check_and_exits_1(ready, vvg):
    assert vvg("host", "revoke", ready.host_id).code == 0
    r = vvg("preflight", "vm-1")
    assert r.code == 1
    checks = by_name(r.json())
    assert r.json()["ready"] is False
    assert checks["host"]["ok"] is False and "revoked" in checks["host"]["detail"]
    assert ready.host_id in checks["host"]["detail"]
    assert checks["instance"]["detail"].startswith("not checked: host") and "revoked" in checks["instance"]["detail"]


def test_volume_in_another_zone__says_move_the_volume_or_the_instance(ready, vvg):
    ec2 = boto3.client("ec2", region_name="us-east-1")
    vol = ec2.describe_volumes(Filters=[{"Name": "tag:vvg:volume-id", "Values": ["vvol-4"]}])["Volumes"]
    assert not vol  # vvol-4 was never attached: it will be created
    inst = ec2.describe_instances(Filters=[{"Name": "tag:vvg:vm-id", "Values": ["vm-4"]}])["Reservations"][0]["Instances"][0]
    zone = inst["Placement"]["AvailabilityZone"]
    other = "us-east-1b" if zone != "us-east-1b" else "us-east-1c"
    ec2.create_volume(Size=1, AvailabilityZone=other, TagSpecifications=[{"ResourceType": "volume", "Tags": [
        {"Key": "vvg:volume-id", "Value": "vvol-4"}, {"Key": "vvg:hosts", "Value": ready.host_id}]}])
    r = vvg("preflight", "vm-4")
    assert r.code == 1
    d = by_name(r.json())["volumes"]["detail"]
    assert d == f"vvol-4 is in {other} but {inst['InstanceId']} is in {zone}: move the volume or the instance"


def test_missing_key_volume_quarantine_and_lock__each_named(ready, vvg):
    from datetime import datetime, timedelta, timezone

    from vvolguard.adapters.models import PolicyItem
    from vvolguard.services.policies import PolicyService

    r = vvg("preflight", "vm-2")
    assert r.code == 0, r  # provision_demo_keys covered vvol-2 too
    assert vvg("vm", "quarantine", "vm-2", "--reason", "test").code == 0
    item = PolicyService(ready.settings).get("vvol-2")
    item.update(actions=[PolicyItem.locked_until.set(datetime.now(timezone.utc) + timedelta(minutes=5))])
    r = vvg("preflight", "vm-2")
    assert r.code == 1
    c = by_name(r.json())
    assert c["quarantine"]["ok"] is False and "vvg vm release vm-2" in c["quarantine"]["detail"]
    assert c["locks"]["ok"] is False and "vvol-2 is locked" in c["locks"]["detail"]


def test_no_key_volume__says_how_to_provision(webhook, vvg):
    c = by_name(vvg("preflight", "vm-1").json())
    assert c["key_volumes"]["ok"] is False
    assert "vvg key provision vvol-1" in c["key_volumes"]["detail"]


def test_vm_without_policies__not_ready(webhook, vvg):
    r = vvg("preflight", "vm-nope")
    assert r.code == 1
    out = r.json()
    assert out["ready"] is False and by_name(out)["policies"]["ok"] is False


@pytest.mark.parametrize("bad", ["", "a/b", "x" * 65, "vm 1", "../etc"])
def test_malformed_vm_id__one_line_error_nothing_read(aws, vvg, bad):
    r = vvg("preflight", bad)
    assert r.code != 0 and r.out == ""
    assert "vm id must match" in r.err and len(r.err.strip().splitlines()) == 1


def test_one_query_and_one_call_per_provider_resource(ready):
    """botocore before-call hook: one Query of the state table, one DescribeInstances, one DescribeVolumes."""
    from collections import Counter

    from vvolguard.adapters import aws as aws_adapter
    from vvolguard.services.preflight import PreflightService

    calls: Counter = Counter()

    def hook(model, params, **_):
        calls[(model.service_model.service_name, model.name)] += 1

    from vvolguard.adapters.models import track_model_clients

    track_model_clients()
    aws_adapter.add_hook("before-call", hook)
    try:
        out = PreflightService(ready.settings).run("vm-1")
    finally:
        aws_adapter.remove_hook("before-call", hook)
    assert out["ready"], out
    # the VM's partition, its host, its key volumes; one provider call per kind of resource
    # (and the host's provider session: one AssumeRole, cached while it is valid)
    assert calls == Counter({("dynamodb", "Query"): 1, ("dynamodb", "GetItem"): 1, ("dynamodb", "BatchGetItem"): 1,
                             ("sts", "AssumeRole"): 1, ("ec2", "DescribeInstances"): 1,
                             ("ec2", "DescribeVolumes"): 1}), calls
