"""The host side of `attach_to: host` (docs/deployment-modes.md) and heartbeats: infra/host/qemu-hook hot-plugs
the EBS device into the guest with `virsh attach-device` and unplugs it before the event that detaches it;
infra/host/vvg-agent sends `vm.heartbeat` for each running VM.

libvirt's test:///default driver cannot hot-plug, so `virsh` is a recording script first on PATH (argv and
the XML file it was given go to a log), and the XML is checked against libvirt's documented disk element
(https://libvirt.org/formatdomain.html#hard-drives-floppy-disks-cdroms). The API is a small local HTTP
receiver (real HTTP) that answers what the server would.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import serve_in_thread
from tests.test_libvirt_hook import SECRET, Host
from vvolguard.domain.secrets import sign

ROOT = Path(__file__).resolve().parent.parent
AGENT = ROOT / "infra" / "host" / "vvg-agent"
PVID1, PVID2 = "vol-0abc1234def567890", "vol-0fed9876cba543210"

VIRSH = """#!/bin/sh
# a recording virsh: one JSON line per call, with the content of the XML file it was given
LOG="{log}"
python3 - "$LOG" "$@" <<'EOF'
import json, os, sys
log, args = sys.argv[1], sys.argv[2:]
xml = next((open(a).read() for a in args if a.endswith(".xml") and os.path.isfile(a)), None)
with open(log, "a") as fh:
    fh.write(json.dumps({{"virsh": args, "xml": xml}}) + "\\n")
EOF
exit {rc}
"""


class Api:
    """A local HTTP receiver: logs each request (to the shared log, in order) and answers per event type."""

    def __init__(self, log: Path) -> None:
        self.log, self.answers, self.requests = log, {}, []
        api = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw)
                api.requests.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "raw": raw, "body": body})
                with open(api.log, "a") as fh:
                    fh.write(json.dumps({"event": body["type"], "vm_id": body["vm_id"]}) + "\n")
                answer = api.answers.get(body["type"], {"decisions": []})
                data = json.dumps({"event_id": body["event_id"], "duplicate": False, **answer}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        serve_in_thread(self.server)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def attach(vid: str, pvid: str) -> dict:
    return {"volume_id": vid, "action": "attach", "outcome": "done", "reason": "attach_on=preboot",
            "device": "/dev/sdf", "provider_volume_id": pvid, "lease_expires_at": "2026-12-05T00:00:00Z"}


class Env:
    def __init__(self, tmp: Path, rc: int = 0, **conf: str) -> None:
        self.log = tmp / "calls.jsonl"
        self.api = Api(self.log)
        self.by_id = tmp / "by-id"
        self.by_id.mkdir()
        bindir = tmp / "bin"
        bindir.mkdir()
        (bindir / "virsh").write_text(VIRSH.format(log=self.log, rc=rc))
        (bindir / "virsh").chmod(0o755)
        self.path = f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"
        conf.setdefault("present_volumes", "true")
        self.host = Host(tmp, url=self.api.url, by_id_dir=str(self.by_id), present_wait="0.3", **conf)
        self.host.running("vm-9")

    def device(self, pvid: str) -> Path:
        dev = self.by_id / ("nvme-Amazon_Elastic_Block_Store_" + pvid.replace("-", ""))
        dev.write_text("")
        return dev

    def hook(self, *argv: str):
        return self.host.hook("vm-9", *argv, dry_run=False, env={"PATH": self.path})

    def calls(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []

    def virsh(self) -> list[dict]:
        return [c for c in self.calls() if "virsh" in c]


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.api.close()


def check_disk_xml(text: str, source: str, serial: str, bus: str = "virtio") -> str:
    """libvirt's documented <disk> for a raw block device; returns the target dev."""
    disk = ET.fromstring(text)
    assert disk.tag == "disk" and disk.get("type") == "block" and disk.get("device") == "disk"
    assert [c.tag for c in disk] == ["driver", "source", "target", "serial"]
    assert disk.find("driver").attrib == {"name": "qemu", "type": "raw"}
    assert disk.find("source").attrib == {"dev": source}
    target = disk.find("target")
    assert target.get("bus") == bus and set(target.attrib) == {"dev", "bus"}
    assert target.get("dev").startswith({"virtio": "vd", "usb": "sd"}[bus]) and len(target.get("dev")) == 3
    assert disk.findtext("serial") == serial
    return target.get("dev")


