"""Live migration from outside, against the local stack: access follows the VM, and an expired grant is
revoked by the reconciler."""
from __future__ import annotations

import json
import time

import boto3
import pytest

from tests.conftest import start_stack, stop_stack

pytestmark = pytest.mark.e2e


def _ec2(stack):
    return boto3.client("ec2", endpoint_url=stack.aws_url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _volume(stack, volume_id: str) -> dict:
    vols = _ec2(stack).describe_volumes(Filters=[{"Name": "tag:vvg:volume-id", "Values": [volume_id]}])["Volumes"]
    v = vols[0]
    v["TagMap"] = {t["Key"]: t["Value"] for t in v["Tags"]}
    v["attached"] = any(a["State"] == "attached" for a in v["Attachments"])
    return v


def _enroll(stack, host_id: str, n: int) -> str:
    r = stack.vvg("host", "enroll", host_id, "--mac", f"02:00:00:00:01:{n:02x}", "--serial", f"SN-{host_id}")
    assert r.code == 0, r
    return r.json()["secret"]


def send(stack, host: str, secret: str, type_: str, vm: str, *extra: str):
    r = stack.vvg("event", "send", type_, "--vm", vm, "--host", host, "--secret", secret, "--url", stack.api_url, *extra)
    return r, json.loads(r.out) if r.out.strip() else {}


def _own_vm(stack, tmp_path, vm: str) -> str:
    """A VM of this test's own (the stack is shared): an instance and one preboot/shutdown volume."""
    _ec2(stack).run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1,
                              Placement={"AvailabilityZone": "us-east-1a"},
                              TagSpecifications=[{"ResourceType": "instance",
                                                  "Tags": [{"Key": "vvg:vm-id", "Value": vm}]}])
    f = tmp_path / "p.yaml"
    f.write_text(f"volumes:\n  - {{volume_id: vol-{vm}, vm_id: {vm}, host_id: {stack.host_id}, storage_array: S1, "
                 f"size_mb: 10, attach_on: preboot, detach_on: shutdown}}\n")
    assert stack.vvg("policy", "apply", str(f)).code == 0
    return f"vol-{vm}"


def test_migration__the_whole_flow(stack, tmp_path):
    src, src_secret = stack.host_id, stack.host_secret
    vol_id = _own_vm(stack, tmp_path, "vm-mig")
    dst_secret = _enroll(stack, "host-mig-a", 1)
    other_secret = _enroll(stack, "host-mig-b", 2)
    r, body = send(stack, src, src_secret, "vm.preboot", "vm-mig")
    assert r.code == 0 and _volume(stack, vol_id)["attached"]

    # complete before start: 403
    r, body = send(stack, "host-mig-a", dst_secret, "vm.migrate.complete", "vm-mig", "--source-host", src)
    assert r.code == 1 and body["error"]["code"] == "forbidden"
    # start from a host that is not the VM's: 403
    r, body = send(stack, "host-mig-b", other_secret, "vm.migrate.start", "vm-mig", "--destination-host", "host-mig-b")
    assert body["error"]["code"] == "forbidden"
    # start to a destination that is not enrolled: 403
    r, body = send(stack, src, src_secret, "vm.migrate.start", "vm-mig", "--destination-host", "host-nobody")
    assert body["error"]["code"] == "forbidden"

    r, body = send(stack, src, src_secret, "vm.migrate.start", "vm-mig", "--destination-host", "host-mig-a")
    assert r.code == 0, r
    assert [(d["action"], d["outcome"]) for d in body["decisions"]] == [("grant", "done")]
    assert _volume(stack, vol_id)["TagMap"]["vvg:hosts"] == f"{src},host-mig-a"

    # the destination's events before complete: 403
    r, body = send(stack, "host-mig-a", dst_secret, "vm.shutdown", "vm-mig")
    assert body["error"]["code"] == "forbidden"
    # complete from a host never granted: 403
    r, body = send(stack, "host-mig-b", other_secret, "vm.migrate.complete", "vm-mig", "--source-host", src)
    assert body["error"]["code"] == "forbidden"

    r, first = send(stack, "host-mig-a", dst_secret, "vm.migrate.complete", "vm-mig", "--source-host", src,
                    "--event-id", "mig-complete-1")
    assert r.code == 0, r
    assert [(d["action"], d["outcome"]) for d in first["decisions"]] == [("revoke", "done")]
    vol = _volume(stack, vol_id)
    assert vol["TagMap"]["vvg:hosts"] == "host-mig-a"
    assert vol["attached"], "a volume attached during the move stays attached to the VM"
    # complete delivered twice: the same answer, nothing done again
    r, again = send(stack, "host-mig-a", dst_secret, "vm.migrate.complete", "vm-mig", "--source-host", src,
                    "--event-id", "mig-complete-1")
    assert r.code == 0 and again["duplicate"] is True and again["decisions"] == first["decisions"]
    export = {v["volume_id"]: v for v in stack.vvg("policy", "export").json()["volumes"]}
    assert export[vol_id]["host_id"] == "host-mig-a"

    # the source's events after complete: 403; the destination's work now
    r, body = send(stack, src, src_secret, "vm.shutdown", "vm-mig")
    assert body["error"]["code"] == "forbidden"
    r, body = send(stack, "host-mig-a", dst_secret, "vm.shutdown", "vm-mig")
    assert r.code == 0 and body["decisions"][0]["outcome"] == "done"
    assert not _volume(stack, vol_id)["attached"]
    assert stack.vvg("audit", "verify").code == 0


def test_migration__an_expired_grant_is_revoked_by_reconcile():
    s = start_stack({"VVG_MIGRATION_GRANT_SECONDS": "2"})
    try:
        dst_secret = _enroll(s, "host-late", 3)
        r, body = send(s, s.host_id, s.host_secret, "vm.created", "vm-1")
        assert r.code == 0
        r, body = send(s, s.host_id, s.host_secret, "vm.migrate.start", "vm-1", "--destination-host", "host-late")
        assert r.code == 0 and _volume(s, "vvol-1")["TagMap"]["vvg:hosts"] == f"{s.host_id},host-late"
        time.sleep(2.5)
        rec = s.vvg("reconcile")
        assert rec.code == 0 and rec.json()["grants_expired"] == 1, rec
        assert _volume(s, "vvol-1")["TagMap"]["vvg:hosts"] == s.host_id
        r, body = send(s, "host-late", dst_secret, "vm.migrate.complete", "vm-1", "--source-host", s.host_id)
        assert body.get("error", {}).get("code") == "forbidden", (r, body)
        lines = [json.loads(x) for x in s.vvg("audit", "list", "--vm", "vm-1").out.splitlines()]
        assert any(x["actor"] == "reconciler" and x["reason"] == "grant_expired" for x in lines)
    finally:
        stop_stack(s)
