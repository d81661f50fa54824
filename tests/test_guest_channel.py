"""The guest channel for real (docs/guest-channel.md): infra/host/vvg-agent on unix sockets, the guest
client infra/guest/vvg-guest on the other end, the local stack behind, an Ed25519 key host signing.

A guest's requests reach only its own VM (the VM id comes from the socket); a guest that lies about its VM
id, floods, sends garbage or an oversize line is refused and changes nothing."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
AGENT = ROOT / "infra" / "host" / "vvg-agent"
GUEST = ROOT / "infra" / "guest" / "vvg-guest"
HOST = "agent-h"
PW_A, PW_B = "pw-guest-a-123", "pw-guest-b-456"
POLICY = f"""volumes:
  - {{volume_id: gvol-1, vm_id: vm-ga, host_id: {HOST}, storage_array: S1, size_mb: 10, attach_on: request, detach_on: shutdown, password: {PW_A}}}
  - {{volume_id: gvol-2, vm_id: vm-ga, host_id: {HOST}, storage_array: S1, size_mb: 10, attach_on: app_start, detach_on: app_stop, app: A7, authorized_apps: [A7]}}
  - {{volume_id: gvol-3, vm_id: vm-gb, host_id: {HOST}, storage_array: S1, size_mb: 10, attach_on: request, detach_on: shutdown, password: {PW_B}}}
  - {{volume_id: gvol-4, vm_id: vm-gc, host_id: {HOST}, storage_array: S1, size_mb: 10, attach_on: app_start, detach_on: app_stop, app: A9}}
"""


def _client(stack, service):
    return boto3.client(service, endpoint_url=stack.aws_url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def start_agent(stack, key_file: str, sockets: dict[str, str], *extra: str) -> subprocess.Popen:
    argv = [sys.executable, str(AGENT), "--url", stack.api_url, "--host", HOST, "--key", key_file, *extra]
    for vm, path in sockets.items():
        argv += ["--socket", f"{vm}={path}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not all(os.path.exists(p) for p in sockets.values()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("agent did not start: " + proc.stderr.read())
        time.sleep(0.05)
    return proc


def stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


class Env:
    def __init__(self, stack, tmp: Path) -> None:
        self.stack, self.tmp = stack, tmp
        self.ec2, self.ddb = _client(stack, "ec2"), _client(stack, "dynamodb")
        self.sock = {"vm-ga": str(tmp / "ga.sock"), "vm-gb": str(tmp / "gb.sock")}

    def guest(self, vm: str, *argv: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(GUEST), "--port", self.sock[vm], *argv], input=stdin,
                              capture_output=True, text=True, timeout=60)

    def raw(self, vm: str, *lines: bytes, path: str | None = None, answers: int | None = None) -> list[dict]:
        """Write raw lines on a VM's socket as a guest would; the answer lines, parsed."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(path or self.sock[vm])
            for line in lines:
                s.sendall(line)
            want = len(lines) if answers is None else answers
            buf = b""
            while buf.count(b"\n") < want:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        return [json.loads(x) for x in buf.split(b"\n") if x]

    def policy(self, vm: str, vol: str) -> dict:
        item = self.ddb.get_item(TableName="vvg-state", Key={"pk": {"S": f"VM#{vm}"}, "sk": {"S": f"POLICY#{vol}"}},
                                 ConsistentRead=True)["Item"]
        return {k: v for k, v in item.items()}

    def chain(self, vm: str) -> int:
        return self.ddb.query(TableName="vvg-audit", KeyConditionExpression="#c = :c",
                              ExpressionAttributeNames={"#c": "chain"},
                              ExpressionAttributeValues={":c": {"S": f"VM#{vm}"}}, Select="COUNT")["Count"]

    def attached(self) -> set[str]:
        out = set()
        for v in self.ec2.describe_volumes(Filters=[{"Name": "tag-key", "Values": ["vvg:volume-id"]}])["Volumes"]:
            tags = {t["Key"]: t["Value"] for t in v["Tags"]}
            if any(a["State"] in ("attaching", "attached") for a in v["Attachments"]):
                out.add(tags["vvg:volume-id"])
        return out

    def state(self) -> tuple:
        """Everything a refused request must leave alone: the VMs' policies and chains, the provider."""
        vms = ("vm-ga", "vm-gb")
        pols = {(vm, v): self.policy(vm, v) for vm, v in (("vm-ga", "gvol-1"), ("vm-ga", "gvol-2"), ("vm-gb", "gvol-3"))}
        return pols, {vm: self.chain(vm) for vm in vms}, self.attached()


