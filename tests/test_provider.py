"""The EBS provider authenticates for the host on every call and checks in code what moto lets through."""
from __future__ import annotations

import hashlib
import hmac

import pytest

from infra.bootstrap import ensure_instance
from vvolguard.adapters import aws as aws_adapter
from vvolguard.adapters.models import HostItem
from vvolguard.adapters.provider import EbsProvider, HostIdentity, ProviderRefused
from vvolguard.services.hosts import HostService


@pytest.fixture
def provider(aws):
    HostService(aws).enroll("h-a", "02:00:00:00:0a:01", "SN-A")
    HostService(aws).enroll("h-b", "02:00:00:00:0b:01", "SN-B")
    calls: list[tuple[str, dict]] = []

    def spy(model, params, **_):
        calls.append((f"{model.service_model.service_name}.{model.name}", params))

    aws_adapter.add_hook("before-parameter-build", spy)
    yield EbsProvider(aws, backoff=0.001), calls
    aws_adapter.remove_hook("before-parameter-build", spy)


def who(host_id: str) -> HostIdentity:
    h = HostItem.get(host_id)
    return HostIdentity(h.host_id, h.cred_hash)


def test_every_call_is_made_with_an_assumed_role_for_the_host(provider, aws):
    p, calls = provider
    ensure_instance(aws, "vm-p")
    inst = p.find_instance(who("h-a"), "vm-p")
    assume = [params for name, params in calls if name == "sts.AssumeRole"]
    assert len(assume) == 1
    expected_external = hmac.new(bytes.fromhex(HostItem.get("h-a").cred_hash), b"vvg:provider-external-id",
                                 hashlib.sha256).hexdigest()[:48]
    assert assume[0]["ExternalId"] == expected_external
    assert assume[0]["Tags"] == [{"Key": "vvg:host-id", "Value": "h-a"}]
    assert assume[0]["RoleSessionName"] == "vvg-h-a"
    assert assume[0]["RoleArn"] == aws.provider_role_arn
    # The session is cached per host: a second call assumes nothing; another host gets its own.
    p.find_instance(who("h-a"), "vm-p")
    p.find_instance(who("h-b"), "vm-p")
    names = [n for n, _ in calls if n == "sts.AssumeRole"]
    assert len(names) == 2
    assert inst.zone == "us-east-1a"


def test_external_ids_differ_per_host_and_never_contain_the_credentials(provider):
    a, b = who("h-a"), who("h-b")
    assert a.external_id != b.external_id
    assert "02:00:00:00:0a:01" not in a.external_id and "SN-A" not in a.external_id


def test_a_host_without_enrolled_credentials_is_refused_before_any_call(provider):
    p, calls = provider
    with pytest.raises(ProviderRefused) as err:
        p.find_instance(HostIdentity("h-x", ""), "vm-p")
    assert err.value.reason == "no_credentials" and calls == []


def test_a_session_for_another_host_is_refused(provider, aws):
    p, calls = provider

    def swap(parsed, **_):  # the STS answer names another session than the one asked for
        parsed["AssumedRoleUser"]["Arn"] = parsed["AssumedRoleUser"]["Arn"].rsplit("/", 1)[0] + "/vvg-h-b"

    aws_adapter.add_hook("after-call.sts.AssumeRole", swap)
    try:
        with pytest.raises(ProviderRefused) as err:
            p.find_instance(who("h-a"), "vm-p")
    finally:
        aws_adapter.remove_hook("after-call.sts.AssumeRole", swap)
    assert err.value.reason == "wrong_session"
    assert not any(n.startswith("ec2.") for n, _ in calls)


def test_attach_is_refused_in_code_where_aws_would_refuse(provider, aws):
    p, calls = provider
    ensure_instance(aws, "vm-p")
    ec2 = aws_adapter.client("ec2", "us-east-1")
    inst = p.find_instance(who("h-a"), "vm-p")
    vol = p.create(who("h-a"), "vol-p", "vm-p", 10, inst.zone)
    with pytest.raises(ProviderRefused) as err:  # not in vvg:hosts
        p.attach(who("h-b"), vol, inst, "/dev/sdf")
    assert err.value.reason == "host_not_allowed"
    other = ec2.create_volume(AvailabilityZone="us-east-1b", Size=1)["VolumeId"]
    ec2.create_tags(Resources=[other], Tags=[{"Key": "vvg:hosts", "Value": "h-a"}])
    with pytest.raises(ProviderRefused) as err:  # another zone
        p.attach(who("h-a"), other, inst, "/dev/sdf")
    assert err.value.reason == "zone_mismatch"
    ensure_instance(aws, "vm-q")
    inst_q = p.find_instance(who("h-a"), "vm-q")
    p.attach(who("h-a"), vol, inst_q, "/dev/sdf")
    with pytest.raises(ProviderRefused) as err:  # in use by another instance
        p.attach(who("h-a"), vol, inst, "/dev/sdg")
    assert err.value.reason == "volume_in_use"
    attaches = [params for n, params in calls if n == "ec2.AttachVolume"]
    assert len(attaches) == 1 and attaches[0]["InstanceId"] == inst_q.instance_id
    # Attaching again where it already is: no second AttachVolume.
    assert p.attach(who("h-a"), vol, inst_q, "/dev/sdf") == "/dev/sdf"
    assert len([1 for n, _ in calls if n == "ec2.AttachVolume"]) == 1


def test_volume_is_created_raw_tagged_and_sized_by_the_contract(provider, aws):
    p, _ = provider
    ensure_instance(aws, "vm-p")
    inst = p.find_instance(who("h-a"), "vm-p")
    ec2 = aws_adapter.client("ec2", "us-east-1")
    for size_mb, gib in ((10, 1), (1024, 1), (1025, 2), (1048576, 1024)):
        vid = p.create(who("h-a"), f"v-{size_mb}", "vm-p", size_mb, inst.zone)
        v = ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]
        tags = {t["Key"]: t["Value"] for t in v["Tags"]}
        assert v["Size"] == gib and v["AvailabilityZone"] == inst.zone and not v.get("SnapshotId")
        assert tags["vvg:volume-id"] == f"v-{size_mb}" and tags["vvg:hosts"] == "h-a"
    # Creating again finds the existing volume instead of making a second one.
    n = len(ec2.describe_volumes(Filters=[{"Name": "tag:vvg:volume-id", "Values": ["v-10"]}])["Volumes"])
    p.create(who("h-a"), "v-10", "vm-p", 10, inst.zone)
    assert len(ec2.describe_volumes(Filters=[{"Name": "tag:vvg:volume-id", "Values": ["v-10"]}])["Volumes"]) == n == 1
