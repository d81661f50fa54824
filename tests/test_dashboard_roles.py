"""The dashboard's role matrix (docs/dashboard-pages.md): every route × anonymous, viewer, editor, admin ->
200 (or the route's success), 302 to /login, or 403; and every page's security headers and markup."""
from __future__ import annotations

import re

import pytest

from tests.dashboard_support import *  # noqa: F401,F403 - fixtures
from tests.dashboard_support import csrf_token, sign_in

ROLES = ("anonymous", "viewer", "editor", "admin")
RANK = {"anonymous": -1, "viewer": 0, "editor": 1, "admin": 2}

# (path, least role); "anyone" pages answer 200 without a session.
GET_ROUTES = [
    ("/healthz", "anyone"),
    ("/login", "anyone"),
    ("/policies", "viewer"),
    ("/policies?vm_id=vm-1&state=detached", "viewer"),
    ("/policies/new", "editor"),
    ("/policies/vvol-1", "viewer"),
    ("/simulate", "viewer"),
    ("/attachments", "viewer"),
    ("/audit", "viewer"),
    ("/audit?vm=vm-1&outcome=done", "viewer"),
    ("/audit/export.csv", "viewer"),
    ("/audit/export.json", "viewer"),
    ("/hosts", "admin"),
    ("/alerts", "viewer"),
    ("/alerts?since=30m", "viewer"),
    ("/policies/impact", "editor"),
]


@pytest.fixture(scope="module")
def matrix(shared_app, shared_aws):
    """One app for the whole matrix, with a separate target per role for every changing route, so each
    case starts from the same state without a new emulation per case."""
    from vvolguard.domain.policy import validate_entry
    from vvolguard.services.hosts import HostService
    from vvolguard.services.policies import PolicyService

    hosts = HostService(shared_aws)
    for i, role in enumerate(ROLES):
        spec, errs = validate_entry({"volume_id": f"vvol-del-{role}", "vm_id": "vm-9", "host_id": "host-1",
                                     "storage_array": "S1", "size_mb": 10, "attach_on": "request",
                                     "detach_on": "request"}, "t")
        PolicyService(shared_aws).save_one(spec, "cli", 0)
        for kind in ("rot", "rev"):
            hosts.enroll(f"host-{kind}-{role}", f"02:00:00:00:0{i}:0{1 if kind == 'rot' else 2}", "SER-1")
    return shared_app


@pytest.fixture
def as_role(matrix):
    """as_role(role) -> a fresh client signed in as ``role`` (or not signed in)."""
    def make(role: str):
        c = matrix.test_client()
        return c if role == "anonymous" else sign_in(c, role)
    return make


def _expect(r, role: str, least: str, ok_status: int) -> None:
    if least == "anyone":
        assert r.status_code == ok_status
    elif role == "anonymous":
        assert r.status_code == 302 and r.headers["Location"].startswith("/login"), r.status_code
    elif RANK[role] >= RANK[least]:
        assert r.status_code == ok_status, r.get_data(as_text=True)[:600]
    else:
        assert r.status_code == 403


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("path,least", GET_ROUTES)
def test_get_route__answers_by_role(as_role, role, path, least):
    _expect(as_role(role).get(path), role, least, 200)


def _edit_form(settings, volume_id: str) -> dict:
    from vvolguard.services.policies import PolicyService

    item = PolicyService(settings).get(volume_id)
    return {"volume_id": item.volume_id, "vm_id": item.vm_id, "host_id": item.host_id,
            "storage_array": item.storage_array, "size_mb": str(int(item.size_mb) + 1), "attach_on": item.attach_on,
            "detach_on": item.detach_on, "app": item.app or "", "policy_version": str(int(item.policy_version))}


def _version(settings, volume_id: str) -> str:
    from vvolguard.services.policies import PolicyService

    return str(int(PolicyService(settings).get(volume_id).policy_version))


# (name, least role, success status, form builder(settings, role) -> (path, form))
POST_ROUTES = [
    ("create policy", "editor", 302, lambda s, role: ("/policies/new", {
        "policy_version": "0", "volume_id": f"vvol-new-{role}", "vm_id": "vm-9", "host_id": "host-1",
        "storage_array": "S1", "size_mb": "10", "attach_on": "preboot", "detach_on": "postboot"})),
    ("edit policy", "editor", 302, lambda s, role: ("/policies/vvol-1", _edit_form(s, "vvol-1"))),
    ("delete policy", "editor", 302, lambda s, role: (f"/policies/vvol-del-{role}/delete", {
        "policy_version": _version(s, f"vvol-del-{role}"), "confirm": "1"})),
    ("simulate", "viewer", 200, lambda s, role: ("/simulate", {"vm_id": "vm-1", "type": "vm.preboot"})),
    ("tamper check", "viewer", 302, lambda s, role: ("/audit/verify", {})),
    ("enroll host", "admin", 200, lambda s, role: ("/hosts", {
        "host_id": f"host-new-{role}", "mac": "02:00:00:00:00:09", "serial": "SER-9"})),
    ("rotate host", "admin", 200, lambda s, role: (f"/hosts/host-rot-{role}/rotate", {})),
    ("revoke host", "admin", 302, lambda s, role: (f"/hosts/host-rev-{role}/revoke", {"confirm": "1"})),
    ("policy impact", "editor", 200, lambda s, role: ("/policies/impact", {"since": "1d", "policy": (
        "volumes:\n  - {volume_id: vvol-1, vm_id: vm-1, host_id: host-1, storage_array: S1, size_mb: 10, "
        "attach_on: preboot, detach_on: shutdown}\n")})),
    ("sign out", "anyone", 302, lambda s, role: ("/logout", {})),
]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name,least,ok_status,build", POST_ROUTES, ids=[r[0] for r in POST_ROUTES])
def test_post_route__answers_by_role(as_role, shared_aws, role, name, least, ok_status, build):
    c = as_role(role)
    path, form = build(shared_aws, role)
    token = csrf_token(c, "/login" if role == "anonymous" else "/simulate")
    _expect(c.post(path, data={**form, "csrf_token": token}), role, least, ok_status)


PAGES = ["/login", "/policies", "/policies/new", "/policies/vvol-1", "/simulate", "/attachments", "/audit", "/hosts",
         "/policies/does-not-exist", "/nowhere", "/policies/impact"]


@pytest.mark.parametrize("path", PAGES)
def test_every_page__strict_csp_no_inline_script_or_style_nothing_external(as_role, path):
    r = as_role("admin").get(path)
    html = r.get_data(as_text=True)
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "style-src 'self'" in csp and "script-src" not in csp
    assert r.headers["X-Frame-Options"] == "DENY" and r.headers["Cache-Control"] == "no-store"
    assert "<script" not in html.lower()
    assert not re.search(r"\sstyle\s*=", html, re.I), "inline style attribute"
    assert "<style" not in html.lower()
    assert not re.search(r"\son[a-z]+\s*=", html, re.I), "inline event handler"
    assert not re.search(r'(src|href|action)="(https?:)?//', html), "a resource from another origin"
    if r.status_code == 200:
        assert 'name="csrf_token"' in html  # every page's forms (sign-out included) carry the token


def test_session_cookie__httponly_samesite_strict(as_role):
    cookie = as_role("viewer").get_cookie("vvg_session")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Strict"


def test_production_cookie_is_secure_by_default(shared_aws, monkeypatch):
    from dashboard import create_app

    monkeypatch.delenv("VVG_DASHBOARD_INSECURE_COOKIES", raising=False)
    assert create_app({"SECRET_KEY": "x"}).config["SESSION_COOKIE_SECURE"] is True
