"""EC2 VMs (docs/ec2-vms.md): `vvg vm start` / `vvg vm stop`, the lifecycle function, the reconciler's
vm.booted, and `aws-ec2` reserved — all against moto (mock_aws), through the real CLI and handlers."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import attached_volume_ids, ec2_client, managed_volumes

EC2_POLICIES = b"""volumes:
  - {volume_id: vvol-e1, vm_id: vm-e1, host_id: aws-ec2, storage_array: S1, size_mb: 10,
     attach_on: preboot, detach_on: postboot}
  - {volume_id: vvol-e2, vm_id: vm-e1, host_id: aws-ec2, storage_array: S1, size_mb: 10,
     attach_on: preboot, detach_on: shutdown}
  - {volume_id: vvol-e3, vm_id: vm-e1, host_id: aws-ec2, storage_array: S1, size_mb: 10,
     attach_on: request, detach_on: request}
"""


def _instance(vm_id: str, stopped: bool = True) -> str:
    ec2 = ec2_client()
    iid = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, Placement={"AvailabilityZone": "us-east-1a"},
                            TagSpecifications=[{"ResourceType": "instance",
                                                "Tags": [{"Key": "vvg:vm-id", "Value": vm_id}]}])["Instances"][0]["InstanceId"]
    if stopped:
        ec2.stop_instances(InstanceIds=[iid])
    return iid


def _state(iid: str) -> str:
    return ec2_client().describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]


@pytest.fixture
def ec2vm(webhook, tmp_path):
    """Table 1 (demo host), plus vm-e1: a stopped EC2 instance whose three volumes are on aws-ec2."""
    from vvolguard.domain.policy import parse_policy_text
    from vvolguard.services.policies import PolicyService

    PolicyService(webhook.settings).apply(parse_policy_text(EC2_POLICIES), actor="cli")
    iid = _instance("vm-e1")
    return {"settings": webhook.settings, "instance_id": iid, "webhook": webhook}


def _audit(vvg, vm="vm-e1"):
    r = vvg("audit", "list", "--vm", vm, "--limit", "100")
    assert r.code == 0, r
    return [json.loads(line) for line in r.out.splitlines()]


def _snapshot():
    """What a refused command must leave as it was: the provider's volumes and instances, and the records."""
    from vvolguard.services.policies import PolicyService
    from vvolguard.settings import Settings

    vols = {k: (v["State"], tuple(a["InstanceId"] for a in v.get("Attachments", []))) for k, v in managed_volumes().items()}
    insts = sorted((i["InstanceId"], i["State"]["Name"]) for r in ec2_client().describe_instances()["Reservations"]
                   for i in r["Instances"])
    pols = sorted((p.volume_id, bool(p.attached), p.provider_volume_id or "") for p in PolicyService(Settings.from_env()).all())
    return vols, insts, pols


# ---- vvg vm start / stop


def test_vm_start__creates_attaches_preboot_then_starts_and_answers_the_decisions(ec2vm, vvg):
    r = vvg("vm", "start", "vm-e1")
    assert r.code == 0, r
    out = r.json()
    assert out["vm_id"] == "vm-e1" and out["instance_id"] == ec2vm["instance_id"]
    assert out["instance_state"] in ("pending", "running") and _state(ec2vm["instance_id"]) == "running"
    assert [e["type"] for e in out["events"]] == ["vm.created", "vm.preboot"]
    attach = {d["volume_id"]: d for d in out["events"][1]["decisions"]}
    assert attach["vvol-e1"]["outcome"] == "done" and attach["vvol-e2"]["outcome"] == "done"
    assert attach["vvol-e1"]["provider_volume_id"].startswith("vol-")
    assert "vvol-e3" not in attach  # a request volume is not a preboot one
    assert attached_volume_ids() == {"vvol-e1", "vvol-e2"}
    vols = managed_volumes()
    assert {a["InstanceId"] for v in ("vvol-e1", "vvol-e2") for a in vols[v]["Attachments"]} == {ec2vm["instance_id"]}
    assert vols["vvol-e1"]["TagMap"]["vvg:hosts"] == "aws-ec2"
    recs = _audit(vvg)
    assert any(x["action"] == "vm_start" and x["outcome"] == "done" and x["actor"].startswith("cli:") for x in recs)
    assert any(x["action"] == "attach" and x["actor"] == "host:aws-ec2" for x in recs)
    assert vvg("audit", "verify").code == 0


