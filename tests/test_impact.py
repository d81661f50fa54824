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


REQUEST_VOLUME = """volumes:
  - {volume_id: vvol-9, vm_id: vm-9, host_id: HOST, storage_array: S1, size_mb: 10, attach_on: request,
     detach_on: request, password: "right-horse-battery"}
"""


def _apply(vvg, tmp_path, text: str, host: str) -> None:
    p = tmp_path / "apply.yaml"
    p.write_text(text.replace("HOST", host))
    assert vvg("policy", "apply", str(p)).code == 0


def test_host_records_keep_the_replay_fields_and_the_verdict_never_the_password(webhook, vvg, tmp_path):
    _apply(vvg, tmp_path, REQUEST_VOLUME, webhook.host_id)
    webhook.send("volume.attach_request", "vm-9", volume_id="vvol-9", password="wrong-password-1")
    webhook.send("volume.attach_request", "vm-9", volume_id="vvol-9", password="right-horse-battery")
    webhook.send("app.started", "vm-4", app="A1", occurred_at="2026-01-01T00:00:00Z")
    items = audit_items(webhook.settings)
    raw = json.dumps(items)
    assert "right-horse-battery" not in raw and "wrong-password-1" not in raw
    req = [i for i in items if i.get("event_type", {}).get("S") == "volume.attach_request"]
    assert sorted(i["password_verdict"]["S"] for i in req) == ["bad", "ok"]
    assert all(i["v"]["N"] == "3" for i in req)
    app = [i for i in items if i.get("event_type", {}).get("S") == "app.started"][0]
    assert app["app"]["S"] == "A1" and app["occurred_at"]["S"] == "2026-01-01T00:00:00.000Z"
    assert app["password_verdict"]["S"] == "none"
    assert vvg("audit", "verify").code == 0


def test_draft_removing_the_password__replays_the_bad_verdict_as_an_attach(webhook, vvg, tmp_path):
    _apply(vvg, tmp_path, REQUEST_VOLUME, webhook.host_id)
    webhook.send("volume.attach_request", "vm-9", volume_id="vvol-9", password="wrong-password-1")
    draft = tmp_path / "nopw.yaml"
    draft.write_text(REQUEST_VOLUME.replace("HOST", webhook.host_id).replace('"right-horse-battery"', "null"))
    out = vvg("policy", "impact", str(draft), "--since", "1d").json()
    assert [(c["now"], c["draft"]) for c in out["changed"]] == [
        ({"action": "attach", "outcome": "denied", "reason": "bad_password"},
         {"action": "attach", "outcome": "done", "reason": "attach_on=request"})]


REPLAY_CHANGES = [("password_verdict", "ok"), ("app", "A9"), ("occurred_at", "2020-01-01T00:00:00.000Z"),
                  ("destination_host", "h-x"), ("source_host", "h-y"), ("apps", "x:y:1")]


def test_changing_adding_or_removing_a_replay_field__fails_verify(webhook, vvg):
    """Each replay field in turn (one emulation, the record put back after each): set, then removed."""
    assert {f for f, _ in REPLAY_CHANGES} == set(REPLAY_FIELDS)
    webhook.send("vm.preboot", "vm-1")
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    original = [i for i in audit_items(webhook.settings) if i.get("event_type", {}).get("S") == "vm.preboot"][0]
    key = {"chain": original["chain"], "seq": original["seq"]}
    table = webhook.settings.audit_table
    for field, value in REPLAY_CHANGES:
        ddb.update_item(TableName=table, Key=key, UpdateExpression="SET #f = :v",
                        ExpressionAttributeNames={"#f": field}, ExpressionAttributeValues={":v": {"S": value}})
        r = vvg("audit", "verify")
        assert r.code == 1 and "altered" in r.err, (field, r)
        ddb.put_item(TableName=table, Item=original)
        if field in original:
            ddb.update_item(TableName=table, Key=key, UpdateExpression="REMOVE #f", ExpressionAttributeNames={"#f": field})
            r = vvg("audit", "verify")
            assert r.code == 1 and "altered" in r.err, (field, r)
            ddb.put_item(TableName=table, Item=original)
    assert vvg("audit", "verify").code == 0


def test_format_2_record_given_a_replay_field__fails_verify(aws, vvg):
    """A record written before format 3 whose MAC does not cover the replay fields must not gain one."""
    from vvolguard.adapters import aws as aws_adapter
    from vvolguard.adapters.audit import compute_mac_v2, head_tag

    key = aws_adapter.audit_key(aws.region, aws.audit_key_secret_id)
    at = "2026-01-02T03:04:05.000Z"
    fields = {"chain": "VM#old", "seq": 1, "month": "2026-01", "at_key": f"{at}#VM#old#000000000001", "prev": "",
              "v": 2, "at": at, "actor": "host:host-1", "action": "attach", "outcome": "done", "vm_id": "old",
              "volume_id": "vvol-old", "event_id": "e1", "event_type": "vm.preboot"}
    mac = compute_mac_v2(key, fields)
    item = {k: ({"N": str(v)} if isinstance(v, int) else {"S": v}) for k, v in fields.items()}
    item["mac"] = {"S": mac}
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    ddb.put_item(TableName=aws.audit_table, Item=item)
    ddb.put_item(TableName=aws.state_table, Item={"pk": {"S": "VM#old"}, "sk": {"S": "~AUDIT"}, "kind": {"S": "head"},
                                                   "head_seq": {"N": "1"}, "head_mac": {"S": mac},
                                                   "head_tag": {"S": head_tag(key, "VM#old", 1, mac)}})
    r = vvg("audit", "verify")
    assert r.code == 0, r
    ddb.update_item(TableName=aws.audit_table, Key={"chain": item["chain"], "seq": item["seq"]},
                    UpdateExpression="SET password_verdict = :v", ExpressionAttributeValues={":v": {"S": "ok"}})
    r = vvg("audit", "verify")
    assert r.code == 1 and "an attribute was added" in r.err, r
    # and the impact replay counts such a record as not replayable
    ddb.update_item(TableName=aws.audit_table, Key={"chain": item["chain"], "seq": item["seq"]},
                    UpdateExpression="REMOVE password_verdict")
    from vvolguard.adapters.models import AuditItem
    from vvolguard.services.impact import ImpactService
    from datetime import datetime, timedelta, timezone

    out = ImpactService(aws).analyse([], timedelta(days=1), now=datetime(2026, 1, 2, 12, tzinfo=timezone.utc))
    assert out == {"events_replayed": 0, "not_replayable": 1, "changed": []}