# ---------------------------------------------------------------------------------------------- the hook


def test_a_done_attach_is_hot_plugged_into_the_guest_with_its_serial(env):
    dev1, dev2 = env.device(PVID1), env.device(PVID2)
    env.api.answers["vm.preboot"] = {"decisions": [attach("kvm-1", PVID1), attach("kvm-2", PVID2)]}
    r = env.hook("prepare", "begin", "-")
    assert r.code == 0 and r.out == "", r
    calls = env.virsh()
    assert [c["virsh"][2:4] + c["virsh"][5:] for c in calls] == [["attach-device", "vm-9", "--live"]] * 2
    assert all(c["virsh"][:2] == ["-c", "qemu:///system"] for c in calls)
    t1 = check_disk_xml(calls[0]["xml"], str(dev1), "kvm-1")
    t2 = check_disk_xml(calls[1]["xml"], str(dev2), "kvm-2")
    assert t1 != t2 and "vda" not in (t1, t2)  # never a target the domain already uses
    # Sent after the preboot answer, never before.
    assert [c.get("event") for c in env.calls()][:2] == ["vm.created", "vm.preboot"]


def test_usb_bus_when_configured(tmp_path):
    e = Env(tmp_path, present_bus="usb")
    try:
        dev = e.device(PVID1)
        e.api.answers["vm.preboot"] = {"decisions": [attach("kvm-1", PVID1)]}
        assert e.hook("prepare", "begin", "-").code == 0
        [call] = e.virsh()
        assert check_disk_xml(call["xml"], str(dev), "kvm-1", bus="usb") == "sdz"
    finally:
        e.api.close()


def test_booted_unplugs_only_the_postboot_volumes_before_it_is_sent(env):
    env.device(PVID1), env.device(PVID2)
    env.api.answers["vm.preboot"] = {"decisions": [attach("kvm-1", PVID1), attach("kvm-2", PVID2)]}
    assert env.hook("prepare", "begin", "-").code == 0
    # The heartbeat renews kvm-2 (detach_on: shutdown); kvm-1 (postboot) gets no decision.
    env.api.answers["vm.heartbeat"] = {"decisions": [{"volume_id": "kvm-2", "action": "renew", "outcome": "done",
                                                      "reason": "heartbeat"}]}
    env.api.answers["vm.booted"] = {"decisions": [{"volume_id": "kvm-1", "action": "detach", "outcome": "done",
                                                   "reason": "detach_on=postboot"}]}
    n = len(env.calls())
    assert env.hook("started", "begin", "-").code == 0
    after = env.calls()[n:]
    order = [c.get("event") or c["virsh"][2] for c in after]
    assert order == ["vm.heartbeat", "detach-device", "vm.booted"], after
    assert json.loads(json.dumps(after[1]))["xml"] and ET.fromstring(after[1]["xml"]).findtext("serial") == "kvm-1"


def test_a_volume_the_event_did_not_detach_is_presented_again(env):
    env.device(PVID1)
    env.api.answers["vm.preboot"] = {"decisions": [attach("kvm-1", PVID1)]}
    assert env.hook("prepare", "begin", "-").code == 0
    env.api.answers["vm.booted"] = {"decisions": [{"volume_id": "kvm-1", "action": "detach", "outcome": "failed",
                                                   "reason": "incorrect_state"}]}
    n = len(env.calls())
    assert env.hook("started", "begin", "-").code == 0
    order = [c.get("event") or c["virsh"][2] for c in env.calls()[n:]]
    assert order == ["vm.heartbeat", "detach-device", "vm.booted", "attach-device"]


def test_a_device_that_never_appears_is_not_presented(env):
    env.api.answers["vm.preboot"] = {"decisions": [attach("kvm-1", PVID1)]}
    assert env.hook("prepare", "begin", "-").code == 0
    assert env.virsh() == []


