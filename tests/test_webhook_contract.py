"""POST /v1/events and GET /v1/health from the outside (docs/policy-file.md and docs/webhook-api.md and docs/architecture.md#the-storage-provider and docs/security-model.md#the-audit-history), through the Lambda handlers.

Every request goes through ``vvolguard.handlers.events.handler`` as an API Gateway payload 2.0 event, signed
like a host. What the tests observe is what a host, the provider (EC2/EBS under moto) and a security team
can observe: the answer, the volumes and attachments at EC2, the stored attachment state and the audit history.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import all_audit_records, attached_volume_ids, ec2_client, managed_volumes

DISK_ENC = "disk_encryption"


# ---------------------------------------------------------------- helpers


def add_policies(settings, yaml_text: str) -> None:
    """Apply extra policy entries (section 3) as `vvg policy apply` would."""
    from vvolguard.domain.policy import parse_policy_text
    from vvolguard.services.policies import PolicyService

    PolicyService(settings).apply(parse_policy_text(yaml_text.encode("utf-8"), "extra.yaml"))


def instance_of(vm_id: str) -> dict:
    """The EC2 instance standing for ``vm_id``."""
    resp = ec2_client().describe_instances(Filters=[{"Name": "tag:vvg:vm-id", "Values": [vm_id]},
                                                    {"Name": "instance-state-name", "Values": ["pending", "running"]}])
    return resp["Reservations"][0]["Instances"][0]


def policy_item(volume_id: str):
    from vvolguard.services.policies import PolicyService
    from vvolguard.settings import Settings

    return PolicyService(Settings.from_env()).get(volume_id)


def live_attachments(volume_id: str) -> list[dict]:
    vol = managed_volumes().get(volume_id)
    return [a for a in (vol or {}).get("Attachments", []) if a["State"] in ("attaching", "attached")]


def snapshot() -> dict:
    """Everything a refused request must leave alone: every policy item (policy + attachment state, versions
    included) and the provider's managed volumes with their tags and attachments."""
    from vvolguard.adapters.models import PolicyItem

    policies = {i.volume_id: dict(i.attribute_values) for i in PolicyItem.scan()}
    provider = {vid: {"id": v["VolumeId"], "zone": v["AvailabilityZone"], "size": v["Size"], "tags": v["TagMap"],
                      "attachments": sorted((a["InstanceId"], a["Device"], a["State"]) for a in v.get("Attachments", []))}
                for vid, v in managed_volumes().items()}
    return {"policies": policies, "provider": provider}


def audit_records(settings) -> list:
    return all_audit_records()


def new_audit(settings, before: int) -> list:
    recs = audit_records(settings)
    return recs[: len(recs) - before]


def assert_error(result: tuple[int, dict], status: int, code: str) -> None:
    """The contract's error answer: the status, the code, and exactly {"error": {"code", "message"}}."""
    got_status, body = result
    assert (got_status, body.get("error", {}).get("code")) == (status, code), result
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"].strip(), body


def body_of(**fields) -> bytes:
    return json.dumps(fields).encode()


