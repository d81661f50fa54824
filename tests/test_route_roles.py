"""The dashboard's role x route matrix, generated from ``app.url_map`` (docs/dashboard.md, docs/dashboard-pages.md).

Every rule x method the app serves (but ``static``) must have an entry in ``RULES``: the least role that may
use it (``anonymous``, ``viewer``, ``editor``, ``admin``: the code's ``ROLES``, weakest first). A new route
without an entry fails ("new route ... has no role rule"), and so does an entry whose route is gone.

Then, with real requests to one app: every role below the least one is refused (anonymous: a redirect to
the sign-in page; a signed-in role too low: 403) and nothing is written (every table's items are the same
after the refused requests); the least role is not refused (GET: the page's status, 200 unless the entry
says otherwise; POST, with a valid CSRF token: not 401/403 and not sent to the sign-in page, and where the
entry carries a valid form, that form's success status); every stronger role reads the GET pages too.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from tests.dashboard_support import *  # noqa: F401,F403 - fixtures
from tests.dashboard_support import PASSWORD, ROLE_USERS, csrf_token, sign_in

LEVELS = ("anonymous", "viewer", "editor", "admin")
PLACEHOLDER = re.compile(r"<(?:[^:>]+:)?([^>]+)>")
# The value put in each route argument (the throwaway ones are made by the ``matrix`` fixture).
SAMPLES = {"volume_id": "vvol-1", "vm_id": "vm-1", "host_id": "host-mx", "username": "mx-user", "fmt": "csv"}
NEW_POLICY = ("volumes:\n  - {volume_id: vvol-1, vm_id: vm-1, host_id: host-1, storage_array: S1, size_mb: 10, "
              "attach_on: preboot, detach_on: shutdown}\n")


@dataclass(frozen=True)
class Rule:
    """The least role of one route and method; optional concrete paths, a valid form for the least role and
    the status that form's success answers with (None: only "not refused" is asserted)."""

    least: str
    paths: tuple[str, ...] = ()
    form: Callable[[Any], dict[str, str]] | None = None
    ok: int | None = None
    fresh_client: bool = False  # the request ends the session (sign-out): a new client each time
    writes: bool = False  # the least role's request changes the tables (proof that it was carried out)


def _edit_form(settings) -> dict[str, str]:
    from vvolguard.services.policies import PolicyService

    item = PolicyService(settings).get("vvol-1")
    return {"volume_id": item.volume_id, "vm_id": item.vm_id, "host_id": item.host_id,
            "storage_array": item.storage_array, "size_mb": str(int(item.size_mb) + 1), "attach_on": item.attach_on,
            "detach_on": item.detach_on, "app": item.app or "", "policy_version": str(int(item.policy_version))}


def _version(settings, volume_id: str) -> str:
    from vvolguard.services.policies import PolicyService

    return str(int(PolicyService(settings).get(volume_id).policy_version))


