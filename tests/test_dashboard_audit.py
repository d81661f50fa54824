"""/audit: filters, paging by an opaque signed DynamoDB cursor, CSV/JSON export of the filtered set
(nothing secret in it), and the tamper check's result on the page."""
from __future__ import annotations

import csv
import io
import json
import re
from urllib.parse import parse_qs, urlparse

import pytest

from tests.dashboard_support import *  # noqa: F401,F403 - fixtures
from tests.dashboard_support import csrf_token

_NEXT = re.compile(r'href="([^"]*cursor=[^"]*)">Older records')


def _records(settings, n: int, vm: str = "vm-7", **kw):
    from vvolguard.adapters.audit import AuditLog, AuditRecord

    log = AuditLog(settings)
    for i in range(n):
        log.append([AuditRecord(actor="host:host-1", action="attach" if i % 2 == 0 else "detach",
                                outcome="done" if i % 3 else "denied", reason=f"r-{i}", vm_id=vm,
                                volume_id=f"{vm}-vol", host_id="host-1", event_id=f"{vm}-ev-{i}",
                                event_type="vm.preboot", **kw)])


def _rows(page: str) -> list[str]:
    return re.findall(r'<span class="id mono muted small" title="event id">([^<]+)</span>', page)  # event ids, one per row


def _walk(client, url: str, limit: int = 50) -> list[list[str]]:
    pages = []
    for _ in range(limit):
        r = client.get(url)
        assert r.status_code == 200, r.get_data(as_text=True)[:500]
        text = r.get_data(as_text=True)
        pages.append((_rows(text), text.count('<td class="when"')))
        m = _NEXT.search(text)
        if not m:
            return pages
        url = m.group(1).replace("&amp;", "&")
    raise AssertionError("paging did not end")