def parse_rfc3339(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def sign_raw(webhook, body: bytes, **kw) -> tuple[int, dict]:
    return webhook.raw(body, webhook.signed_headers(body, **kw))


def enroll(settings, host_id: str, n: int = 2) -> str:
    from vvolguard.services.hosts import HostService

    return HostService(settings).enroll(host_id, f"02:00:00:00:00:{n:02x}", f"SERIAL-{n}")["secret"]


@pytest.fixture
def vm1_attached(webhook):
    """Table 1 with vm-1 prebooted: vvol-1 exists and is attached (a state a refused request must not touch)."""
    code, body = webhook.send("vm.preboot", "vm-1")
    assert code == 200 and body["decisions"][0]["outcome"] == "done", body
    assert attached_volume_ids() == {"vvol-1"}
    return webhook


# ---------------------------------------------------------------- section 4: the type table


def test_vm_created_creates_missing_volumes_for_this_host_only_sized_in_gib_in_the_instance_zone_unattached(webhook, aws):
    ec2_client().run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="t3.micro",
                               Placement={"AvailabilityZone": "us-east-1b"},
                               TagSpecifications=[{"ResourceType": "instance",
                                                   "Tags": [{"Key": "vvg:vm-id", "Value": "vm-6"}]}])
    add_policies(aws, """
volumes:
  - {volume_id: vvol-6a, vm_id: vm-6, host_id: host-1, storage_array: S1, size_mb: 1024, attach_on: preboot, detach_on: postboot}
  - {volume_id: vvol-6b, vm_id: vm-6, host_id: host-1, storage_array: S1, size_mb: 1025, attach_on: request, detach_on: request}
  - {volume_id: vvol-6c, vm_id: vm-6, host_id: host-1, storage_array: S1, size_mb: 2049, attach_on: app_start, detach_on: app_stop, app: A9}
""")
    assert managed_volumes() == {}

    code, body = webhook.send("vm.created", "vm-6")
    assert code == 200 and body["duplicate"] is False
    assert [(d["volume_id"], d["action"], d["outcome"]) for d in body["decisions"]] == [
        ("vvol-6a", "create", "done"), ("vvol-6b", "create", "done"), ("vvol-6c", "create", "done")]
    vols = managed_volumes()
    assert set(vols) == {"vvol-6a", "vvol-6b", "vvol-6c"}  # only this VM's volumes
    assert {vid: v["Size"] for vid, v in vols.items()} == {"vvol-6a": 1, "vvol-6b": 2, "vvol-6c": 3}
    for vid, v in vols.items():
        assert v["TagMap"]["vvg:volume-id"] == vid
        assert v["TagMap"]["vvg:hosts"] == "host-1"
        assert v["AvailabilityZone"] == instance_of("vm-6")["Placement"]["AvailabilityZone"] == "us-east-1b"
        assert not v.get("Attachments")
        item = policy_item(vid)
        assert item.provider_volume_id == v["VolumeId"] and not item.attached

    # Table 1's 10 MB and 100 MB volumes are 1 GiB; a volume that exists already is not created again.
    code, body = webhook.send("vm.created", "vm-2")
    assert code == 200 and [(d["volume_id"], d["outcome"]) for d in body["decisions"]] == [("vvol-2", "done")]
    assert managed_volumes()["vvol-2"]["Size"] == 1
    code, body = webhook.send("vm.created", "vm-6")
    assert code == 200 and {d["outcome"] for d in body["decisions"]} == {"skipped"}
    assert len(managed_volumes()) == 4 and attached_volume_ids() == set()


def test_vm_preboot_attaches_the_preboot_volume_to_the_vms_instance_with_device_and_lease_and_vm_booted_detaches_it(
        webhook):
    before = datetime.now(timezone.utc)
    code, body = webhook.send("vm.preboot", "vm-1")
    assert code == 200 and body["duplicate"] is False
    [d] = body["decisions"]
    assert (d["volume_id"], d["action"], d["outcome"]) == ("vvol-1", "attach", "done")
    assert d["device"].startswith("/dev/")
    lease = parse_rfc3339(d["lease_expires_at"])
    assert before + timedelta(seconds=880) <= lease <= datetime.now(timezone.utc) + timedelta(seconds=905)

    inst = instance_of("vm-1")
    [att] = live_attachments("vvol-1")
    assert att["InstanceId"] == inst["InstanceId"] and att["Device"] == d["device"]
    assert managed_volumes()["vvol-1"]["AvailabilityZone"] == inst["Placement"]["AvailabilityZone"]
    assert attached_volume_ids() == {"vvol-1"}  # nothing of vm-2..vm-5
    item = policy_item("vvol-1")
    assert item.attached and item.instance_id == inst["InstanceId"] and item.device == d["device"]
    # a done attach names the provider's volume, so that a host can find the device
    assert d["provider_volume_id"] == managed_volumes()["vvol-1"]["VolumeId"] == item.provider_volume_id
    # the repeat answers the same, provider id included
    code, again = webhook.send("vm.preboot", "vm-1", event_id=body["event_id"])
    assert code == 200 and again["duplicate"] is True and again["decisions"][0]["provider_volume_id"] == d["provider_volume_id"]

    # vm.booted detaches it again (detach_on: postboot); the volume stays at the provider
    code, body = webhook.send("vm.booted", "vm-1")
    assert code == 200
    assert [(d["volume_id"], d["action"], d["outcome"]) for d in body["decisions"]] == [("vvol-1", "detach", "done")]
    assert attached_volume_ids() == set() and "vvol-1" in managed_volumes()
    assert policy_item("vvol-1").attached is False


