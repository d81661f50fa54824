"""A provider that never leaves things half-done, and `attach_to: host` (docs/deployment-modes.md,
docs/architecture.md#the-storage-provider), against moto with faults injected through botocore event hooks.

Every test ends with the provider's state equal to the records (each managed volume attached exactly where
the state table says, and nowhere when it says detached) and `vvg audit verify` passing.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError

from tests.conftest import ec2_client, managed_volumes

FAST = dict(attempts=2, backoff=0.001, detach_wait=0.4, detach_poll=0.05)


# ---------------------------------------------------------------------------------------------- helpers


def _host_instance(host_id: str, zone: str = "us-east-1a") -> str:
    """A bare-metal hypervisor's own EC2 instance, tagged vvg:host-id."""
    out = ec2_client().run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="t3.micro",
                                     Placement={"AvailabilityZone": zone}, TagSpecifications=[
                                         {"ResourceType": "instance", "Tags": [{"Key": "vvg:host-id", "Value": host_id}]}])
    return out["Instances"][0]["InstanceId"]


def _policies():
    from vvolguard.adapters.models import PolicyItem

    return {p.volume_id: p for p in PolicyItem.scan(PolicyItem.sk.startswith("POLICY#"))}


def assert_provider_equals_records() -> None:
    """Every managed volume is attached exactly where its record says (and only there), its provider id is
    the recorded one, and no volume exists at the provider without a record."""
    vols = managed_volumes()
    items = _policies()
    for vid, vol in vols.items():
        assert vid in items, f"{vid} exists at the provider without a record"
        item = items[vid]
        assert item.provider_volume_id == vol["VolumeId"], (vid, item.provider_volume_id, vol["VolumeId"])
        atts = [(a["InstanceId"], a["State"]) for a in vol.get("Attachments", [])]
        if item.attached:
            assert atts == [(item.instance_id, "attached")], (vid, atts, item.instance_id)
        else:
            assert atts == [], (vid, atts)
        assert vol["TagMap"]["vvg:hosts"].split(",")[0] == item.host_id, (vid, vol["TagMap"])
    for vid, item in items.items():
        if item.provider_volume_id:
            assert vid in vols, f"{vid} is recorded at the provider as {item.provider_volume_id} but is gone"
        assert not item.busy_event, f"{vid} is left claimed"


def _service(webhook, **kw):
    from vvolguard.adapters.provider import EbsProvider
    from vvolguard.handlers import events as handler_module
    from vvolguard.services.events import EventService

    provider = EbsProvider(webhook.settings, **{**FAST, **kw})
    handler_module._service = EventService(webhook.settings, provider=provider)
    return provider


class Hooks:
    """botocore event hooks on vvolguard's clients (adapters.aws.add_hook registers them on every client it
    creates, the provider's assumed-role clients included); removed at teardown."""

    def __init__(self) -> None:
        self.added: list = []

    def add(self, name, fn) -> None:
        from vvolguard.adapters import aws as aws_adapter

        aws_adapter.add_hook(name, fn)
        self.added.append((name, fn))

    def close(self) -> None:
        from vvolguard.adapters import aws as aws_adapter

        for name, fn in self.added:
            aws_adapter.remove_hook(name, fn)


@pytest.fixture
def hooks():
    h = Hooks()
    yield h
    h.close()


def client_error(code: str, message: str = "injected", op: str = "AttachVolume"):
    def hook(**_):
        raise ClientError({"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": 400}}, op)

    return hook


@pytest.fixture
def hostmode(webhook, tmp_path, vvg):
    """vm-9 is a KVM guest on host-1 (attach_to: host, one preboot/postboot and one preboot/shutdown volume);
    host-1 and host-2 are bare-metal instances tagged vvg:host-id; host-2 is enrolled too."""
    from vvolguard.services.hosts import HostService

    path = tmp_path / "kvm.yaml"
    path.write_text("volumes:\n"
                    "  - {volume_id: kvm-1, vm_id: vm-9, host_id: host-1, storage_array: S1, size_mb: 10,"
                    " attach_on: preboot, detach_on: postboot, attach_to: host}\n"
                    "  - {volume_id: kvm-2, vm_id: vm-9, host_id: host-1, storage_array: S1, size_mb: 10,"
                    " attach_on: preboot, detach_on: shutdown, attach_to: host}\n")
    assert vvg("policy", "apply", str(path)).code == 0
    secret2 = HostService(webhook.settings).enroll("host-2", "02:00:00:00:00:02", "SN-2")["secret"]
    return {"host-1": _host_instance("host-1"), "host-2": _host_instance("host-2"), "secret2": secret2}


