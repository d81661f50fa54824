"""Security alerts (docs/alerts.md): each trigger raises exactly one alert of its kind and subject (and a
second within 5 minutes does not), the alert reaches an SQS queue subscribed to AlertTopic, `vvg alerts
list` and `/alerts` show it newest first, and a failing store or publish never fails the operation."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import boto3
import pytest

from tests.conftest import ec2_client, managed_volumes
from tests.dashboard_support import *  # noqa: F401,F403 - fixtures
from tests.dashboard_support import sign_in

FIELDS = ["at", "kind", "severity", "vm_id", "volume_id", "host_id", "detail", "audit_ref"]

REQUEST_VOLUME = b"""
volumes:
  - {volume_id: vvol-req, vm_id: vm-1, host_id: host-1, storage_array: S1, size_mb: 10,
     attach_on: request, detach_on: request, password: s3cret}
"""


def stored(settings, kind: str | None = None) -> list[dict]:
    from vvolguard.services.alerts import list_alerts

    return [a for a in list_alerts(timedelta(days=1)) if kind is None or a["kind"] == kind]


@pytest.fixture
def queue(aws):
    """An SQS queue subscribed (raw delivery off: the SNS envelope) to the template's AlertTopic."""
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="alerts-test")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    boto3.client("sns", region_name="us-east-1").subscribe(TopicArn=aws.alert_topic_arn, Protocol="sqs",
                                                           Endpoint=arn)

    def received() -> list[dict]:
        out = []
        while True:
            msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
            if not msgs:
                return out
            for m in msgs:
                envelope = json.loads(m["Body"])
                out.append({"alert": json.loads(envelope["Message"]), "subject": envelope.get("Subject"),
                            "attributes": envelope.get("MessageAttributes", {})})
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])

    return received


def apply(settings, text: bytes) -> None:
    from vvolguard.domain.policy import parse_policy_text
    from vvolguard.services.policies import PolicyService

    PolicyService(settings).apply(parse_policy_text(text))


def audit_record(settings, ref: str) -> dict:
    chain, _, seq = ref.rpartition("/")
    return boto3.client("dynamodb", region_name="us-east-1").get_item(
        TableName=settings.audit_table, Key={"chain": {"S": chain}, "seq": {"N": seq}})["Item"]


# ---------------------------------------------------------------- triggers


def test_a_password_lockout__raises_one_volume_locked_alert_that_sqs_receives_and_vvg_lists(webhook, queue, vvg):
    apply(webhook.settings, REQUEST_VOLUME)
    for _ in range(4):
        webhook.send("volume.attach_request", "vm-1", volume_id="vvol-req", password="Hunter2-guess")
    assert stored(webhook.settings) == [] and queue() == []  # 4 wrong passwords: no lock, no alert
    code, body = webhook.send("volume.attach_request", "vm-1", volume_id="vvol-req", password="Hunter2-guess")
    assert code == 200 and body["decisions"][0]["reason"] == "bad_password"
    [alert] = stored(webhook.settings)
    assert list(alert) == FIELDS
    assert (alert["kind"], alert["severity"], alert["vm_id"], alert["volume_id"], alert["host_id"]) == \
        ("volume_locked", "high", "vm-1", "vvol-req", "host-1")
    rec = audit_record(webhook.settings, alert["audit_ref"])  # the audit record behind it: the locking decision
    assert rec["reason"]["S"] == "bad_password" and rec["volume_id"]["S"] == "vvol-req"
    assert "Hunter2" not in json.dumps(alert)  # never the password
    [msg] = queue()
    assert msg["alert"] == alert and msg["subject"] == "vvolguard alert: volume_locked"
    assert msg["attributes"]["kind"]["Value"] == "volume_locked"
    # locked: further attempts are refused as "locked", and raise nothing new
    assert webhook.send("volume.attach_request", "vm-1", volume_id="vvol-req", password="Hunter2-guess")[1][
        "decisions"][0]["reason"] == "locked"
    r = vvg("alerts", "list")
    assert r.code == 0 and [json.loads(line) for line in r.out.splitlines()] == [alert]
    assert queue() == []