def test_vm_shutdown_detaches_a_volume_that_survived_booted(webhook):
    assert webhook.send("vm.preboot", "vm-2")[0] == 200
    code, body = webhook.send("vm.booted", "vm-2")
    assert code == 200 and body["decisions"] == []
    assert attached_volume_ids() == {"vvol-2"}
    code, body = webhook.send("vm.shutdown", "vm-2")
    assert code == 200
    assert [(d["volume_id"], d["action"], d["outcome"]) for d in body["decisions"]] == [("vvol-2", "detach", "done")]
    assert attached_volume_ids() == set() and policy_item("vvol-2").attached is False


def test_app_started_attaches_only_that_apps_volume_and_app_stopped_detaches_it(webhook):
    code, body = webhook.send("app.started", "vm-4", app="A1")
    assert code == 200
    assert [(d["volume_id"], d["action"], d["outcome"]) for d in body["decisions"]] == [("vvol-4", "attach", "done")]
    assert attached_volume_ids() == {"vvol-4"}
    assert live_attachments("vvol-4")[0]["InstanceId"] == instance_of("vm-4")["InstanceId"]
    code, body = webhook.send("app.stopped", "vm-4", app="A1")
    assert code == 200
    assert [(d["volume_id"], d["action"], d["outcome"]) for d in body["decisions"]] == [("vvol-4", "detach", "done")]
    assert attached_volume_ids() == set()


def test_license_check_attaches_the_license_volume_and_license_verified_detaches_it(webhook, aws):
    add_policies(aws, """
volumes:
  - {volume_id: vvol-lic, vm_id: vm-3, host_id: host-1, storage_array: S1, size_mb: 10,
     attach_on: license_check, detach_on: license_verified, app: L1}
""")
    code, body = webhook.send("license.check", "vm-3", app="L1")
    assert code == 200
    assert [(d["volume_id"], d["action"], d["outcome"]) for d in body["decisions"]] == [("vvol-lic", "attach", "done")]
    assert attached_volume_ids() == {"vvol-lic"}
    assert live_attachments("vvol-lic")[0]["InstanceId"] == instance_of("vm-3")["InstanceId"]
    code, body = webhook.send("license.verified", "vm-3", app="L1")
    assert code == 200
    assert [(d["volume_id"], d["action"], d["outcome"]) for d in body["decisions"]] == [("vvol-lic", "detach", "done")]
    assert attached_volume_ids() == set()


REQUEST_VOLUME = """
volumes:
  - {volume_id: vvol-req, vm_id: vm-1, host_id: host-1, storage_array: S1, size_mb: 10,
     attach_on: request, detach_on: request, password: s3cret}
"""


def test_attach_request_with_the_right_password_attaches_and_detach_request_detaches(webhook, aws):
    add_policies(aws, REQUEST_VOLUME)
    code, body = webhook.send("volume.attach_request", "vm-1", volume_id="vvol-req", password="s3cret")
    assert code == 200
    [d] = body["decisions"]
    assert (d["volume_id"], d["action"], d["outcome"]) == ("vvol-req", "attach", "done") and d["device"]
    assert attached_volume_ids() == {"vvol-req"}
    assert live_attachments("vvol-req")[0]["InstanceId"] == instance_of("vm-1")["InstanceId"]
    code, body = webhook.send("volume.detach_request", "vm-1", volume_id="vvol-req")
    assert code == 200
    assert [(d["volume_id"], d["action"], d["outcome"]) for d in body["decisions"]] == [("vvol-req", "detach", "done")]
    assert attached_volume_ids() == set() and policy_item("vvol-req").attached is False


