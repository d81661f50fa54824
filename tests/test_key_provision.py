"""`vvg key provision | describe | recover` against moto (EBS direct APIs, KMS, EC2), including every refusal
with nothing written, and a failure injected between any two provider calls (docs/key-volume.md)."""
from __future__ import annotations

import hashlib
import json
import os
import stat
from datetime import datetime, timedelta, timezone

import pytest
from botocore.exceptions import ClientError

from tests.conftest import ec2_client
from vvolguard.adapters import aws as aws_adapter

PROVIDER_SERVICES = {"ec2", "ebs", "kms", "sts"}
READ_PREFIXES = ("Describe", "Get", "List")


class ProviderCalls:
    """Records the provider's calls (EC2, EBS, KMS, STS); can fail the n-th one, or it and every later one."""

    def __init__(self) -> None:
        self.ops: list[str] = []
        self.fail_at: int | None = None
        self.die = False

    def __call__(self, model, **_):
        if model.service_model.service_name not in PROVIDER_SERVICES:
            return None
        self.ops.append(f"{model.service_model.service_name}:{model.name}")
        n = len(self.ops)
        if self.fail_at is not None and (n == self.fail_at or (self.die and n > self.fail_at)):
            raise ClientError({"Error": {"Code": "InjectedFault", "Message": "injected"}}, model.name)
        return None

    def writes(self) -> list[str]:
        return [o for o in self.ops if not o.split(":")[1].startswith(READ_PREFIXES)
                and o not in ("sts:AssumeRole", "kms:Encrypt", "kms:Decrypt")]


@pytest.fixture
def provider_calls(webhook):
    c = ProviderCalls()
    aws_adapter.add_hook("before-call", c)
    yield c
    aws_adapter.remove_hook("before-call", c)


def volumes_of(volume_id: str) -> dict[str, dict]:
    out = {}
    for v in ec2_client().describe_volumes(Filters=[{"Name": "tag:vvg:volume-id", "Values": [volume_id]}])["Volumes"]:
        if v["State"] not in ("deleting", "deleted"):
            out[v["VolumeId"]] = v
    return out


