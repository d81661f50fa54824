"""From outside, against the local stack (`make run`) with `.venv/bin/vvg` as a user types it: a draft that moves
a volume's detach_on from postboot to shutdown lists exactly the recorded vm.booted events of its VM with `now`
detach (done) and `draft` null (docs/policy-impact.md); preflight of a VM whose host was revoked names that
check and exits 1 (docs/preflight.md). Own VMs and hosts, so the shared stack's other tests are untouched."""
from __future__ import annotations

import json

import boto3

POLICY = """volumes:
  - {{volume_id: vvol-imp, vm_id: vm-imp, host_id: {host}, storage_array: S1, size_mb: 10, attach_on: preboot,
     detach_on: {detach}}}
"""


def _instance(stack, vm_id: str) -> None:
    ec2 = boto3.client("ec2", endpoint_url=stack.aws_url, region_name="us-east-1", aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    from infra.bootstrap import DEMO_IMAGE, DEMO_ZONE_SUFFIX

    ec2.run_instances(ImageId=DEMO_IMAGE, MinCount=1, MaxCount=1, InstanceType="t3.micro",
                      Placement={"AvailabilityZone": "us-east-1" + DEMO_ZONE_SUFFIX},
                      TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "vvg:vm-id", "Value": vm_id}]}])


def send(stack, type_: str, vm: str):
    r = stack.vvg("event", "send", type_, "--vm", vm, "--host", stack.host_id, "--secret", stack.host_secret,
                  "--url", stack.api_url)
    assert r.code == 0, r
    return r.json()


def test_impact_from_outside__lists_exactly_the_booted_events_now_detach_draft_null(stack, tmp_path):
    _instance(stack, "vm-imp")
    current = tmp_path / "current.yaml"
    current.write_text(POLICY.format(host=stack.host_id, detach="postboot"))
    assert stack.vvg("policy", "apply", str(current)).code == 0
    assert send(stack, "vm.preboot", "vm-imp")["decisions"][0]["outcome"] == "done"
    booted = send(stack, "vm.booted", "vm-imp")
    assert booted["decisions"][0]["action"] == "detach"
    draft = tmp_path / "draft.yaml"
    draft.write_text(POLICY.format(host=stack.host_id, detach="shutdown"))
    before = stack.vvg("policy", "export").out
    r = stack.vvg("policy", "impact", str(draft), "--since", "1d")
    assert r.code == 0, r
    out = json.loads(r.out)
    assert out["events_replayed"] >= 2
    mine = [c for c in out["changed"] if c["vm_id"] == "vm-imp"]
    assert [(c["event_id"], c["event_type"], c["volume_id"]) for c in mine] == \
        [(booted["event_id"], "vm.booted", "vvol-imp")]
    assert mine[0]["now"] == {"action": "detach", "outcome": "done", "reason": "detach_on=postboot"}
    assert mine[0]["draft"] is None
    assert all(c["volume_id"] == "vvol-imp" for c in out["changed"])  # no other volume's decision changes
    assert stack.vvg("policy", "export").out == before  # read-only


def test_preflight_from_outside__revoked_host_names_the_host_check_exit_1(stack, tmp_path):
    r = stack.vvg("host", "enroll", "host-pf", "--mac", "02:00:00:00:0f:01", "--serial", "SN-PF")
    assert r.code == 0, r
    p = tmp_path / "pf.yaml"
    p.write_text("volumes:\n  - {volume_id: vvol-pf, vm_id: vm-pf, host_id: host-pf, storage_array: S1, size_mb: 10, "
                 "attach_on: preboot, detach_on: postboot}\n")
    assert stack.vvg("policy", "apply", str(p)).code == 0
    _instance(stack, "vm-pf")
    ok = stack.vvg("preflight", "vm-pf")
    assert ok.code == 0, ok
    assert stack.vvg("host", "revoke", "host-pf").code == 0
    r = stack.vvg("preflight", "vm-pf")
    assert r.code == 1, r
    out = json.loads(r.out)
    assert out["ready"] is False
    host = [c for c in out["checks"] if c["name"] == "host"][0]
    assert host["ok"] is False and "host-pf was revoked" in host["detail"]
