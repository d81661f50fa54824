"""From outside, on the local stack (docs/ec2-vms.md): an EC2 VM started with `vvg vm start` gets its preboot
volume attached before the instance runs, and the stack's poller of the emulation's instance states detaches
it once the status checks pass, without anyone sending vm.booted; `vvg vm stop` stops and detaches."""
from __future__ import annotations

import json
import time

import boto3
import pytest

from tests.conftest import start_stack, stop_stack

POLICY = """volumes:
  - {volume_id: vvol-1, vm_id: vm-1, host_id: aws-ec2, storage_array: S1, size_mb: 10,
     attach_on: preboot, detach_on: postboot, os_disk_encryption: true}
"""


@pytest.fixture(scope="module")
def ec2_stack():
    """An empty stack whose EC2 poller runs every second (the reconciler is off: only the poller acts)."""
    s = start_stack({"VVG_SEED": "0", "VVG_EC2_POLL_SECONDS": "1"})
    yield s
    stop_stack(s)


def _ec2(stack):
    return boto3.client("ec2", region_name="us-east-1", endpoint_url=stack.aws_url,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _attachments(stack, volume_id: str) -> list[dict]:
    vols = _ec2(stack).describe_volumes(Filters=[{"Name": "tag:vvg:volume-id", "Values": [volume_id]}])["Volumes"]
    return [a for v in vols for a in v.get("Attachments", []) if a["State"] in ("attaching", "attached")]


def _state(stack, iid: str) -> str:
    return _ec2(stack).describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]


def test_vm_start__attaches_then_the_poller_detaches_at_boot__and_vm_stop_stops(ec2_stack, tmp_path):
    ec2 = _ec2(ec2_stack)
    iid = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, Placement={"AvailabilityZone": "us-east-1a"},
                            TagSpecifications=[{"ResourceType": "instance",
                                                "Tags": [{"Key": "vvg:vm-id", "Value": "vm-1"}]}])["Instances"][0]["InstanceId"]
    ec2.stop_instances(InstanceIds=[iid])
    f = tmp_path / "ec2.yaml"
    f.write_text(POLICY)
    assert ec2_stack.vvg("policy", "apply", str(f)).code == 0
    time.sleep(1.5)  # the poller has seen the instance stopped

    r = ec2_stack.vvg("vm", "start", "vm-1")
    assert r.code == 0, r
    out = r.json()
    assert out["instance_id"] == iid and out["instance_state"] in ("pending", "running")
    (attach,) = [d for d in out["decisions"] if d["action"] == "attach"]
    assert attach["volume_id"] == "vvol-1" and attach["outcome"] == "done" and attach["provider_volume_id"]
    assert _state(ec2_stack, iid) == "running"

    deadline = time.time() + 30
    while _attachments(ec2_stack, "vvol-1") and time.time() < deadline:
        time.sleep(0.5)
    assert _attachments(ec2_stack, "vvol-1") == [], "the poller did not detach vvol-1 after the status checks passed"
    assert _state(ec2_stack, iid) == "running"

    records = [json.loads(x) for x in ec2_stack.vvg("audit", "list", "--vm", "vm-1").out.splitlines()]
    booted = [x for x in records if x["event_type"] == "vm.booted"]
    assert booted and booted[0]["action"] == "detach" and booted[0]["outcome"] == "done"
    assert booted[0]["actor"] == "host:aws-ec2" and booted[0]["event_id"].startswith(f"ec2:{iid}:booted:")
    preboot = [x for x in records if x["event_type"] == "vm.preboot" and x["action"] == "attach"]
    assert preboot and preboot[0]["outcome"] == "done" and preboot[0]["at"] <= booted[0]["at"]
    assert any(x["action"] == "vm_start" and x["actor"].startswith("cli:") for x in records)

    r = ec2_stack.vvg("vm", "stop", "vm-1")
    assert r.code == 0, r
    assert r.json()["instance_state"] == "stopped" and _state(ec2_stack, iid) == "stopped"
    assert _attachments(ec2_stack, "vvol-1") == []
    v = ec2_stack.vvg("audit", "verify")
    assert v.code == 0, v


def test_webhook__signed_as_aws_ec2_is_refused_401_on_the_local_stack(ec2_stack):
    r = ec2_stack.vvg("event", "send", "vm.preboot", "--vm", "vm-1", "--host", "aws-ec2", "--secret", "x" * 32,
                      "--url", ec2_stack.api_url)
    assert r.code != 0 and "unknown_host" in (r.out + r.err), r