# ---------------------------------------------------------------------------------------------- attach_to: host


def test_attach_to_host_attaches_to_the_hosts_instance_and_names_the_provider_volume(webhook, hostmode, vvg):
    _service(webhook)
    code, body = webhook.send("vm.preboot", "vm-9")
    assert code == 200, body
    ds = {d["volume_id"]: d for d in body["decisions"]}
    vols = managed_volumes()
    for vid in ("kvm-1", "kvm-2"):
        assert ds[vid]["outcome"] == "done" and ds[vid]["action"] == "attach", ds
        assert ds[vid]["provider_volume_id"] == vols[vid]["VolumeId"]
        assert [a["InstanceId"] for a in vols[vid]["Attachments"]] == [hostmode["host-1"]]
    assert_provider_equals_records()

    code, body = webhook.send("vm.booted", "vm-9")
    assert code == 200 and [(d["volume_id"], d["outcome"]) for d in body["decisions"]] == [("kvm-1", "done")], body
    assert managed_volumes()["kvm-1"]["State"] == "available"
    assert_provider_equals_records()
    assert vvg("audit", "verify").code == 0


def test_attach_to_host_without_a_host_instance_fails_with_a_reason_and_leaves_nothing(webhook, vvg, tmp_path):
    _service(webhook)
    path = tmp_path / "kvm.yaml"
    path.write_text("volumes:\n  - {volume_id: kvm-1, vm_id: vm-9, host_id: host-1, storage_array: S1, size_mb: 10,"
                    " attach_on: preboot, detach_on: postboot, attach_to: host}\n")
    assert vvg("policy", "apply", str(path)).code == 0
    code, body = webhook.send("vm.preboot", "vm-9")
    assert code == 200, body
    [d] = body["decisions"]
    assert (d["outcome"], d["reason"]) == ("failed", "instance_not_found") and "provider_volume_id" not in d
    assert "kvm-1" not in managed_volumes()
    assert_provider_equals_records()
    assert vvg("audit", "verify").code == 0


def test_a_live_migration_moves_the_attachment_to_the_destination_hosts_instance(webhook, hostmode, vvg):
    from vvolguard.handlers import events as handler_module

    _service(webhook)
    assert webhook.send("vm.preboot", "vm-9")[0] == 200
    code, body = webhook.send("vm.migrate.start", "vm-9", destination_host="host-2")
    assert code == 200 and {d["outcome"] for d in body["decisions"]} == {"done"}, body
    assert managed_volumes()["kvm-1"]["TagMap"]["vvg:hosts"] == "host-1,host-2"

    code, body = webhook.send("vm.migrate.complete", "vm-9", host_id="host-2", secret=hostmode["secret2"],
                              source_host="host-1")
    assert code == 200 and {d["outcome"] for d in body["decisions"]} == {"done"}, body
    vols = managed_volumes()
    for vid in ("kvm-1", "kvm-2"):
        assert [a["InstanceId"] for a in vols[vid]["Attachments"]] == [hostmode["host-2"]], vid
        assert vols[vid]["TagMap"]["vvg:hosts"] == "host-2"
    items = _policies()
    assert items["kvm-1"].instance_id == hostmode["host-2"] and items["kvm-1"].host_id == "host-2"
    assert_provider_equals_records()
    # The destination now detaches as the VM's host.
    handler_module._service.provider.forget("host-2")
    code, body = webhook.send("vm.shutdown", "vm-9", host_id="host-2", secret=hostmode["secret2"])
    assert code == 200 and {d["outcome"] for d in body["decisions"]} == {"done"}, body
    assert_provider_equals_records()
    assert vvg("audit", "verify").code == 0


