"""CloudWatch embedded metric format (docs/metrics.md): every line the functions write is a valid EMF document
(the specification's members, every dimension and metric a member of the root, Timestamp in whole ms), counted
once per event, pass and stored alert, with bounded dimensions and nothing secret; metrics add no AWS call; the
template alarms on them instead of matching log text."""
from __future__ import annotations

import json
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from infra.template import Template

ALLOWED_DIMENSIONS = {"action", "outcome", "kind"}
UNITS = {"Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes",
         "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count", "Bytes/Second",
         "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second", "Bits/Second",
         "Kilobits/Second", "Megabits/Second", "Gigabits/Second", "Terabits/Second", "Count/Second", "None"}

TWO_VOLUMES = b"""
volumes:
  - {volume_id: vvol-1b, vm_id: vm-1, host_id: host-1, storage_array: S1, size_mb: 10,
     attach_on: preboot, detach_on: postboot}
"""
REQUEST_VOLUME = b"""
volumes:
  - {volume_id: vvol-req, vm_id: vm-1, host_id: host-1, storage_array: S1, size_mb: 10,
     attach_on: request, detach_on: request, password: s3cret-Pw}
"""


def valid_emf(line: str) -> dict:
    """One EMF document, checked against the specification; the document."""
    doc = json.loads(line)
    meta = doc["_aws"]
    assert set(meta) == {"Timestamp", "CloudWatchMetrics"}, meta
    assert type(meta["Timestamp"]) is int and abs(meta["Timestamp"] - time.time() * 1000) < 120_000  # ms, now
    [directive] = meta["CloudWatchMetrics"]
    assert set(directive) == {"Namespace", "Dimensions", "Metrics"}
    assert isinstance(directive["Namespace"], str) and 1 <= len(directive["Namespace"]) <= 255
    assert directive["Namespace"] == "vvolguard/vvg"  # the template's vvolguard/${Prefix}, default prefix
    members = {"_aws"}
    for dim_set in directive["Dimensions"]:
        assert isinstance(dim_set, list) and len(dim_set) <= 30
        for name in dim_set:
            assert name in ALLOWED_DIMENSIONS, name  # bounded: never an id
            assert isinstance(doc[name], str) and 1 <= len(doc[name]) <= 1024
            members.add(name)
    assert 1 <= len(directive["Metrics"]) <= 100
    for m in directive["Metrics"]:
        assert set(m) <= {"Name", "Unit", "StorageResolution"} and m["Unit"] in UNITS
        assert isinstance(doc[m["Name"]], (int, float)) and not isinstance(doc[m["Name"]], bool)
        members.add(m["Name"])
    assert set(doc) == members, "no property besides the dimensions and the metrics"
    return doc


def emitted(capsys) -> list[dict]:
    """The EMF documents written to stdout since the last call (each checked)."""
    out = capsys.readouterr().out
    return [valid_emf(line) for line in out.splitlines() if line.startswith('{"_aws"')]


def counts(docs: list[dict], metric: str) -> Counter:
    """(dimension values) -> summed value of ``metric``."""
    c: Counter = Counter()
    for d in docs:
        if metric in d:
            dims = d["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]
            c[tuple(d[k] for k in dims)] += d[metric]
    return c


@pytest.fixture
def lambda_env(monkeypatch):
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "vvg-events")


def apply(settings, text: bytes) -> None:
    from vvolguard.domain.policy import parse_policy_text
    from vvolguard.services.policies import PolicyService

    PolicyService(settings).apply(parse_policy_text(text))


# ---------------------------------------------------------------- the adapter


def test_records__follow_the_specification_one_per_set_of_dimension_values(lambda_env, capsys):
    from vvolguard.adapters.metrics import Metrics

    m = Metrics("vvolguard/vvg")
    m.add("Decisions", action="attach", outcome="done")
    m.add("Decisions", action="attach", outcome="done")
    m.add("Decisions", action="detach", outcome="failed")
    assert m.flush() == 2
    docs = emitted(capsys)
    assert counts(docs, "Decisions") == {("attach", "done"): 2, ("detach", "failed"): 1}
    assert docs[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["action", "outcome"]]
    assert docs[0]["_aws"]["CloudWatchMetrics"][0]["Metrics"] == [{"Name": "Decisions", "Unit": "Count"}]
    assert m.flush() == 0 and emitted(capsys) == []  # flushed counts are forgotten