def test_attach_request_with_a_wrong_password_is_denied_bad_password_attaches_nothing_and_fewer_than_5_in_a_row_do_not_lock(
        webhook, aws):
    add_policies(aws, REQUEST_VOLUME)
    for pw in ("wrong", None):  # a wrong one, and none at all
        fields = {"password": pw} if pw else {}
        code, body = webhook.send("volume.attach_request", "vm-1", volume_id="vvol-req", **fields)
        assert code == 200
        [d] = body["decisions"]
        assert (d["volume_id"], d["action"], d["outcome"], d["reason"]) == ("vvol-req", "attach", "denied", "bad_password")
        assert "device" not in d and "lease_expires_at" not in d
    assert "vvol-req" not in managed_volumes() and attached_volume_ids() == set()
    item = policy_item("vvol-req")
    assert item.attached is False and item.failed_passwords == 2
    # the right one attaches and resets the count: wrong ones that are not 5 in a row never lock
    assert webhook.send("volume.attach_request", "vm-1", volume_id="vvol-req", password="s3cret")[1]["decisions"][0][
        "outcome"] == "done"
    assert webhook.send("volume.detach_request", "vm-1", volume_id="vvol-req")[0] == 200
    for _ in range(4):
        assert webhook.send("volume.attach_request", "vm-1", volume_id="vvol-req", password="x")[1]["decisions"][0][
            "reason"] == "bad_password"
    code, body = webhook.send("volume.attach_request", "vm-1", volume_id="vvol-req", password="s3cret")
    assert code == 200 and body["decisions"][0]["outcome"] == "done", body
    assert attached_volume_ids() == {"vvol-req"}


def test_five_wrong_passwords_in_a_row_lock_the_volume_for_15_minutes_even_against_the_right_one(webhook, aws):
    add_policies(aws, REQUEST_VOLUME)
    for _ in range(5):
        code, body = webhook.send("volume.attach_request", "vm-1", volume_id="vvol-req", password="wrong")
        assert code == 200 and body["decisions"][0]["outcome"] == "denied"
        assert body["decisions"][0]["reason"] == "bad_password"
    locked_until = policy_item("vvol-req").locked_until
    assert locked_until is not None
    expected = datetime.now(timezone.utc) + timedelta(minutes=15)
    assert abs((locked_until - expected).total_seconds()) < 60
    for pw in ("s3cret", "wrong", "s3cret"):
        code, body = webhook.send("volume.attach_request", "vm-1", volume_id="vvol-req", password=pw)
        assert code == 200
        assert [(d["outcome"], d["reason"]) for d in body["decisions"]] == [("denied", "locked")]
    assert attached_volume_ids() == set() and "vvol-req" not in managed_volumes()


INVENTORY_VOLUME = """
volumes:
  - {volume_id: vvol-k, vm_id: vm-1, host_id: host-1, storage_array: S1, size_mb: 10,
     attach_on: request, detach_on: request, min_key_bits: 256}
"""


def test_guest_inventory_selects_qualifying_disk_encryption_strongest_first_and_denies_when_none_qualifies(
        webhook, aws):
    add_policies(aws, INVENTORY_VOLUME)
    before = snapshot()
    apps = [{"name": "bitlocker", "type": DISK_ENC, "key_bits": 128},
            {"name": "luks", "type": DISK_ENC, "key_bits": 512},
            {"name": "clamav", "type": "antivirus", "key_bits": 1024},
            {"name": "veracrypt", "type": DISK_ENC, "key_bits": 256}]
    code, body = webhook.send("guest.inventory", "vm-1", apps=apps)
    assert code == 200
    got = {d["volume_id"]: (d["action"], d["outcome"], d["software"]) for d in body["decisions"]}
    assert got == {"vvol-1": ("select", "done", ["luks", "veracrypt", "bitlocker"]),  # no min_key_bits: all of them
                   "vvol-k": ("select", "done", ["luks", "veracrypt"])}               # min_key_bits 256
    assert snapshot()["provider"] == before["provider"] and attached_volume_ids() == set()

    # none qualifying for a volume: that volume's selection is denied
    code, body = webhook.send("guest.inventory", "vm-1", apps=[{"name": "bitlocker", "type": DISK_ENC, "key_bits": 128},
                                                               {"name": "clamav", "type": "antivirus", "key_bits": 4096}])
    assert code == 200
    got = {d["volume_id"]: d for d in body["decisions"]}
    assert (got["vvol-1"]["outcome"], got["vvol-1"]["software"]) == ("done", ["bitlocker"])
    assert got["vvol-k"]["action"] == "select" and got["vvol-k"]["outcome"] == "denied" and got["vvol-k"]["reason"]
    code, body = webhook.send("guest.inventory", "vm-1", apps=[{"name": "clamav", "type": "antivirus", "key_bits": 4096}])
    assert code == 200
    assert {d["volume_id"]: (d["action"], d["outcome"]) for d in body["decisions"]} == {
        "vvol-1": ("select", "denied"), "vvol-k": ("select", "denied")}
    assert attached_volume_ids() == set()