@pytest.fixture(scope="module")
def env(stack, tmp_path_factory):
    from infra.bootstrap import DEMO_IMAGE, DEMO_ZONE_SUFFIX

    tmp = tmp_path_factory.mktemp("guest")
    e = Env(stack, tmp)
    for vm in ("vm-ga", "vm-gb", "vm-gc"):
        e.ec2.run_instances(ImageId=DEMO_IMAGE, MinCount=1, MaxCount=1, InstanceType="t3.micro",
                            Placement={"AvailabilityZone": "us-east-1" + DEMO_ZONE_SUFFIX},
                            TagSpecifications=[{"ResourceType": "instance",
                                                "Tags": [{"Key": "vvg:vm-id", "Value": vm}]}])
    key = Ed25519PrivateKey.generate()
    e.key_file = tmp / "host.key"
    e.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                             serialization.NoEncryption()))
    e.key_file.chmod(0o600)
    pub = tmp / "host.pub"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    r = stack.vvg("host", "enroll", HOST, "--mac", "02:00:00:00:0a:01", "--serial", "SN-AGENT", "--public-key", str(pub))
    assert r.code == 0, r
    (tmp / "p.yaml").write_text(POLICY)
    assert stack.vvg("policy", "apply", str(tmp / "p.yaml")).code == 0
    e.proc = start_agent(stack, str(e.key_file), e.sock, "--rate", "50", "--burst", "50")
    yield e
    e.log = stop(e.proc)
    assert PW_A not in e.log and PW_B not in e.log


def test_attach_of_a_request_volume_with_its_password_through_agent_and_stack(env):
    r = env.guest("vm-ga", "attach", "gvol-1", "--password-stdin", stdin=PW_A + "\n")
    assert r.returncode == 0, (r.stdout, r.stderr)
    ans = json.loads(r.stdout)
    assert [(d["volume_id"], d["action"], d["outcome"]) for d in ans["decisions"]] == [("gvol-1", "attach", "done")]
    assert "gvol-1" in env.attached()
    r = env.guest("vm-ga", "detach", "gvol-1")
    assert r.returncode == 0 and json.loads(r.stdout)["decisions"][0]["outcome"] == "done", r.stdout
    assert "gvol-1" not in env.attached()


def test_a_wrong_password_is_a_decision_denied(env):
    r = env.guest("vm-gb", "attach", "gvol-3", "--password-stdin", stdin="wrong-one\n")
    assert r.returncode == 0 and json.loads(r.stdout)["decisions"][0]["reason"] == "bad_password", r.stdout
    assert "gvol-3" not in env.attached()


def test_another_vms_socket_cannot_reach_this_vms_volume(env):
    before = env.state()
    r = env.guest("vm-gb", "attach", "gvol-1", "--password-stdin", stdin=PW_A + "\n")
    assert r.returncode == 1 and json.loads(r.stdout)["error"]["code"] == "not_found", (r.stdout, r.stderr)
    r = env.guest("vm-gb", "app", "started", "A7")
    assert r.returncode == 0 and json.loads(r.stdout)["decisions"] == [], r.stdout
    after = env.state()
    assert after[0] == before[0] and after[2] == before[2] and after[1]["vm-ga"] == before[1]["vm-ga"]


