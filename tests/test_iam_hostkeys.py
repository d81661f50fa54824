"""Least privilege for this area's calls (as tests/test_deploy_template.py does for the rest): the CLI's
key-host and break-glass commands under OperatorPolicy, a key host's events and a quarantined VM's
refusals under EventsRole, the VM page's quarantine and release under the dashboard's role."""
from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.test_deploy_template import assert_granted, calls  # noqa: F401 - the fixture
from tests.test_host_keys import KEY_POLICY, send_key


def _pub(tmp_path, name, key):
    p = tmp_path / name
    p.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    return str(p)


def test_iam_calls__operator_policy_covers_key_hosts_and_quarantine(webhook, calls, vvg, tmp_path):  # noqa: F811
    assert webhook.send("vm.preboot", "vm-2")[0] == 200
    with calls:
        for argv in (("host", "enroll", "key-8", "--mac", "02:00:00:00:00:08", "--serial", "SN-8", "--public-key",
                      _pub(tmp_path, "a.pub", Ed25519PrivateKey.generate())),
                     ("host", "rotate", "key-8", "--public-key", _pub(tmp_path, "b.pub", Ed25519PrivateKey.generate())),
                     ("host", "list"), ("host", "list", "--backfill"),  # the listing index; its one-off backfill scans
                     ("vm", "quarantine", "vm-2", "--reason", "iam"), ("vm", "release", "vm-2")):
            r = vvg(*argv)
            assert r.code == 0, (argv, r)
    assert_granted(calls, "OperatorPolicy", {"dynamodb:Query", "dynamodb:Scan", "dynamodb:TransactWriteItems",
                                             "sts:AssumeRole", "ec2:DetachVolume"})


def test_iam_calls__events_role_covers_a_key_host_and_a_quarantined_vm(webhook, calls, vvg, tmp_path):  # noqa: F811
    from infra.bootstrap import ensure_instance

    key = Ed25519PrivateKey.generate()
    ensure_instance(webhook.settings, "vm-k")
    (tmp_path / "k.yaml").write_text(KEY_POLICY)
    assert vvg("policy", "apply", str(tmp_path / "k.yaml")).code == 0
    assert vvg("host", "enroll", "key-1", "--mac", "02:00:00:00:07:01", "--serial", "SN-K1", "--public-key",
               _pub(tmp_path, "k.pub", key)).code == 0
    assert vvg("vm", "quarantine", "vm-1").code == 0
    with calls:
        assert send_key(webhook, key, "vm.preboot")[0] == 200
        assert send_key(webhook, key, "vm.shutdown")[0] == 200
        assert webhook.send("vm.preboot", "vm-1")[1]["decisions"][0]["reason"] == "quarantined"
    assert_granted(calls, "EventsRole", {"dynamodb:Query", "dynamodb:GetItem", "dynamodb:TransactWriteItems",
                                         "ec2:AttachVolume", "ec2:DetachVolume"})
    kms = [op for service, op, _, _ in calls.items if service == "kms"]
    assert kms == ["Decrypt"]  # the secret host's only: a key host needs no KMS call at all


def test_iam_calls__dashboard_role_covers_the_vm_page_and_key_enrolment(webhook, calls, tmp_path):  # noqa: F811
    from dashboard import create_app
    from tests.dashboard_support import TEST_CONFIG, csrf_token, sign_in

    webhook.send("vm.preboot", "vm-2")
    client = sign_in(create_app(dict(TEST_CONFIG)).test_client(), "admin")
    pub = Ed25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                 serialization.PublicFormat.OpenSSH).decode()
    with calls:
        assert client.get("/vms/vm-2").status_code == 200
        assert client.post("/vms/vm-2/quarantine", data={"reason": "x", "csrf_token": csrf_token(client, "/vms/vm-2")}
                           ).status_code == 302
        assert client.post("/vms/vm-2/release", data={"csrf_token": csrf_token(client, "/vms/vm-2")}).status_code == 302
        assert client.post("/hosts", data={"host_id": "hv-k", "mac": "02:00:00:00:0b:01", "serial": "S", "hardware": "",
                                           "public_key": pub, "csrf_token": csrf_token(client, "/hosts")}).status_code == 200
    assert_granted(calls, "DashboardRole", {"dynamodb:Query", "dynamodb:TransactWriteItems", "ec2:DetachVolume"})


def test_iam_calls__preflight_and_impact_under_operator_policy_and_dashboard_role(webhook, calls, vvg, tmp_path):  # noqa: F811
    """`vvg preflight`, `vvg policy impact` (OperatorPolicy) and /policies/impact (DashboardRole) read only
    what their roles grant (docs/preflight.md, docs/policy-impact.md)."""
    from dashboard import create_app
    from tests.dashboard_support import TEST_CONFIG, csrf_token, sign_in

    webhook.send("vm.preboot", "vm-1")
    draft = ("volumes:\n  - {volume_id: vvol-1, vm_id: vm-1, host_id: host-1, storage_array: S1, size_mb: 10, "
             "attach_on: preboot, detach_on: shutdown}\n")
    (tmp_path / "d.yaml").write_text(draft)
    with calls:
        assert vvg("preflight", "vm-1").code in (0, 1)
        assert vvg("policy", "impact", str(tmp_path / "d.yaml")).code == 0
    assert_granted(calls, "OperatorPolicy", {"dynamodb:Query", "ec2:DescribeInstances", "ec2:DescribeVolumes"})
    with calls:  # the VM page's preflight reads in the host's provider session (ProviderRole), not its own
        client = sign_in(create_app(dict(TEST_CONFIG)).test_client(), "admin")
        assert client.get("/vms/vm-1").status_code == 200
    assert_granted(calls, "DashboardRole", {"dynamodb:Query", "ec2:DescribeInstances", "ec2:DescribeVolumes"})
    client = sign_in(create_app(dict(TEST_CONFIG)).test_client(), "admin")
    with calls:
        r = client.post("/policies/impact", data={"policy": draft, "since": "1d",
                                                  "csrf_token": csrf_token(client, "/policies/impact")})
        assert r.status_code == 200
    assert_granted(calls, "DashboardRole", {"dynamodb:Query"})
