"""The reconciler's repairs of what a process that died mid-way leaves (docs/crash-safety.md), one by one under
mock_aws; tests/test_crash_safety.py walks every crash point against a moto server."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import all_audit_records, ec2_client, managed_volumes
from vvolguard.adapters import aws
from vvolguard.adapters.audit import AuditLog
from vvolguard.adapters.models import ClaimItem, EventItem, PolicyItem
from vvolguard.domain.engine import BUSY_SECONDS
from vvolguard.services.policies import PolicyService
from vvolguard.services.reconcile import Reconciler


class _Died(BaseException):
    """The process dying: nothing catches it, nothing is undone, no answer is stored."""


def _die_before(webhook, call: str, *send_args, **send_kw) -> None:
    def die(**_):
        raise _Died()

    aws.add_hook(f"before-call.ec2.{call}", die)
    try:
        with pytest.raises(_Died):
            webhook.send(*send_args, **send_kw)
    finally:
        aws.remove_hook(f"before-call.ec2.{call}", die)


def _item(volume_id: str) -> PolicyItem:
    return PolicyService.__new__(PolicyService).get(volume_id)


def _records(settings, reason: str) -> list:
    return [r for r in all_audit_records() if r.actor == "reconciler" and r.reason == reason]


def _later(seconds: float = BUSY_SECONDS + 5) -> datetime:
    return datetime.now(timezone.utc) + timedelta(seconds=seconds)


def test_died_after_create_before_attach__claim_released_volume_recorded_event_id_usable_again(webhook):
    _die_before(webhook, "AttachVolume", "vm.preboot", "vm-1", event_id="p-1")
    assert _item("vvol-1").busy_event == "host-1/p-1" and _item("vvol-1").provider_volume_id is None
    assert EventItem.get("host-1/p-1").status == "in_progress"
    created = managed_volumes()["vvol-1"]["VolumeId"]

    early = Reconciler(webhook.settings).run(now=_later(5))  # within the claim's lease: left to the event
    assert early["claims_released"] == 0 and early["volumes_recorded"] == 0, early
    assert _item("vvol-1").busy_event == "host-1/p-1"

    summary = Reconciler(webhook.settings).run(now=_later())
    assert summary["claims_released"] == 1 and summary["volumes_recorded"] == 1 and summary["ok"], summary
    item = _item("vvol-1")
    assert item.busy_event is None and item.busy_until is None and item.provider_volume_id == created
    assert item.attached is False
    assert EventItem.get("host-1/p-1").status == "failed"
    assert list(ClaimItem.scan()) == []
    rel = _records(webhook.settings, "claim_expired")
    assert [(r.action, r.volume_id, r.event_id, r.host_id) for r in rel] == [("release", "vvol-1", "p-1", "host-1")]
    assert [(r.action, r.volume_id) for r in _records(webhook.settings, "unrecorded_volume")] == \
        [("state_corrected", "vvol-1")]
    assert AuditLog(webhook.settings).verify()["ok"]
    # The host sends the same event again: it is carried out, on the recorded volume (no second one).
    code, body = webhook.send("vm.preboot", "vm-1", event_id="p-1")
    assert code == 200 and body["decisions"][0]["outcome"] == "done", body
    assert managed_volumes()["vvol-1"]["VolumeId"] == created and _item("vvol-1").attached is True


def test_a_finished_event_leaves_no_claim_marker(webhook):
    assert webhook.send("vm.preboot", "vm-1")[0] == 200
    assert webhook.send("vm.booted", "vm-1")[0] == 200
    assert list(ClaimItem.scan()) == []


def test_grant_done_at_the_provider_but_never_recorded__vvg_hosts_set_back(webhook):
    from vvolguard.services.hosts import HostService

    HostService(webhook.settings).enroll("host-2", "02:00:00:00:00:02", "SN-2")
    assert webhook.send("vm.preboot", "vm-2")[0] == 200
    vol = managed_volumes()["vvol-2"]["VolumeId"]
    ec2_client().create_tags(Resources=[vol], Tags=[{"Key": "vvg:hosts", "Value": "host-1,host-2"}])
    summary = Reconciler(webhook.settings).run(now=_later())
    assert summary["hosts_corrected"] == 1, summary
    assert managed_volumes()["vvol-2"]["TagMap"]["vvg:hosts"] == "host-1"
    [rec] = _records(webhook.settings, "hosts_drift")
    assert (rec.action, rec.detail["was"], rec.detail["now"]) == ("state_corrected", "host-1,host-2", "host-1")
    assert Reconciler(webhook.settings).run(now=_later())["hosts_corrected"] == 0


def test_second_volume_beside_the_recorded_one__deleted_once_settled(webhook):
    assert webhook.send("vm.created", "vm-3")[0] == 200
    recorded = _item("vvol-3").provider_volume_id
    extra = ec2_client().create_volume(AvailabilityZone="us-east-1a", Size=1, TagSpecifications=[{
        "ResourceType": "volume", "Tags": [{"Key": "vvg:volume-id", "Value": "vvol-3"},
                                           {"Key": "vvg:hosts", "Value": "host-1"},
                                           {"Key": "vvg:vm-id", "Value": "vm-3"}]}])["VolumeId"]
    assert Reconciler(webhook.settings).run(now=_later(5))["volumes_removed"] == 0  # may be an event's, right now
    summary = Reconciler(webhook.settings).run(now=_later())
    assert summary["volumes_removed"] == 1, summary
    ids = {v["VolumeId"] for v in ec2_client().describe_volumes()["Volumes"] if v["State"] != "deleted"}
    assert recorded in ids and extra not in ids
    assert [(r.action, r.detail["provider_volume"]) for r in _records(webhook.settings, "unrecorded_volume")] == \
        [("delete", extra)]


def test_a_deleted_policys_volume_is_kept(webhook):
    assert webhook.send("vm.created", "vm-3")[0] == 200
    PolicyService(webhook.settings).delete("vvol-3")
    summary = Reconciler(webhook.settings).run(now=_later())
    assert summary["volumes_removed"] == 0 and summary["volumes_recorded"] == 0, summary
    assert "vvol-3" in managed_volumes()