@pytest.mark.parametrize("hostile", ["vm-1", "i-0123456789abcdef0", "Hunter2", "a" * 41, "x y", "", "ATTACH", None])
def test_a_dimension_value_that_is_not_a_short_word__becomes_other(lambda_env, capsys, hostile):
    from vvolguard.adapters.metrics import count

    count("vvolguard/vvg", "Alerts", kind=hostile)
    [doc] = emitted(capsys)
    assert doc["kind"] == "other" and (not hostile or hostile not in json.dumps(doc))


def test_unknown_metrics_and_dimensions__are_refused_and_count_never_raises(lambda_env, capsys):
    from vvolguard.adapters.metrics import Metrics, count

    with pytest.raises(KeyError):
        Metrics().add("Passwords", 1)
    with pytest.raises(ValueError):
        Metrics().add("Alerts", kind="x", vm_id="vm-1")  # an id is never a dimension
    count("vvolguard/vvg", "Alerts", kind="x", vm_id="vm-1")  # logged, not raised
    assert emitted(capsys) == []


def test_outside_lambda__nothing_on_stdout_the_line_goes_to_the_debug_log(capsys, caplog, monkeypatch):
    """The CLI prints JSON: a metric line must never mix with a command's output."""
    from vvolguard.adapters.metrics import count

    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    with caplog.at_level("DEBUG", logger="vvg.metrics"):
        count("vvolguard/vvg", "ReconcileProblems", 0)
    assert capsys.readouterr().out == ""
    [rec] = [r for r in caplog.records if r.name == "vvg.metrics"]
    assert valid_emf(rec.getMessage())["ReconcileProblems"] == 0


