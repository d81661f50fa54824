"""Interactive pages never scan a table: each costs the same DynamoDB calls and items read with few or many
policies; /policies pages by queries and signed cursors (docs/policy-pages.md)."""
from __future__ import annotations

import html
import re

import pytest

from bench.pages import Counter, fill, spec_of
from tests.dashboard_support import *  # noqa: F401,F403

SMALL, BIG = 30, 300
HOT = 10  # bench-vm-0's policies (also bench-host-0's and bench-arr-0's) at both sizes: its pages are full
PER_PAGE = 5  # pages of 5 policies: full at both sizes, and moto's slow serializer kept out of the test's time
# Every interactive page (GET) and whether it is the policy listing's (which must never Scan).
PAGES = {
    "/policies": True,
    "/policies?vm_id=bench-vm-0": True,
    "/policies?host_id=bench-host-0": True,
    "/policies?storage_array=bench-arr-0": True,
    "/simulate": True,
    "/attachments": False,
    "/vms/bench-vm-0": False,
    "/audit": False,
    "/hosts": True,
    "/users": True,
    "/alerts": False,
}


def _costs(client, warm: bool, paths=None) -> dict[str, tuple[int, int, tuple[str, ...]]]:
    """Per page (``PAGES`` unless told): DynamoDB calls, items read, the operations called."""
    from vvolguard.adapters import aws

    counter = Counter()
    aws.add_hook("before-call.dynamodb", counter.before)
    aws.add_hook("after-call.dynamodb", counter.after)
    out = {}
    try:
        for path in paths or PAGES:
            if warm:
                client.get(path)  # a first request may read what later ones keep (the tamper check's result)
            counter.reset()
            r = client.get(path)
            assert r.status_code == 200, (path, r.status_code)
            out[path] = (counter.calls, counter.scanned, tuple(counter.ops))
    finally:
        aws.remove_hook("before-call.dynamodb", counter.before)
        aws.remove_hook("after-call.dynamodb", counter.after)
    return out


@pytest.fixture
def small_pages(seeded):
    """A signed-in admin's client of an app with pages of PER_PAGE policies (the tamper check's result kept)."""
    from dashboard import create_app

    client = create_app(dict(TEST_CONFIG, VVG_POLICIES_PER_PAGE=PER_PAGE, VVG_TAMPER_TTL=10 ** 9)).test_client()
    sign_in(client, "admin")  # noqa: F405
    return client


def test_every_interactive_page_costs_the_same_with_30_and_300_policies(small_pages):
    client = small_pages
    fill(0, SMALL, HOT)
    small = _costs(client, warm=True)
    fill(SMALL, BIG, HOT)
    big = _costs(client, warm=False)
    for path, listing in PAGES.items():
        assert small[path][:2] == big[path][:2], f"{path}: (calls, items read) {small[path]} -> {big[path]}"
        if listing:
            assert "Scan" not in big[path][2], (path, big[path][2])
            assert big[path][0] <= 4, (path, big[path])
    # Two filters: the second is applied to what the first's key reads, a bounded amount (policy_pages.py)
    from vvolguard.adapters import aws
    from vvolguard.services.policy_pages import FILTERED_READ, MAX_ROUND_TRIPS

    counter = Counter()
    aws.add_hook("after-call.dynamodb", counter.after)
    aws.add_hook("before-call.dynamodb", counter.before)
    try:
        assert client.get("/policies?host_id=bench-host-0&storage_array=bench-arr-0").status_code == 200
    finally:
        aws.remove_hook("before-call.dynamodb", counter.before)
        aws.remove_hook("after-call.dynamodb", counter.after)
    assert "Scan" not in counter.ops and counter.calls <= 2 + MAX_ROUND_TRIPS
    assert counter.scanned <= 1 + 2 * FILTERED_READ + PER_PAGE
    # the first page reads one more than it shows (to know a next page exists), the rows by key, and the session
    assert small["/policies"][:2] == (4, 1 + (PER_PAGE + 1) + PER_PAGE), small["/policies"]


