"""Pages a person can read (docs/dashboard-pages.md): /policies sorted by column with natural ids, the audit
page's chain and sequence, its first bad record marked and linked, old → new per policy change, relative
times, the exposure chart's window and lease overruns, and the env file `make run` leaves for a second
terminal. The layout at 390 and 1280 px is checked in a real browser by tests/test_browser.py."""
from __future__ import annotations

import html
import os
import re
import stat
from datetime import datetime, timedelta, timezone

import pytest

from tests.dashboard_support import *  # noqa: F401,F403 - fixtures
from tests.dashboard_support import csrf_token

_VOLUME_CELL = re.compile(r'data-label="Volume"><a class="id" href="[^"]+">([^<]+)</a>')


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _volumes(page: str) -> list[str]:
    return _VOLUME_CELL.findall(page)


def _add(settings, vid: str, vm: str, size: int = 10) -> None:
    from vvolguard.domain.policy import validate_entry
    from vvolguard.services.policies import PolicyService

    spec, _ = validate_entry({"volume_id": vid, "vm_id": vm, "host_id": "host-1", "storage_array": "S1",
                              "size_mb": size, "attach_on": "preboot", "detach_on": "postboot"}, "t")
    PolicyService(settings).save_one(spec, "user:admin", 0)


# ---- /policies: sort by column, natural ids


def test_policies__sorted_by_any_column_both_ways_with_natural_ids(client, login, seeded):
    _add(seeded[0], "vvol-10", "vm-10", size=5)
    login("viewer")
    assert _volumes(client.get("/policies").get_data(as_text=True)) == \
        ["vvol-1", "vvol-2", "vvol-3", "vvol-4", "vvol-5", "vvol-10"]  # by VM, vm-10 after vm-5
    assert _volumes(client.get("/policies?sort=volume_id").get_data(as_text=True))[-2:] == ["vvol-5", "vvol-10"]
    page = client.get("/policies?sort=-size_mb").get_data(as_text=True)
    assert _volumes(page)[0] == "vvol-2" and _volumes(page)[-1] == "vvol-10"  # 100 MB first, 5 MB last
    assert 'aria-sort="descending"' in page
    assert _volumes(client.get("/policies?sort=-volume_id").get_data(as_text=True))[0] == "vvol-10"
    assert _volumes(client.get("/policies?sort=app").get_data(as_text=True))[-2:] == ["vvol-4", "vvol-5"]  # A1, A2


def test_policies__sort_links_keep_the_filters_and_toggle_the_direction(client, login, seeded):
    login("viewer")
    page = html.unescape(client.get("/policies?host_id=host-1&state=detached&sort=size_mb").get_data(as_text=True))
    links = re.findall(r'<a class="sort" href="([^"]+)"', page)
    assert len(links) == 10
    assert all("host_id=host-1" in u and "state=detached" in u for u in links)
    assert "/policies?sort=-size_mb" in page.replace("&host_id=host-1", "").replace("&state=detached", "") or \
        any("sort=-size_mb" in u for u in links)  # the current column's link reverses it
    assert any("sort=vm_id" in u for u in links)
    assert 'name="sort" value="size_mb"' in page  # the filter form keeps the order


@pytest.mark.parametrize("value", ["<script>alert(1)</script>", "-", "--size_mb", "x" * 5000, "size_mb\x00",
                                   "__class__", "-__init__"])
def test_policies__a_hostile_sort_is_the_default_order_and_never_echoed(client, login, seeded, value):
    login("viewer")
    r = client.get("/policies", query_string={"sort": value})
    page = r.get_data(as_text=True)
    assert r.status_code == 200
    assert _volumes(page) == ["vvol-1", "vvol-2", "vvol-3", "vvol-4", "vvol-5"]
    assert "<script>alert" not in page and "x" * 100 not in page and "__class__" not in page


def test_policies__sorting_needs_a_signed_in_user(client, seeded):
    r = client.get("/policies?sort=-size_mb")
    assert r.status_code == 302 and "/login" in r.headers["Location"]