# (rule, method) -> its least role. Keep it in the order of docs/dashboard-pages.md's areas.
RULES: dict[tuple[str, str], Rule] = {
    ("/healthz", "GET"): Rule("anonymous"),
    ("/login", "GET"): Rule("anonymous"),
    ("/login", "POST"): Rule("anonymous", form=lambda s: {"username": ROLE_USERS["viewer"], "password": PASSWORD},
                             ok=302, fresh_client=True, writes=True),
    ("/logout", "GET"): Rule("viewer"),  # the sign-out button; anonymous is sent to /login
    ("/logout", "POST"): Rule("anonymous", ok=302, fresh_client=True),
    ("/", "GET"): Rule("anonymous", ok=302),  # the landing page: a redirect to /policies
    ("/policies", "GET"): Rule("viewer", paths=("/policies", "/policies?vm_id=vm-1&state=detached")),
    ("/policies/new", "GET"): Rule("editor"),
    ("/policies/new", "POST"): Rule("editor", ok=302, writes=True, form=lambda s: {
        "policy_version": "0", "volume_id": "vvol-mx-new", "vm_id": "vm-9", "host_id": "host-1",
        "storage_array": "S1", "size_mb": "10", "attach_on": "preboot", "detach_on": "postboot"}),
    ("/policies/<volume_id>", "GET"): Rule("viewer"),
    ("/policies/<volume_id>", "POST"): Rule("editor", form=_edit_form, ok=302, writes=True),
    ("/policies/<volume_id>/delete", "POST"): Rule("editor", paths=("/policies/vvol-mx-del/delete",), ok=302, writes=True,
                                                   form=lambda s: {"policy_version": _version(s, "vvol-mx-del"),
                                                                   "confirm": "1"}),
    ("/policies/impact", "GET"): Rule("editor"),
    ("/policies/impact", "POST"): Rule("editor", ok=200, form=lambda s: {"since": "1d", "policy": NEW_POLICY}),
    ("/simulate", "GET"): Rule("viewer"),
    ("/simulate", "POST"): Rule("viewer", ok=200, form=lambda s: {"vm_id": "vm-1", "type": "vm.preboot"}),
    ("/attachments", "GET"): Rule("viewer"),
    ("/audit", "GET"): Rule("viewer", paths=("/audit", "/audit?vm=vm-1&outcome=done")),
    ("/audit/export.<fmt>", "GET"): Rule("viewer", paths=("/audit/export.csv", "/audit/export.json")),
    ("/audit/verify", "POST"): Rule("viewer", ok=302),
    ("/alerts", "GET"): Rule("viewer", paths=("/alerts", "/alerts?since=30m")),
    ("/vms/<vm_id>", "GET"): Rule("viewer"),
    ("/vms/<vm_id>/start", "POST"): Rule("editor"),
    ("/vms/<vm_id>/stop", "POST"): Rule("editor"),
    ("/vms/<vm_id>/quarantine", "POST"): Rule("admin", paths=("/vms/vm-5/quarantine",),
                                              form=lambda s: {"reason": "route matrix"}, ok=302, writes=True),
    ("/vms/<vm_id>/release", "POST"): Rule("admin", paths=("/vms/vm-4/release",), ok=302, writes=True),
    ("/hosts", "GET"): Rule("admin"),
    ("/hosts", "POST"): Rule("admin", ok=200, writes=True, form=lambda s: {"host_id": "host-mx-new", "mac": "02:00:00:00:0a:09",
                                                              "serial": "SER-9"}),
    ("/hosts/<host_id>/rotate", "POST"): Rule("admin", ok=200, writes=True),
    ("/hosts/<host_id>/revoke", "POST"): Rule("admin", paths=("/hosts/host-mx-rev/revoke",), ok=302, writes=True,
                                              form=lambda s: {"confirm": "1"}),
    ("/users", "GET"): Rule("admin"),
    ("/users", "POST"): Rule("admin", ok=302, writes=True, form=lambda s: {
        "username": "mx-new", "role": "viewer", "password": "a-long-password-1"}),
    ("/users/<username>/role", "POST"): Rule("admin", paths=("/users/mx-role/role",), ok=302, writes=True,
                                             form=lambda s: {"role": "editor"}),
    ("/users/<username>/password", "POST"): Rule("admin", paths=("/users/mx-pw/password",), ok=302, writes=True,
                                                 form=lambda s: {"password": "another-long-password"}),
    ("/users/<username>/disable", "POST"): Rule("admin", paths=("/users/mx-dis/disable",), ok=302, writes=True,
                                                form=lambda s: {"confirm": "1"}),
    ("/users/<username>/remove", "POST"): Rule("admin", paths=("/users/mx-gone/remove",), ok=302, writes=True,
                                               form=lambda s: {"confirm": "1"}),
}


def served(app) -> set[tuple[str, str]]:
    """Every (rule, method) the app answers, but static files and the methods Flask adds (HEAD, OPTIONS)."""
    return {(r.rule, m) for r in app.url_map.iter_rules() if r.endpoint != "static"
            for m in r.methods - {"HEAD", "OPTIONS"}}


def missing_and_stale(app, rules: dict) -> list[str]:
    out = [f"new route {m} {r} has no role rule: add it to RULES in tests/test_route_roles.py"
           for r, m in sorted(served(app) - set(rules))]
    out += [f"RULES names {m} {r}, which the app no longer serves: remove it" for r, m in sorted(set(rules) - served(app))]
    return out


def paths_of(rule: str, entry: Rule) -> tuple[str, ...]:
    return entry.paths or (PLACEHOLDER.sub(lambda m: SAMPLES[m.group(1)], rule),)


_DDB: list = []


def tables_digest() -> str:
    """Every item of every table, in a stable order (what "nothing was written" compares)."""
    import boto3

    if not _DDB:
        _DDB.append(boto3.client("dynamodb"))  # one client for the module: building one costs ~50 ms
    ddb = _DDB[0]
    out = []
    for name in sorted(ddb.list_tables()["TableNames"]):
        for page in ddb.get_paginator("scan").paginate(TableName=name):
            out += [name + json.dumps(item, sort_keys=True) for item in page["Items"]]
    return "\n".join(sorted(out))