def _walk(client, url: str, per_page: int = 4) -> list[str]:
    seen: list[str] = []
    for _ in range(100):
        page = client.get(url)
        assert page.status_code == 200, url
        text = page.get_data(as_text=True)
        rows = re.findall(r'<td class="mono" data-label="Volume"><a class="id" href="/policies/([^"]+)"', text)
        assert len(rows) <= per_page, (url, rows)
        seen += rows
        m = re.search(r'<a rel="next" href="([^"]+)"', text)
        if not m:
            return seen
        url = html.unescape(m.group(1))
        assert "cursor=" in url
    raise AssertionError("more than 100 pages")


QUERIES = [
    ("", lambda v, vm, h, a: True),
    ("vm_id=bench-vm-0", lambda v, vm, h, a: vm == "bench-vm-0"),
    ("host_id=bench-host-3", lambda v, vm, h, a: h == "bench-host-3"),
    ("storage_array=bench-arr-2", lambda v, vm, h, a: a == "bench-arr-2"),
    ("host_id=bench-host-3&storage_array=bench-arr-3", lambda v, vm, h, a: h == "bench-host-3" and a == "bench-arr-3"),
    ("state=attached", lambda v, vm, h, a: int(v.rsplit("-", 1)[1]) % 7 == 0),
    ("vm_id=bench-vm-0&state=detached", lambda v, vm, h, a: vm == "bench-vm-0" and int(v.rsplit("-", 1)[1]) % 7 != 0),
]
RANGE = range(50, 90)  # 10 policies of bench-vm-0 / bench-host-0 / bench-arr-0, 30 spread over the others


def test_policies__following_next_page_lists_every_match_once(client, login, seeded):
    from vvolguard.adapters.models import PolicyItem
    from vvolguard.domain.natural import natural_key

    login("viewer")
    fill(RANGE.start, RANGE.stop)
    for n in RANGE:  # some attached (state filter)
        if n % 7 == 0:
            _v, vm, _h, _a = spec_of(n)
            PolicyItem(pk=f"VM#{vm}", sk=f"POLICY#bench-vol-{n}").update(actions=[PolicyItem.attached.set(True)])
    for query, pick in QUERIES:
        seen = _walk(client, f"/policies?per_page=3&{query}", per_page=3)
        want = [spec_of(n)[0] for n in RANGE if pick(*spec_of(n))]
        if not query:
            want += [f"vvol-{i}" for i in range(1, 6)]  # Table 1 (seeded)
        assert len(want) > 3 or query.startswith("host_id"), query  # several pages, but for the two host filters
        assert want and len(seen) == len(set(seen)) and sorted(seen) == sorted(want), query
        if not query:  # the listing's own order: by VM, then volume, ids in natural order
            vm_of = {spec_of(n)[0]: spec_of(n)[1] for n in RANGE} | {f"vvol-{i}": f"vm-{i}" for i in range(1, 6)}
            assert seen == sorted(seen, key=lambda v: (natural_key(vm_of[v]), natural_key(v)))


def _next_link(client, url: str) -> str:
    text = client.get(url).get_data(as_text=True)
    return html.unescape(re.search(r'<a rel="next" href="([^"]+)"', text).group(1))


def _state_snapshot():
    from vvolguard.adapters.models import AuditItem, PolicyItem

    return (sorted((p.volume_id, int(p.policy_version), p.list_key) for p in PolicyItem.scan()),
            sorted((a.chain, int(a.seq)) for a in AuditItem.scan()))