@pytest.mark.parametrize("filters", ["vm=vm-7", "volume=vm-7-vol", "host=host-1&type=vm.preboot", ""])
def test_paging__cursor_walks_every_record_once_newest_first(client, login, seeded, filters):
    _records(seeded[0], 57)
    login("viewer")
    from vvolguard.adapters.models import AuditItem

    pages = _walk(client, f"/audit?per_page=20&{filters}")
    total = 57 if filters else sum(1 for _ in AuditItem.scan())  # unfiltered: the seed's records too
    assert [n for _, n in pages] == [20] * (total // 20) + ([total % 20] if total % 20 else [])
    ids = [e for p, _ in pages for e in p]
    assert ids == [f"vm-7-ev-{i}" for i in range(56, -1, -1)]


def test_paging__the_cursor_is_opaque_signed_and_bound_to_its_filters(client, login, seeded):
    _records(seeded[0], 30)
    login("viewer")
    page = client.get("/audit?vm=vm-7&per_page=10").get_data(as_text=True)
    url = _NEXT.search(page).group(1).replace("&amp;", "&")
    cursor = parse_qs(urlparse(url).query)["cursor"][0]
    assert "vm-7" not in cursor and "seq" not in cursor and "offset" not in url
    # altered: refused with a message, not a crash and not an arbitrary DynamoDB start key
    r = client.get(f"/audit?vm=vm-7&per_page=10&cursor={cursor[:-3]}xyz")
    assert r.status_code == 400 and "page link is not valid" in r.get_data(as_text=True)
    # made for other filters
    r = client.get(f"/audit?vm=vm-1&per_page=10&cursor={cursor}")
    assert r.status_code == 400 and "belongs to other filters" in r.get_data(as_text=True)


def test_filters__outcome_type_and_time(client, login, seeded):
    _records(seeded[0], 12)
    login("viewer")
    denied = _rows(client.get("/audit?vm=vm-7&outcome=denied").get_data(as_text=True))
    assert denied == [f"vm-7-ev-{i}" for i in (9, 6, 3, 0)]
    page = client.get("/audit?type=policy_create").get_data(as_text=True)
    assert page.count("policy_create") >= 5 and "vm-7-ev" not in page
    page = client.get("/audit?vm=vm-7&from=2000-01-01&to=2000-01-02").get_data(as_text=True)
    assert "vm-7-ev" not in page and "No record matches these filters" in page
    bad = client.get("/audit?from=yesterday")
    assert bad.status_code == 400 and "a time must be a date" in bad.get_data(as_text=True)
    bad = client.get("/audit?vm=<script>")
    assert bad.status_code == 400 and "<script>" not in bad.get_data(as_text=True)


def test_export__csv_and_json_hold_the_filtered_set_and_nothing_secret(app, client, login, seeded):
    settings = seeded[0]
    _records(settings, 7)
    _records(settings, 3, vm="vm-8")
    login("admin")
    token = csrf_token(client, "/hosts")
    enrolled = client.post("/hosts", data={"host_id": "host-9", "mac": "02:00:00:00:00:99", "serial": "SER-99",
                                           "hardware": "rack 9", "csrf_token": token}).get_data(as_text=True)
    secret = re.search(r'id="secret" class="mono secret" value="([^"]+)"', enrolled).group(1)
    from vvolguard.services.policies import PolicyService
    from vvolguard.domain.policy import validate_entry

    spec, _ = validate_entry({"volume_id": "vvol-pw", "vm_id": "vm-7", "host_id": "host-1", "storage_array": "S1",
                              "size_mb": 1, "attach_on": "request", "detach_on": "request", "password": "pw-secret-1"}, "t")
    PolicyService(settings).save_one(spec, "user:admin", 0)
    pw_hash = PolicyService(settings).get("vvol-pw").password_hash

    r = client.get("/audit/export.csv?vm=vm-7")
    assert r.status_code == 200 and r.mimetype == "text/csv"
    assert "attachment" in r.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    assert {row["vm_id"] for row in rows} == {"vm-7"}
    assert len(rows) == 8  # 7 events and the policy create
    assert [row["event_id"] for row in rows if row["event_id"]] == [f"vm-7-ev-{i}" for i in range(6, -1, -1)]
    j = client.get("/audit/export.json?vm=vm-7&outcome=denied")
    data = json.loads(j.get_data(as_text=True))
    assert [d["event_id"] for d in data] == ["vm-7-ev-6", "vm-7-ev-3", "vm-7-ev-0"]
    everything = client.get("/audit/export.json").get_data(as_text=True) + client.get("/audit/export.csv").get_data(as_text=True)
    assert "host_enroll" in everything and "user:admin" in everything
    for forbidden in (secret, "pw-secret-1", pw_hash, "02:00:00:00:00:99", "SER-99", "scrypt$"):
        assert forbidden not in everything, forbidden
    assert all(set(d) == {"at", "actor", "vm_id", "volume_id", "host_id", "event_id", "event_type", "action",
                          "outcome", "reason", "policy_version", "detail", "chain", "seq", "prev", "mac"} for d in json.loads(
        client.get("/audit/export.json").get_data(as_text=True)))


def test_export__csv_cells_cannot_become_spreadsheet_formulas(client, login, seeded):
    from vvolguard.adapters.audit import AuditLog, AuditRecord

    AuditLog(seeded[0]).append([AuditRecord(actor="cli", action="attach", outcome="done", vm_id="vm-7",
                                            reason="=HYPERLINK(\"http://x\")")])
    login("viewer")
    text = client.get("/audit/export.csv?vm=vm-7").get_data(as_text=True)
    assert "'=HYPERLINK" in text


def _count_verifies(monkeypatch) -> list[int]:
    from vvolguard.adapters.audit import AuditLog

    calls, real = [], AuditLog.verify
    monkeypatch.setattr(AuditLog, "verify", lambda self, *a, **kw: calls.append(1) or real(self, *a, **kw))
    return calls


def test_tamper_check__result_shown_and_an_altered_record_is_named(app, client, login, seeded, monkeypatch):
    """The page shows the stored result of the scheduled check; neither the page nor "Check now" reads the
    history (docs/audit-check.md)."""
    from datetime import timedelta

    from vvolguard.adapters.models import AuditItem
    from vvolguard.services.alerts import list_alerts

    checks = _count_verifies(monkeypatch)
    tamper = app.extensions["vvg"].tamper
    login("viewer")
    page = client.get("/audit").get_data(as_text=True)
    assert "No tamper check has run yet" in page and checks == []
    tamper.run()  # what the scheduled function does
    page = client.get("/audit").get_data(as_text=True)
    assert "Tamper check passed" in page and "intact" in page and "no signed checkpoint yet" in page
    from vvolguard.adapters.audit import AuditLog

    at = AuditLog(seeded[0]).checkpoint()["at"]
    tamper.run()
    page = client.get("/audit").get_data(as_text=True)
    assert f"against the signed checkpoint of <span class=\"mono\">{at}</span>" in page
    rec = next(iter(AuditItem.query("ACTOR#cli")))
    rec.update(actions=[AuditItem.reason.set("edited afterwards")])
    checks.clear()
    r = client.post("/audit/verify", data={"csrf_token": csrf_token(client, "/audit")}, follow_redirects=True)
    page = r.get_data(as_text=True)
    assert r.status_code == 200 and checks == []  # asked for, not run in the request
    assert "Tamper check asked for" in page and "Tamper check passed" in page and "runs in a few seconds" in page
    assert tamper.run_if_due(requested_only=True)["ok"] is False  # the local stack's poll (in AWS: the invoke)
    assert tamper.run_if_due(requested_only=True) is None  # one request, one run
    page = client.get("/audit").get_data(as_text=True)
    assert "NOT intact" in page and "ACTOR#cli" in page and "altered" in page and "runs in a few seconds" not in page
    assert [a["kind"] for a in list_alerts(timedelta(hours=1))] == ["tamper_check_failed"]


def test_tamper_check__check_now_asks_at_most_every_10_s_and_needs_a_session(app, client, login, seeded):
    from vvolguard.adapters.models import TAMPER_PK, TamperCheckItem

    r = client.post("/audit/verify", data={"csrf_token": csrf_token(client, "/login")})
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    with pytest.raises(TamperCheckItem.DoesNotExist):  # nothing written for an anonymous request
        TamperCheckItem.get(TAMPER_PK, TAMPER_PK)
    login("viewer")
    assert client.post("/audit/verify", data={}).status_code == 400  # no CSRF token: refused
    with pytest.raises(TamperCheckItem.DoesNotExist):
        TamperCheckItem.get(TAMPER_PK, TAMPER_PK)
    token = csrf_token(client, "/audit")
    first = client.post("/audit/verify", data={"csrf_token": token}, follow_redirects=True).get_data(as_text=True)
    asked = TamperCheckItem.get(TAMPER_PK, TAMPER_PK).requested_at
    again = client.post("/audit/verify", data={"csrf_token": token}, follow_redirects=True).get_data(as_text=True)
    assert "Tamper check asked for" in first and "less than 10 seconds ago" in again
    item = TamperCheckItem.get(TAMPER_PK, TAMPER_PK)
    assert item.requested_at == asked and item.requested_by == "user:vera" and item.checked_at is None


def test_tamper_check__in_aws_check_now_invokes_the_reconcile_function(aws, monkeypatch):
    """With VVG_RECONCILE_FUNCTION set (template.yaml, on the dashboard function), a request is stored and the function invoked
    asynchronously with the tamper-check payload, which runs only the requested check."""
    from vvolguard.adapters import aws as aws_adapter
    from vvolguard.handlers import reconcile as reconcile_handler
    from vvolguard.services.tamper import INVOKE_PAYLOAD, TamperCheck

    sent = []

    class Lambda:  # moto's Lambda would need a container to run the function: only the call is checked
        def invoke(self, **kw):
            sent.append(kw)

    real = aws_adapter.client
    monkeypatch.setattr(aws_adapter, "client",
                        lambda service, *a, **kw: Lambda() if service == "lambda" else real(service, *a, **kw))
    check = TamperCheck(aws)
    assert check.request(actor="user:vera", function="vvg-reconcile")
    assert [(k["FunctionName"], k["InvocationType"], json.loads(k["Payload"])) for k in sent] == [
        ("vvg-reconcile", "Event", INVOKE_PAYLOAD)]
    reconcile_handler.reset()
    out = reconcile_handler.handler(INVOKE_PAYLOAD, None)  # what the invoked function does
    reconcile_handler.reset()
    assert set(out) == {"tamper_check"} and out["tamper_check"]["ok"] is True
    assert check.state()["result"]["ok"] is True and check.state()["running"] is False


def test_empty_states_say_what_to_do(client, login, seeded):
    login("viewer")
    page = client.get("/audit?vm=vm-none").get_data(as_text=True)
    assert "No record matches these filters" in page and "Clear the filters" in page
