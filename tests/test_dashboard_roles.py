"""Every page's security headers and markup, and the session cookie (docs/dashboard-pages.md). The role x
route matrix, generated from the app's routes, is tests/test_route_roles.py."""
from __future__ import annotations

import re

import pytest

from tests.dashboard_support import *  # noqa: F401,F403 - fixtures
from tests.dashboard_support import sign_in


@pytest.fixture
def as_role(shared_app):
    """as_role(role) -> a fresh client signed in as ``role`` (or not signed in)."""
    def make(role: str):
        c = shared_app.test_client()
        return c if role == "anonymous" else sign_in(c, role)
    return make


PAGES = ["/login", "/policies", "/policies/new", "/policies/vvol-1", "/simulate", "/attachments", "/audit", "/hosts",
         "/policies/does-not-exist", "/nowhere", "/policies/impact", "/users", "/vms/vm-1", "/alerts", "/logout"]


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