# ---- the audit page: chain, sequence, the first bad record, old → new, relative times


def test_audit__each_row_shows_its_chain_and_sequence_with_an_anchor(client, login, seeded):
    login("viewer")
    page = client.get("/audit?vm=vm-1").get_data(as_text=True)
    assert '<tr id="rec-VM_vm-1-1"' in page
    assert '<span class="id mono">VM#vm-1</span> <span class="seq mono">#1</span>' in page


def test_audit__the_first_bad_record_is_marked_and_linked_from_the_banner(app, client, login, seeded):
    from vvolguard.adapters.audit import AuditLog, AuditRecord
    from vvolguard.adapters.models import AuditItem

    log = AuditLog(seeded[0])
    for i in range(3):
        log.append([AuditRecord(actor="host:host-1", action="attach", outcome="done", vm_id="vm-3",
                                volume_id="vvol-3", reason=f"r-{i}")])
    login("viewer")
    assert "bad-record" not in client.get("/audit?vm=vm-3").get_data(as_text=True)
    rec = AuditItem.get("VM#vm-3", 2)
    rec.update(actions=[AuditItem.reason.set("edited afterwards")])
    client.post("/audit/verify", data={"csrf_token": csrf_token(client, "/audit")})
    app.extensions["vvg"].tamper.run_if_due(requested_only=True)  # the scheduled side (docs/audit-check.md)
    page = client.get("/audit?vm=vm-3").get_data(as_text=True)
    assert 'href="/audit?vm=vm-3#rec-VM_vm-3-2"' in page  # the banner's link
    row = page.split('<tr id="rec-VM_vm-3-2"', 1)[1].split("</tr>", 1)[0]
    assert row.startswith(' class="bad-record"') and "altered or reordered" in row
    assert page.count('class="bad-record"') == 1  # only the first bad one; its successors still verify


def test_audit__a_policy_change_shows_old_and_new_values_never_a_password(client, login, seeded):
    from vvolguard.adapters.models import AuditItem
    from vvolguard.domain.policy import validate_entry
    from vvolguard.services.policies import PolicyService

    svc = PolicyService(seeded[0])
    spec, _ = validate_entry({"volume_id": "vvol-1", "vm_id": "vm-1", "host_id": "host-1", "storage_array": "S2",
                              "size_mb": 64, "attach_on": "preboot", "detach_on": "shutdown",
                              "authorized_apps": ["A1", "A2"], "password": "pw-secret-9"}, "t")
    svc.save_one(spec, "user:admin", int(svc.get("vvol-1").policy_version))
    rec = next(AuditItem.query("VM#vm-1", scan_index_forward=False, limit=1))
    detail = rec.detail.as_dict()
    assert detail["changes"] == ("storage_array: S1 → S2; size_mb: 10 → 64; detach_on: postboot → shutdown; "
                                 "authorized_apps: - → A1,A2; os_disk_encryption: true → false")
    assert "pw-secret-9" not in str(detail) and detail["password"] == "set"
    login("viewer")
    page = client.get("/audit?vm=vm-1").get_data(as_text=True)
    text = re.sub(r"<[^>]+>", "", page)
    assert re.search(r"storage_array: S1\s*→\s*S2", text) and re.search(r"detach_on: postboot\s*→\s*shutdown", text)
    assert "<details" in page and "5 fields changed" in page  # more than three changes fold
    assert "pw-secret-9" not in page


