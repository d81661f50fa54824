"""The reconciler (`vvg reconcile`): leases end, grants expire, drift between provider and tables is repaired,
each action audited as actor reconciler, and two passes at once do each thing once."""
from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import all_audit_records, attached_volume_ids, ec2_client, managed_volumes
from vvolguard.adapters.audit import AuditLog
from vvolguard.adapters.models import PolicyItem
from vvolguard.domain.policy import parse_policy_text
from vvolguard.services.policies import PolicyService
from vvolguard.services.reconcile import Reconciler

SHORT = b"""volumes:
  - {volume_id: vvol-short, vm_id: vm-1, host_id: host-1, storage_array: S1, size_mb: 10,
     attach_on: preboot, detach_on: shutdown, max_attach_seconds: 1}
"""


def reconciler_records(settings) -> list:
    return [r for r in all_audit_records() if r.actor == "reconciler"]


def item(volume_id: str) -> PolicyItem:
    return PolicyService.__new__(PolicyService).get(volume_id)


def test_lease_of_one_second__reconcile_detaches_it_at_ec2_and_audits_it(webhook, vvg):
    PolicyService(webhook.settings).apply(parse_policy_text(SHORT))
    code, body = webhook.send("vm.preboot", "vm-1")
    assert code == 200
    short = next(d for d in body["decisions"] if d["volume_id"] == "vvol-short")
    assert short["outcome"] == "done" and short["lease_expires_at"]
    assert "vvol-short" in attached_volume_ids()
    time.sleep(2)
    r = vvg("reconcile")
    assert r.code == 0, r
    assert r.json()["expired_leases"] == 1 and r.json()["ok"] is True
    assert "vvol-short" not in attached_volume_ids()
    assert "vvol-1" in attached_volume_ids()  # a 900 s lease is untouched
    recs = reconciler_records(webhook.settings)
    assert [(x.volume_id, x.action, x.reason) for x in recs] == [("vvol-short", "detach", "lease_expired")]
    assert item("vvol-short").attached is False
    again = vvg("reconcile").json()
    assert again["expired_leases"] == 0 and len(reconciler_records(webhook.settings)) == 1
    assert vvg("audit", "verify").code == 0


def test_direct_ec2_attach_of_a_managed_volume__is_detached_and_audited(webhook, vvg):
    assert webhook.send("vm.created", "vm-3")[0] == 200
    vol = managed_volumes()["vvol-3"]
    ec2 = ec2_client()
    inst = ec2.describe_instances(Filters=[{"Name": "tag:vvg:vm-id", "Values": ["vm-3"]}])["Reservations"][0]["Instances"][0]
    ec2.attach_volume(VolumeId=vol["VolumeId"], InstanceId=inst["InstanceId"], Device="/dev/sdz")
    assert "vvol-3" in attached_volume_ids()
    r = vvg("reconcile")
    assert r.code == 0 and r.json()["orphans_detached"] == 1, r
    assert "vvol-3" not in attached_volume_ids()
    recs = reconciler_records(webhook.settings)
    assert [(x.vm_id, x.volume_id, x.action, x.reason) for x in recs] == [("vm-3", "vvol-3", "detach", "no_attachment_record")]


def test_attachment_recorded_but_gone_at_the_provider__state_is_corrected(webhook, vvg):
    assert webhook.send("vm.preboot", "vm-2")[0] == 200
    vol = managed_volumes()["vvol-2"]
    ec2_client().detach_volume(VolumeId=vol["VolumeId"], InstanceId=vol["Attachments"][0]["InstanceId"])
    assert item("vvol-2").attached is True
    r = vvg("reconcile")
    assert r.json()["states_corrected"] == 1, r
    assert item("vvol-2").attached is False
    assert [(x.action, x.reason) for x in reconciler_records(webhook.settings)] == [("state_corrected", "not_attached_at_provider")]
    # The next shutdown has nothing left to detach.
    code, body = webhook.send("vm.shutdown", "vm-2")
    assert body["decisions"] == []


def test_expired_migration_grant__reconcile_restores_vvg_hosts(webhook, vvg, monkeypatch):
    from vvolguard.handlers import events as handler_module
    from vvolguard.services.hosts import HostService

    monkeypatch.setenv("VVG_MIGRATION_GRANT_SECONDS", "1")
    handler_module.reset()
    secret2 = HostService(webhook.settings).enroll("host-2", "02:00:00:00:00:02", "SN-2")["secret"]
    assert webhook.send("vm.preboot", "vm-2")[0] == 200
    code, body = webhook.send("vm.migrate.start", "vm-2", destination_host="host-2")
    assert code == 200 and body["decisions"][0]["action"] == "grant", body
    assert managed_volumes()["vvol-2"]["TagMap"]["vvg:hosts"] == "host-1,host-2"
    time.sleep(1.5)
    r = vvg("reconcile")
    assert r.json()["grants_expired"] == 1, r
    assert managed_volumes()["vvol-2"]["TagMap"]["vvg:hosts"] == "host-1"
    assert [(x.action, x.reason) for x in reconciler_records(webhook.settings)] == [("revoke", "grant_expired")]
    # The expired grant no longer lets the destination complete the move.
    code, body = webhook.send("vm.migrate.complete", "vm-2", host_id="host-2", secret=secret2, source_host="host-1")
    assert code == 403 and body["error"]["code"] == "forbidden"
    assert "vvol-2" in attached_volume_ids()  # the VM keeps its volume


def test_two_passes_at_once__each_action_happens_once(webhook):
    PolicyService(webhook.settings).apply(parse_policy_text(SHORT))
    assert webhook.send("vm.preboot", "vm-1")[0] == 200
    later = datetime.now(timezone.utc) + timedelta(seconds=5)
    results = []
    threads = [threading.Thread(target=lambda: results.append(Reconciler(webhook.settings).run(now=later)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r["expired_leases"] for r in results) == 1, results
    assert len([x for x in reconciler_records(webhook.settings) if x.reason == "lease_expired"]) == 1
    assert "vvol-short" not in attached_volume_ids()
    assert AuditLog(webhook.settings).verify()["ok"]


def test_reconcile__prints_a_json_summary(webhook, vvg):
    r = vvg("reconcile")
    assert r.code == 0
    assert set(json.loads(r.out)) >= {"expired_leases", "grants_expired", "orphans_detached", "states_corrected", "ok"}