def test_an_event_matching_no_volume_answers_200_with_no_decisions_and_changes_nothing(vm1_attached):
    before = snapshot()
    for type_, vm, extra in (("vm.booted", "vm-4", {}),           # vm-4 has no postboot volume
                             ("app.started", "vm-4", {"app": "A2"}),  # A2's volume is vm-5's
                             ("license.check", "vm-1", {"app": "L9"}),
                             ("vm.preboot", "vm-99", {})):          # a VM without any policy
        code, body = vm1_attached.send(type_, vm, **extra)
        assert code == 200 and body["decisions"] == [] and body["duplicate"] is False, (type_, body)
    assert snapshot()["provider"] == before["provider"]
    assert attached_volume_ids() == {"vvol-1"}


def test_a_repeated_event_id_with_the_same_body_returns_the_first_answer_as_duplicate_and_does_not_attach_again(
        webhook, monkeypatch):
    from vvolguard.adapters.provider import EbsProvider

    calls = []
    real_attach = EbsProvider.attach

    def counting_attach(self, *a, **kw):
        calls.append(a)
        return real_attach(self, *a, **kw)

    monkeypatch.setattr(EbsProvider, "attach", counting_attach)
    raw = body_of(event_id="boot-42", type="vm.preboot", vm_id="vm-1")
    code, first = sign_raw(webhook, raw)
    assert code == 200 and first["duplicate"] is False and first["decisions"][0]["outcome"] == "done"
    assert len(calls) == 1
    state = snapshot()
    code, again = sign_raw(webhook, raw)  # freshly signed, same bytes
    assert code == 200 and again["duplicate"] is True
    assert {**again, "duplicate": False} == first
    assert len(calls) == 1 and snapshot() == state


# ---------------------------------------------------------------- section 4: the error table


def test_a_body_that_is_not_json_is_refused_400_invalid_json_and_writes_nothing(vm1_attached):
    before = snapshot()
    for raw, b64 in ((b"not json", False), (b'{"event_id": "x", ', False),
                     (b'{"event_id": "x\xff\xfe", "type": "vm.booted", "vm_id": "vm-1"}', True)):  # not UTF-8
        assert_error(vm1_attached.raw(raw, vm1_attached.signed_headers(raw), b64=b64), 400, "invalid_json")
        assert snapshot() == before


def test_a_body_that_is_not_a_valid_event_is_refused_400_invalid_event_and_writes_nothing(vm1_attached):
    before = snapshot()
    for raw in (json.dumps([{"event_id": "e1", "type": "vm.booted", "vm_id": "vm-1"}]).encode(),  # an array
                body_of(event_id="e1", type="vm.booted"),                              # missing vm_id
                body_of(event_id="e1", type="vm.booted", vm_id="vm-1", color="red"),   # unknown field
                body_of(event_id="e1", type="vm.booted", vm_id="vm-1", app="A1")):     # out-of-place field
        assert_error(sign_raw(vm1_attached, raw), 400, "invalid_event")
        assert snapshot() == before


def test_a_request_missing_a_signature_header_is_refused_401_missing_signature_and_writes_nothing(vm1_attached):
    before = snapshot()
    raw = body_of(event_id="e1", type="vm.booted", vm_id="vm-1")
    headers = vm1_attached.signed_headers(raw)
    for drop in ("x-vvg-host", "x-vvg-signature"):
        assert_error(vm1_attached.raw(raw, {k: v for k, v in headers.items() if k != drop}), 401, "missing_signature")
        assert snapshot() == before