def provisioning_snapshots() -> list[str]:
    """Snapshots tagged vvg:volume-id, read from the emulation's own state (moto's DescribeSnapshots walks
    hundreds of AMI snapshots: seconds per call; the test_provision__whole_path test uses the API)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    snaps = ec2_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].snapshots
    return [sid for sid, snap in snaps.items() if "vvg:volume-id" in {t["key"] for t in snap.get_tags()}]


def key_volumes_key_arn() -> str:
    import boto3

    return boto3.client("kms", region_name="us-east-1").describe_key(KeyId="alias/vvg-key-volumes")["KeyMetadata"]["Arn"]


def encrypted_with_our_key(vol: dict) -> bool:
    kid = vol.get("KmsKeyId", "")
    return vol["Encrypted"] and (kid == "alias/vvg-key-volumes" or kid == key_volumes_key_arn()
                                 or key_volumes_key_arn().endswith(kid))


def recorded(volume_id: str) -> str | None:
    from vvolguard.services.policies import PolicyService
    from vvolguard.settings import Settings

    return PolicyService(Settings.from_env()).get(volume_id).provider_volume_id


@pytest.fixture
def K(tmp_path):
    k = tmp_path / "K"
    k.write_bytes(os.urandom(64))
    return k


def test_provision__whole_path_new_encrypted_volume_no_snapshot_preboot_attaches_it_recover_gives_K(
        webhook, vvg, provider_calls, K, tmp_path, caplog):
    import base64
    import logging

    caplog.set_level(logging.DEBUG, logger="vvg")
    assert webhook.send("vm.created", "vm-1")[0] == 200
    old = recorded("vvol-1")
    assert old and encrypted_with_our_key(volumes_of("vvol-1")[old])  # the event path's create uses the key too

    provider_calls.ops.clear()
    r = vvg("key", "provision", "vvol-1", "--file", f"luks={K}", "--escrow")
    assert r.code == 0, r
    ops = provider_calls.ops  # no attach, never ec2:CreateSnapshot; the snapshot is gone before the old volume
    assert {"ebs:StartSnapshot", "ebs:PutSnapshotBlock", "ebs:CompleteSnapshot", "ec2:CreateVolume",
            "ec2:DeleteSnapshot", "ec2:DeleteVolume"} <= set(ops)
    assert not {"ec2:AttachVolume", "ec2:CreateSnapshot", "ec2:CreateSnapshots", "ec2:CopySnapshot"} & set(ops)
    assert ops.index("ec2:DeleteSnapshot") < ops.index("ec2:DeleteVolume")
    body = r.json()
    new = body["provider_volume_id"]
    assert list(body) == ["volume_id", "provider_volume_id", "entries"] and body["volume_id"] == "vvol-1"
    assert body["entries"] == [{"name": "luks", "kind": "luks-key", "size": 64,
                                "sha256": hashlib.sha256(K.read_bytes()).hexdigest()}]
    vols = volumes_of("vvol-1")
    assert list(vols) == [new] and new != old  # the old one is gone
    vol = vols[new]
    tags = {t["Key"]: t["Value"] for t in vol["Tags"]}
    assert tags["vvg:volume-id"] == "vvol-1" and tags["vvg:hosts"] == "host-1" and tags["vvg:vm-id"] == "vm-1"
    assert encrypted_with_our_key(vol) and vol["Attachments"] == [] and vol["SnapshotId"]
    assert provisioning_snapshots() == []
    assert ec2_client().describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "tag-key", "Values": ["vvg:volume-id"]}])["Snapshots"] == []

    code, answer = webhook.send("vm.preboot", "vm-1")
    assert code == 200 and answer["decisions"][0]["outcome"] == "done", answer
    assert answer["decisions"][0].get("provider_volume_id", new) == new
    assert [a["State"] for a in volumes_of("vvol-1")[new]["Attachments"]] == ["attached"]  # the new volume

    d = vvg("key", "describe", "vvol-1").json()
    assert list(d) == ["volume_id", "provisioned", "provider_volume_id", "provisioned_at", "escrowed", "entries"]
    assert d["provisioned"] is True and d["escrowed"] is True and d["provider_volume_id"] == new
    assert d["entries"] == body["entries"]

    out = tmp_path / "recovered"
    r = vvg("key", "recover", "vvol-1", "luks", "--out", str(out))
    assert r.code == 0, r
    assert out.read_bytes() == K.read_bytes() and stat.S_IMODE(out.stat().st_mode) == 0o600

    audit = vvg("audit", "list", "--volume", "vvol-1", "--limit", "50")
    actions = [json.loads(line)["action"] for line in audit.out.splitlines()]
    assert "key_provision" in actions and "key_recover" in actions
    everything = r.out + r.err + audit.out + json.dumps(d) + json.dumps(body) + caplog.text
    for form in (K.read_bytes().hex(), K.read_bytes().hex()[:32], base64.b64encode(K.read_bytes()).decode()[:40]):
        assert form not in everything


def test_provision__a_volume_never_created_is_made_in_the_instances_zone(webhook, vvg):
    assert recorded("vvol-3") is None
    r = vvg("key", "provision", "vvol-3", "--generate", "lic:300")
    assert r.code == 0, r
    (vol,) = volumes_of("vvol-3").values()
    assert vol["VolumeId"] == recorded("vvol-3") and vol["AvailabilityZone"] == "us-east-1a"
    assert [e["name"] for e in r.json()["entries"]] == ["luks", "lic"]
    assert vvg("key", "describe", "vvol-3").json()["escrowed"] is False
    d = vvg("key", "describe", "vvol-2")
    assert d.code == 0 and d.json() == {"volume_id": "vvol-2", "provisioned": False, "provider_volume_id": None,
                                        "provisioned_at": None, "escrowed": False, "entries": []}


REFUSALS = [
    ("unknown_volume", "vvol-nope has no policy"),
    ("too_big", "over the volume's 10485760 bytes"),
    ("duplicate", "given twice"),
    ("wrong_kind", "kind 'password'"),
    ("luks_kind", "always luks-key"),
    ("bad_name", "does not match"),
    ("escrow_too_big", "escrow holds entries of at most 4096 bytes"),
    ("missing_file", "cannot read"),
    ("hostile_volume_id", "volume id must match"),
    ("attached_at_provider_only", "attached at the provider"),
    ("attached", "is attached"),
]


def audit_records() -> int:
    from vvolguard.adapters.models import AuditItem

    return AuditItem.count()


def test_provision__every_refusal_is_one_line_and_writes_nothing(webhook, vvg, provider_calls, K, tmp_path):
    from vvolguard.adapters.models import KeyVolumeItem
    from vvolguard.services.keys import keyvol_pk

    assert webhook.send("vm.created", "vm-1")[0] == 200
    big = tmp_path / "big"
    big.write_bytes(b"x" * (10 * 1024 * 1024))
    ec2 = ec2_client()
    instance = ec2.describe_instances(Filters=[{"Name": "tag:vvg:vm-id", "Values": ["vm-1"]}])["Reservations"][0]["Instances"][0]
    for case, message in REFUSALS:
        volume, args = "vvol-1", [f"--file=luks={K}"]
        if case == "unknown_volume":
            volume = "vvol-nope"
        elif case == "too_big":
            args.append(f"--file=lic={big}:license")
        elif case == "duplicate":
            args.append(f"--file=luks={K}")
        elif case == "wrong_kind":
            args.append(f"--file=x={K}:password")
        elif case == "luks_kind":
            args = [f"--file=luks={K}:license"]
        elif case == "bad_name":
            args.append("--generate=../etc:10")
        elif case == "escrow_too_big":
            args += ["--generate=lic:5000", "--escrow"]
        elif case == "missing_file":
            args.append(f"--file=x={tmp_path}/missing")
        elif case == "hostile_volume_id":
            volume = "vvol-1\n; rm -rf /"
        elif case == "attached_at_provider_only":  # the table says detached; the provider knows better
            ec2.attach_volume(VolumeId=recorded("vvol-1"), Device="/dev/sdz", InstanceId=instance["InstanceId"])
        elif case == "attached":
            ec2.detach_volume(VolumeId=recorded("vvol-1"), InstanceId=instance["InstanceId"])
            assert webhook.send("vm.preboot", "vm-1")[0] == 200
        before_vols, before_rec, before_audit = volumes_of("vvol-1"), recorded("vvol-1"), audit_records()
        provider_calls.ops.clear()
        r = vvg("key", "provision", volume, *args)
        assert r.code != 0 and r.out == "" and r.err.count("\n") == 1 and message in r.err, (case, r)
        assert provider_calls.writes() == [], (case, provider_calls.ops)
        assert volumes_of("vvol-1") == before_vols and recorded("vvol-1") == before_rec, case
        assert provisioning_snapshots() == [], case
        assert KeyVolumeItem.count(keyvol_pk("vvol-1")) == 0 and audit_records() == before_audit, case


def test_recover__refusals_and_the_escrow_is_bound_to_the_volume_id(webhook, vvg, K, tmp_path):
    from vvolguard.adapters.models import KeyVolumeItem
    from vvolguard.services.keys import KEYVOL_SK, keyvol_pk

    out = tmp_path / "o"
    r = vvg("key", "recover", "vvol-1", "luks", "--out", str(out))
    assert r.code == 1 and "nothing was escrowed" in r.err and not out.exists()
    r = vvg("key", "recover", "vvol-nope", "luks", "--out", str(out))
    assert r.code == 1 and "has no policy" in r.err and not out.exists()
    assert vvg("key", "provision", "vvol-1", "--file", f"luks={K}").code == 0
    r = vvg("key", "recover", "vvol-1", "luks", "--out", str(out))
    assert r.code == 1 and "nothing was escrowed" in r.err and not out.exists()
    assert vvg("key", "provision", "vvol-1", "--file", f"luks={K}", "--escrow").code == 0
    r = vvg("key", "recover", "vvol-1", "other", "--out", str(out))
    assert r.code == 1 and "entry other of vvol-1 was not escrowed" in r.err and not out.exists()
    r = vvg("key", "recover", "vvol-1", "../x", "--out", str(out))
    assert r.code == 1 and "must match" in r.err and not out.exists()
    out.write_text("keep")
    r = vvg("key", "recover", "vvol-1", "luks", "--out", str(out))
    assert r.code == 1 and "already exists" in r.err and out.read_text() == "keep"
    audit = [json.loads(x)["action"] for x in vvg("audit", "list", "--volume", "vvol-1").out.splitlines()]
    assert "key_recover" not in audit  # no refusal recovered anything

    # A ciphertext copied to another volume's record does not decrypt there (KMS encryption context).
    assert vvg("key", "provision", "vvol-2", "--file", f"luks={K}", "--escrow").code == 0
    one = KeyVolumeItem.get(keyvol_pk("vvol-1"), KEYVOL_SK)
    two = KeyVolumeItem.get(keyvol_pk("vvol-2"), KEYVOL_SK)
    assert K.read_bytes().hex() not in one.escrow_json
    two.update(actions=[KeyVolumeItem.escrow_json.set(one.escrow_json)])
    r = vvg("key", "recover", "vvol-2", "luks", "--out", str(tmp_path / "never"))
    assert r.code == 1 and r.err.count("\n") == 1 and not (tmp_path / "never").exists()

    # Break-glass still works once the volume's host is revoked (a KMS decrypt, nothing at the provider).
    assert vvg("host", "revoke", "host-1").code == 0
    r = vvg("key", "recover", "vvol-1", "luks", "--out", str(tmp_path / "after-revoke"))
    assert r.code == 0, r
    assert (tmp_path / "after-revoke").read_bytes() == K.read_bytes()
    r = vvg("key", "provision", "vvol-1", "--file", f"luks={K}")  # but nothing is written for a revoked host
    assert r.code == 1 and "revoked" in r.err


def _backend_volumes(volume_id: str) -> list[str]:
    """Volumes tagged vvg:volume-id = volume_id, from the emulation's own state (fast; see provisioning_snapshots)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    vols = ec2_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].volumes
    return [vid for vid, v in vols.items()
            if any(t["key"] == "vvg:volume-id" and t["value"] == volume_id for t in v.get_tags())]