def test_audit__relative_times_are_accepted_and_pinned_for_paging(client, login, seeded):
    from vvolguard.adapters.audit import AuditLog, AuditRecord

    log = AuditLog(seeded[0])
    old = _iso(datetime.now(timezone.utc) - timedelta(hours=30))
    log.append([AuditRecord(actor="cli", action="attach", outcome="done", vm_id="vm-8", event_id="old-one", at=old)])
    for i in range(25):
        log.append([AuditRecord(actor="cli", action="attach", outcome="done", vm_id="vm-8", event_id=f"new-{i}")])
    login("viewer")
    page = client.get("/audit?vm=vm-8&from=last+24+h&per_page=20").get_data(as_text=True)
    assert "new-24" in page and "old-one" not in page
    nxt = html.unescape(re.search(r'href="([^"]*cursor=[^"]*)">Older records', page).group(1))
    assert "from=20" in nxt and "from=last" not in nxt  # the link pins the absolute start
    second = client.get(nxt).get_data(as_text=True)
    assert "new-0" in second and "old-one" not in second and "belongs to other filters" not in second
    assert "old-one" in client.get("/audit?vm=vm-8&from=7d").get_data(as_text=True)
    assert client.get("/audit?vm=vm-8&from=30+min+ago").status_code == 200
    assert 'aria-current="true">last 24 h' not in page  # "last 24 h" typed, not the quick link's value


@pytest.mark.parametrize("value", ["99999d", "401d", "24x", "-24h", "24 h ago ago", "last", "1e3h"])
def test_audit__a_bad_relative_time_is_refused_with_the_forms_it_takes(client, login, seeded, value):
    login("viewer")
    r = client.get("/audit", query_string={"from": value})
    assert r.status_code == 400
    assert "24h" in r.get_data(as_text=True) and "No audit records yet" not in r.get_data(as_text=True)


def test_parse_bound__relative_forms():
    from vvolguard.services.audit_queries import parse_bound

    now = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)
    assert parse_bound("24h", False, now) == "2026-12-03T12:00:00.000Z"
    assert parse_bound("last 7 days", False, now) == "2026-11-27T12:00:00.000Z"
    assert parse_bound("30 min ago", True, now) == "2026-12-04T11:30:00.000Z"
    assert parse_bound("2026-12-01", False, now) == "2026-12-01T00:00:00.000Z"


# ---- the exposure chart


def test_exposure__an_attachment_past_its_lease_is_measured_and_drawn_apart(client, login, seeded):
    from vvolguard.adapters.audit import AuditLog, AuditRecord
    from vvolguard.services.exposure import exposure

    now = datetime.now(timezone.utc).replace(microsecond=0)
    log = AuditLog(seeded[0])
    log.append([AuditRecord(actor="host:host-1", action="attach", outcome="done", vm_id="vm-1", volume_id="vvol-1",
                            at=_iso(now - timedelta(minutes=50)),
                            detail={"lease_expires_at": _iso(now - timedelta(minutes=35)).replace(".000", "")})])
    log.append([AuditRecord(actor="reconciler", action="detach", outcome="done", vm_id="vm-1", volume_id="vvol-1",
                            at=_iso(now - timedelta(minutes=20)))])
    log.append([AuditRecord(actor="host:host-1", action="attach", outcome="done", vm_id="vm-2", volume_id="vvol-2",
                            at=_iso(now - timedelta(minutes=10)),
                            detail={"lease_expires_at": _iso(now + timedelta(minutes=5))})])
    log.append([AuditRecord(actor="host:host-1", action="detach", outcome="done", vm_id="vm-2", volume_id="vvol-2",
                            at=_iso(now - timedelta(minutes=2)))])
    exp = exposure(now, timedelta(hours=24), current=[])
    over = {v.volume_id: round(v.intervals[0].overrun_seconds / 60) for v in exp.volumes}
    assert over == {"vvol-1": 15, "vvol-2": 0}
    login("viewer")
    page = client.get("/attachments").get_data(as_text=True)
    svg = page.split("<svg", 1)[1].split("</svg>", 1)[0]
    assert svg.count('class="bar over"') == 1 and "15 min past its lease" in svg
    assert "1 attachment outlived its lease" in page


@pytest.mark.parametrize("window,title,first_tick", [("1h", "last hour", r"\d\d:\d0"), ("24h", "last 24 hours", r"\d\d:00"),
                                                     ("7d", "last 7 days", r"[A-Z][a-z][a-z] \d\d")])