def test_vm_stop__stops_then_detaches_everything(ec2vm, vvg):
    assert vvg("vm", "start", "vm-e1").code == 0
    r = vvg("vm", "stop", "vm-e1")
    assert r.code == 0, r
    out = r.json()
    assert out["instance_state"] == "stopped" and _state(ec2vm["instance_id"]) == "stopped"
    assert {d["volume_id"]: d["outcome"] for d in out["decisions"] if d["action"] == "detach"} == \
        {"vvol-e1": "done", "vvol-e2": "done"}
    assert attached_volume_ids() == set()
    assert any(x["action"] == "vm_stop" and x["actor"].startswith("cli:") for x in _audit(vvg))
    # started again: the same volumes come back (no second volume is created)
    again = vvg("vm", "start", "vm-e1")
    assert again.code == 0, again
    assert attached_volume_ids() == {"vvol-e1", "vvol-e2"} and len(managed_volumes()) >= 3


# Ordered so that each case's set-up leaves the next one's ground as it needs it (one fixture, one test).
START_REFUSALS = [
    ("bad id!", None, "VM id must match"),
    ("x" * 65, None, "VM id must match"),
    ("vm-nope", None, "no policy names VM vm-nope"),
    ("vm-1", None, "not an EC2 VM"),                       # the demo host's VM
    ("vm-e1", "quarantined", "quarantined"),
    ("vm-e1", "running", "is running; only a stopped instance"),
    ("vm-e1", "no-instance", "no instance is tagged"),
]


def test_vm_start__refused_in_one_line_and_nothing_changes(ec2vm, vvg):
    for vm_id, setup, message in START_REFUSALS:
        if setup == "quarantined":
            assert vvg("vm", "quarantine", "vm-e1").code == 0
        elif setup == "running":
            assert vvg("vm", "release", "vm-e1").code == 0
            ec2_client().start_instances(InstanceIds=[ec2vm["instance_id"]])
        elif setup == "no-instance":
            ec2_client().terminate_instances(InstanceIds=[ec2vm["instance_id"]])
        before, audit_before = _snapshot(), len(_audit(vvg, "vm-e1"))
        r = vvg("vm", "start", vm_id)
        assert r.code != 0 and r.out == "", (vm_id, r)
        assert message in r.err and len(r.err.strip().splitlines()) == 1, (vm_id, r)
        assert _snapshot() == before, vm_id
        assert len(_audit(vvg, "vm-e1")) == audit_before, vm_id


def test_vm_stop__refused_in_one_line_and_nothing_changes(ec2vm, vvg):
    for vm_id, message in (("vm-nope", "no policy names"), ("vm-2", "not an EC2 VM"), ("../etc", "VM id must match")):
        before = _snapshot()
        r = vvg("vm", "stop", vm_id)
        assert r.code != 0 and message in r.err and len(r.err.strip().splitlines()) == 1, r
        assert _snapshot() == before
    ec2_client().terminate_instances(InstanceIds=[ec2vm["instance_id"]])
    r = vvg("vm", "stop", "vm-e1")
    assert r.code != 0 and "no instance is tagged" in r.err, r


def test_vm_start__a_failed_attach_starts_nothing_and_leaves_nothing_attached(ec2vm, vvg):
    """vvol-e1 exists at the provider in another zone: its attach fails, so the instance is not started."""
    ec2 = ec2_client()
    from vvolguard.adapters.models import PolicyItem

    vol = ec2.create_volume(AvailabilityZone="us-east-1b", Size=1, TagSpecifications=[{"ResourceType": "volume", "Tags": [
        {"Key": "vvg:volume-id", "Value": "vvol-e1"}, {"Key": "vvg:hosts", "Value": "aws-ec2"},
        {"Key": "vvg:vm-id", "Value": "vm-e1"}]}])["VolumeId"]
    item = PolicyItem.get("VM#vm-e1", "POLICY#vvol-e1")
    item.update(actions=[PolicyItem.provider_volume_id.set(vol)])
    r = vvg("vm", "start", "vm-e1")
    assert r.code != 0 and "was not started" in r.err and "vvol-e1" in r.err, r
    assert _state(ec2vm["instance_id"]) == "stopped"
    assert attached_volume_ids() == set()
    assert any(x["action"] == "vm_start" and x["outcome"] == "failed" for x in _audit(vvg))


# ---- aws-ec2 is reserved


def test_webhook__signed_as_aws_ec2_is_401_unknown_host_and_writes_nothing(ec2vm):
    wh = ec2vm["webhook"]
    before = _snapshot()
    for secret in ("anything", wh.secret):
        code, body = wh.send("vm.preboot", "vm-e1", host_id="aws-ec2", secret=secret)
        assert code == 401 and body["error"]["code"] == "unknown_host", body
    assert _snapshot() == before and attached_volume_ids() == set()