def _check_clean(vvg, label: str) -> None:
    rec = recorded("vvol-1")
    assert provisioning_snapshots() == [], label
    assert _backend_volumes("vvol-1") == [rec], (label, rec, _backend_volumes("vvol-1"))


def test_provision__a_failure_between_any_two_provider_calls_leaves_no_snapshot_and_no_new_volume(
        webhook, vvg, provider_calls, K):
    """Each call in turn fails once (the command undoes at once), then each call in turn is where the
    command dies (every later call fails too: the reconciler removes what it left)."""
    from vvolguard.adapters.provider import EbsProvider
    from vvolguard.services.keys import KeyService
    from vvolguard.services.reconcile import Reconciler

    assert webhook.send("vm.created", "vm-1")[0] == 200
    provider_calls.ops.clear()
    assert vvg("key", "provision", "vvol-1", "--file", f"luks={K}", "--escrow").code == 0
    n = len(provider_calls.ops)  # from a cold start: the STS AssumeRole too
    assert n >= 10 and "ebs:PutSnapshotBlock" in provider_calls.ops, provider_calls.ops
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    provider = EbsProvider(webhook.settings)  # one session for the loop (a new one per run costs ~1 s of botocore)
    left_behind = 0
    for die, k in [(False, k) for k in range(1, n + 1)] + [(True, k) for k in range(1, n + 1)]:
        before = recorded("vvol-1")
        provider_calls.ops.clear()
        provider_calls.fail_at, provider_calls.die = k, die
        if k == 1:
            provider.forget("host-1")  # the first call is the AssumeRole
        try:
            KeyService(webhook.settings, provider).provision("vvol-1", files=[f"luks={K}"], escrow=True)
            failed = None
        except Exception as exc:  # noqa: BLE001
            failed = exc
        failed_op = provider_calls.ops[k - 1] if len(provider_calls.ops) >= k else "?"
        provider_calls.fail_at = None
        if failed is not None:
            assert recorded("vvol-1") == before, (k, failed_op, failed)
            if not die:  # undone at once
                _check_clean(vvg, f"fault at call {k} ({failed_op})")
                continue
        if die:
            left_behind += len(provisioning_snapshots()) + len(_backend_volumes("vvol-1")) - 1
        summary = Reconciler(webhook.settings, provider).run(now=later)
        assert summary["ok"], (k, failed_op, summary)
        _check_clean(vvg, f"{'death' if die else 'fault'} at call {k} ({failed_op}), after reconcile")
    assert left_behind >= n // 2, left_behind  # the deaths did leave things: the reconciler was what removed them
    # and the volume still provisions, and the reconciler leaves a finished one alone
    assert vvg("key", "provision", "vvol-1", "--file", f"luks={K}").code == 0
    assert Reconciler(webhook.settings, provider).run(now=later)["provisioning_leftovers"] == 0
    _check_clean(vvg, "final")


