"""The composition root (docs/architecture.md): ``Services.build(settings)`` binds the models once and builds
each service once; the handlers, the CLI and the dashboard use it, and the dashboard builds nothing per request."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.dashboard_support import *  # noqa: F401,F403 - fixtures
from tests.dashboard_support import csrf_token

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [p for d in ("functions/vvolguard", "dashboard", "infra", "bench") for p in (ROOT / d).rglob("*.py")]


def test_build__binds_the_models_to_the_settings_and_builds_each_service_once(aws):
    import dataclasses

    from vvolguard.adapters.models import AuditItem, LimitItem, PolicyItem, UserItem
    from vvolguard.services.root import Services

    root = Services.build(aws)
    assert (PolicyItem.Meta.table_name, AuditItem.Meta.table_name, UserItem.Meta.table_name,
            LimitItem.Meta.table_name) == (aws.state_table, aws.audit_table, aws.users_table, aws.users_table)
    for name in ("policies", "hosts", "users", "keys", "quarantine", "events", "simulator", "tamper", "audit",
                 "provider", "checkpoints"):
        assert getattr(root, name) is getattr(root, name), name
    assert root.events.provider is root.provider is root.policies.provider is root.quarantine.provider
    other = dataclasses.replace(aws, state_table="vvg-other-state")
    try:
        Services.build(other)
        assert PolicyItem.Meta.table_name == "vvg-other-state" and PolicyItem._get_connection().table_name == "vvg-other-state"
    finally:
        Services.build(aws)
    assert PolicyItem._get_connection().table_name == aws.state_table


def test_only_the_root_binds_the_models_and_nothing_reaches_into_pynamodb_elsewhere():
    """One place sets the models' Meta and drops their connections: adapters/models.bind, called by the root."""
    offenders = []
    for path in SOURCES:
        rel = str(path.relative_to(ROOT))
        text = path.read_text()
        if rel != "functions/vvolguard/adapters/models.py" and re.search(r"\.Meta\.\w+\s*=|\._connection\s*=|get_session\s*=", text):
            offenders.append(f"{rel}: sets PynamoDB internals")
        if rel not in ("functions/vvolguard/services/root.py", "functions/vvolguard/adapters/models.py") and \
                re.search(r"(?<![.\w])(bind|configure)\(|import (bind|configure)\b|models\.(bind|configure)\b", text):
            offenders.append(f"{rel}: binds the models")
    assert offenders == []


COUNTED = ("vvolguard.services.policies:PolicyService", "vvolguard.services.hosts:HostService",
           "vvolguard.services.users:UserService", "vvolguard.services.quarantine:QuarantineService",
           "vvolguard.services.keys:KeyService", "vvolguard.services.events:EventService",
           "vvolguard.services.simulate:Simulator", "vvolguard.services.tamper:TamperCheck",
           "vvolguard.adapters.audit:AuditLog", "vvolguard.adapters.provider:EbsProvider",
           "vvolguard.adapters.limits:LoginLimiter", "vvolguard.adapters.limits:GuessSlots")


def test_dashboard__builds_no_service_or_adapter_per_request(app, client, login, seeded, monkeypatch):
    import importlib

    def visit():
        for path in ("/policies", "/policies/vvol-1", "/hosts", "/users", "/audit", "/simulate", "/vms/vm-1",
                     "/attachments", "/alerts"):
            assert client.get(path).status_code == 200, path
        r = client.post("/simulate", data={"vm_id": "vm-1", "type": "vm.preboot", "csrf_token": csrf_token(client, "/simulate")})
        assert r.status_code == 200
        assert client.post("/audit/verify", data={"csrf_token": csrf_token(client, "/audit")}).status_code == 302

    login("admin")
    visit()  # the root builds each service on first use
    built = []
    for spec in COUNTED:
        module, name = spec.split(":")
        cls = getattr(importlib.import_module(module), name)
        real = cls.__init__
        monkeypatch.setattr(cls, "__init__", lambda self, *a, _real=real, _n=name, **kw: built.append(_n) or _real(self, *a, **kw))
    visit()
    assert built == []


def test_the_events_handler_and_the_cli_use_the_root(aws, vvg, monkeypatch):
    from vvolguard.handlers import events as events_handler
    from vvolguard.services import root as root_module

    builds = []
    real = root_module.Services.build.__func__
    monkeypatch.setattr(root_module.Services, "build", classmethod(lambda cls, *a, **kw: builds.append(1) or real(cls, *a, **kw)))
    events_handler.reset()
    try:
        first = events_handler.service()
        assert events_handler.service() is first and len(builds) == 1  # once per warm container
    finally:
        events_handler.reset()
    assert vvg("host", "list").code == 0 and len(builds) == 2  # one root per CLI command


@pytest.mark.parametrize("event", [{"source": "aws.events"}, {"vvg": "something else"}, {"vvg": "tamper_check", "x": 1}, []])
def test_reconcile_handler__anything_but_the_exact_request_payload_is_a_normal_pass(aws, event):
    from vvolguard.handlers import reconcile as reconcile_handler

    reconcile_handler.reset()
    try:
        out = reconcile_handler.handler(event, None)
    finally:
        reconcile_handler.reset()
    assert "expired_leases" in out and out["tamper_check"]["ok"] is True  # a full pass, its scheduled check first due


def test_reconcile_pass__runs_the_tamper_check_when_due_stores_it_and_alerts_when_it_fails(aws, monkeypatch):
    """The scheduled function's check (docs/audit-check.md): at most every INTERVAL_S unless asked for; a failed
    one raises tamper_check_failed and fails the pass."""
    from datetime import datetime, timedelta, timezone

    from vvolguard.adapters.audit import AuditLog, AuditRecord
    from vvolguard.adapters.models import AuditItem
    from vvolguard.services import tamper as tamper_module
    from vvolguard.services.alerts import list_alerts
    from vvolguard.services.root import Services

    root = Services.build(aws)
    AuditLog(aws).append([AuditRecord(actor="cli", action="attach", outcome="done", vm_id="vm-9", reason="r")])
    runs = []
    real = AuditLog.verify
    monkeypatch.setattr(AuditLog, "verify", lambda self, *a, **kw: runs.append(1) or real(self, *a, **kw))
    now = datetime.now(timezone.utc)
    first = root.reconciler().run(now)
    assert first["tamper_check"]["ok"] is True and first["ok"] and len(runs) == 1
    assert root.reconciler().run(now + timedelta(seconds=10))["tamper_check"] is None and len(runs) == 1  # fresh
    AuditItem.get("VM#vm-9", 1).update(actions=[AuditItem.reason.set("edited afterwards")])
    assert list(list_alerts(timedelta(hours=1))) == []
    later = root.reconciler().run(now + timedelta(seconds=tamper_module.INTERVAL_S + 1))
    assert later["tamper_check"]["ok"] is False and not later["ok"] and len(runs) == 2
    assert any("tamper check: record 1 of chain VM#vm-9" in e for e in later["errors"])
    assert [(a["kind"], a["vm_id"]) for a in list_alerts(timedelta(hours=1), now=now + timedelta(minutes=10))] == [
        ("tamper_check_failed", "vm-9")]
    state = root.tamper.state(now + timedelta(seconds=tamper_module.INTERVAL_S + 2))
    assert state["result"]["ok"] is False and state["result"]["first_problem"]["chain"] == "VM#vm-9"
    assert "edited afterwards" not in str(state)  # problems name records, never their contents
