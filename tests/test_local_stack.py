"""`make run` from the outside: the local stack starts, is seeded with Table 1, serves both health
endpoints, answers the CLI, and stops cleanly on SIGINT and SIGTERM."""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time

import boto3
from botocore.exceptions import ClientError
import pytest
import requests

from tests.conftest import ROOT, free_port, start_stack, stop_stack

pytestmark = pytest.mark.e2e

TABLE_1 = {
    "vvol-1": ("vm-1", 10, "preboot", "postboot", None, True),
    "vvol-2": ("vm-2", 100, "preboot", "shutdown", None, True),
    "vvol-3": ("vm-3", 10, "preboot", "postboot", None, True),
    "vvol-4": ("vm-4", 10, "app_start", "app_stop", "A1", False),
    "vvol-5": ("vm-5", 10, "app_start", "app_stop", "A2", False),
}


def test_ready__both_health_endpoints_answer_200(stack):
    api = requests.get(f"{stack.api_url}/v1/health", timeout=5)
    assert api.status_code == 200 and api.json() == {"status": "ok"}
    dash = requests.get(f"{stack.dashboard_url}/healthz", timeout=5)
    assert dash.status_code == 200


def test_banner__names_urls_demo_host_and_credentials(stack):
    assert stack.aws_url in stack.banner and stack.api_url in stack.banner and stack.dashboard_url in stack.banner
    assert "admin / admin-pass-123" in stack.banner
    assert stack.host_id == "host-1" and stack.host_secret and len(stack.host_secret) >= 32


def _listening(port: int) -> set[str]:
    """The local addresses listening on ``port`` (from /proc/net/tcp and tcp6)."""
    addrs = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(name).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            host, p = local.split(":")
            if state == "0A" and int(p, 16) == port:
                addrs.add(host)
    return addrs


def test_all_parts_listen_on_loopback_only(stack):
    for url in (stack.aws_url, stack.api_url, stack.dashboard_url):
        addrs = _listening(int(url.rsplit(":", 1)[1]))
        assert addrs == {"0100007F"}, f"{url} listens on {addrs}"  # 127.0.0.1, nothing else


def test_policy_export__shows_the_five_table_1_volumes(stack):
    r = stack.vvg("policy", "export")
    assert r.code == 0, r
    vols = {v["volume_id"]: v for v in r.json()["volumes"]}
    assert set(TABLE_1) <= set(vols)  # other end-to-end tests may add volumes of their own VMs
    for vid, (vm, size, attach_on, detach_on, app, ode) in TABLE_1.items():
        v = vols[vid]
        assert (v["vm_id"], v["size_mb"], v["attach_on"], v["detach_on"], v.get("app"), v["os_disk_encryption"]) == \
            (vm, size, attach_on, detach_on, app, ode)
        assert v["host_id"] == "host-1" and v["storage_array"] == "S1"


