"""Measured exposure (docs/benchmarks.md#measured-exposure) on a compressed clock, against moto (mock_aws) and the
real services, with a reconciler pass every simulated minute (its interval):

- a small fleet's 75 minutes (bench/exposure.py): a preboot/postboot key attached under 1% of uptime, nothing
  attached past its lease plus one interval after a host death or a lost app.stopped, and heartbeats keeping
  preboot/shutdown keys attached while their VMs run;
- Table 1's vm-2 (preboot/shutdown, lease 900 s): 30 minutes of heartbeats signed as the demo host keep it
  attached; after they stop, the reconciler detaches it within the lease plus one interval, audited;
- an EC2 VM: while its instance runs, the reconciler's EC2 step (Ec2Lifecycle) renews its shutdown volume past
  the lease; once the instance is stopped behind vvolguard's back, the lease ends it.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import all_audit_records, attached_volume_ids, ec2_client, managed_volumes

INTERVAL = 60
LEASE = 900


_ROOTS: dict = {}


@pytest.fixture(autouse=True)
def _fresh_roots(monkeypatch):
    # What is measured here is attachment time. The whole-history tamper check each pass runs every 5
    # simulated minutes would re-read every record of the day each time (tests/test_audit_tamper.py is its
    # subject): here it runs on the first pass only.
    monkeypatch.setattr("vvolguard.services.tamper.INTERVAL_S", 10**9)
    _ROOTS.clear()
    yield
    _ROOTS.clear()


def _reconcile(settings, now):
    """One pass at ``now``, on one composition root per test (its provider keeps its sessions, as a warm
    Lambda container does)."""
    from vvolguard.services.root import Services

    root = _ROOTS.get(id(settings))
    if root is None or root.settings is not settings:
        root = _ROOTS[id(settings)] = Services.build(settings)
    out = root.reconciler().run(now)
    assert not [e for e in out["errors"] if not e.startswith("tamper")], out
    return out


def _item(volume_id):
    from vvolguard.services.policies import PolicyService

    return PolicyService.__new__(PolicyService).get(volume_id)


def _reconciler_detaches(settings, volume_id):
    return [r for r in all_audit_records()
            if r.actor == "reconciler" and r.volume_id == volume_id and r.action == "detach"]


# ---- the fleet


def test_exposure_day__preboot_under_one_percent_and_no_overrun_past_lease_plus_interval(aws):
    from bench.exposure import Day

    # Host xh-01 (the preboot/shutdown and request VMs) dies mid-window; every app.stopped is lost.
    day = Day(aws, vms=8, hosts=2, hours=1.25, seed=3, lost=0.0, lost_app=1.0, death_hosts=(1,))
    res = day.run()
    per, c = day.per_kind, day.counts
    assert c["host_deaths"] == 1 and c["lost_app_stopped"] >= 1 and c["reconciler_passes"] == 75, c
    assert res["exposure_errors"] == 0, day.errors
    assert res["exposure_record_provider_disagreements"] == 0
    # The goals.
    assert res["preboot_exposure_pct"] < 1.0, per
    assert res["max_overrun_s"] <= INTERVAL, per
    # Not vacuous: the dead host's leases were ended by the reconciler (its shutdown volumes at least), and
    # heartbeats kept the living VMs' preboot/shutdown keys attached for their whole uptime (without them the
    # 900 s lease would end each one 15 minutes into a run: about 12% here).
    assert c["lease_expired"] >= 2, c
    assert per["preboot/shutdown"]["exposure_pct"] > 90, per
    assert per["app"]["attachments"] >= 1 and per["request"]["attachments"] >= 1, per
    assert day.truth["xvol-0001"].overrun > 0  # the dead host's shutdown volume did outlive its lease (< 60 s)


# ---- Table 1's vm-2: heartbeats through the webhook's service, signed as the demo host


def test_vm2_heartbeats_keep_its_volume_30_minutes_then_the_reconciler_detaches_it_within_lease_plus_interval(webhook):
    from vvolguard.domain.secrets import sign
    from vvolguard.handlers import events as handler_module

    service = handler_module.service()  # the POST /v1/events handler's own EventService
    start = datetime.now(timezone.utc).replace(microsecond=0)
    n = [0]

    def send(type_, t):
        n[0] += 1
        now = start + timedelta(seconds=t)
        raw = json.dumps({"event_id": f"acc-{n[0]}", "type": type_, "vm_id": "vm-2"}).encode()
        headers = {"content-type": "application/json", "x-vvg-host": webhook.host_id,
                   "x-vvg-signature": sign(webhook.secret, int(now.timestamp()), raw)}
        return service.handle(headers, raw, now)

    assert [(d["volume_id"], d["outcome"]) for d in send("vm.preboot", 0)["decisions"]] == [("vvol-2", "done")]
    last_beat = 0
    for minute in range(1, 31):  # 30 simulated minutes: a heartbeat, then the reconciler's pass
        ans = send("vm.heartbeat", minute * INTERVAL - 5)
        assert [(d["volume_id"], d["action"], d["outcome"]) for d in ans["decisions"]] == [("vvol-2", "renew", "done")]
        last_beat = minute * INTERVAL - 5
        out = _reconcile(webhook.settings, start + timedelta(seconds=minute * INTERVAL))
        assert out["expired_leases"] == 0
        assert "vvol-2" in attached_volume_ids() and _item("vvol-2").attached, minute
    assert _item("vvol-2").lease_expires_at == start + timedelta(seconds=last_beat + LEASE)
    # The host dies: no more heartbeats, no shutdown. Passes go on every minute.
    detached_at = None
    t = 30 * INTERVAL
    while detached_at is None and t < last_beat + LEASE + 3 * INTERVAL:
        t += INTERVAL
        _reconcile(webhook.settings, start + timedelta(seconds=t))
        if "vvol-2" not in attached_volume_ids():
            detached_at = t
        else:
            assert t < last_beat + LEASE + INTERVAL, "still attached past its lease plus one interval"
    assert detached_at is not None and last_beat + LEASE <= detached_at <= last_beat + LEASE + INTERVAL
    assert _item("vvol-2").attached is False
    recs = _reconciler_detaches(webhook.settings, "vvol-2")
    assert [(r.actor, r.action, r.outcome, r.reason, r.vm_id) for r in recs] == \
        [("reconciler", "detach", "done", "lease_expired", "vm-2")]


# ---- an EC2 VM: the lifecycle's heartbeat, sent by the reconciler's EC2 step


EC2_POLICIES = b"""volumes:
  - {volume_id: vvol-x1, vm_id: vm-x1, host_id: aws-ec2, storage_array: S1, size_mb: 10,
     attach_on: preboot, detach_on: postboot}
  - {volume_id: vvol-x2, vm_id: vm-x1, host_id: aws-ec2, storage_array: S1, size_mb: 10,
     attach_on: preboot, detach_on: shutdown}