@pytest.mark.parametrize("decision", [
    attach("kvm-1", "vol-../../etc/passwd"),
    attach("kvm-1'/><disk", PVID1),
    {**attach("kvm-1", PVID1), "outcome": "denied"},
    {**attach("kvm-1", PVID1), "action": "detach"},
    {k: v for k, v in attach("kvm-1", PVID1).items() if k != "provider_volume_id"},
    "not-an-object",
])
def test_hostile_or_other_decisions_are_never_presented(env, decision):
    env.device(PVID1)
    env.api.answers["vm.preboot"] = {"decisions": [decision]}
    assert env.hook("prepare", "begin", "-").code == 0
    assert env.virsh() == []


def test_auto_presents_only_on_an_ec2_host(tmp_path):
    e = Env(tmp_path, present_volumes="auto")
    try:
        e.api.answers["vm.preboot"] = {"decisions": [attach("kvm-1", PVID1)]}
        assert e.hook("prepare", "begin", "-").code == 0
        assert e.virsh() == []  # no EBS volume under by-id: not an EC2 host (e.g. the local demo)
        e.device("vol-0123456789abcdef0")  # its own root volume: an EC2 host
        e.device(PVID1)
        assert e.hook("prepare", "begin", "-").code == 0
        assert [c["virsh"][2] for c in e.virsh()] == ["attach-device"]
    finally:
        e.api.close()


def test_shutdown_forgets_the_presented_disks(env):
    env.device(PVID1)
    env.api.answers["vm.preboot"] = {"decisions": [attach("kvm-1", PVID1)]}
    assert env.hook("prepare", "begin", "-").code == 0
    env.host.gone("vm-9")
    assert env.hook("stopped", "end", "-").code == 0
    assert [c["virsh"][2] for c in env.virsh()] == ["attach-device"]  # a stopped guest has nothing to unplug
    env.host.running("vm-9")
    n = len(env.calls())
    assert env.hook("started", "begin", "-").code == 0
    assert [c.get("event") for c in env.calls()[n:]] == ["vm.booted"]


# ---------------------------------------------------------------------------------------------- heartbeats