def test_policies__an_altered_or_foreign_cursor_is_refused_and_nothing_is_read_past_it(client, login, seeded):
    login("viewer")
    fill(0, 30)
    nxt = _next_link(client, "/policies?per_page=5&host_id=bench-host-0")
    cursor = re.search(r"cursor=([^&]+)", nxt).group(1)
    before = _state_snapshot()
    bad = [
        f"/policies?per_page=5&host_id=bench-host-0&cursor={cursor[:-2]}xx",     # altered signature
        f"/policies?per_page=5&host_id=bench-host-1&cursor={cursor}",            # other filters
        f"/policies?per_page=5&cursor={cursor}",                                 # other filters (none)
        "/policies?cursor=" + "A" * 20000,                                        # oversized
        "/policies?cursor=%00%0a%3Cscript%3E",                                    # hostile
    ]
    # an audit page's cursor is signed with the same key but bound to the audit filters
    audit = client.get("/audit?per_page=2").get_data(as_text=True)
    bad.append("/policies?" + html.unescape(re.search(r'href="/audit\?(cursor=[^"&]+)', audit).group(1)))
    for url in bad:
        r = client.get(url)
        text = r.get_data(as_text=True)
        assert r.status_code == 400, url
        assert "The page link is not valid" in text and "<script>" not in text
        assert "bench-vol-0" in text or "vvol-1" in text or "No policy" in text  # the first page instead
    assert _state_snapshot() == before


def test_policies__paging_needs_a_signed_in_user(client, seeded):
    r = client.get("/policies?per_page=2&cursor=anything")
    assert r.status_code == 302 and "/login" in r.headers["Location"]


def test_policies__a_hostile_filter_matches_nothing_and_reads_nothing(client, login, seeded):
    from vvolguard.adapters import aws

    login("viewer")
    counter = Counter()
    aws.add_hook("before-call.dynamodb", counter.before)
    try:
        for key, value in [(k, v) for k in ("vm_id", "host_id", "storage_array")
                           for v in ("<script>alert(1)</script>", "a b", "vm-1'\"", "\u202e")]:
            counter.reset()
            r = client.get("/policies", query_string={key: value})
            text = r.get_data(as_text=True)
            assert r.status_code == 200 and "No policy matches these filters" in text
            assert "<script>alert" not in text
            assert counter.ops in ([], ["GetItem"], ["GetItem", "BatchGetItem"]), counter.ops  # the session only
    finally:
        aws.remove_hook("before-call.dynamodb", counter.before)


def test_policies__items_written_before_the_listing_indexes_join_them_on_apply(aws, vvg, tmp_path):
    """An upgrade: items without the listing attributes are not listed until `vvg policy apply` of the same
    file rewrites them (counted unchanged, no audit record, version kept: docs/policy-pages.md)."""
    from vvolguard.adapters.models import AuditItem, PolicyItem
    from vvolguard.services.policy_pages import PolicyQuery, read_page

    f = tmp_path / "p.yaml"
    f.write_text("volumes:\n"
                 "  - {volume_id: old-1, vm_id: vm-o, host_id: host-1, storage_array: S9, size_mb: 10, attach_on: preboot, detach_on: shutdown}\n"
                 "  - {volume_id: old-2, vm_id: vm-o, host_id: host-1, storage_array: S9, size_mb: 10, attach_on: preboot, detach_on: shutdown}\n")
    assert vvg("policy", "apply", str(f)).code == 0
    for item in PolicyItem.scan():
        item.update(actions=[PolicyItem.list_part.remove(), PolicyItem.list_key.remove()])
    assert read_page(PolicyQuery()).items == [] and read_page(PolicyQuery(storage_array="S9")).items == []
    records = AuditItem.count()
    out = vvg("policy", "apply", str(f))
    assert out.code == 0 and "unchanged" in out.out
    assert [i.volume_id for i in read_page(PolicyQuery()).items] == ["old-1", "old-2"]
    assert [i.volume_id for i in read_page(PolicyQuery(storage_array="S9")).items] == ["old-1", "old-2"]
    assert {int(i.policy_version) for i in PolicyItem.scan()} == {1} and AuditItem.count() == records
    assert vvg("policy", "apply", str(f)).code == 0 and AuditItem.count() == records  # nothing more to do