"""


def _ec2_vm(settings, vm_id="vm-x1"):
    from vvolguard.domain.policy import parse_policy_text
    from vvolguard.services.policies import PolicyService

    PolicyService(settings).apply(parse_policy_text(EC2_POLICIES), actor="cli")
    ec2 = ec2_client()
    iid = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, Placement={"AvailabilityZone": "us-east-1a"},
                            TagSpecifications=[{"ResourceType": "instance",
                                                "Tags": [{"Key": "vvg:vm-id", "Value": vm_id}]}])["Instances"][0]["InstanceId"]
    ec2.stop_instances(InstanceIds=[iid])
    return iid


def test_ec2_vm__running_instance_keeps_its_shutdown_volume_past_the_lease_then_a_stop_lets_it_end(aws):
    from vvolguard.services.root import Services

    iid = _ec2_vm(aws)
    out = Services.build(aws).vms.start("vm-x1", actor="cli:test")
    assert {d["volume_id"]: d["outcome"] for d in out["decisions"]} == {"vvol-x1": "done", "vvol-x2": "done"}
    start = datetime.now(timezone.utc).replace(microsecond=0)
    first_lease = _item("vvol-x2").lease_expires_at
    assert first_lease <= start + timedelta(seconds=LEASE + 1)
    for minute in range(1, 18):  # 17 minutes > the 900 s lease
        _reconcile(aws, start + timedelta(seconds=minute * INTERVAL))
    assert attached_volume_ids() == {"vvol-x2"}  # vvol-x1 went at vm.booted (status checks pass in moto)
    item = _item("vvol-x2")
    assert item.attached and item.lease_expires_at > first_lease + timedelta(seconds=15 * INTERVAL)
    assert _reconciler_detaches(aws, "vvol-x2") == []
    # Stopped behind vvolguard's back (no notification): no more heartbeats; the lease ends it.
    ec2_client().stop_instances(InstanceIds=[iid])
    lease_end = item.lease_expires_at
    # Passes every minute from 2 minutes before the lease ends (those in between would find nothing to do:
    # the instance is stopped, so no pass renews it, which the first two passes here show).
    t = int((lease_end - start).total_seconds()) // INTERVAL * INTERVAL - 3 * INTERVAL
    detached_at = None
    while detached_at is None and t < 40 * INTERVAL:
        t += INTERVAL
        _reconcile(aws, start + timedelta(seconds=t))
        if "vvol-x2" not in attached_volume_ids():
            detached_at = start + timedelta(seconds=t)
        else:
            assert _item("vvol-x2").lease_expires_at == lease_end  # not renewed while stopped
    assert detached_at is not None and lease_end <= detached_at <= lease_end + timedelta(seconds=INTERVAL)
    assert [(r.reason, r.vm_id) for r in _reconciler_detaches(aws, "vvol-x2")] == [("lease_expired", "vm-x1")]


# ---- deleting the policy of an attached EC2 VM's volume (adapters/provider.py: reserved_identity)


def test_policy_delete_of_an_attached_ec2_vm_volume__detaches_it_as_aws_ec2(aws, vvg):
    from vvolguard.services.root import Services

    _ec2_vm(aws)
    Services.build(aws).vms.start("vm-x1", actor="cli:test")
    assert "vvol-x2" in attached_volume_ids()
    r = vvg("policy", "delete", "vvol-x2")
    assert r.code == 0, r  # was: exit 1, host_not_found (no host record for the reserved aws-ec2)
    assert r.json() == {"volume_id": "vvol-x2", "deleted": True, "detached": True}
    vol = managed_volumes()["vvol-x2"]
    assert vol["State"] == "available" and not vol.get("Attachments")
    assert vvg("audit", "verify").code == 0


def test_reserved_identity__only_for_reserved_hosts_and_the_same_as_the_internal_host(aws):
    from vvolguard.adapters.provider import reserved_identity
    from vvolguard.services.vms import internal_host

    who = reserved_identity(aws, "aws-ec2")
    assert who is not None and who.host_id == "aws-ec2" and who.cred_hash == internal_host(aws, "aws-ec2").cred_hash
    assert len(who.cred_hash) == 64
    for other in ("host-1", "AWS-EC2", "", None):
        assert reserved_identity(aws, other) is None