def test_webhook__aws_ec2_stays_refused_even_if_a_record_for_it_existed(ec2vm):
    """A hosts table that holds aws-ec2 (enrolled before it was reserved, or written by hand) still signs nothing."""
    from vvolguard.adapters.models import HostItem
    from vvolguard.services.hosts import HostService

    host = HostItem.get("host-1")
    HostItem(host_id="aws-ec2", **{k: v for k, v in host.attribute_values.items() if k != "host_id"}).save()
    HostService(ec2vm["settings"])  # noqa: B018 - the table is the one the handler reads
    code, body = ec2vm["webhook"].send("vm.preboot", "vm-e1", host_id="aws-ec2")
    assert code == 401 and body["error"]["code"] == "unknown_host"
    assert attached_volume_ids() == set()


def test_handle_internal__refuses_a_host_that_is_not_reserved(ec2vm):
    from vvolguard.errors import UnknownHost
    from vvolguard.services.events import EventService

    with pytest.raises(UnknownHost):
        EventService(ec2vm["settings"]).handle_internal("host-1", {"event_id": "x", "type": "vm.preboot", "vm_id": "vm-1"})
    assert attached_volume_ids() == set()


def test_handle_internal__same_parse_authorize_and_duplicate_paths_as_the_webhook(ec2vm):
    from vvolguard.errors import EventConflict, Forbidden, InvalidEvent
    from vvolguard.services.events import EventService

    svc = EventService(ec2vm["settings"])
    with pytest.raises(InvalidEvent):
        svc.handle_internal("aws-ec2", {"event_id": "x", "type": "vm.preboot", "vm_id": "vm-e1", "extra": 1})
    with pytest.raises(Forbidden):  # vm-1 is the demo host's
        svc.handle_internal("aws-ec2", {"event_id": "x2", "type": "vm.preboot", "vm_id": "vm-1"})
    assert attached_volume_ids() == set()
    doc = {"event_id": "i-1", "type": "vm.preboot", "vm_id": "vm-e1"}
    first = svc.handle_internal("aws-ec2", doc)
    assert {d["volume_id"] for d in first["decisions"] if d["outcome"] == "done"} == {"vvol-e1", "vvol-e2"}
    again = svc.handle_internal("aws-ec2", doc)
    assert again["duplicate"] is True and again["decisions"] == first["decisions"]
    with pytest.raises(EventConflict):
        svc.handle_internal("aws-ec2", {**doc, "type": "vm.shutdown"})
    assert attached_volume_ids() == {"vvol-e1", "vvol-e2"}


# ---- the lifecycle function


def _note(iid: str, state: str, at: datetime | None = None) -> dict:
    from vvolguard.services.vms import notification

    return notification(iid, state, at or datetime.now(timezone.utc))


@pytest.fixture
def lifecycle_handler(ec2vm):
    from vvolguard.handlers import ec2_lifecycle

    ec2_lifecycle.reset()
    yield ec2_lifecycle.handler
    ec2_lifecycle.reset()


def test_lifecycle__running_with_status_ok_sends_booted_and_detaches_postboot(ec2vm, vvg, lifecycle_handler):
    assert vvg("vm", "start", "vm-e1").code == 0
    out = lifecycle_handler(_note(ec2vm["instance_id"], "running"), None)
    assert out["vm_id"] == "vm-e1" and out["state"] == "running"
    booted = [s for s in out["sent"] if s["type"] == "vm.booted"]
    assert booted and booted[0]["event_id"].startswith(f"ec2:{ec2vm['instance_id']}:booted:")
    assert {d["volume_id"]: d["outcome"] for d in booted[0]["decisions"]} == {"vvol-e1": "done"}
    assert attached_volume_ids() == {"vvol-e2"}  # detach_on: shutdown stays
    # a redelivery (or the poller, or the reconciler) sends nothing new
    again = lifecycle_handler(_note(ec2vm["instance_id"], "running"), None)
    assert not [s for s in again["sent"] if s["type"] == "vm.booted"]
    assert attached_volume_ids() == {"vvol-e2"}