def test_a_host_that_is_not_the_vms__raises_one_foreign_host_alert(webhook, queue):
    from vvolguard.services.hosts import HostService

    secret2 = HostService(webhook.settings).enroll("host-2", "02:00:00:00:00:02", "SN-2")["secret"]
    for _ in range(2):
        code, body = webhook.send("vm.preboot", "vm-1", host_id="host-2", secret=secret2)
        assert code == 403, body
    [alert] = stored(webhook.settings)
    assert (alert["kind"], alert["vm_id"], alert["host_id"]) == ("foreign_host", "vm-1", "host-2")
    rec = audit_record(webhook.settings, alert["audit_ref"])
    assert rec["action"]["S"] == "refuse" and rec["host_id"]["S"] == "host-2"
    assert len(queue()) == 1
    # the VM's own host is no foreign host
    assert webhook.send("vm.preboot", "vm-1")[0] == 200 and len(stored(webhook.settings, "foreign_host")) == 1


def test_three_bad_signatures_naming_one_host__raise_one_alert_a_never_enrolled_name_none(webhook, queue):
    from vvolguard.services.reconcile import Reconciler

    for _ in range(2):
        assert webhook.send("vm.preboot", "vm-1", secret="not-the-secret")[0] == 401
    Reconciler(webhook.settings).run()
    assert stored(webhook.settings) == []
    assert webhook.send("vm.preboot", "vm-1", secret="not-the-secret")[0] == 401
    assert stored(webhook.settings) == []  # not on the webhook's path: the reconciler's next pass raises it
    Reconciler(webhook.settings).run()
    [alert] = stored(webhook.settings)
    assert (alert["kind"], alert["host_id"], alert["vm_id"], alert["volume_id"]) == \
        ("bad_signatures", "host-1", None, None)
    assert "3 requests" in alert["detail"] and "not-the-secret" not in json.dumps(alert)
    for _ in range(3):
        assert webhook.send("vm.preboot", "vm-1", secret="not-the-secret")[0] == 401
    Reconciler(webhook.settings).run()
    assert len(stored(webhook.settings)) == 1 and len(queue()) == 1
    for _ in range(4):  # a name never enrolled: nothing counted, nothing raised
        assert webhook.send("vm.preboot", "vm-1", host_id="ghost-9", secret="x")[0] == 401
    Reconciler(webhook.settings).run()
    assert len(stored(webhook.settings)) == 1


def test_bad_signatures_spread_over_5_minutes__count_together_older_ones_do_not(aws):
    from vvolguard.errors import BadSignature
    from vvolguard.services.alerts import bad_signature_alerts
    from vvolguard.services.events import EventService
    from vvolguard.services.hosts import HostService

    HostService(aws).enroll("host-1", "02:00:00:00:00:01", "SN-1")
    HostService(aws).enroll("host-2", "02:00:00:00:00:02", "SN-2")
    svc = EventService(aws, provider=object())
    t0 = (datetime.now(timezone.utc) - timedelta(hours=1)).replace(second=5, microsecond=0)
    count = lambda host, at: svc.refusals.count_unauthenticated(host, BadSignature("x"), at)  # noqa: E731
    count("host-1", t0 - timedelta(minutes=5))  # outside the window that ends at t0 + 4 min
    count("host-1", t0)
    count("host-2", t0)
    count("host-2", t0)
    count("host-1", t0 + timedelta(minutes=4))
    assert bad_signature_alerts(aws, t0 + timedelta(minutes=4, seconds=10)) == 0  # 2 each in 5 minutes
    count("host-1", t0 + timedelta(minutes=4, seconds=20))
    assert bad_signature_alerts(aws, t0 + timedelta(minutes=4, seconds=30)) == 1
    [alert] = stored(aws, "bad_signatures")
    assert alert["host_id"] == "host-1" and "3 requests" in alert["detail"]
    assert bad_signature_alerts(aws, t0 + timedelta(minutes=4, seconds=40)) == 0  # the same one: deduplicated
    assert bad_signature_alerts(aws, t0 + timedelta(minutes=12)) == 0  # the counts have left the window


def test_a_failed_vvg_audit_verify__raises_tamper_check_failed_once(webhook, vvg, queue):
    assert webhook.send("vm.preboot", "vm-1")[0] == 200
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    ddb.update_item(TableName=webhook.settings.audit_table, Key={"chain": {"S": "VM#vm-1"}, "seq": {"N": "1"}},
                    UpdateExpression="SET reason = :r", ExpressionAttributeValues={":r": {"S": "forged"}})
    for _ in range(2):
        r = vvg("audit", "verify")
        assert r.code == 1 and r.err.count("\n") == 1, r
    [alert] = stored(webhook.settings)
    assert (alert["kind"], alert["severity"], alert["vm_id"], alert["audit_ref"]) == \
        ("tamper_check_failed", "critical", "vm-1", "VM#vm-1/1")
    assert len(queue()) == 1
    assert vvg("alerts", "list").out.count("\n") == 1