def test_a_refused_move_at_migration_complete_leaves_the_volume_on_the_source(webhook, hostmode, vvg, hooks):
    _service(webhook)
    assert webhook.send("vm.preboot", "vm-9")[0] == 200
    assert webhook.send("vm.migrate.start", "vm-9", destination_host="host-2")[0] == 200
    refuse = client_error("IncorrectState", "instance is not running")

    def at_destination(params, **kw):  # the destination's instance refuses; putting it back on the source works
        if (params.get("body") or {}).get("InstanceId") == hostmode["host-2"]:
            refuse()

    hooks.add("before-call.ec2.AttachVolume", at_destination)
    code, body = webhook.send("vm.migrate.complete", "vm-9", host_id="host-2", secret=hostmode["secret2"],
                              source_host="host-1")
    assert code == 200, body
    assert {(d["outcome"], d.get("reason")) for d in body["decisions"]} == {("failed", "incorrect_state")}, body
    vols = managed_volumes()
    for vid in ("kvm-1", "kvm-2"):  # detached from the source, refused at the destination, put back
        assert [a["InstanceId"] for a in vols[vid]["Attachments"]] == [hostmode["host-1"]], vid
    assert _policies()["kvm-1"].host_id == "host-1"
    assert_provider_equals_records()
    assert vvg("audit", "verify").code == 0


# ---------------------------------------------------------------------------------------------- faults


@pytest.mark.parametrize("code,message,reason", [
    ("InvalidInstanceID.NotFound", "The instance ID 'i-1' does not exist", "instance_not_found"),
    ("InvalidParameterValue", "Invalid value '/dev/sdf' for unixDevice. Attachment point /dev/sdf is already in use",
     "device_in_use"),
    ("InvalidVolume.ZoneMismatch", "The volume is not in the same availability zone as instance", "wrong_zone"),
    ("IncorrectState", "vol-1 is not 'available'.", "incorrect_state"),
    ("InvalidVolume.NotFound", "The volume 'vol-1' does not exist.", "volume_not_found"),
])
def test_a_non_transient_attach_error_is_a_failed_decision_and_the_event_is_undone(webhook, hooks, vvg, code, message,
                                                                                   reason):
    _service(webhook)
    hooks.add("before-call.ec2.AttachVolume", client_error(code, message))
    status, body = webhook.send("vm.preboot", "vm-1", event_id="ev-refused")
    assert status == 200, body
    [d] = body["decisions"]
    assert (d["volume_id"], d["action"], d["outcome"], d["reason"]) == ("vvol-1", "attach", "failed", reason)
    assert "provider_volume_id" not in d and "device" not in d
    assert "vvol-1" not in managed_volumes()  # the volume this event created for the attach is deleted again
    item = _policies()["vvol-1"]
    assert not item.attached and item.provider_volume_id is None
    assert_provider_equals_records()
    assert vvg("audit", "verify").code == 0
    # Nothing is half-done: once EC2 accepts again, the same VM boots normally.
    hooks.close()
    hooks.added.clear()
    status, body = webhook.send("vm.preboot", "vm-1")
    assert status == 200 and body["decisions"][0]["outcome"] == "done", body
    assert_provider_equals_records()


def test_a_non_transient_error_on_an_existing_volume_keeps_it_recorded(webhook, hooks, vvg):
    _service(webhook)
    assert webhook.send("vm.created", "vm-2")[0] == 200
    hooks.add("before-call.ec2.AttachVolume", client_error("IncorrectState", "vol is busy"))
    status, body = webhook.send("vm.preboot", "vm-2")
    assert status == 200 and body["decisions"][0]["reason"] == "incorrect_state", body
    assert "vvol-2" in managed_volumes() and _policies()["vvol-2"].provider_volume_id  # created earlier: kept
    assert_provider_equals_records()
    assert vvg("audit", "verify").code == 0


def test_a_transient_error_is_still_retried_and_then_503(webhook, hooks, vvg):
    _service(webhook)
    hooks.add("before-call.ec2.AttachVolume", client_error("RequestLimitExceeded"))
    status, body = webhook.send("vm.preboot", "vm-1")
    assert status == 503 and body["error"]["code"] == "provider_unavailable", body
    assert_provider_equals_records()
    assert vvg("audit", "verify").code == 0