def test_dashboard__shows_provisioned_entries_and_escrow_never_bytes(webhook, vvg, K):
    from tests.dashboard_support import PASSWORD, ROLE_USERS, TEST_CONFIG, sign_in
    from dashboard import create_app
    from vvolguard.services.users import UserService

    UserService(webhook.settings).add(ROLE_USERS["viewer"], "viewer", PASSWORD, actor="cli")
    assert vvg("key", "provision", "vvol-1", "--file", f"luks={K}", "--generate", "lic:100", "--escrow").code == 0
    client = sign_in(create_app(dict(TEST_CONFIG)).test_client(), "viewer")
    page = client.get("/policies").get_data(as_text=True)
    assert 'provisioned</span> <span class="id">luks</span>, <span class="id">lic</span> · escrowed' in page
    assert page.count("not provisioned") == 4  # vvol-2..5; the preboot ones are flagged
    one = client.get("/policies/vvol-1").get_data(as_text=True)
    assert hashlib.sha256(K.read_bytes()).hexdigest() in one and "luks-key" in one and ">64 B<" in one
    assert "escrowed" in one
    two = client.get("/policies/vvol-2").get_data(as_text=True)
    assert "never provisioned" in two and "vvg key provision vvol-2" in two
    for text in (page, one, two):
        assert K.read_bytes().hex() not in text and K.read_bytes().hex()[:16] not in text