def test_attachments__the_chart_window_and_round_ticks(client, login, seeded, window, title, first_tick):
    login("viewer")
    from vvolguard.adapters.audit import AuditLog, AuditRecord

    now = datetime.now(timezone.utc)
    for action, ago in (("attach", 30), ("detach", 20)):
        AuditLog(seeded[0]).append([AuditRecord(actor="host:host-1", action=action, outcome="done", vm_id="vm-1",
                                                volume_id="vvol-1", at=_iso(now - timedelta(minutes=ago)))])
    page = client.get(f"/attachments?window={window}").get_data(as_text=True)
    assert f"Exposure over the {title}" in page and f'aria-current="true">{window}</a>' in page
    ticks = re.findall(r'<text class="tick"[^>]*>([^<]+)</text>', page)
    assert len(ticks) >= 5 and all(re.fullmatch(first_tick, t) for t in ticks if t != "now"), ticks


@pytest.mark.parametrize("value", ["<b>", "48h", "", "1h;drop", "x" * 3000])
def test_attachments__an_unknown_window_is_the_last_24_hours(client, login, seeded, value):
    login("viewer")
    r = client.get("/attachments", query_string={"window": value})
    assert r.status_code == 200 and "Exposure over the last 24 hours" in r.get_data(as_text=True)
    assert "<b>" not in r.get_data(as_text=True).split("<main>", 1)[1]


def test_round_ticks__on_round_times_inside_the_window():
    from dashboard.attachments import round_ticks

    end = datetime(2026, 12, 4, 13, 47, 12, tzinfo=timezone.utc)
    assert [t.strftime("%H:%M") for t in round_ticks(end - timedelta(hours=1), end, timedelta(minutes=10))] == \
        ["12:50", "13:00", "13:10", "13:20", "13:30", "13:40"]
    day = round_ticks(end - timedelta(hours=24), end, timedelta(hours=3))
    assert [t.hour for t in day] == [15, 18, 21, 0, 3, 6, 9, 12]
    week = round_ticks(end - timedelta(days=7), end, timedelta(days=1))
    assert len(week) == 7 and all(t.hour == 0 and t.minute == 0 for t in week)


# ---- the env file `make run` writes for a second terminal


def _stack(**kw):
    from infra.local import LocalStack

    s = LocalStack(5999, 3999, 8999, admin_password="admin-pass-123", **kw)
    s.seeded = {"host_id": "host-1", "host_secret": "s3cr'et $(rm -rf /) `x`"}
    return s


def test_env_file__points_a_shell_at_the_stack_and_never_at_a_real_account(tmp_path):
    import subprocess

    s = _stack()
    path = s.write_env_file(str(tmp_path / ".vvg" / "env"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    out = subprocess.run(
        ["bash", "-c", f'. "{path}"; env'], capture_output=True, text=True, timeout=30,
        env={"PATH": "/usr/bin:/bin", "AWS_PROFILE": "prod", "AWS_SESSION_TOKEN": "t", "AWS_ACCESS_KEY_ID": "AKIAREAL"},
    ).stdout
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:5999" and env["AWS_ACCESS_KEY_ID"] == "testing"
    assert env["VVG_API_URL"] == "http://127.0.0.1:3999" and env["VVG_DASHBOARD_URL"] == "http://127.0.0.1:8999"
    assert env["VVG_HOST_SECRET"] == "s3cr'et $(rm -rf /) `x`"  # quoted: a value is never run
    assert "AWS_PROFILE" not in env and "AWS_SESSION_TOKEN" not in env
    assert env["PATH"].split(":")[0].endswith("bin")


def test_env_file__removed_on_stop_only_if_it_is_still_ours(tmp_path):
    mine = _stack()
    path = mine.write_env_file(str(tmp_path / "env"))
    mine.remove_env_file()
    assert not path.exists()
    mine.write_env_file(str(path))
    newer = _stack()
    newer.aws_port = 6001
    newer.write_env_file(str(path))  # a second stack took the file over
    mine.remove_env_file()
    assert path.exists() and "6001" in path.read_text()