class StuckDetach:
    """EC2 accepts DetachVolume but the volume stays `detaching` (what a busy guest does): the accepted call
    is answered without reaching the emulation, and DescribeVolumes shows the attachment as `detaching`.
    A forced detach goes through."""

    def __init__(self) -> None:
        self.stuck: set[str] = set()
        self.forced: list[str] = []

    def before_detach(self, params, **_):
        body = params.get("body") or {}
        vol = body.get("VolumeId")
        if str(body.get("Force", "")).lower() == "true":
            self.forced.append(vol)
            self.stuck.discard(vol)
            return None
        self.stuck.add(vol)
        return AWSResponse("https://ec2.us-east-1.amazonaws.com/", 200, {}, None), {
            "VolumeId": vol, "State": "detaching", "ResponseMetadata": {"HTTPStatusCode": 200}}

    def after_describe(self, parsed, **_):
        for vol in parsed.get("Volumes", []):
            if vol["VolumeId"] in self.stuck:
                for att in vol.get("Attachments", []):
                    att["State"] = "detaching"


def test_a_detach_waits_for_available_and_one_stuck_detaching_is_forced_by_the_reconciler(webhook, hooks, vvg):
    from vvolguard.adapters.provider import EbsProvider
    from vvolguard.services.reconcile import Reconciler

    _service(webhook)
    assert webhook.send("vm.preboot", "vm-1")[0] == 200
    fault = StuckDetach()
    hooks.add("before-call.ec2.DetachVolume", fault.before_detach)
    hooks.add("after-call.ec2.DescribeVolumes", fault.after_describe)

    status, body = webhook.send("vm.booted", "vm-1", event_id="ev-stuck")
    assert status == 503 and body["error"]["code"] == "provider_unavailable", body  # not finished: not recorded
    vol = managed_volumes()["vvol-1"]
    # (the test's own client sees the emulation without the fault: still attached there)
    assert vol["VolumeId"] in fault.stuck and "vvg:detaching-since" in vol["TagMap"]
    item = _policies()["vvol-1"]
    assert item.attached and not item.busy_event  # still recorded attached; the claim is released

    rec = Reconciler(webhook.settings, provider=EbsProvider(webhook.settings, **FAST))
    out = rec.run(now=datetime.now(timezone.utc) + timedelta(seconds=10))
    assert out["stuck_detaches_forced"] == 0 and fault.forced == []  # not 60 s yet
    out = rec.run(now=datetime.now(timezone.utc) + timedelta(seconds=61))
    assert out["stuck_detaches_forced"] == 1 and fault.forced == [vol["VolumeId"]], out
    vol = managed_volumes()["vvol-1"]
    assert vol["State"] == "available" and "vvg:detaching-since" not in vol["TagMap"]
    assert not _policies()["vvol-1"].attached
    recs = [json.loads(line) for line in vvg("audit", "list", "--vm", "vm-1").out.splitlines() if line.strip()]
    assert [r for r in recs if r["reason"] == "stuck_detaching" and r["actor"] == "reconciler"]
    assert_provider_equals_records()
    assert vvg("audit", "verify").code == 0


def test_a_volume_first_seen_detaching_is_marked_and_forced_only_60_s_later(webhook, hooks, vvg):
    from vvolguard.adapters.provider import EbsProvider
    from vvolguard.services.reconcile import Reconciler

    _service(webhook)
    assert webhook.send("vm.preboot", "vm-2")[0] == 200
    fault = StuckDetach()
    hooks.add("before-call.ec2.DetachVolume", fault.before_detach)
    hooks.add("after-call.ec2.DescribeVolumes", fault.after_describe)
    fault.stuck.add(managed_volumes()["vvol-2"]["VolumeId"])  # someone else's detach, never tagged by us
    rec = Reconciler(webhook.settings, provider=EbsProvider(webhook.settings, **FAST))
    t0 = datetime.now(timezone.utc)
    assert rec.run(now=t0)["stuck_detaches_forced"] == 0
    assert "vvg:detaching-since" in managed_volumes()["vvol-2"]["TagMap"]
    assert rec.run(now=t0 + timedelta(seconds=30))["stuck_detaches_forced"] == 0
    assert rec.run(now=t0 + timedelta(seconds=75))["stuck_detaches_forced"] == 1
    assert_provider_equals_records()
    assert vvg("audit", "verify").code == 0


# ---------------------------------------------------------------------------------------------- host_id moves


