"""`vvg policy impact` (docs/policy-impact.md): recorded host events replayed through a draft and the current
policy with the same engine; what is recorded for it (format-3 audit records, never a password); refusals."""
from __future__ import annotations

import json

import boto3
import pytest

from vvolguard.adapters.audit import REPLAY_FIELDS

DRAFT_VVOL1_SHUTDOWN = """volumes:
  - volume_id: vvol-1
    vm_id: vm-1
    host_id: {host}
    storage_array: S1
    size_mb: 10
    attach_on: preboot
    detach_on: shutdown
    os_disk_encryption: true
"""


def audit_items(settings) -> list[dict]:
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    return ddb.scan(TableName=settings.audit_table)["Items"]


def table_snapshot(settings) -> dict:
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    out = {}
    for t in (settings.state_table, settings.audit_table, settings.hosts_table, settings.events_table):
        out[t] = sorted(json.dumps(i, sort_keys=True) for i in ddb.scan(TableName=t)["Items"])
    return out


@pytest.fixture
def history(webhook):
    """vm-1 boots once (preboot, booted), vm-2 boots, vm-3 is created; the draft's file path comes later."""
    w = webhook
    for vm in ("vm-1", "vm-2"):
        assert w.send("vm.preboot", vm)[0] == 200
        assert w.send("vm.booted", vm)[0] == 200
    assert w.send("vm.created", "vm-3")[0] == 200
    return w


def draft_file(tmp_path, host: str, text: str = DRAFT_VVOL1_SHUTDOWN) -> str:
    p = tmp_path / "draft.yaml"
    p.write_text(text.format(host=host))
    return str(p)


def test_draft_moving_vvol1_detach_to_shutdown__lists_exactly_vm1_booted_with_now_detach_and_draft_null(
        history, vvg, tmp_path):
    booted = [i for i in audit_items(history.settings)
              if i.get("event_type", {}).get("S") == "vm.booted" and i.get("vm_id", {}).get("S") == "vm-1"]
    assert len(booted) == 1
    before = table_snapshot(history.settings)
    r = vvg("policy", "impact", draft_file(tmp_path, history.host_id))
    assert r.code == 0, r
    out = r.json()
    assert set(out) == {"events_replayed", "not_replayable", "changed"}
    assert out["not_replayable"] == 0
    assert out["events_replayed"] == 4  # vm-2's vm.booted made no decision, so left no record
    assert [(c["vm_id"], c["event_type"], c["volume_id"], c["event_id"]) for c in out["changed"]] == \
        [("vm-1", "vm.booted", "vvol-1", booted[0]["event_id"]["S"])]
    c = out["changed"][0]
    assert c["now"] == {"action": "detach", "outcome": "done", "reason": "detach_on=postboot"}
    assert c["draft"] is None
    assert set(c) == {"event_id", "at", "vm_id", "volume_id", "event_type", "now", "draft"}
    assert table_snapshot(history.settings) == before  # read-only


def test_current_policy_as_draft__changes_nothing(history, vvg):
    r = vvg("policy", "export")
    assert r.code == 0
    import tempfile, os
    path = os.path.join(tempfile.mkdtemp(), "same.json")
    open(path, "w").write(r.out)
    out = vvg("policy", "impact", path, "--since", "30m").json()
    assert out["changed"] == [] and out["events_replayed"] == 4
