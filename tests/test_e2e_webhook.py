"""Table 1 end to end on the local stack: `vvg event send` signs like a host, the gateway calls the
handler, and the EC2 emulation shows the attachments."""
from __future__ import annotations

import json
import time

import boto3
import pytest
import requests

from vvolguard.domain.secrets import sign

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ec2(stack):
    return boto3.client("ec2", endpoint_url=stack.aws_url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _volumes(ec2) -> dict[str, dict]:
    out = {}
    for v in ec2.describe_volumes(Filters=[{"Name": "tag-key", "Values": ["vvg:volume-id"]}])["Volumes"]:
        v["TagMap"] = {t["Key"]: t["Value"] for t in v["Tags"]}
        out[v["TagMap"]["vvg:volume-id"]] = v
    return out


def _attached(ec2) -> dict[str, str]:
    return {vid: v["Attachments"][0]["InstanceId"] for vid, v in _volumes(ec2).items()
            if any(a["State"] == "attached" for a in v["Attachments"])}


def _instance(ec2, vm_id: str) -> dict:
    res = ec2.describe_instances(Filters=[{"Name": "tag:vvg:vm-id", "Values": [vm_id]}])
    return res["Reservations"][0]["Instances"][0]


def send(stack, type_: str, vm: str, *extra: str, stdin: str = ""):
    r = stack.vvg("event", "send", type_, "--vm", vm, "--host", stack.host_id, "--secret", stack.host_secret,
                  "--url", stack.api_url, *extra, stdin=stdin)
    return r


def test_table_1__preboot_attaches_vm1_and_booted_detaches_it(stack, ec2):
    r = send(stack, "vm.preboot", "vm-1")
    assert r.code == 0, r
    d = r.json()["decisions"]
    assert [(x["volume_id"], x["action"], x["outcome"]) for x in d] == [("vvol-1", "attach", "done")]
    vol = _volumes(ec2)["vvol-1"]
    inst = _instance(ec2, "vm-1")
    assert vol["Size"] == 1 and vol["AvailabilityZone"] == inst["Placement"]["AvailabilityZone"]
    assert vol["TagMap"]["vvg:hosts"] == "host-1"
    assert _attached(ec2).get("vvol-1") == inst["InstanceId"]
    assert vol["Attachments"][0]["Device"] == d[0]["device"]
    r = send(stack, "vm.booted", "vm-1")
    assert r.code == 0 and r.json()["decisions"][0]["outcome"] == "done", r
    assert "vvol-1" not in _attached(ec2)


def test_table_1__vm2_volume_stays_until_shutdown(stack, ec2):
    assert send(stack, "vm.preboot", "vm-2").code == 0
    assert send(stack, "vm.booted", "vm-2").json()["decisions"] == []
    assert "vvol-2" in _attached(ec2)
    assert _volumes(ec2)["vvol-2"]["Size"] == 1  # 100 MB -> 1 GiB
    r = send(stack, "vm.shutdown", "vm-2")
    assert r.json()["decisions"][0]["action"] == "detach" and r.json()["decisions"][0]["outcome"] == "done"
    assert "vvol-2" not in _attached(ec2)


def test_table_1__app_a1_attaches_only_vm4s_volume(stack, ec2):
    before = set(_attached(ec2))
    r = send(stack, "app.started", "vm-4", "--app", "A1")
    assert r.code == 0, r
    assert set(_attached(ec2)) - before == {"vvol-4"}
    assert send(stack, "app.started", "vm-5", "--app", "A1").json()["decisions"] == []
    assert "vvol-5" not in _attached(ec2)
    assert send(stack, "app.stopped", "vm-4", "--app", "A1").code == 0
    assert "vvol-4" not in _attached(ec2)


def test_event_send__repeat_is_idempotent_and_error_exits_nonzero(stack):
    r1 = send(stack, "vm.preboot", "vm-3", "--event-id", "e2e-repeat")
    r2 = send(stack, "vm.preboot", "vm-3", "--event-id", "e2e-repeat")
    assert r1.code == r2.code == 0
    assert r1.json()["duplicate"] is False and r2.json()["duplicate"] is True
    assert r1.json()["decisions"] == r2.json()["decisions"]
    bad = stack.vvg("event", "send", "vm.preboot", "--vm", "vm-3", "--host", stack.host_id, "--secret", "wrong",
                    "--url", stack.api_url)
    assert bad.code == 1 and json.loads(bad.out)["error"]["code"] == "bad_signature"
    assert "401 bad_signature" in bad.err
    send(stack, "vm.booted", "vm-3")


def test_event_send__secret_from_environment(stack):
    import subprocess
    import sys
    from pathlib import Path

    env = stack.env() | {"VVG_HOST_SECRET": stack.host_secret}
    p = subprocess.run([str(Path(sys.executable).with_name("vvg")), "event", "send", "vm.shutdown", "--vm", "vm-1",
                        "--host", stack.host_id, "--url", stack.api_url], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["event_id"].startswith("cli-")
    no_secret = subprocess.run([str(Path(sys.executable).with_name("vvg")), "event", "send", "vm.shutdown", "--vm",
                                "vm-1", "--host", stack.host_id, "--url", stack.api_url], env=stack.env(),
                               capture_output=True, text=True)
    assert no_secret.returncode == 2 and "VVG_HOST_SECRET" in no_secret.stderr


def test_http__raw_signed_request_through_the_gateway(stack):
    body = json.dumps({"event_id": "raw-1", "type": "vm.created", "vm_id": "vm-5"}).encode()
    headers = {"content-type": "application/json", "x-vvg-host": stack.host_id,
               "x-vvg-signature": sign(stack.host_secret, int(time.time()), body)}
    r = requests.post(f"{stack.api_url}/v1/events", data=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["decisions"][0]["action"] == "create"
    r = requests.post(f"{stack.api_url}/v1/events", data=b"x" * 65537, headers=headers, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    r = requests.post(f"{stack.api_url}/v1/events", data=body, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_signature"


def test_audit__verifies_after_the_demo(stack):
    r = stack.vvg("audit", "verify")
    assert r.code == 0, r
    lines = [json.loads(x) for x in stack.vvg("audit", "list", "--vm", "vm-1").out.splitlines()]
    assert any(x["action"] == "attach" and x["outcome"] == "done" and x["actor"] == "host:host-1" for x in lines)
    assert stack.host_secret not in json.dumps(lines)