def test_a_malformed_or_wrong_signature_is_refused_401_bad_signature_and_writes_nothing(vm1_attached):
    before = snapshot()
    raw = body_of(event_id="e1", type="vm.booted", vm_id="vm-1")
    good = vm1_attached.signed_headers(raw)
    t = int(time.time())
    for sig in ("garbage", f"t={t}", f"t={t},v1=abc", f"v1={'0' * 64}",
                good["x-vvg-signature"].upper().replace("T=", "t=").replace("V1=", "v1=")):  # upper-case hex
        assert_error(vm1_attached.raw(raw, {**good, "x-vvg-signature": sig}), 401, "bad_signature")
    assert_error(sign_raw(vm1_attached, raw, secret="not-the-secret"), 401, "bad_signature")
    changed = body_of(event_id="e1", type="vm.booted", vm_id="vm-3")  # body changed after signing
    assert_error(vm1_attached.raw(changed, good), 401, "bad_signature")
    assert snapshot() == before


def test_a_signature_more_than_300_s_off_is_refused_401_stale_signature_and_writes_nothing(vm1_attached):
    before = snapshot()
    raw = body_of(event_id="e1", type="vm.booted", vm_id="vm-1")
    for offset in (-301, +301):
        assert_error(sign_raw(vm1_attached, raw, t=int(time.time()) + offset), 401, "stale_signature")
        assert snapshot() == before
    code, body = sign_raw(vm1_attached, raw, t=int(time.time()) - 200)  # inside the tolerance: accepted
    assert code == 200 and body["decisions"][0]["outcome"] == "done"


def test_a_host_that_is_not_enrolled_is_refused_401_unknown_host_and_writes_nothing_not_even_audit(vm1_attached, aws):
    wh = vm1_attached
    before, n = snapshot(), len(audit_records(aws))
    raw = body_of(event_id="e1", type="vm.booted", vm_id="vm-1")
    assert_error(sign_raw(wh, raw, host_id="host-nope"), 401, "unknown_host")
    assert_error(sign_raw(wh, raw, host_id="host-nope", secret=wh.secret), 401, "unknown_host")  # even with host-1's secret
    assert_error(sign_raw(wh, b"not json", host_id="host-nope"), 401, "unknown_host")  # auth before the body
    assert_error(wh.raw(raw, {"x-vvg-signature": wh.signed_headers(raw)["x-vvg-signature"]}), 401, "missing_signature")
    assert snapshot() == before
    assert len(audit_records(aws)) == n  # an unknown host writes no audit record


def test_a_revoked_host_is_refused_401_unknown_host_and_writes_nothing(vm1_attached, aws):
    from vvolguard.services.hosts import HostService

    HostService(aws).revoke("host-1")
    before = snapshot()
    for type_ in ("vm.booted", "vm.shutdown", "vm.preboot"):
        assert_error(vm1_attached.send(type_, "vm-1"), 401, "unknown_host")
        assert snapshot() == before
    assert attached_volume_ids() == set()  # the revocation detached it; no refused preboot attached it again


def test_a_revoked_host_is_refused_401_before_its_body_is_looked_at(vm1_attached, aws):
    from vvolguard.services.hosts import HostService

    HostService(aws).revoke("host-1")
    before = snapshot()
    results = [sign_raw(vm1_attached, b"not json"),
               vm1_attached.send("volume.detach_request", "vm-1", volume_id="vvol-2")]
    assert snapshot() == before
    for r in results:
        assert_error(r, 401, "unknown_host")


def test_after_rotation_the_old_secret_is_refused_bad_signature_and_the_new_one_accepted(webhook, aws):
    from vvolguard.services.hosts import HostService

    old = webhook.secret
    new = HostService(aws).rotate("host-1")["secret"]
    assert new != old
    before = snapshot()
    assert_error(webhook.send("vm.preboot", "vm-1", secret=old), 401, "bad_signature")
    assert snapshot() == before
    code, body = webhook.send("vm.preboot", "vm-1", secret=new)
    assert code == 200 and body["decisions"][0]["outcome"] == "done"
    assert attached_volume_ids() == {"vvol-1"}


def test_after_rotation_in_a_warm_container_the_old_secret_is_refused_bad_signature(vm1_attached, aws):
    from vvolguard.services.hosts import HostService

    HostService(aws).rotate("host-1")
    before = snapshot()
    r = vm1_attached.send("vm.booted", "vm-1")  # the old secret, on a host record cached by the fixture's preboot
    assert snapshot() == before
    assert_error(r, 401, "bad_signature")