def test_a_guest_naming_a_vm_id_gets_an_error_line_and_nothing_is_sent(env):
    before = env.state()
    lines = [json.dumps({"type": "volume.attach_request", "volume_id": "gvol-1", "password": PW_A, "vm_id": "vm-ga"}),
             json.dumps({"type": "app.started", "app": "A7", "vm_id": "vm-ga"}),
             json.dumps({"type": "app.started", "app": "A7", "event_id": "mine"}),
             json.dumps({"type": "app.started", "app": "A7", "occurred_at": "2020-01-01T00:00:00Z"})]
    answers = env.raw("vm-gb", *[(x + "\n").encode() for x in lines])
    assert [a["error"]["code"] for a in answers] == ["invalid_request"] * 4, answers
    assert "set by the host agent" in answers[0]["error"]["message"]
    assert env.state() == before


@pytest.mark.parametrize("line, code", [
    (b"not json\n", "invalid_json"),
    (b"\xff\xfe\n", "invalid_json"),
    (b"[1, 2]\n", "invalid_request"),
    (b'{"type": "vm.preboot"}\n', "invalid_request"),
    (b'{"type": "vm.shutdown"}\n', "invalid_request"),
    (b'{"type": "vm.migrate.start", "destination_host": "x"}\n', "invalid_request"),
    (b'{"type": "app.started", "app": "A7", "extra": 1}\n', "invalid_request"),
    (b'{"type": "app.started", "app": "' + b"x" * 200 + b'"}\n', "invalid_event"),
    (b'{"type": "app.started", "app": "A7", "app": "A1"}\n', "invalid_request"),
    (b"[" * 5000 + b"\n", "invalid_json"),
])
def test_garbage_is_refused_with_an_error_line_and_changes_nothing(env, line, code):
    before = env.state()
    (answer,) = env.raw("vm-ga", line)
    assert answer["error"]["code"] == code, answer
    assert env.state() == before


def test_an_oversize_line_is_refused_and_the_channel_still_works(env):
    before = env.state()
    big = json.dumps({"type": "app.started", "app": "A7", "pad": "x" * 20000}).encode() + b"\n"
    ok = json.dumps({"type": "app.stopped", "app": "A7"}).encode() + b"\n"
    answers = env.raw("vm-ga", big, ok)
    assert answers[0]["error"]["code"] == "line_too_long" and "decisions" in answers[1], answers
    after = env.state()
    assert after[0] == before[0] and after[2] == before[2]


def test_app_license_and_inventory_through_the_guest_client(env):
    r = env.guest("vm-ga", "app", "started", "A7")
    assert r.returncode == 0 and json.loads(r.stdout)["decisions"][0]["outcome"] == "done", r.stdout
    assert "gvol-2" in env.attached()
    r = env.guest("vm-ga", "app", "stopped", "A7")
    assert r.returncode == 0 and "gvol-2" not in env.attached()
    for argv in (("license", "check", "A7"), ("license", "verified", "A7")):
        r = env.guest("vm-ga", *argv)
        assert r.returncode == 0 and json.loads(r.stdout)["decisions"] == [], r.stdout
    r = env.guest("vm-ga", "inventory", "luks:disk_encryption:512", "--app", "bitlocker:disk_encryption:256")
    assert r.returncode == 0, (r.stdout, r.stderr)
    sel = json.loads(r.stdout)["decisions"]
    assert {d["action"] for d in sel} == {"select"} and sel[0]["software"] == ["luks", "bitlocker"]


