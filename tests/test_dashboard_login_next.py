"""Sign-in: ``next`` returns only to a path on this origin, as a browser would read it; a control character
answers 400 (docs/dashboard.md)."""
from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.dashboard_support import *  # noqa: F401,F403 - fixtures
from tests.dashboard_support import PASSWORD, csrf_token


def _post_login(client, username, password, next_raw=None, addr="10.0.0.1"):
    token = csrf_token(client)
    path = "/login" if next_raw is None else "/login?next=" + next_raw
    return client.post(path, data={"username": username, "password": password, "csrf_token": token},
                       environ_base={"REMOTE_ADDR": addr})


def _sessions(name: str) -> dict:
    from vvolguard.adapters.models import UserItem

    u = UserItem.get(name, consistent_read=True)
    return u.sessions.as_dict() if u.sessions is not None else {}


@pytest.mark.parametrize("raw", [
    "//evil.example/phish", "/\\evil.example", "\\\\evil.example", "/%5Cevil.example", "%5C%5Cevil.example",
    "%20//evil.example", "https://evil.example/", "javascript:alert(1)", "http:/evil.example", "evil.example",
    "///evil.example", "/%2F/evil.example", "%2F%2Fevil.example", "/\u3000/evil.example", "", "/" + "a" * 3000,
])
def test_next__anything_but_a_path_on_this_origin_falls_back_to_policies(shared_app, raw):
    c = shared_app.test_client()
    r = _post_login(c, "admin", PASSWORD, next_raw=quote(raw, safe="/%:") if "%" not in raw else raw,
                    addr=f"10.7.{len(raw) % 250}.{sum(map(ord, raw)) % 250}")
    assert r.status_code == 302 and r.headers["Location"] == "/policies", raw


@pytest.mark.parametrize("raw", ["/%09/evil.example/phish", "/a%0d%0aSet-Cookie:x=1", "/%0a/evil.example",
                                 "%09//evil.example", "/x%00", "/x%7f", "/x%C2%85"])
def test_next__a_control_character_answers_400_and_signs_nobody_in(shared_app, raw):
    c = shared_app.test_client()
    before = _sessions("admin")
    assert c.get("/login?next=" + raw).status_code == 400
    r = _post_login(c, "admin", PASSWORD, next_raw=raw, addr="10.8.0.1")
    assert r.status_code == 400 and "Location" not in r.headers
    assert _sessions("admin") == before


@pytest.mark.parametrize("raw,want", [("/audit?vm=vm-1", "/audit?vm=vm-1"), ("/policies/vvol-1", "/policies/vvol-1"),
                                      ("/%252F%252Fevil.example", "/%2F%2Fevil.example")])
def test_next__a_path_here_is_kept(shared_app, raw, want):
    r = _post_login(shared_app.test_client(), "admin", PASSWORD, next_raw=quote(raw, safe="/?=%"), addr="10.6.0.1")
    assert r.status_code == 302 and r.headers["Location"] == want