def test_lifecycle__status_checks_not_passed_yet_sends_no_booted(ec2vm, vvg, lifecycle_handler, monkeypatch):
    from vvolguard.services.vms import Ec2

    assert vvg("vm", "start", "vm-e1").code == 0
    monkeypatch.setattr(Ec2, "status_ok", lambda self, iid: False)  # moto reports ok at once; AWS takes minutes
    out = lifecycle_handler(_note(ec2vm["instance_id"], "running"), None)
    assert out["waiting"] == "status_checks" and not [s for s in out["sent"] if s["type"] == "vm.booted"]
    assert attached_volume_ids() == {"vvol-e1", "vvol-e2"}


@pytest.mark.parametrize("state", ["stopped", "terminated"])
def test_lifecycle__stop_or_terminate_sends_shutdown(ec2vm, vvg, lifecycle_handler, state):
    assert vvg("vm", "start", "vm-e1").code == 0
    at = datetime.now(timezone.utc)
    if state in ("shutting-down", "terminated"):
        ec2_client().terminate_instances(InstanceIds=[ec2vm["instance_id"]])
    else:
        ec2_client().stop_instances(InstanceIds=[ec2vm["instance_id"]])
    out = lifecycle_handler(_note(ec2vm["instance_id"], state, at), None)
    (sent,) = out["sent"]
    assert sent["type"] == "vm.shutdown" and sent["event_id"] == f"ec2:{ec2vm['instance_id']}:shutdown:{int(at.timestamp())}"
    assert attached_volume_ids() == set()
    assert lifecycle_handler(_note(ec2vm["instance_id"], state, at), None)["sent"][0]["duplicate"] is True


def test_lifecycle__a_late_stop_notification_never_detaches_a_new_boot(ec2vm, vvg, lifecycle_handler):
    """Notifications may arrive late: the function acts on the instance's state now, and an old stop of a
    stopped instance is older than the next start's preboot (stale)."""
    old = datetime.now(timezone.utc) - timedelta(seconds=120)
    assert vvg("vm", "start", "vm-e1").code == 0
    out = lifecycle_handler(_note(ec2vm["instance_id"], "stopped", old), None)  # it runs now
    assert not [s for s in out["sent"] if s["type"] == "vm.shutdown"]
    assert "vvol-e2" in attached_volume_ids()


MALFORMED = [
    ({}, "not_an_ec2_state_change"),
    ({"source": "aws.ec2", "detail-type": "EC2 Spot Instance Interruption Warning", "detail": {}}, "not_an_ec2_state_change"),
    ({"source": "evil", "detail-type": "EC2 Instance State-change Notification", "detail": {}}, "not_an_ec2_state_change"),
    ({"source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification", "detail": "x"}, "no_detail"),
    ({"source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification", "time": "2026-01-01T00:00:00Z",
      "detail": {"instance-id": "i-../../x", "state": "stopped"}}, "bad_instance_id"),
    ({"source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification", "time": "2026-01-01T00:00:00Z",
      "detail": {"instance-id": "i-0123456789abcdef0", "state": "exploded"}}, "bad_state"),
    ({"source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification", "time": "yesterday",
      "detail": {"instance-id": "i-0123456789abcdef0", "state": "stopped"}}, "bad_time"),
    ({"source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification", "time": "2999-01-01T00:00:00Z",
      "detail": {"instance-id": "i-0123456789abcdef0", "state": "stopped"}}, "time_ahead"),
    ({"source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification", "time": "2026-01-01T00:00:00Z",
      "detail": {"instance-id": "i-" + "a" * 5000, "state": "stopped"}}, "bad_instance_id"),
]


def test_lifecycle__malformed_or_foreign_notifications_are_dropped_and_change_nothing(ec2vm, vvg, lifecycle_handler):
    assert vvg("vm", "start", "vm-e1").code == 0
    before = _snapshot()
    for event, why in MALFORMED:
        assert lifecycle_handler(event, None) == {"ignored": why}, event
    assert lifecycle_handler([1, 2], None) == {"ignored": "not_an_ec2_state_change"}
    assert _snapshot() == before


def test_lifecycle__instances_that_are_not_ec2_vms_are_left_alone(ec2vm, lifecycle_handler):
    from tests.conftest import ec2_client as c

    wh = ec2vm["webhook"]
    assert wh.send("vm.preboot", "vm-1")[0] == 200
    vm1 = c().describe_instances(Filters=[{"Name": "tag:vvg:vm-id", "Values": ["vm-1"]}])
    iid = vm1["Reservations"][0]["Instances"][0]["InstanceId"]
    c().stop_instances(InstanceIds=[iid])
    out = lifecycle_handler(_note(iid, "stopped"), None)
    assert out["ignored"] == "not_an_ec2_vm" and "vvol-1" in attached_volume_ids()
    untagged = c().run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    assert lifecycle_handler(_note(untagged, "running"), None)["ignored"] == "not_tagged"
    assert lifecycle_handler(_note("i-0123456789abcdef0", "running"), None)["ignored"] == "instance_not_found"