def test_policies__a_moved_policy_moves_in_the_listing(aws):
    """The listing key follows the VM (a move is a delete and a save); an array change moves it between arrays."""
    from vvolguard.domain.policy import PolicySpec
    from vvolguard.services.policies import PolicyService
    from vvolguard.services.policy_pages import PolicyQuery, read_page

    svc = PolicyService(aws)
    base = dict(host_id="host-1", size_mb=10, attach_on="preboot", detach_on="shutdown")
    svc.apply([PolicySpec(volume_id="mv-1", vm_id="vm-b", storage_array="S1", **base),
               PolicySpec(volume_id="mv-2", vm_id="vm-c", storage_array="S1", **base)])
    assert [i.volume_id for i in read_page(PolicyQuery()).items] == ["mv-1", "mv-2"]
    svc.apply([PolicySpec(volume_id="mv-1", vm_id="vm-d", storage_array="S2", **base)])
    assert [i.volume_id for i in read_page(PolicyQuery()).items] == ["mv-2", "mv-1"]
    assert [i.volume_id for i in read_page(PolicyQuery(storage_array="S2")).items] == ["mv-1"]
    assert [i.volume_id for i in read_page(PolicyQuery(storage_array="S1")).items] == ["mv-2"]


def test_simulate__the_vm_field_hints_the_first_page_and_takes_any_vm(client, login, seeded):
    login("viewer")
    fill(0, 70)
    page = client.get("/simulate").get_data(as_text=True)
    hints = re.findall(r'<option value="([^"]+)">[^<]*\(host', page)
    assert hints == ["bench-vm-0"]  # the first page of the listing: bench-vm-0's 60 policies
    assert 'list="vm-ids"' in page
    token = csrf_token(client, "/simulate")  # noqa: F405
    r = client.post("/simulate", data={"vm_id": "bench-vm-16", "type": "vm.preboot", "csrf_token": token})
    text = r.get_data(as_text=True)
    # a VM beyond the hint list is simulated, its host found by one query of its partition
    assert '<span class="mono id">bench-vm-16</span> from <span class="mono id">bench-host-' in text


# ---- /hosts and /users: one Query of the by-listing index and one BatchGetItem (docs/host-user-pages.md)

FEW, MANY, COUNTERS = 5, 60, 300
LISTING_PAGE = 4  # full at both sizes (the seed holds 1 host and 3 users)


def _fill_hosts(start: int, stop: int) -> None:
    """Hosts as HostService writes them (with the listing attribute), by batch writes."""
    from datetime import datetime, timezone

    from vvolguard.adapters.models import HOSTS_PART, HostItem

    now = datetime.now(timezone.utc)
    with HostItem.batch_write() as batch:
        for n in range(start, stop):
            batch.save(HostItem(host_id=f"cost-host-{n:03d}", cred_salt="00", cred_hash="00", secret_enc="x",
                                status="active", enrolled_at=now, updated_at=now, list_part=HOSTS_PART))


def _fill_users(start: int, stop: int) -> None:
    from datetime import datetime, timezone

    from vvolguard.adapters.models import USERS_PART, UserItem

    now = datetime.now(timezone.utc)
    with UserItem.batch_write() as batch:
        for n in range(start, stop):
            batch.save(UserItem(username=f"cost-user-{n:03d}", password_hash="not-a-hash", role="viewer",
                                created_at=now, sessions={}, list_part=USERS_PART))


def _fill_counters(n: int) -> None:
    """Sign-in limit counters as failed sign-ins leave them (users table, ``#`` keys, never listed)."""
    import time

    from vvolguard.adapters.models import LimitItem

    with LimitItem.batch_write() as batch:
        for i in range(n):
            batch.save(LimitItem(key=f"#login-pair:{i:040d}", count=3, last_at=1, expires_at=int(time.time()) + 3600))


def _listing_costs(client) -> dict[str, tuple[int, int, tuple[str, ...]]]:
    return _costs(client, warm=False, paths=(f"/hosts?per_page={LISTING_PAGE}", f"/users?per_page={LISTING_PAGE}"))