def test_demo_vms__exist_as_ec2_instances_tagged_with_their_vm_id(stack):
    ec2 = boto3.client("ec2", endpoint_url=stack.aws_url, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    res = ec2.describe_instances(Filters=[{"Name": "tag-key", "Values": ["vvg:vm-id"]}])
    tags = {t["Value"] for r in res["Reservations"] for i in r["Instances"] for t in i["Tags"] if t["Key"] == "vvg:vm-id"}
    assert {"vm-1", "vm-2", "vm-3", "vm-4", "vm-5"} <= tags  # other end-to-end tests may add their own VMs


def test_audit__seeding_is_audited_and_verifies(stack):
    r = stack.vvg("audit", "verify")
    assert r.code == 0, r
    assert r.json()["ok"] is True and r.json()["records"] >= 7
    lines = stack.vvg("audit", "list", "--limit", "50").out.splitlines()
    actions = {json.loads(line)["action"] for line in lines}
    assert {"policy_create", "host_enroll", "user_add"} <= actions
    assert stack.host_secret not in "\n".join(lines)


def test_audit__checkpoints_are_signed_and_locked_in_the_emulation(stack):
    """The local stack creates the checkpoint key and the Object Lock bucket from the template
    (docs/threat-model.md): `vvg audit checkpoint` writes one there and `vvg audit verify` checks against it."""
    cp = stack.vvg("audit", "checkpoint")
    assert cp.code == 0, cp
    location = cp.json()["location"]
    assert location.startswith("s3://vvg-audit-ckpt-")
    r = stack.vvg("audit", "verify")
    assert r.code == 0, r
    assert r.json()["checkpoint"]["chains"] >= cp.json()["chains"]
    s3 = boto3.client("s3", endpoint_url=stack.aws_url, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket, key = location[5:].split("/", 1)
    (version,) = [v["VersionId"] for v in s3.list_object_versions(Bucket=bucket, Prefix=key)["Versions"]]
    with pytest.raises(ClientError):
        s3.delete_object(Bucket=bucket, Key=key, VersionId=version)


def test_gateway__unknown_route_is_404_like_api_gateway(stack):
    r = requests.get(f"{stack.api_url}/v1/nope", timeout=5)
    assert r.status_code == 404 and r.json() == {"message": "Not Found"}
    r = requests.delete(f"{stack.api_url}/v1/health", timeout=5)
    assert r.status_code == 404


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "no CSRF token in the form"
    return m.group(1)


def test_dashboard__admin_signs_in_and_sees_the_policy_table(stack):
    s = requests.Session()
    r = s.get(f"{stack.dashboard_url}/policies", timeout=5, allow_redirects=False)
    assert r.status_code == 302 and "/login" in r.headers["location"]
    page = s.get(f"{stack.dashboard_url}/login", timeout=5)
    bad = s.post(f"{stack.dashboard_url}/login", data={"username": "admin", "password": "wrong-password",
                                                       "csrf_token": _csrf(page.text)}, timeout=10)
    assert bad.status_code == 401 and "user name or password is not right" in bad.text
    page = s.get(f"{stack.dashboard_url}/login", timeout=5)
    ok = s.post(f"{stack.dashboard_url}/login", data={"username": "admin", "password": "admin-pass-123",
                                                      "csrf_token": _csrf(page.text)}, timeout=10)
    assert ok.status_code == 200
    assert all(v in ok.text for v in TABLE_1)
    assert "Content-Security-Policy" in ok.headers


def test_cli__reports_an_unreachable_stack_in_one_line():
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "PATH": "/usr/bin:/bin",
           "AWS_MAX_ATTEMPTS": "1"}
    exe = str(__import__("pathlib").Path(sys.executable).with_name("vvg"))
    p = subprocess.run([exe, "policy", "export"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and "cannot reach AWS" in p.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal__stops_every_part_cleanly(sig):
    # The reconciler's loop runs too (every 0.3 s here) and must stop with the rest.
    s = start_stack({"VVG_SEED": "0", "VVG_RECONCILE_SECONDS": "0.3"})
    r = s.vvg("policy", "export")
    assert r.code == 0 and r.json() == {"volumes": []}, r  # VVG_SEED=0 starts empty
    assert "demo data             none" in s.banner
    deadline = time.time() + 30
    while (s.vvg("audit", "verify").json().get("checkpoint") is None) and time.time() < deadline:
        time.sleep(0.3)  # each pass ends with a signed checkpoint
    assert s.vvg("audit", "verify").json()["checkpoint"] is not None
    code = stop_stack(s, sig)
    assert code == 0, "".join(s.output)
    assert "stopped." in "".join(s.output)
    for url in (s.aws_url, s.api_url, s.dashboard_url):
        with pytest.raises(requests.ConnectionError):
            requests.get(url, timeout=2)


def test_port_in_use__is_refused_with_a_clear_message():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("AWS_")}
        env.update(VVG_AWS_PORT=str(free_port()), VVG_API_PORT=str(port), VVG_DASHBOARD_PORT=str(free_port()))
        p = subprocess.run([sys.executable, "-m", "infra.local"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=60)
    assert p.returncode != 0
    assert f"port {port} on 127.0.0.1 is in use; set VVG_API_PORT" in p.stderr


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_library__a_with_block_starts_every_part_and_leaving_frees_ports_threads_and_environment(monkeypatch):
    """infra.local.LocalStack as the benchmarks and the fuzzer use it: entering serves both health endpoints
    and the emulation on free ports; leaving closes the ports, ends the moto server, joins every thread
    (the reconciler's among them) and puts back the environment it changed."""
    import os
    import threading

    from infra.local import LocalStack

    monkeypatch.setenv("AWS_PROFILE", "someones-real-profile")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    before_env = dict(os.environ)
    before_threads = set(threading.enumerate())
    with LocalStack(seed=False, admin_password="admin-pass-123", reconcile_seconds=0.2) as s:
        assert os.environ["AWS_ENDPOINT_URL"] == s.aws_url and "AWS_PROFILE" not in os.environ
        assert requests.get(f"{s.api_url}/v1/health", timeout=5).json() == {"status": "ok"}
        assert requests.get(f"{s.dashboard_url}/healthz", timeout=5).status_code == 200
        ports, moto = (s.aws_port, s.api_port, s.dashboard_port), s.moto
        assert all(_accepts(p) for p in ports)
        assert any(t.name == "vvg-reconcile" for t in threading.enumerate())
    assert moto.poll() is not None and not any(_accepts(p) for p in ports)
    assert set(threading.enumerate()) <= before_threads
    assert dict(os.environ) == before_env