def test_the_scheduled_checkpoint_holding_chains_back__raises_tamper_check_failed(webhook, queue):
    from vvolguard.adapters.audit import HEAD_SK
    from vvolguard.services.reconcile import Reconciler

    assert webhook.send("vm.preboot", "vm-1")[0] == 200
    Reconciler(webhook.settings).run()
    assert stored(webhook.settings, "tamper_check_failed") == []
    boto3.client("dynamodb", region_name="us-east-1").delete_item(
        TableName=webhook.settings.state_table, Key={"pk": {"S": "VM#vm-1"}, "sk": {"S": HEAD_SK}})
    out = Reconciler(webhook.settings).run()
    assert out["ok"] is False
    [alert] = stored(webhook.settings, "tamper_check_failed")
    assert "VM#vm-1" in alert["detail"] and "held back" in alert["detail"]
    assert [m["alert"]["kind"] for m in queue()] == ["tamper_check_failed"]


def test_the_reconciler_detaching_an_expired_lease_and_an_orphan__raises_one_alert_each(webhook, queue):
    from vvolguard.services.reconcile import Reconciler

    apply(webhook.settings, b"volumes:\n  - {volume_id: vvol-short, vm_id: vm-1, host_id: host-1, storage_array: S1,"
                            b" size_mb: 10,\n     attach_on: preboot, detach_on: shutdown, max_attach_seconds: 60}\n")
    assert webhook.send("vm.preboot", "vm-1")[0] == 200
    assert webhook.send("vm.created", "vm-3")[0] == 200
    vol = managed_volumes()["vvol-3"]
    inst = ec2_client().describe_instances(Filters=[{"Name": "tag:vvg:vm-id", "Values": ["vm-3"]}])
    ec2_client().attach_volume(VolumeId=vol["VolumeId"], Device="/dev/sdz",
                               InstanceId=inst["Reservations"][0]["Instances"][0]["InstanceId"])
    later = datetime.now(timezone.utc) + timedelta(minutes=2)
    summary = Reconciler(webhook.settings).run(now=later)
    assert summary["expired_leases"] >= 1 and summary["orphans_detached"] == 1, summary
    leases = stored(webhook.settings, "lease_expired")
    assert {a["volume_id"] for a in leases} == {"vvol-short"} | ({"vvol-1"} if summary["expired_leases"] > 1 else set())
    assert all(a["vm_id"] == "vm-1" and a["host_id"] == "host-1" for a in leases)
    [orphan] = stored(webhook.settings, "orphan_detached")
    assert (orphan["volume_id"], orphan["vm_id"], orphan["host_id"]) == ("vvol-3", "vm-3", "host-1")
    assert audit_record(webhook.settings, orphan["audit_ref"])["reason"]["S"] == "no_attachment_record"
    Reconciler(webhook.settings).run(now=later)  # nothing left to detach: nothing new
    assert len(stored(webhook.settings)) == len(leases) + 1
    assert sorted(m["alert"]["kind"] for m in queue()) == sorted(["orphan_detached"] + ["lease_expired"] * len(leases))


def test_quarantine_release_revoke_and_key_recovery__each_raise_one_alert(webhook, vvg, queue, tmp_path):
    assert vvg("vm", "quarantine", "vm-2", "--reason", "incident 7").code == 0
    assert vvg("vm", "quarantine", "vm-2").code == 0  # already quarantined: no new alert
    assert vvg("vm", "release", "vm-2").code == 0
    assert vvg("key", "provision", "vvol-4", "--generate", "lic:32", "--escrow").code == 0
    r = vvg("key", "recover", "vvol-4", "lic", "--out", str(tmp_path / "lic"))
    assert r.code == 0, r
    assert vvg("host", "revoke", "host-1").code == 0
    assert vvg("host", "revoke", "host-1").code == 0  # already revoked: no new alert
    got = {(a["kind"], a["vm_id"], a["volume_id"], a["host_id"]) for a in stored(webhook.settings)}
    assert got == {("quarantine", "vm-2", None, None), ("release", "vm-2", None, None),
                   ("key_recovered", "vm-4", "vvol-4", "host-1"), ("host_revoked", None, None, "host-1")}
    assert len(stored(webhook.settings)) == 4
    q = stored(webhook.settings, "quarantine")[0]
    assert "incident 7" in q["detail"] and audit_record(webhook.settings, q["audit_ref"])["action"]["S"] == "vm_quarantine"
    k = stored(webhook.settings, "key_recovered")[0]
    assert audit_record(webhook.settings, k["audit_ref"])["action"]["S"] == "key_recover"
    secret = (tmp_path / "lic").read_bytes()
    assert secret.hex() not in json.dumps(stored(webhook.settings))
    assert len(queue()) == 4