def test_another_enrolled_host_sending_for_a_vm_is_refused_403_forbidden_and_writes_nothing(vm1_attached, aws):
    secret2 = enroll(aws, "host-2")
    before = snapshot()
    for type_, extra in (("vm.booted", {}), ("vm.shutdown", {}), ("vm.preboot", {}),
                         ("volume.detach_request", {"volume_id": "vvol-1"})):
        assert_error(vm1_attached.send(type_, "vm-1", host_id="host-2", secret=secret2, **extra), 403, "forbidden")
        assert snapshot() == before
    assert attached_volume_ids() == {"vvol-1"}


def test_a_volume_event_naming_a_volume_that_is_not_the_vms_is_refused_404_not_found_and_writes_nothing(vm1_attached, aws):
    add_policies(aws, REQUEST_VOLUME)
    assert vm1_attached.send("vm.preboot", "vm-2")[0] == 200  # vvol-2 attached to vm-2
    before = snapshot()
    for type_, vid, extra in (("volume.attach_request", "vvol-2", {}),       # vm-2's volume
                              ("volume.detach_request", "vvol-2", {}),
                              ("volume.attach_request", "vvol-none", {"password": "s3cret"}),  # no such volume
                              ("volume.detach_request", "vvol-none", {})):
        assert_error(vm1_attached.send(type_, "vm-1", volume_id=vid, **extra), 404, "not_found")
        assert snapshot() == before
    # vm-1's own volume named under another VM
    assert_error(vm1_attached.send("volume.detach_request", "vm-3", volume_id="vvol-1"), 404, "not_found")
    assert snapshot() == before
    assert attached_volume_ids() == {"vvol-1", "vvol-2"}


def test_an_event_id_reused_with_another_body_is_refused_409_event_conflict_and_writes_nothing(vm1_attached):
    code, first = vm1_attached.send("vm.booted", "vm-4", event_id="reused-1")
    assert code == 200 and first["decisions"] == []
    before = snapshot()
    assert_error(vm1_attached.send("vm.booted", "vm-1", event_id="reused-1"), 409, "event_conflict")
    assert snapshot() == before and attached_volume_ids() == {"vvol-1"}
    # the first answer stays the event's answer
    code, again = vm1_attached.send("vm.booted", "vm-4", event_id="reused-1")
    assert code == 200 and again["duplicate"] is True and again["decisions"] == []


def padded(fields: dict, size: int) -> bytes:
    """A valid event body of exactly ``size`` bytes (JSON whitespace before the closing brace)."""
    raw = json.dumps(fields).encode()
    out = raw[:-1] + b" " * (size - len(raw)) + b"}"
    assert len(out) == size
    return out


def test_a_body_over_64_kib_is_refused_413_payload_too_large_and_writes_nothing_but_64_kib_is_not(vm1_attached):
    before = snapshot()
    big = padded({"event_id": "big-1", "type": "vm.booted", "vm_id": "vm-1"}, 65537)
    assert_error(sign_raw(vm1_attached, big), 413, "payload_too_large")
    assert snapshot() == before
    limit = padded({"event_id": "big-1", "type": "vm.booted", "vm_id": "vm-1"}, 65536)
    code, body = sign_raw(vm1_attached, limit)
    assert code == 200 and body["decisions"][0]["outcome"] == "done", body  # and the refused event_id was free


def test_a_refused_request_does_not_use_up_its_event_id(vm1_attached, aws):
    secret2 = enroll(aws, "host-2")
    wh = vm1_attached
    cases = {
        "x-badsig": lambda: wh.send("vm.booted", "vm-4", event_id="x-badsig", secret="wrong-secret"),
        "x-stale": lambda: sign_raw(wh, body_of(event_id="x-stale", type="vm.booted", vm_id="vm-4"), t=int(time.time()) - 400),
        "x-invalid": lambda: wh.send("vm.booted", "vm-4", event_id="x-invalid", color="red"),
        "x-notfound": lambda: wh.send("volume.detach_request", "vm-4", event_id="x-notfound", volume_id="vvol-1"),
        "x-forbidden": lambda: wh.send("vm.booted", "vm-4", event_id="x-forbidden", host_id="host-2", secret=secret2),
    }
    for event_id, refused in cases.items():
        code, body = refused()
        assert code >= 400 and "error" in body, (event_id, body)
        code, body = wh.send("vm.booted", "vm-4", event_id=event_id)
        assert (code, body.get("event_id"), body.get("duplicate"), body.get("decisions")) == (200, event_id, False, []), \
            (event_id, body)
    # and one that changes state: a bad-signature preboot then the real one attaches
    assert wh.send("vm.preboot", "vm-3", event_id="x-real", secret="wrong-secret")[0] == 401
    code, body = wh.send("vm.preboot", "vm-3", event_id="x-real")
    assert code == 200 and body["duplicate"] is False and body["decisions"][0]["outcome"] == "done"
    assert attached_volume_ids() == {"vvol-1", "vvol-3"}


