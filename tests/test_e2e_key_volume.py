"""The key volume's whole path on the local stack, from outside (docs/key-volume.md): a LUKS2 container
formatted with key file K; `vvg key provision vvol-1 --file luks=K --escrow`; `vm.preboot` attaches the new
volume; `vvg key recover` gives bytes that unlock the container; `vvg key build` with the same file gives
an image from which the guest reader, under busybox sh, outputs bytes that unlock it too."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import boto3
import pytest

ROOT = Path(__file__).resolve().parent.parent
READER = ROOT / "infra" / "guest" / "vvg-keyread"
BUSYBOX, CRYPTSETUP = shutil.which("busybox"), shutil.which("cryptsetup")
pytestmark = pytest.mark.skipif(not (BUSYBOX and CRYPTSETUP), reason="busybox and cryptsetup (.ci/run installs them)")


def unlocks(container: Path, key_file: Path) -> bool:
    return subprocess.run([CRYPTSETUP, "open", "--test-passphrase", "--key-file", str(key_file), str(container)],
                          capture_output=True, timeout=60).returncode == 0


def test_key_volume__whole_path_on_the_local_stack(stack, tmp_path):
    key, container = tmp_path / "K", tmp_path / "container"
    key.write_bytes(os.urandom(64))
    with open(container, "wb") as fh:
        fh.truncate(20 * 1024 * 1024)
    subprocess.run([CRYPTSETUP, "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2",
                    "--pbkdf-force-iterations", "1000", "--key-file", str(key), str(container)],
                   check=True, capture_output=True, timeout=60)

    seeded = stack.vvg("key", "describe", "vvol-1")  # the demo seed provisions the preboot volumes
    assert seeded.code == 0 and seeded.json()["provisioned"] is True, seeded
    old = seeded.json()["provider_volume_id"]

    r = stack.vvg("key", "provision", "vvol-1", "--file", f"luks={key}", "--escrow")
    assert r.code == 0, r
    new = r.json()["provider_volume_id"]
    assert new != old and key.read_bytes().hex() not in r.out + r.err

    ec2 = boto3.client("ec2", endpoint_url=stack.aws_url, region_name="us-east-1", aws_access_key_id="t",
                       aws_secret_access_key="t")
    kms = boto3.client("kms", endpoint_url=stack.aws_url, region_name="us-east-1", aws_access_key_id="t",
                       aws_secret_access_key="t")
    vols = {v["VolumeId"]: v for v in ec2.describe_volumes(Filters=[{"Name": "tag:vvg:volume-id", "Values": ["vvol-1"]}])["Volumes"]
            if v["State"] not in ("deleting", "deleted")}
    assert list(vols) == [new]
    vol = vols[new]
    tags = {t["Key"]: t["Value"] for t in vol["Tags"]}
    assert tags["vvg:hosts"] == stack.host_id and tags["vvg:vm-id"] == "vm-1"
    arn = kms.describe_key(KeyId="alias/vvg-key-volumes")["KeyMetadata"]["Arn"]
    assert vol["Encrypted"] and vol["KmsKeyId"] in ("alias/vvg-key-volumes", arn)
    snaps = ec2.describe_snapshots(OwnerIds=["self"], Filters=[{"Name": "tag-key", "Values": ["vvg:volume-id"]}])
    assert snaps["Snapshots"] == []

    r = stack.vvg("event", "send", "vm.preboot", "--vm", "vm-1", "--host", stack.host_id, "--secret",
                  stack.host_secret, "--url", stack.api_url)
    assert r.code == 0, r
    (decision,) = [d for d in r.json()["decisions"] if d["volume_id"] == "vvol-1"]
    assert decision["action"] == "attach" and decision["outcome"] == "done", decision
    attached = ec2.describe_volumes(VolumeIds=[new])["Volumes"][0]["Attachments"]
    assert [a["State"] for a in attached] == ["attached"]

    recovered = tmp_path / "recovered"
    r = stack.vvg("key", "recover", "vvol-1", "luks", "--out", str(recovered))
    assert r.code == 0, r
    assert unlocks(container, recovered)

    image = tmp_path / "image"
    r = stack.vvg("key", "build", "--vm", "vm-1", "--volume", "vvol-1", "--file", f"luks={key}", "--out", str(image))
    assert r.code == 0, r
    bb = tmp_path / "bb"
    bb.mkdir()
    for tool in ("head", "dd", "od", "tr", "sed", "awk", "sha256sum", "cut", "grep", "sleep", "tail"):
        (bb / tool).symlink_to(BUSYBOX)
    out = subprocess.run([BUSYBOX, "sh", str(READER), str(image), "vm-1"], capture_output=True, timeout=30,
                         env={"PATH": str(bb), "VVG_KEYREAD_WAIT": "0"})
    assert out.returncode == 0, out.stderr
    (tmp_path / "read").write_bytes(out.stdout)
    assert unlocks(container, tmp_path / "read")

    audit = [json.loads(x) for x in stack.vvg("audit", "list", "--volume", "vvol-1", "--limit", "100").out.splitlines()]
    assert {"key_provision", "key_recover"} <= {a["action"] for a in audit}
    assert key.read_bytes().hex() not in json.dumps(audit)
    r = stack.vvg("event", "send", "vm.booted", "--vm", "vm-1", "--host", stack.host_id, "--secret",
                  stack.host_secret, "--url", stack.api_url)
    assert r.code == 0, r
