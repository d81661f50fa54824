"""/users (admin): add, change role, reset password, disable, remove; CSRF; 403 below admin; every refusal
writes nothing (docs/dashboard.md)."""
from __future__ import annotations

import json

import pytest

from tests.dashboard_support import *  # noqa: F401,F403 - fixtures
from tests.dashboard_support import PASSWORD, ROLE_USERS, csrf_token, sign_in


def _users_table(settings) -> str:
    from vvolguard.adapters import aws as aws_adapter

    ddb = aws_adapter.client("dynamodb", settings.region)
    out = []
    for name in (settings.users_table, settings.audit_table):
        items = [i for i in ddb.scan(TableName=name, ConsistentRead=True)["Items"]
                 if not i.get("username", {}).get("S", "").startswith("#")]  # sign-in counters aside
        out.append(sorted(json.dumps(i, sort_keys=True) for i in items))
    return json.dumps(out)


def _post(client, path, **form):
    return client.post(path, data={**form, "csrf_token": csrf_token(client, "/users")})


ROUTES = [("get", "/users", {}), ("post", "/users", {"username": "x1", "role": "viewer", "password": "long-enough-pw"}),
          ("post", "/users/vera/role", {"role": "admin"}), ("post", "/users/vera/password", {"password": "long-enough-pw"}),
          ("post", "/users/vera/disable", {"confirm": "1"}), ("post", "/users/vera/remove", {"confirm": "1"})]


@pytest.mark.parametrize("role", ["viewer", "editor"])
def test_below_admin__403_and_nothing_written(app, seeded, role):
    c = sign_in(app.test_client(), role)
    before = _users_table(seeded[0])
    token = csrf_token(c, "/policies")
    for method, path, form in ROUTES:
        r = c.get(path) if method == "get" else c.post(path, data={**form, "csrf_token": token})
        assert r.status_code == 403, (role, path)
    assert _users_table(seeded[0]) == before
    assert "/users" not in c.get("/policies").get_data(as_text=True)  # no menu entry either


def test_signed_out__sent_to_sign_in_and_nothing_written(client, seeded):
    before = _users_table(seeded[0])
    for method, path, form in ROUTES:
        r = client.get(path) if method == "get" else client.post(path, data=form)
        assert r.status_code in (302, 400), path
        if method == "get":
            assert r.headers["Location"].startswith("/login")
    assert _users_table(seeded[0]) == before


def test_without_csrf_token__400_and_nothing_written(app, seeded):
    c = sign_in(app.test_client(), "admin")
    before = _users_table(seeded[0])
    for method, path, form in ROUTES[1:]:
        assert c.post(path, data=form).status_code == 400, path
    assert _users_table(seeded[0]) == before


def test_admin__lists_users_and_adds_one_that_can_sign_in(app, seeded):
    c = sign_in(app.test_client(), "admin")
    page = c.get("/users").get_data(as_text=True)
    for name in ROLE_USERS.values():
        assert f'<td class="mono" data-label="User"><span class="id">{name}</span></td>' in page
    assert "scrypt" not in page
    r = _post(c, "/users", username="nina", role="editor", password="nina-pass-123")
    assert r.status_code == 302 and r.headers["Location"] == "/users"
    assert "Added nina as editor." in c.get("/users").get_data(as_text=True)
    n = app.test_client()
    r = n.post("/login", data={"username": "nina", "password": "nina-pass-123", "csrf_token": csrf_token(n)})
    assert r.status_code == 302
    from vvolguard.adapters.audit import AuditLog

    rec = json.loads(json.dumps(next(iter(AuditLog(seeded[0]).recent(limit=1))).attribute_values, default=str))
    assert rec["actor"] == "user:admin" and rec["action"] == "user_add" and "nina-pass-123" not in json.dumps(rec)