def test_export_of_format_3_records__verifies_offline_and_an_edited_replay_field_fails(webhook, vvg, tmp_path):
    webhook.send("vm.preboot", "vm-1")
    out = tmp_path / "x.json"
    assert vvg("audit", "export", "--out", str(out)).code == 0
    rows = json.loads(out.read_text())
    host_rows = [r for r in rows if r["actor"].startswith("host:")]
    assert host_rows and host_rows[0]["password_verdict"] == "none"
    assert vvg("audit", "verify", "--file", str(out)).code == 0
    host_rows[0]["password_verdict"] = "ok"
    out.write_text(json.dumps(rows))
    r = vvg("audit", "verify", "--file", str(out))
    assert r.code == 1 and "altered" in r.err


def test_bad_since__one_line_error_nothing_read_or_written(aws, vvg, tmp_path):
    p = tmp_path / "d.yaml"
    p.write_text("volumes: []\n")
    before = table_snapshot(aws)
    for since, needle in (("91d", "at most 90d"), ("abc", "a duration is"), ("0m", "more than 0"),
                          ("9" * 30, "--since"), ("-5d", "a duration is"), ("", "a duration is")):
        r = vvg("policy", "impact", str(p), f"--since={since}")
        assert r.code != 0 and r.out == "" and needle in r.err and len(r.err.strip().splitlines()) == 1, (since, r)
    assert table_snapshot(aws) == before


def test_malformed_or_oversized_draft__problems_on_stderr_exit_1_nothing_written(aws, vvg, tmp_path):
    p = tmp_path / "d.yaml"
    before = table_snapshot(aws)
    for content, needle in ((b"volumes: [\n  - {a: ", "line"), (b"volumes:\n  - {volume_id: vvol-1, bogus: 1}\n", "bogus"),
                            (b"\xff\xfe", "not UTF-8"), (b"#" * (4 * 1024 * 1024 + 10), "larger than")):
        p.write_bytes(content)
        r = vvg("policy", "impact", str(p))
        assert r.code == 1 and r.out == "" and needle in r.err, (needle, r)
        assert r.err.strip().splitlines()[-1].endswith(("problem", "problems"))
    assert table_snapshot(aws) == before


def test_missing_file__one_line(aws, vvg):
    r = vvg("policy", "impact", "/nonexistent/draft.yaml")
    assert r.code == 1 and "cannot read" in r.err


def test_more_events_than_the_bound__refused(history):
    from datetime import timedelta

    from vvolguard.errors import InvalidInput
    from vvolguard.services.impact import ImpactService

    with pytest.raises(InvalidInput, match="more than 2 events"):
        ImpactService(history.settings).analyse([], timedelta(days=1), max_events=2)


def test_reads_the_audit_by_time_index_never_a_scan(history):
    from collections import Counter
    from datetime import timedelta

    from vvolguard.adapters import aws as aws_adapter
    from vvolguard.adapters.models import track_model_clients
    from vvolguard.services.impact import ImpactService

    calls: Counter = Counter()

    def hook(model, params, **_):
        body = params.get("body") or {}
        if isinstance(body, (bytes, str)):
            body = json.loads(body or "{}")
        calls[(model.name, body.get("TableName"), body.get("IndexName"))] += 1

    track_model_clients()
    aws_adapter.add_hook("before-call.dynamodb", hook)
    try:
        out = ImpactService(history.settings).analyse([], timedelta(days=1))
    finally:
        aws_adapter.remove_hook("before-call.dynamodb", hook)
    assert out["events_replayed"] == 4
    s = history.settings
    assert not any(k[0] == "Scan" for k in calls), calls
    assert calls[("Query", s.audit_table, "by-time")] >= 1, calls


def test_dashboard_json_export_of_format_3_records__verifies_offline(webhook, vvg, tmp_path):
    from dashboard import create_app
    from tests.dashboard_support import TEST_CONFIG, sign_in

    webhook.send("vm.preboot", "vm-1")
    client = create_app(dict(TEST_CONFIG)).test_client()
    sign_in(client, "admin")
    rows = json.loads(client.get("/audit/export.json").get_data(as_text=True))
    assert any(r.get("password_verdict") == "none" for r in rows)
    p = tmp_path / "dash.json"
    p.write_text(json.dumps(rows))
    assert vvg("audit", "verify", "--file", str(p)).code == 0
