"""Dashboard sessions live on the server: sign-out ends that session; a password or role change, disabling
or removing a user end all of that user's sessions, in every process (docs/dashboard.md)."""
from __future__ import annotations

import json

import pytest

from tests.dashboard_support import *  # noqa: F401,F403 - fixtures
from tests.dashboard_support import PASSWORD, ROLE_USERS, TEST_CONFIG, csrf_token, sign_in

COOKIE = "vvg_session"


def _cookie(client) -> str:
    c = client.get_cookie(COOKIE)
    assert c is not None, "no session cookie"
    return c.value


def _browser(app, cookie: str):
    """Another client (browser, or a copy an attacker kept) holding ``cookie``."""
    other = app.test_client()
    other.set_cookie(COOKIE, cookie)
    return other


def _signed_in(client) -> bool:
    r = client.get("/policies")
    assert r.status_code in (200, 302)
    return r.status_code == 200


def _hosts(settings) -> list[str]:
    from vvolguard.adapters import aws as aws_adapter

    items = aws_adapter.client("dynamodb", settings.region).scan(TableName=settings.hosts_table)["Items"]
    return sorted(i["host_id"]["S"] for i in items)


def _user_item(settings, name: str) -> dict:
    from vvolguard.adapters import aws as aws_adapter

    return aws_adapter.client("dynamodb", settings.region).get_item(
        TableName=settings.users_table, Key={"username": {"S": name}}, ConsistentRead=True).get("Item", {})


def test_logout__a_cookie_saved_before_sign_out_no_longer_works_and_enrolls_nothing(app, client, seeded):
    settings = seeded[0]
    sign_in(client, "admin")
    saved = _cookie(client)
    token = csrf_token(client, "/hosts")
    before = _hosts(settings)
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    thief = _browser(app, saved)
    r = thief.get("/hosts")
    assert r.status_code == 302 and r.headers["Location"].startswith("/login")
    r = thief.post("/hosts", data={"host_id": "evil-1", "mac": "02:00:00:00:00:99", "serial": "S", "csrf_token": token})
    assert r.status_code in (302, 400) and "evil-1" not in r.get_data(as_text=True)
    assert _hosts(settings) == before


def test_logout__ends_that_session_only(app, seeded):
    a, b = sign_in(app.test_client(), "editor"), sign_in(app.test_client(), "editor")
    assert a.post("/logout", data={"csrf_token": csrf_token(a, "/policies")}).status_code == 302
    assert not _signed_in(a) and _signed_in(b)


@pytest.mark.parametrize("how", ["passwd", "role", "disable", "remove"])
def test_user_change_in_another_process__ends_the_sessions_here(seeded, how):
    """Two app instances (two containers) share nothing but DynamoDB: a change made through one ends the
    sessions the other serves, with no cache in between."""
    from dashboard import create_app

    here, there = create_app(dict(TEST_CONFIG)), create_app(dict(TEST_CONFIG))
    victim, other_tab = sign_in(here.test_client(), "editor"), sign_in(here.test_client(), "editor")
    bystander = sign_in(here.test_client(), "viewer")
    assert _signed_in(_browser(there, _cookie(victim)))  # the cookie works in both
    admin = sign_in(there.test_client(), "admin")
    name = ROLE_USERS["editor"]
    token = csrf_token(admin, "/users")
    path, data = {"passwd": (f"/users/{name}/password", {"password": "a-new-password-1"}),
                  "role": (f"/users/{name}/role", {"role": "viewer"}),
                  "disable": (f"/users/{name}/disable", {"confirm": "1"}),
                  "remove": (f"/users/{name}/remove", {"confirm": "1"})}[how]
    r = admin.post(path, data={**data, "csrf_token": token})
    assert r.status_code == 302 and r.headers["Location"] == "/users"
    assert not _signed_in(victim) and not _signed_in(other_tab)
    assert _signed_in(bystander)


def test_sign_out_in_one_process__refused_in_another(seeded):
    from dashboard import create_app

    here, there = create_app(dict(TEST_CONFIG)), create_app(dict(TEST_CONFIG))
    c = sign_in(here.test_client(), "viewer")
    copy = _browser(there, _cookie(c))
    assert c.post("/logout", data={"csrf_token": csrf_token(c, "/policies")}).status_code == 302
    assert not _signed_in(copy)


def test_disabled_user__cannot_sign_in_with_the_right_password(client, seeded):
    from vvolguard.services.users import UserService

    UserService(seeded[0]).disable(ROLE_USERS["viewer"], actor="cli:test")
    r = client.post("/login", data={"username": ROLE_USERS["viewer"], "password": PASSWORD, "csrf_token": csrf_token(client)})
    assert r.status_code == 401
    assert _user_item(seeded[0], ROLE_USERS["viewer"])["sessions"] == {"M": {}}


def test_sign_in__rotates_the_session_id_and_keeps_only_its_digest(app, client, seeded):
    sign_in(client, "viewer")
    with client.session_transaction() as s:
        first = s["sid"]
    sign_in(client, "viewer")
    with client.session_transaction() as s:
        second = s["sid"]
    assert first != second and len(second) >= 40
    stored = json.dumps(_user_item(seeded[0], ROLE_USERS["viewer"]))
    assert first not in stored and second not in stored  # table read access gives no session


def test_cookie_forged_with_the_signing_key__but_no_live_session__is_refused(client, seeded):
    """Knowing the cookie-signing key is not enough: the session id must be one the server issued."""
    with client.session_transaction() as s:
        s["user"], s["sid"] = "admin", "made-up-session-id"
    r = client.get("/hosts")
    assert r.status_code == 302 and r.headers["Location"].startswith("/login")


def test_expired_session__refused(client, seeded):
    from vvolguard.adapters.models import UserItem

    sign_in(client, "viewer")
    user = UserItem.get(ROLE_USERS["viewer"], consistent_read=True)
    user.update(actions=[UserItem.sessions[k].set(1) for k in user.sessions.as_dict()])
    assert not _signed_in(client)


def test_sessions_per_user_are_bounded(app, seeded):
    from vvolguard.adapters.models import UserItem
    from vvolguard.services.users import MAX_SESSIONS, UserService

    users, name = UserService(seeded[0]), ROLE_USERS["viewer"]
    sids = [users.start_session(UserItem.get(name, consistent_read=True)) for _ in range(MAX_SESSIONS + 2)]
    assert len(UserItem.get(name, consistent_read=True).sessions.as_dict()) == MAX_SESSIONS
    assert users.session_user(name, sids[0]) is None and users.session_user(name, sids[-1]) is not None


def test_cookie_flags__httponly_samesite_strict_and_secure_outside_the_local_stack(seeded, monkeypatch):
    from dashboard import create_app

    monkeypatch.delenv("VVG_DASHBOARD_INSECURE_COOKIES", raising=False)
    app = create_app({"TESTING": True, "SECRET_KEY": "k", "VVG_LOGIN_FAIL_DELAY": 0})
    c = app.test_client()
    page = c.get("/login", base_url="https://localhost").get_data(as_text=True)
    token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    r = c.post("/login", data={"username": "admin", "password": PASSWORD, "csrf_token": token},
               base_url="https://localhost", headers={"Referer": "https://localhost/login"})
    assert r.status_code == 302, r.status_code
    cookie = [h for h in r.headers.getlist("Set-Cookie") if h.startswith(COOKIE + "=")][-1]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" in cookie