@pytest.fixture(scope="module")
def matrix(shared_app, shared_aws):
    """One app, the throwaway hosts, users and policies the changing routes act on, and a client per role
    (signed in once; a route that ends the session asks for a fresh one)."""
    from vvolguard.domain.policy import validate_entry
    from vvolguard.services.hosts import HostService
    from vvolguard.services.policies import PolicyService
    from vvolguard.services.users import UserService

    spec, errs = validate_entry({"volume_id": "vvol-mx-del", "vm_id": "vm-9", "host_id": "host-1",
                                 "storage_array": "S1", "size_mb": 10, "attach_on": "request",
                                 "detach_on": "request"}, "t")
    assert not errs
    PolicyService(shared_aws).save_one(spec, "cli", 0)
    hosts = HostService(shared_aws)
    hosts.enroll("host-mx", "02:00:00:00:0a:01", "SER-1")
    hosts.enroll("host-mx-rev", "02:00:00:00:0a:02", "SER-2")
    users = UserService(shared_aws)
    for name in ("mx-user", "mx-role", "mx-pw", "mx-dis", "mx-gone"):
        users.add(name, "viewer", "a-long-password-0", actor="cli")
    shared_app.extensions["vvg"].quarantine.quarantine("vm-4", "route matrix: to release", actor="cli")

    clients: dict[str, Any] = {}

    def client(level: str, fresh: bool = False):
        if fresh or level not in clients:
            c = shared_app.test_client()
            if level != "anonymous":
                sign_in(c, level)
            if fresh:
                return c
            clients[level] = c
        return clients[level]
    return shared_app, shared_aws, client


def test_every_route_has_a_role_rule_and_every_rule_a_route(shared_app):
    assert missing_and_stale(shared_app, RULES) == []


def test_the_coverage_check_names_a_new_route_and_a_gone_one(shared_app):
    """The check above can fail: a table without the entry of a served route (as when a route is added), and
    a table with an entry for a route the app does not serve (as when one is removed)."""
    rules = dict(RULES)
    del rules[("/alerts", "GET")]
    rules[("/gone", "POST")] = Rule("admin")
    assert missing_and_stale(shared_app, rules) == [
        "new route GET /alerts has no role rule: add it to RULES in tests/test_route_roles.py",
        "RULES names POST /gone, which the app no longer serves: remove it"]


def _refused(r, level: str) -> bool:
    if level == "anonymous":
        return r.status_code == 302 and r.headers["Location"].startswith("/login")
    return r.status_code == 403


def _send(c, level: str, method: str, path: str, form: dict[str, str] | None):
    """One request, its body read to the end (a streamed export too) and closed."""
    if method == "GET":
        r = c.get(path)
    else:
        r = c.post(path, data={**(form or {}), "csrf_token": c.vvg_csrf})
    r.get_data()
    r.close()
    return r


@pytest.mark.parametrize("key", sorted(RULES), ids=[f"{m} {r}" for r, m in sorted(RULES)])
def test_route__refuses_every_role_below_its_least_and_serves_the_least(matrix, key):
    app, settings, client = matrix
    rule, method = key
    entry = RULES[key]
    least = LEVELS.index(entry.least)
    for path in paths_of(rule, entry):
        # every client signed in and holding its CSRF token before the tables are read (signing in writes)
        clients = {level: client(level, fresh=entry.fresh_client) for level in LEVELS[:least + 1]}
        if method == "POST":
            for level, c in clients.items():  # one token per session, kept on its client
                if not hasattr(c, "vvg_csrf"):
                    c.vvg_csrf = csrf_token(c, "/login" if level == "anonymous" else "/simulate")
        before = tables_digest()
        for level in LEVELS[:least]:
            r = _send(clients[level], level, method, path, entry.form(settings) if entry.form else {})
            assert _refused(r, level), f"{method} {path} as {level}: {r.status_code}, not refused"
        if least:
            assert tables_digest() == before, f"{method} {path}: a refused request wrote something"
        r = _send(clients[entry.least], entry.least, method, path,
                  entry.form(settings) if entry.form else {})
        expected = entry.ok if entry.ok is not None else (200 if method == "GET" else None)
        body = r.get_data(as_text=True)[:400]
        if expected is not None:
            assert r.status_code == expected, f"{method} {path} as {entry.least}: {r.status_code} {body}"
        assert r.status_code not in (401, 403), f"{method} {path} as {entry.least}: refused ({r.status_code})"
        if entry.least != "anonymous":
            assert not (r.status_code == 302 and r.headers["Location"].startswith("/login")), \
                f"{method} {path} as {entry.least}: sent to sign in"
        if entry.writes:
            assert tables_digest() != before, f"{method} {path} as {entry.least}: answered {r.status_code}, wrote nothing"
        if method == "GET":
            for level in LEVELS[least + 1:]:
                r = _send(client(level), level, "GET", path, None)
                assert r.status_code == (entry.ok or 200), f"GET {path} as {level}: {r.status_code}"