def start_agent(tmp: Path, url: str, sockets: dict[str, str], *extra: str, env: dict | None = None) -> subprocess.Popen:
    secret = tmp / "agent.secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    argv = [sys.executable, str(AGENT), "--url", url, "--host", "host-1", "--secret-file", str(secret), *extra]
    for vm, path in sockets.items():
        argv += ["--socket", f"{vm}={path}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 20
    while not all(os.path.exists(p) for p in sockets.values()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("agent did not start: " + proc.stderr.read())
        time.sleep(0.05)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def _wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_the_agent_sends_signed_heartbeats_for_each_running_vm_only(tmp_path):
    api = Api(tmp_path / "calls.jsonl")
    sa, sb = str(tmp_path / "a.sock"), str(tmp_path / "b.sock")
    proc = start_agent(tmp_path, api.url, {"vm-a": sa, "vm-b": sb}, "--heartbeat", "0.2")
    qemu = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        qemu.connect(sa)  # vm-a runs: its QEMU holds the channel; vm-b does not run
        assert _wait(lambda: len(api.requests) >= 3)
        for req in api.requests:
            body, h = req["body"], req["headers"]
            assert body["type"] == "vm.heartbeat" and body["vm_id"] == "vm-a", body
            assert set(body) == {"event_id", "type", "vm_id", "occurred_at"}
            t = int(h["x-vvg-signature"].split(",")[0][2:])
            assert h["x-vvg-host"] == "host-1" and h["x-vvg-signature"] == sign(SECRET, t, req["raw"])
        assert len({r["body"]["event_id"] for r in api.requests}) == len(api.requests)
        qemu.close()  # the guest stops: no more heartbeats for it
        time.sleep(0.5)
        n = len(api.requests)
        time.sleep(0.6)
        assert len(api.requests) == n
    finally:
        qemu.close()
        stop(proc)
        api.close()


def test_the_agent_heartbeats_every_vm_with_running_all_and_none_when_off(tmp_path):
    api = Api(tmp_path / "calls.jsonl")
    proc = start_agent(tmp_path, api.url, {"vm-a": str(tmp_path / "a.sock"), "vm-b": str(tmp_path / "b.sock")},
                       "--heartbeat", "0.2", "--running", "all")
    try:
        assert _wait(lambda: {"vm-a", "vm-b"} <= {r["body"]["vm_id"] for r in api.requests})
    finally:
        stop(proc)
    n = len(api.requests)
    proc = start_agent(tmp_path, api.url, {"vm-c": str(tmp_path / "c.sock")}, "--heartbeat", "0", "--running", "all")
    try:
        time.sleep(0.8)
        assert len(api.requests) == n
    finally:
        stop(proc)
        api.close()


@pytest.mark.parametrize("value", ["-1", "0.001", "99999", "nan", "x"])
def test_a_bad_heartbeat_interval_is_refused(tmp_path, value):
    secret = tmp_path / "s"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    p = subprocess.run([sys.executable, str(AGENT), "--url", "http://127.0.0.1:9", "--host", "host-1",
                        "--secret-file", str(secret), "--socket", f"vm-a={tmp_path / 'a.sock'}",
                        "--heartbeat", value], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "heartbeat" in p.stderr, p.stderr


# ---------------------------------------------------------------------------------------------- the agent's requests


def _ask(sock: socket.socket, request: dict) -> dict:
    sock.sendall((json.dumps(request) + "\n").encode())
    buf = b""
    while not buf.endswith(b"\n"):
        buf += sock.recv(65536)
    return json.loads(buf)


def test_the_agent_presents_what_a_guest_request_attached_and_unplugs_before_the_detach(env, tmp_path):
    dev = env.device(PVID1)
    env.device(PVID2)
    env.api.answers["volume.attach_request"] = {"decisions": [{**attach("kvm-1", PVID1), "reason": "request"}]}
    env.api.answers["app.started"] = {"decisions": [{**attach("kvm-4", PVID2), "reason": "app_start"}]}
    env.api.answers["volume.detach_request"] = {"decisions": [{"volume_id": "kvm-1", "action": "detach",
                                                               "outcome": "done", "reason": "request"}]}
    env.api.answers["app.stopped"] = {"decisions": [{"volume_id": "kvm-4", "action": "detach", "outcome": "done",
                                                     "reason": "app_stop"}]}
    sock_path = str(tmp_path / "vm-9.sock")
    proc = start_agent(tmp_path, env.api.url, {"vm-9": sock_path}, "--heartbeat", "0", "--present", "on",
                       "--by-id-dir", str(env.by_id), "--state-dir", str(tmp_path / "agent-state"),
                       "--present-wait", "0.3", env={"PATH": env.path})
    guest = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        guest.connect(sock_path)
        assert _ask(guest, {"type": "volume.attach_request", "volume_id": "kvm-1"})["decisions"][0]["outcome"] == "done"
        assert _ask(guest, {"type": "app.started", "app": "A1"})["decisions"][0]["volume_id"] == "kvm-4"
        plugs = [c for c in env.virsh() if c["virsh"][2] == "attach-device"]
        assert [c["virsh"][3] for c in plugs] == ["vm-9", "vm-9"] and all(c["virsh"][-1] == "--live" for c in plugs)
        t = check_disk_xml(plugs[0]["xml"], str(dev), "kvm-1")
        assert check_disk_xml(plugs[1]["xml"], str(env.by_id / "nvme-Amazon_Elastic_Block_Store_vol0fed9876cba543210"),
                              "kvm-4") != t
        n = len(env.calls())
        _ask(guest, {"type": "app.stopped", "app": "A1"})
        _ask(guest, {"type": "volume.detach_request", "volume_id": "kvm-1"})
        order = [(c.get("event") or c["virsh"][2],
                  ET.fromstring(c["xml"]).findtext("serial") if c.get("xml") else None) for c in env.calls()[n:]]
        assert order == [("detach-device", "kvm-4"), ("app.stopped", None),
                         ("detach-device", "kvm-1"), ("volume.detach_request", None)], order
    finally:
        guest.close()
        stop(proc)