# ---------------------------------------------------------------- deduplication


def test_at_most_one_alert_per_kind_and_subject_in_5_minutes(aws):
    from vvolguard.services.alerts import raise_alert

    t0 = datetime.now(timezone.utc) - timedelta(minutes=20)
    assert raise_alert(aws, "quarantine", vm_id="vm-1", now=t0) is not None
    assert raise_alert(aws, "quarantine", vm_id="vm-1", now=t0 + timedelta(minutes=4)) is None
    assert raise_alert(aws, "quarantine", vm_id="vm-2", now=t0 + timedelta(minutes=4)) is not None  # other subject
    assert raise_alert(aws, "release", vm_id="vm-1", now=t0 + timedelta(minutes=4)) is not None    # other kind
    assert raise_alert(aws, "quarantine", vm_id="vm-1", now=t0 + timedelta(minutes=5, seconds=1)) is not None
    assert len(stored(aws)) == 4


def test_deduplication_holds_under_concurrent_raisers(aws):
    from concurrent.futures import ThreadPoolExecutor

    from vvolguard.services.alerts import raise_alert

    with ThreadPoolExecutor(8) as pool:
        out = list(pool.map(lambda _: raise_alert(aws, "host_revoked", host_id="host-7"), range(16)))
    assert sum(a is not None for a in out) == 1 and len(stored(aws)) == 1


# ---------------------------------------------------------------- failures never break the operation


def test_a_failing_sns__does_not_fail_the_quarantine_and_the_reconciler_publishes_it_later(webhook, vvg, queue):
    from vvolguard.adapters import aws as aws_adapter
    from vvolguard.services import alerts
    from vvolguard.services.reconcile import Reconciler

    def refuse(**_):
        raise RuntimeError("SNS is down")

    before = alerts.FAILURES["publish"]
    aws_adapter.add_hook("before-call.sns.Publish", refuse)
    try:
        r = vvg("vm", "quarantine", "vm-2")
    finally:
        aws_adapter.remove_hook("before-call.sns.Publish", refuse)
    assert r.code == 0 and r.json()["quarantined"] is True, r
    assert alerts.FAILURES["publish"] == before + 1
    [alert] = stored(webhook.settings)
    assert alert["kind"] == "quarantine" and queue() == []
    assert Reconciler(webhook.settings).run()["alerts_republished"] == 1
    assert [m["alert"] for m in queue()] == [alert]
    assert Reconciler(webhook.settings).run()["alerts_republished"] == 0


def test_a_failing_alert_store__does_not_fail_the_webhook_event(webhook, queue):
    from vvolguard.adapters import aws as aws_adapter
    from vvolguard.services import alerts

    def refuse(params=None, **_):
        if "ALERTKEY" in json.dumps(params or {}):
            raise RuntimeError("DynamoDB is down for alerts")

    apply(webhook.settings, REQUEST_VOLUME)
    before = alerts.FAILURES["store"]
    aws_adapter.add_hook("before-parameter-build.dynamodb.TransactWriteItems", refuse)
    try:
        for _ in range(5):
            code, body = webhook.send("volume.attach_request", "vm-1", volume_id="vvol-req", password="wrong")
            assert code == 200, body
    finally:
        aws_adapter.remove_hook("before-parameter-build.dynamodb.TransactWriteItems", refuse)
    assert alerts.FAILURES["store"] == before + 1
    from vvolguard.adapters.models import PolicyItem

    assert PolicyItem.get("VM#vm-1", "POLICY#vvol-req").locked_until is not None  # the lock itself held
    assert stored(webhook.settings) == [] and queue() == []


# ---------------------------------------------------------------- vvg alerts list


def test_vvg_alerts_list__json_lines_newest_first_and_since_bounds_them(aws, vvg):
    from vvolguard.services.alerts import raise_alert

    now = datetime.now(timezone.utc)
    raise_alert(aws, "host_revoked", host_id="h-old", now=now - timedelta(days=2))
    raise_alert(aws, "host_revoked", host_id="h-mid", now=now - timedelta(hours=3))
    raise_alert(aws, "quarantine", vm_id="vm-new", now=now - timedelta(minutes=1))
    rows = [json.loads(line) for line in vvg("alerts", "list").out.splitlines()]
    assert [r["host_id"] or r["vm_id"] for r in rows] == ["vm-new", "h-mid", "h-old"]
    assert all(list(r) == FIELDS for r in rows)
    assert [r["at"] for r in rows] == sorted((r["at"] for r in rows), reverse=True)
    assert [r["vm_id"] for r in (json.loads(x) for x in vvg("alerts", "list", "--since", "30m").out.splitlines())] == \
        ["vm-new"]
    assert len(vvg("alerts", "list", "--since", "12h").out.splitlines()) == 2
    assert len(vvg("alerts", "list", "--since", "7d").out.splitlines()) == 3
    assert vvg("alerts", "list", "--since", "1m").out == ""