def test_guest_client_usage_errors(env, tmp_path):
    assert env.guest("vm-ga", "inventory", "nocolons").returncode == 2
    assert env.guest("vm-ga", "attach", "gvol-1", "--password-stdin", stdin="").returncode == 1
    r = subprocess.run([sys.executable, str(GUEST), "--port", str(tmp_path / "none"), "app", "started", "A7"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "cannot open the channel" in r.stderr


def test_a_flooding_guest_is_rate_limited_and_the_refused_requests_send_nothing(env, tmp_path):
    sock = str(tmp_path / "gc.sock")
    proc = start_agent(env.stack, str(env.key_file), {"vm-gc": sock}, "--rate", "0.5", "--burst", "2")
    try:
        before = env.chain("vm-gc")
        line = json.dumps({"type": "app.started", "app": "A9"}).encode() + b"\n"
        answers = env.raw("vm-gc", *[line] * 12, path=sock)
        limited = [a for a in answers if "error" in a and a["error"]["code"] == "rate_limited"]
        passed = [a for a in answers if "decisions" in a]
        assert len(answers) == 12 and len(passed) <= 3 and len(limited) >= 9, answers
        # only the requests let through reached the API (each app.started A9 attaches or skips gvol-4)
        assert env.chain("vm-gc") - before == len(passed)
    finally:
        log = stop(proc)
    assert "rate limit" in log


def test_agent_refuses_bad_command_lines_and_open_key_files(env, tmp_path):
    bad_key = tmp_path / "open.key"
    bad_key.write_bytes(env.key_file.read_bytes())
    bad_key.chmod(0o644)
    cases = [
        ["--url", env.stack.api_url, "--host", HOST, "--key", str(bad_key), "--socket", f"vm-x={tmp_path}/x.sock"],
        ["--url", env.stack.api_url, "--host", HOST, "--key", str(env.key_file), "--socket", "vm x=/tmp/y.sock"],
        ["--url", "ftp://x", "--host", HOST, "--key", str(env.key_file), "--socket", f"vm-x={tmp_path}/x.sock"],
        ["--url", env.stack.api_url, "--host", HOST, "--key", str(env.key_file), "--socket",
         f"vm-x={env.key_file}"],  # an existing file that is not a socket is never replaced
    ]
    for argv in cases:
        p = subprocess.run([sys.executable, str(AGENT), *argv], capture_output=True, text=True, timeout=30)
        assert p.returncode == 2 and "vvg-agent: error" in p.stderr, (argv, p.stderr)
        assert "PRIVATE" not in p.stderr
    assert env.key_file.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY")


def test_quarantine_from_the_cli_detaches_refuses_the_guest_and_release_restores(env):
    stack = env.stack
    r = env.guest("vm-ga", "attach", "gvol-1", "--password-stdin", stdin=PW_A + "\n")
    assert r.returncode == 0 and "gvol-1" in env.attached(), r.stdout
    r = stack.vvg("vm", "quarantine", "vm-ga", "--reason", "guest compromised")
    assert r.code == 0 and r.json()["detached"] == 1, r
    assert "gvol-1" not in env.attached()
    r = env.guest("vm-ga", "attach", "gvol-1", "--password-stdin", stdin=PW_A + "\n")
    assert r.returncode == 0 and json.loads(r.stdout)["decisions"][0]["reason"] == "quarantined", r.stdout
    assert "gvol-1" not in env.attached()
    r = env.guest("vm-ga", "detach", "gvol-1")  # detaches are never refused
    assert r.returncode == 0 and json.loads(r.stdout)["decisions"][0]["action"] == "detach", r.stdout
    r = stack.vvg("vm", "release", "vm-ga")
    assert r.code == 0, r
    r = env.guest("vm-ga", "attach", "gvol-1", "--password-stdin", stdin=PW_A + "\n")
    assert r.returncode == 0 and json.loads(r.stdout)["decisions"][0]["outcome"] == "done", r.stdout
    assert env.guest("vm-ga", "detach", "gvol-1").returncode == 0
    assert "gvol-1" not in env.attached()
    recs = [json.loads(x) for x in stack.vvg("audit", "list", "--vm", "vm-ga", "--limit", "20").out.splitlines()]
    assert {"vm_quarantine", "vm_release"} <= {x["action"] for x in recs}


def test_a_secret_host_agent_signs_with_its_secret_file(env, tmp_path):
    r = env.stack.vvg("host", "enroll", "agent-s", "--mac", "02:00:00:00:0a:02", "--serial", "SN-AGENT-S")
    assert r.code == 0, r
    secret = r.json()["secret"]
    sf = tmp_path / "host.secret"
    sf.write_text(secret + "\n")
    sf.chmod(0o644)
    p = subprocess.run([sys.executable, str(AGENT), "--url", env.stack.api_url, "--host", "agent-s", "--secret-file",
                        str(sf), "--socket", f"vm-none={tmp_path}/n.sock"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "chmod 600" in p.stderr and secret not in p.stderr
    sf.chmod(0o600)
    sock = str(tmp_path / "n.sock")
    argv = [sys.executable, str(AGENT), "--url", env.stack.api_url, "--host", "agent-s", "--secret-file", str(sf),
            "--socket", f"vm-none={sock}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.05)
        (answer,) = env.raw("vm-none", b'{"type": "app.started", "app": "A1"}\n', path=sock)
        assert answer.get("decisions") == [], answer  # accepted (a VM with no policy: nothing to do)
    finally:
        log = stop(proc)
    assert secret not in log


def test_the_boot_inventory_from_its_file_is_enforced_on_the_guests_own_attaches(env, tmp_path):
    """vvg-guest-inventory.service's command (`vvg-guest inventory --from FILE`) through the agent and the stack:
    a first boot is not refused; an inventory with nothing strong enough refuses the min_key_bits volume
    (`no_qualifying_software`, nothing attached); a qualifying one lifts it and the attach names the software."""
    from infra.bootstrap import DEMO_IMAGE, DEMO_ZONE_SUFFIX

    env.ec2.run_instances(ImageId=DEMO_IMAGE, MinCount=1, MaxCount=1, InstanceType="t3.micro",
                          Placement={"AvailabilityZone": "us-east-1" + DEMO_ZONE_SUFFIX},
                          TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "vvg:vm-id", "Value": "vm-gd"}]}])
    (tmp_path / "p.yaml").write_text(
        f"volumes:\n  - {{volume_id: gvol-5, vm_id: vm-gd, host_id: {HOST}, storage_array: S1, size_mb: 10, "
        "attach_on: request, detach_on: request, min_key_bits: 256}\n")
    assert env.stack.vvg("policy", "apply", str(tmp_path / "p.yaml")).code == 0
    sock = str(tmp_path / "gd.sock")
    inv = tmp_path / "inventory"
    proc = start_agent(env.stack, str(env.key_file), {"vm-gd": sock}, "--rate", "50", "--burst", "50")

    def guest(*argv: str) -> tuple[int, dict]:
        r = subprocess.run([sys.executable, str(GUEST), "--port", sock, *argv], capture_output=True, text=True,
                           timeout=60)
        return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else {"stderr": r.stderr})

    def only(answer: dict) -> dict:
        [d] = answer["decisions"]
        return d

    try:
        code, ans = guest("attach", "gvol-5")  # never sent an inventory: its first boot is not refused
        assert code == 0 and only(ans)["outcome"] == "done" and "software" not in only(ans), ans
        assert guest("detach", "gvol-5")[0] == 0 and "gvol-5" not in env.attached()

        inv.write_text("# installed security software\nveracrypt:disk_encryption:128\n\nclamav:antivirus:4096  # AV\n")
        code, ans = guest("inventory", "--from", str(inv))
        assert code == 0 and (only(ans)["action"], only(ans)["outcome"]) == ("select", "denied"), ans
        code, ans = guest("attach", "gvol-5")
        assert code == 0 and (only(ans)["outcome"], only(ans)["reason"]) == ("denied", "no_qualifying_software"), ans
        assert "gvol-5" not in env.attached()

        before = env.chain("vm-gd")
        inv.write_text("luks:disk_encryption\n")  # a bad line: refused by the client, nothing sent
        code, ans = guest("inventory", "--from", str(inv))
        assert code == 1 and "line 1" in ans["stderr"] and env.chain("vm-gd") == before
        assert guest("inventory", "--from", str(tmp_path / "missing"))[0] == 1 and env.chain("vm-gd") == before

        inv.write_text("veracrypt:disk_encryption:128\nluks:disk_encryption:512\n")
        code, ans = guest("inventory", "--from", str(inv))
        assert code == 0 and (only(ans)["outcome"], only(ans)["software"]) == ("done", ["luks"]), ans
        code, ans = guest("attach", "gvol-5")
        assert code == 0 and (only(ans)["outcome"], only(ans)["software"]) == ("done", ["luks"]), ans
        assert "gvol-5" in env.attached()
        assert guest("detach", "gvol-5")[0] == 0 and "gvol-5" not in env.attached()
    finally:
        stop(proc)