def _apply_host(vvg, tmp_path, host: str):
    path = tmp_path / "move.yaml"
    path.write_text("volumes:\n  - {volume_id: vvol-2, vm_id: vm-2, host_id: %s, storage_array: S1, size_mb: 100,"
                    " attach_on: preboot, detach_on: shutdown, os_disk_encryption: true}\n" % host)
    return vvg("policy", "apply", str(path))


def test_a_host_id_change_moves_vvg_hosts_in_the_same_command(webhook, vvg, tmp_path):
    from vvolguard.services.hosts import HostService

    _service(webhook)
    assert webhook.send("vm.created", "vm-2")[0] == 200
    HostService(webhook.settings).enroll("host-2", "02:00:00:00:00:02", "SN-2")
    r = _apply_host(vvg, tmp_path, "host-2")
    assert r.code == 0, r
    assert managed_volumes()["vvol-2"]["TagMap"]["vvg:hosts"] == "host-2"
    assert _policies()["vvol-2"].host_id == "host-2"
    assert_provider_equals_records()
    assert vvg("audit", "verify").code == 0


def test_a_host_id_change_the_provider_refuses_applies_nothing(webhook, vvg, tmp_path, hooks):
    _service(webhook)
    assert webhook.send("vm.created", "vm-2")[0] == 200
    hooks.add("before-call.ec2.CreateTags", client_error("InvalidVolume.NotFound", op="CreateTags"))
    before = vvg("audit", "list").out
    r = _apply_host(vvg, tmp_path, "host-2")
    assert r.code != 0 and "refused" in r.err and "vvol-2" in r.err, r
    assert managed_volumes()["vvol-2"]["TagMap"]["vvg:hosts"] == "host-1"
    assert _policies()["vvol-2"].host_id == "host-1"
    assert vvg("audit", "list").out == before  # nothing applied, nothing audited
    assert_provider_equals_records()
    assert vvg("audit", "verify").code == 0


def test_a_host_id_change_whose_write_fails_puts_vvg_hosts_back(webhook, vvg, tmp_path, monkeypatch):
    from vvolguard.errors import ConcurrentModification
    from vvolguard.services.hosts import HostService
    from vvolguard.services.policies import PolicyService

    _service(webhook)
    assert webhook.send("vm.created", "vm-2")[0] == 200
    HostService(webhook.settings).enroll("host-2", "02:00:00:00:00:02", "SN-2")

    def lost(self, batches):
        raise ConcurrentModification("changed meanwhile")

    monkeypatch.setattr(PolicyService, "_commit", lost)
    r = _apply_host(vvg, tmp_path, "host-2")
    assert r.code != 0, r
    assert managed_volumes()["vvol-2"]["TagMap"]["vvg:hosts"] == "host-1"
    assert _policies()["vvol-2"].host_id == "host-1"
    assert_provider_equals_records()


def test_the_dashboards_save_path_moves_vvg_hosts_too(webhook, vvg, hooks):
    """PolicyService.save_one (the dashboard's create/edit) moves the tag like apply, and a refusal saves nothing."""
    from dataclasses import replace

    from vvolguard.adapters.provider import EbsProvider
    from vvolguard.errors import Conflict
    from vvolguard.services.hosts import HostService
    from vvolguard.services.policies import PolicyService, item_to_spec

    _service(webhook)
    assert webhook.send("vm.created", "vm-2")[0] == 200
    HostService(webhook.settings).enroll("host-2", "02:00:00:00:00:02", "SN-2")
    svc = PolicyService(webhook.settings, provider=EbsProvider(webhook.settings, **FAST))
    item = svc.get("vvol-2")
    spec = replace(item_to_spec(item), host_id="host-2")
    hooks.add("before-call.ec2.CreateTags", client_error("IncorrectState", op="CreateTags"))
    with pytest.raises(Conflict):
        svc.save_one(spec, "user:eddie", int(item.policy_version))
    assert svc.get("vvol-2").host_id == "host-1"
    assert managed_volumes()["vvol-2"]["TagMap"]["vvg:hosts"] == "host-1"
    hooks.close()
    hooks.added.clear()
    assert svc.save_one(spec, "user:eddie", int(item.policy_version)) == "updated"
    assert svc.get("vvol-2").host_id == "host-2"
    assert managed_volumes()["vvol-2"]["TagMap"]["vvg:hosts"] == "host-2"
    assert_provider_equals_records()
    assert vvg("audit", "verify").code == 0