@pytest.mark.parametrize("bad", ["abc", "7", "7w", "0m", "-1d", "1.5h", "", " 7d", "7d\n", "9" * 40 + "d", "99999d",
                                 "7d; rm -rf /"])
def test_vvg_alerts_list__a_bad_since_is_one_line_and_reads_nothing(vvg, bad):
    from vvolguard.adapters import aws as aws_adapter

    calls = []

    def record(**_):
        calls.append(1)
        raise RuntimeError("no AWS call may be made")

    aws_adapter.add_hook("before-call", record)
    try:
        r = vvg("alerts", "list", "--since", bad)
    finally:
        aws_adapter.remove_hook("before-call", record)
    assert r.code != 0 and r.out == "" and r.err.count("\n") == 1 and r.err.startswith("vvg: error:"), r
    assert calls == []


def test_vvg_alerts__needs_its_subcommand(vvg):
    r = vvg("alerts")
    assert r.code == 2 and r.err.count("\n") == 1


# ---------------------------------------------------------------- the template


def test_template__alert_topic_is_encrypted_and_only_alert_raisers_may_publish():
    from infra.template import Template

    t = Template()
    topic = t.resources["AlertTopic"]
    assert topic["Type"] == "AWS::SNS::Topic" and topic["Properties"]["KmsMasterKeyId"] == {"Ref": "DataKey"}
    assert t.environment()["VVG_ALERT_TOPIC_ARN"] == "arn:aws:sns:us-east-1:123456789012:vvg-alerts"
    publishers = set()
    for name, res in t.resources.items():
        props = res.get("Properties", {})
        docs = [props["PolicyDocument"]] if "PolicyDocument" in props else [p["PolicyDocument"] for p in
                                                                           props.get("Policies", [])]
        for d in docs:
            for st in d["Statement"]:
                acts = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
                if "sns:Publish" in acts:
                    assert st["Resource"] == {"Ref": "AlertTopic"}, name
                    publishers.add(name)
    # the EC2 lifecycle function sends events as aws-ec2 (docs/ec2-vms.md), whose decisions may raise alerts
    assert publishers == {"EventsRole", "ReconcileRole", "DashboardRole", "OperatorPolicy", "Ec2LifecycleRole"}


# ---------------------------------------------------------------- /alerts


def test_alerts_page__anonymous_is_sent_to_sign_in(client):
    r = client.get("/alerts")
    assert r.status_code == 302 and r.headers["Location"].startswith("/login?next=")


@pytest.mark.parametrize("role", ["viewer", "editor", "admin"])
def test_alerts_page__lists_newest_first_for_every_role_escaped_and_linked(client, seeded, role):
    from vvolguard.services.alerts import raise_alert

    settings = seeded[0]
    now = datetime.now(timezone.utc)
    raise_alert(settings, "host_revoked", host_id="host-old", now=now - timedelta(hours=2), ref="HOST#host-old/1",
                detail="<script>alert(1)</script>")
    raise_alert(settings, "quarantine", vm_id="vm-1", now=now - timedelta(minutes=1), ref="VM#vm-1/4")
    sign_in(client, role)
    r = client.get("/alerts")
    html = r.get_data(as_text=True)
    assert r.status_code == 200
    assert html.index("quarantine") < html.index("host_revoked")  # newest first
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'href="/audit?vm=vm-1"' in html and 'href="/audit?host=host-old"' in html and "VM#vm-1/4" in html
    assert 'href="/alerts"' in html and 'aria-current="page">Alerts' in html  # in the nav
    assert "<script" not in html.replace("&lt;script", "")  # no JavaScript
    short = client.get("/alerts?since=1h").get_data(as_text=True)
    assert "quarantine" in short and "host-old" not in short


@pytest.mark.parametrize("bad", ["x", "0m", "-5d", "7d<b>", "9" * 30])
def test_alerts_page__a_bad_period_is_a_400_with_the_default_period(client, seeded, bad):
    sign_in(client, "viewer")
    r = client.get("/alerts", query_string={"since": bad})
    html = r.get_data(as_text=True)
    assert r.status_code == 400 and 'role="alert"' in html and "<b>" not in html