# ---------------------------------------------------------------- section 6: refusals in the audit history


def test_a_refusal_of_an_authenticated_host_writes_exactly_one_refuse_record_and_nothing_else(vm1_attached, aws):
    from vvolguard.adapters.audit import AuditLog

    wh = vm1_attached
    secret2 = enroll(aws, "host-2")
    wh.send("vm.booted", "vm-4", event_id="a-used")
    cases = [
        ("host-1", "invalid_json", lambda: sign_raw(wh, b"{nope")),
        ("host-1", "invalid_event", lambda: sign_raw(wh, b"[]")),
        ("host-1", "not_found", lambda: wh.send("volume.detach_request", "vm-1", volume_id="vvol-2")),
        ("host-1", "event_conflict", lambda: wh.send("vm.booted", "vm-1", event_id="a-used")),
        ("host-2", "forbidden", lambda: wh.send("vm.booted", "vm-1", host_id="host-2", secret=secret2)),
    ]
    for host_id, code_, request in cases:
        before, n = snapshot(), len(audit_records(aws))
        status, body = request()
        assert status >= 400 and body["error"]["code"] == code_, (code_, body)
        [rec] = new_audit(aws, n)
        assert (rec.action, rec.outcome, rec.reason, rec.actor) == ("refuse", "denied", code_, f"host:{host_id}"), code_
        assert snapshot() == before, code_
    assert AuditLog(aws).verify()["ok"] is True


def test_every_unauthenticated_refusal_naming_a_known_host_is_counted_not_recorded_as_the_host(vm1_attached, aws):
    """Before the sender proved it is the host, nothing speaks as host:ID: each refusal adds one to the
    host's count of the minute (docs/webhook-hardening.md), folded into one record by the reconciler."""
    from vvolguard.adapters.models import RefusalItem

    wh = vm1_attached
    raw = body_of(event_id="a-1", type="vm.booted", vm_id="vm-1")
    cases = [
        ("bad_signature", lambda: wh.raw(raw, {"x-vvg-host": "host-1", "x-vvg-signature": "t=1,v1=zz"})),
        ("bad_signature", lambda: sign_raw(wh, raw, secret="wrong")),
        ("bad_signature", lambda: wh.raw(body_of(event_id="a-1", type="vm.booted", vm_id="vm-3"), wh.signed_headers(raw))),
        ("stale_signature", lambda: sign_raw(wh, raw, t=int(time.time()) + 301)),
        ("missing_signature", lambda: wh.raw(raw, {"x-vvg-host": "host-1"})),
        ("payload_too_large", lambda: sign_raw(wh, padded({"event_id": "a-2", "type": "vm.booted", "vm_id": "vm-1"}, 65537))),
    ]
    for code_, request in cases:
        before, n = snapshot(), len(audit_records(aws))
        status, body = request()
        assert body["error"]["code"] == code_
        assert snapshot() == before
        assert new_audit(aws, n) == [], code_
    counters = [i for i in RefusalItem.scan() if i.named_host == "host-1"]  # one a minute: two if a minute turned
    assert sum(int(c.refusals) for c in counters) == len(cases)
    assert set().union(*(c.codes for c in counters)) == {c for c, _ in cases}


# ---------------------------------------------------------------- GET /v1/health


def test_health_answers_200_status_ok():
    from vvolguard.handlers.health import handler

    ev = {"version": "2.0", "routeKey": "GET /v1/health", "rawPath": "/v1/health", "headers": {},
          "isBase64Encoded": False, "requestContext": {"http": {"method": "GET", "path": "/v1/health"}}}
    r = handler(ev, None)
    assert r["statusCode"] == 200
    assert json.loads(r["body"]) == {"status": "ok"}
    assert r["headers"]["content-type"].startswith("application/json")