def test_hosts_and_users_cost_the_same_with_5_or_60_of_them_and_0_or_300_limit_counters(small_pages):
    """Fails on a scan of either table: the users table also holds the sign-in limit counters, whose number
    failed sign-ins (anyone's) decide."""
    client = small_pages
    _fill_hosts(0, FEW - 1)
    _fill_users(0, FEW - 3)
    small = _listing_costs(client)
    _fill_hosts(FEW - 1, MANY)
    _fill_users(FEW - 3, MANY)
    _fill_counters(COUNTERS)
    big = _listing_costs(client)
    for path in small:
        assert small[path][:2] == big[path][:2], f"{path}: (calls, items read) {small[path]} -> {big[path]}"
        # the session's user, one Query of LISTING_PAGE + 1 keys, the page's items by key
        assert big[path] == (3, 1 + (LISTING_PAGE + 1) + LISTING_PAGE, ("GetItem", "Query", "BatchGetItem")), big[path]


def _rows(text: str, what: str) -> list[str]:
    if what == "hosts":
        return re.findall(r'<td class="mono" data-label="Host"><span class="id">([^<]+)</span>', text)
    return re.findall(r'<td class="mono" data-label="User"><span class="id">([^<]+)</span>', text)


@pytest.mark.parametrize("what", ["hosts", "users"])
def test_listing__following_next_page_lists_every_host_or_user_once_in_id_order(small_pages, seeded, what):
    client = small_pages
    (_fill_hosts if what == "hosts" else _fill_users)(0, 11)
    _fill_counters(20)
    url, seen, pages = f"/{what}?per_page=3", [], 0
    while url:
        text = client.get(url).get_data(as_text=True)
        rows = _rows(text, what)
        assert 1 <= len(rows) <= 3, (url, rows)
        seen += rows
        pages += 1
        m = re.search(r'<a rel="next" href="([^"]+)"', text)
        url = html.unescape(m.group(1)) if m else None
        assert url is None or ("cursor=" in url and "per_page=3" in url)
    from vvolguard.services.hosts import HostService
    from vvolguard.services.users import UserService

    svc = HostService if what == "hosts" else UserService
    want = [r["host_id" if what == "hosts" else "user"] for r in svc(seeded[0]).rows()]  # vvg host/user list
    assert seen == sorted(seen) == want and len(set(seen)) == len(seen) and pages == -(-len(want) // 3)
    assert not any(r.startswith("#") for r in seen)



def _tables_snapshot():
    from vvolguard.adapters.models import AuditItem, HostItem, UserItem

    return (sorted((h.host_id, int(h.secret_version), h.status, h.list_part) for h in HostItem.scan()),
            sorted((u.username, u.role, bool(u.disabled), u.password_hash, u.list_part) for u in UserItem.scan()),
            AuditItem.count())


@pytest.mark.parametrize("what", ["hosts", "users"])
def test_listing__an_altered_foreign_or_hostile_cursor_answers_400_with_the_first_page_and_writes_nothing(
        small_pages, what):
    client = small_pages
    _fill_hosts(0, 8)
    _fill_users(0, 8)
    other = "users" if what == "hosts" else "hosts"
    mine = _next_link(client, f"/{what}?per_page=2")
    cursor = re.search(r"cursor=([^&]+)", mine).group(1)
    foreign = re.search(r"cursor=([^&]+)", _next_link(client, f"/{other}?per_page=2")).group(1)
    audit = client.get("/audit?per_page=1").get_data(as_text=True)
    audit_cursor = re.search(r'href="/audit\?cursor=([^"&]+)', audit).group(1)
    policies = re.search(r"cursor=([^&]+)", _next_link(client, "/policies?per_page=2")).group(1)
    before = _tables_snapshot()
    for bad in (cursor[:-2] + ("xx" if not cursor.endswith("xx") else "yy"), foreign, audit_cursor, policies,
                "A" * 20000, "%00%0a%3Cscript%3E", "..%2F..%2Fetc"):
        r = client.get(f"/{what}?per_page=2&cursor={bad}")
        text = r.get_data(as_text=True)
        assert r.status_code == 400, bad[:40]
        assert "The page link is not valid" in text and "<script>" not in text
        first = _rows(text, what)
        assert first and first == sorted(first) and len(first) == 2  # the first page instead
    assert client.get(mine).status_code == 200  # the genuine link still works
    assert _tables_snapshot() == before


@pytest.mark.parametrize("what", ["hosts", "users"])
def test_listing__paging_needs_a_signed_in_admin(client, login, seeded, what):
    r = client.get(f"/{what}?per_page=2&cursor=anything")
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    login("editor")
    assert client.get(f"/{what}?per_page=2&cursor=anything").status_code == 403


@pytest.mark.parametrize("per_page", ["0", "-1", "abc", "99999", "1e3", "%00"])
def test_listing__a_malformed_per_page_is_the_default_page(small_pages, per_page):
    r = small_pages.get(f"/users?per_page={per_page}")
    assert r.status_code == 200 and "admin" in _rows(r.get_data(as_text=True), "users")


def _cli_ops(vvg, *argv):
    from vvolguard.adapters import aws

    counter = Counter()
    aws.add_hook("before-call.dynamodb", counter.before)
    try:
        out = vvg(*argv)
    finally:
        aws.remove_hook("before-call.dynamodb", counter.before)
    return out, counter.ops


def test_cli_lists_page_through_the_index_and_backfill_joins_items_written_before_it(aws, vvg):
    """The upgrade (docs/host-user-pages.md): hosts and users stored before the by-listing index are not
    listed until `vvg host list --backfill` / `vvg user list --backfill` (or their next change) gives them
    its key; the limit counters never join; a second backfill finds nothing; plain lists never Scan."""
    import json

    from vvolguard.adapters.models import HostItem, LimitItem, UserItem
    from vvolguard.services.hosts import HostService
    from vvolguard.services.users import UserService

    hosts, users = HostService(aws), UserService(aws)
    for n in range(3):
        hosts.enroll(f"old-h{n}", f"02:00:00:00:00:0{n}", f"SN{n}")
        users.add(f"old-u{n}", "viewer", "password-123")
    _fill_hosts(0, 101)  # more than one page of the CLI (100 a page)
    _fill_counters(5)
    for item in list(HostItem.scan(HostItem.host_id.startswith("old-"))) + list(UserItem.scan(
            UserItem.username.startswith("old-"))):
        item.update(actions=[type(item).list_part.remove()])  # as stored before the index
    out, ops = _cli_ops(vvg, "host", "list")
    listed = [json.loads(line)["host_id"] for line in out.out.splitlines()]
    assert out.code == 0 and "Scan" not in ops and ops.count("Query") == 2
    assert listed == sorted(listed) and len(listed) == 101 and not any(h.startswith("old-") for h in listed)
    out, ops = _cli_ops(vvg, "user", "list")
    assert out.code == 0 and "Scan" not in ops and out.out == ""

    hosts.rotate("old-h0")  # a change joins the item too
    users.set_role("old-u0", "editor")
    assert [r["user"] for r in users.rows()] == ["old-u0"] and "old-h0" in [r["host_id"] for r in hosts.rows()]

    out = vvg("host", "list", "--backfill")
    assert out.code == 0 and "backfill: 2 hosts added" in out.err
    assert [json.loads(line)["host_id"] for line in out.out.splitlines()][-3:] == ["old-h0", "old-h1", "old-h2"]
    out = vvg("user", "list", "--backfill")
    assert out.code == 0 and "backfill: 2 users added" in out.err
    assert [json.loads(line) for line in out.out.splitlines()] == [
        {"user": "old-u0", "role": "editor", "disabled": False, "last_login": None},
        {"user": "old-u1", "role": "viewer", "disabled": False, "last_login": None},
        {"user": "old-u2", "role": "viewer", "disabled": False, "last_login": None}]
    assert len([i for i in LimitItem.scan() if i.key.startswith("#")]) == 5 and not [i for i in UserItem.scan(UserItem.username.startswith("#")) if i.list_part]
    assert "backfill: 0 users added" in vvg("user", "list", "--backfill").err
    assert "backfill: 0 hosts added" in vvg("host", "list", "--backfill").err