@pytest.mark.parametrize("form,status,text", [
    ({"username": "vera", "role": "viewer", "password": "long-enough-pw"}, 409, "already exists"),
    ({"username": "bad name", "role": "viewer", "password": "long-enough-pw"}, 400, "user name"),
    ({"username": "#login-addr:x", "role": "viewer", "password": "long-enough-pw"}, 400, "user name"),
    ({"username": "a" * 300, "role": "viewer", "password": "long-enough-pw"}, 400, "user name"),
    ({"username": "nina", "role": "root", "password": "long-enough-pw"}, 400, "role"),
    ({"username": "nina", "role": "viewer", "password": "short"}, 400, "password"),
    ({"username": "nina", "role": "viewer", "password": "x" * 5000}, 400, "password"),
    ({"username": "<script>x</script>", "role": "viewer", "password": "long-enough-pw"}, 400, "user name"),
])
def test_add__refusals_say_why_and_write_nothing(app, seeded, form, status, text):
    c = sign_in(app.test_client(), "admin")
    before = _users_table(seeded[0])
    r = _post(c, "/users", **form)
    body = r.get_data(as_text=True)
    assert r.status_code == status and text in body
    assert "<script>x" not in body and form["password"] not in body
    assert _users_table(seeded[0]) == before


def test_change_role_reset_password_disable_remove__each_ends_that_users_sessions(app, seeded):
    admin = sign_in(app.test_client(), "admin")
    name = ROLE_USERS["editor"]
    steps = [(f"/users/{name}/role", {"role": "viewer"}, "is now viewer"),
             (f"/users/{name}/password", {"password": "fresh-pass-456"}, "New password set"),
             (f"/users/{name}/disable", {"confirm": "1"}, "Disabled"),
             (f"/users/{name}/remove", {"confirm": "1"}, "Removed")]
    for path, form, flash in steps:
        victim = app.test_client()
        if "remove" not in path:  # (removed after being disabled: no sign-in then)
            r = victim.post("/login", data={"username": name, "password": PASSWORD, "csrf_token": csrf_token(victim)})
            assert r.status_code == 302
        r = _post(admin, path, **form)
        assert r.status_code == 302 and flash in admin.get("/users").get_data(as_text=True), path
        assert victim.get("/policies").status_code == 302, path
        if "password" in path:  # the new password works, the old one not
            v = app.test_client()
            assert v.post("/login", data={"username": name, "password": PASSWORD,
                                          "csrf_token": csrf_token(v)}).status_code == 401
            assert v.post("/login", data={"username": name, "password": "fresh-pass-456",
                                          "csrf_token": csrf_token(v)}).status_code == 302
            assert _post(admin, f"/users/{name}/password", password=PASSWORD).status_code == 302
    assert f'<td class="mono" data-label="User"><span class="id">{name}</span></td>' not in admin.get("/users").get_data(as_text=True)


@pytest.mark.parametrize("path,form,text", [
    ("/users/vera/disable", {}, "tick the box"),
    ("/users/vera/remove", {}, "tick the box"),
    ("/users/vera/role", {"role": "root"}, "role must be one of"),
    ("/users/vera/password", {"password": "short"}, "password must be"),
    ("/users/nobody/remove", {"confirm": "1"}, "does not exist"),
    ("/users/admin/remove", {"confirm": "1"}, "last enabled admin"),
    ("/users/admin/role", {"role": "viewer"}, "last enabled admin"),
])
def test_changes__refused_with_a_reason_and_nothing_written(app, seeded, path, form, text):
    c = sign_in(app.test_client(), "admin")
    before = _users_table(seeded[0])
    r = _post(c, path, **form)
    assert r.status_code == 302
    assert text in c.get("/users").get_data(as_text=True)
    assert _users_table(seeded[0]) == before


def test_hostile_path_names__404_and_nothing_written(app, seeded):
    c = sign_in(app.test_client(), "admin")
    before = _users_table(seeded[0])
    for name in ("%23login-addr:x", "a%20b", "x" * 100, "..%2Fadmin"):
        assert _post(c, f"/users/{name}/disable", confirm="1").status_code == 404, name
    assert _users_table(seeded[0]) == before