def test_lifecycle__heartbeat_renews_the_shutdown_volume_while_running(ec2vm, vvg, lifecycle_handler):
    assert vvg("vm", "start", "vm-e1").code == 0
    out = lifecycle_handler(_note(ec2vm["instance_id"], "running"), None)
    beat = [s for s in out["sent"] if s["type"] == "vm.heartbeat"]
    assert beat and {d["volume_id"]: d["action"] for d in beat[0]["decisions"]} == {"vvol-e2": "renew"}


# ---- the reconciler


def test_reconcile__sends_booted_for_a_running_ec2_vm_whose_postboot_volume_is_still_attached(ec2vm, vvg):
    assert vvg("vm", "start", "vm-e1").code == 0
    assert attached_volume_ids() == {"vvol-e1", "vvol-e2"}
    r = vvg("reconcile")
    assert r.code == 0, r
    assert r.json()["ec2_booted"] == 1, r.json()
    assert attached_volume_ids() == {"vvol-e2"}
    assert vvg("reconcile").json()["ec2_booted"] == 0
    assert vvg("audit", "verify").code == 0


def test_reconcile__no_booted_while_status_checks_have_not_passed(ec2vm, vvg, monkeypatch):
    from vvolguard.services.vms import Ec2

    assert vvg("vm", "start", "vm-e1").code == 0
    monkeypatch.setattr(Ec2, "status_ok", lambda self, iid: False)
    assert vvg("reconcile").json()["ec2_booted"] == 0
    assert attached_volume_ids() == {"vvol-e1", "vvol-e2"}


# ---- the local poller


def test_poller__feeds_changes_and_running_instances_to_the_lifecycle_handler(ec2vm, vvg):
    from vvolguard.handlers import ec2_lifecycle
    from vvolguard.services.vms import Ec2Poller

    ec2_lifecycle.reset()
    seen = []
    poller = Ec2Poller(ec2vm["settings"], feed=lambda ev: seen.append(ev) or ec2_lifecycle.handler(ev, None))
    poller.poll()                                 # first sight: only running instances (Table 1's) are fed
    assert all(e["detail"]["state"] == "running" for e in seen)
    seen.clear()
    assert vvg("vm", "start", "vm-e1").code == 0
    outs = poller.poll()
    mine = [e for e in seen if e["detail"]["instance-id"] == ec2vm["instance_id"]]
    assert mine and mine[0]["detail-type"] == "EC2 Instance State-change Notification" and mine[0]["source"] == "aws.ec2"
    assert attached_volume_ids() == {"vvol-e2"}   # vm.booted, sent by nobody but the poller
    assert any(s["type"] == "vm.booted" for o in outs for s in o.get("sent", []))
    ec2_client().stop_instances(InstanceIds=[ec2vm["instance_id"]])
    poller.poll()
    assert attached_volume_ids() == set()


# ---- the reconciler and break-glass act for aws-ec2 too


def test_reconcile__an_expired_lease_of_an_ec2_vm_is_detached_at_the_provider(ec2vm, vvg):
    """Before: the reconciler found no enrolled aws-ec2, marked the volume detached and left it attached."""
    from vvolguard.adapters.models import PolicyItem

    assert vvg("vm", "start", "vm-e1").code == 0
    item = PolicyItem.get("VM#vm-e1", "POLICY#vvol-e2")
    past = datetime.now(timezone.utc) - timedelta(seconds=5)
    from vvolguard.adapters.models import expiry_key

    item.update(actions=[PolicyItem.lease_expires_at.set(past), PolicyItem.expiry_at.set(expiry_key(past))])
    r = vvg("reconcile")
    assert r.code == 0 and r.json()["expired_leases"] == 1, r
    assert "vvol-e2" not in attached_volume_ids()
    assert not PolicyItem.get("VM#vm-e1", "POLICY#vvol-e2").attached


def test_quarantine__detaches_an_ec2_vms_volumes_at_the_provider(ec2vm, vvg):
    assert vvg("vm", "start", "vm-e1").code == 0
    r = vvg("vm", "quarantine", "vm-e1", "--reason", "test")
    assert r.code == 0 and r.json()["detached"] == 2, r
    assert attached_volume_ids() == set()