def test_the_adapter_imports_light():
    """No Powertools, Flask or boto3 on its import path (docs/metrics.md has the cold-start figures)."""
    import subprocess
    import sys

    code = ("import sys, vvolguard.adapters.metrics; "
            "print(sorted(m for m in ('aws_lambda_powertools', 'flask', 'boto3', 'botocore') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------- where they are emitted


def test_a_webhook_event_with_two_decisions__counts_both_in_one_line_after_it_is_recorded(webhook, lambda_env,
                                                                                           capsys):
    apply(webhook.settings, TWO_VOLUMES)
    capsys.readouterr()
    code, body = webhook.send("vm.preboot", "vm-1")
    assert code == 200 and len(body["decisions"]) == 2, body
    docs = emitted(capsys)
    assert len(docs) == 1 and counts(docs, "Decisions") == {("attach", "done"): 2}
    code, body = webhook.send("vm.booted", "vm-1")
    assert code == 200 and counts(emitted(capsys), "Decisions") == {("detach", "done"): 2}
    # a repeated event_id answers the stored answer: it is not counted again
    assert webhook.send("vm.booted", "vm-1", event_id="t-2")[0] == 200
    assert emitted(capsys) == []


def test_an_internal_aws_ec2_event__is_counted_too(aws, lambda_env, capsys):
    from infra.bootstrap import seed_demo
    from vvolguard.services.events import EventService
    from vvolguard.services.vms import EC2_HOST

    seed_demo(aws, "admin-pass-123")
    apply(aws, b"volumes:\n  - {volume_id: vvol-e, vm_id: i-0123456789abcdef0, host_id: aws-ec2, storage_array: S1,"
               b" size_mb: 10, attach_on: preboot, detach_on: shutdown}\n")
    capsys.readouterr()
    answer = EventService(aws).handle_internal(EC2_HOST, {"event_id": "e-1", "type": "vm.preboot",
                                                          "vm_id": "i-0123456789abcdef0"})
    # the emulation has no such instance: the decision fails, and is counted like any other
    assert [(d["action"], d["outcome"]) for d in answer["decisions"]] == [("attach", "failed")], answer
    docs = emitted(capsys)
    assert counts(docs, "Decisions") == {("attach", "failed"): 1}, docs
    assert "i-0123456789abcdef0" not in json.dumps(docs)


def test_a_password_request_and_a_lockout__count_decisions_and_one_alert_and_leak_nothing(webhook, lambda_env,
                                                                                           capsys):
    apply(webhook.settings, REQUEST_VOLUME)
    capsys.readouterr()
    for _ in range(5):
        code, body = webhook.send("volume.attach_request", "vm-1", volume_id="vvol-req", password="Hunter2-guess")
        assert code == 200 and body["decisions"][0]["reason"] == "bad_password", body
    out = capsys.readouterr().out
    docs = [valid_emf(line) for line in out.splitlines() if line.startswith('{"_aws"')]
    assert counts(docs, "Decisions") == {("attach", "denied"): 5}
    assert counts(docs, "Alerts") == {("volume_locked",): 1}
    for secret in ("Hunter2", "s3cret-Pw", webhook.secret, "vvol-req", "vm-1", "host-1"):
        assert secret not in out, secret  # nothing secret, no id, in any line on stdout


def test_a_reconciler_pass__counts_its_problems_0_when_clean(aws, lambda_env, capsys, monkeypatch):
    from vvolguard.services.reconcile import Reconciler

    assert Reconciler(aws).run()["ok"] is True
    [doc] = [d for d in emitted(capsys) if "ReconcileProblems" in d]
    assert doc["ReconcileProblems"] == 0 and doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [[]]

    def broken(self, now, s):
        raise RuntimeError("the provider is down")

    def many(self, now, s):
        s.errors.extend(f"lease vvol-{i}: throttled" for i in range(25))

    monkeypatch.setattr(Reconciler, "_fold_refusals", broken)
    monkeypatch.setattr(Reconciler, "_expire_leases", many)
    summary = Reconciler(aws).run()
    assert summary["ok"] is False and len(summary["errors"]) == 20  # the summary keeps 20; the metric counts all
    [doc] = [d for d in emitted(capsys) if "ReconcileProblems" in d]
    assert doc["ReconcileProblems"] == 26


def test_the_reconcile_handler__one_problems_line_per_pass(aws, lambda_env, capsys):
    from vvolguard.handlers import reconcile

    reconcile.reset()
    try:
        assert reconcile.handler({}, None)["ok"] is True
    finally:
        reconcile.reset()
    assert [d["ReconcileProblems"] for d in emitted(capsys) if "ReconcileProblems" in d] == [0]


def test_an_alert_raised_outside_an_event__counts_once_per_stored_alert(aws, lambda_env, capsys):
    from vvolguard.services.alerts import raise_alert

    now = datetime.now(timezone.utc)
    assert raise_alert(aws, "host_revoked", host_id="host-9", detail="revoked by admin", now=now)
    assert raise_alert(aws, "host_revoked", host_id="host-9", now=now + timedelta(seconds=1)) is None  # quiet
    docs = emitted(capsys)
    assert counts(docs, "Alerts") == {("host_revoked",): 1} and "host-9" not in json.dumps(docs)


def test_a_warm_event__keeps_3_dynamodb_and_2_provider_calls_metrics_add_none(webhook, lambda_env, capsys):
    from vvolguard.adapters import aws as aws_adapter

    assert webhook.send("vm.preboot", "vm-1")[0] == 200  # cold: creates the volume, caches the host
    assert webhook.send("vm.booted", "vm-1")[0] == 200
    capsys.readouterr()
    seen: Counter = Counter()

    def count(model, **_):
        seen[(model.service_model.service_name, model.name)] += 1

    aws_adapter.add_hook("before-call", count)
    try:
        assert webhook.send("vm.preboot", "vm-1")[0] == 200
    finally:
        aws_adapter.remove_hook("before-call", count)
    assert sum(n for (svc, _), n in seen.items() if svc == "dynamodb") == 3, seen
    assert sum(n for (svc, _), n in seen.items() if svc == "ec2") == 2, seen
    assert {svc for svc, _ in seen} <= {"dynamodb", "ec2"}, seen  # no CloudWatch, no Logs
    assert counts(emitted(capsys), "Decisions")[("attach", "done")] == 1


# ---------------------------------------------------------------- the template


def test_template__no_log_text_filter_the_alarms_watch_the_emf_metrics():
    from vvolguard.services.alerts import KINDS

    t = Template()
    res = t.resources
    assert not [n for n, r in res.items() if r["Type"] == "AWS::Logs::MetricFilter"]
    assert "reconcile false" not in json.dumps(t.doc)
    env_ns = t.doc["Globals"]["Function"]["Environment"]["Variables"]["VVG_METRICS_NAMESPACE"]
    problems = res["ReconcileProblemsAlarm"]["Properties"]
    assert (problems["Namespace"], problems["MetricName"]) == (env_ns, "ReconcileProblems")
    assert "DependsOn" not in res["ReconcileProblemsAlarm"]
    alerts = res["HighAlertsAlarm"]["Properties"]
    stats = [m["MetricStat"]["Metric"] for m in alerts["Metrics"] if "MetricStat" in m]
    assert all(s["Namespace"] == env_ns and s["MetricName"] == "Alerts" for s in stats)
    watched = {d["Value"] for s in stats for d in s["Dimensions"] if d["Name"] == "kind"}
    assert watched == {k for k, sev in KINDS.items() if sev in ("high", "critical")}
