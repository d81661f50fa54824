"""Fixtures for the dashboard's tests (flaskr style: app -> client -> login), under moto's mock_aws.

Test modules import them: ``from tests.dashboard_support import *``. ``seeded`` holds Table 1's
policies, the demo host and one user per role, without EC2 instances (fast); ``seeded_vms`` is the full
demo seed (`make run`'s), for tests that fire real webhook events. ``shared_app`` is one app and one
emulation for a whole module, for read-mostly matrices.
"""
from __future__ import annotations

import re

import pytest

ROLE_USERS = {"viewer": "vera", "editor": "eddie", "admin": "admin"}
PASSWORD = "admin-pass-123"
TEST_CONFIG = {"TESTING": True, "SECRET_KEY": "test-secret-key", "SESSION_COOKIE_SECURE": False,
               "VVG_LOGIN_FAIL_DELAY": 0}
_TOKEN_RE = re.compile(r'name="csrf_token" value="([^"]+)"')

__all__ = ["seeded", "seeded_vms", "app", "client", "login", "shared_aws", "shared_app", "csrf_token", "sign_in",
           "ROLE_USERS", "PASSWORD", "TEST_CONFIG"]


def seed(settings, vms: bool = False) -> tuple[str, str]:
    """Table 1, the demo host and the users; with ``vms`` also the EC2 instances. (host id, secret)."""
    from infra.bootstrap import DEMO_HOST, DEMO_POLICIES, seed_demo
    from vvolguard.domain.policy import parse_policy_text
    from vvolguard.services.hosts import HostService
    from vvolguard.services.policies import PolicyService
    from vvolguard.services.users import UserService

    users = UserService(settings)
    if vms:
        out = seed_demo(settings, PASSWORD)
        host_id, secret = out["host_id"], out["host_secret"]
    else:
        PolicyService(settings).apply(parse_policy_text(DEMO_POLICIES.read_bytes(), DEMO_POLICIES.name), actor="cli")
        h = DEMO_HOST
        host_id, secret = h["host_id"], HostService(settings).enroll(h["host_id"], h["mac"], h["serial"], h["hardware"])["secret"]
        users.add("admin", "admin", PASSWORD, actor="cli")
    users.add(ROLE_USERS["viewer"], "viewer", PASSWORD, actor="cli")
    users.add(ROLE_USERS["editor"], "editor", PASSWORD, actor="cli")
    return host_id, secret


@pytest.fixture
def seeded(aws):
    """(settings, demo host id, demo host secret) with Table 1 and one user per role."""
    host_id, secret = seed(aws)
    yield aws, host_id, secret


@pytest.fixture
def seeded_vms(webhook):
    """The full demo seed (with the VMs' instances) and the signed webhook client; yields the Webhook."""
    from vvolguard.services.users import UserService

    users = UserService(webhook.settings)
    users.add(ROLE_USERS["viewer"], "viewer", PASSWORD, actor="cli")
    users.add(ROLE_USERS["editor"], "editor", PASSWORD, actor="cli")
    yield webhook


def _make_app(settings):
    from dashboard import create_app

    return create_app(dict(TEST_CONFIG))


@pytest.fixture
def app(request):
    """The dashboard app against the seeded emulation (CSRF on, as in production). Uses ``seeded_vms``
    when the test asks for it, else ``seeded``."""
    settings = (request.getfixturevalue("seeded_vms").settings if "seeded_vms" in request.fixturenames
                else request.getfixturevalue("seeded")[0])
    yield _make_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


def csrf_token(client, path: str = "/login") -> str:
    """The CSRF token of the client's session, read from a page's form."""
    r = client.get(path)
    m = _TOKEN_RE.search(r.get_data(as_text=True))
    assert m, f"no CSRF token on {path} ({r.status_code})"
    return m.group(1)


def sign_in(client, role: str = "admin"):
    """Sign ``client`` in as the user of ``role``; returns the client."""
    token = csrf_token(client)
    r = client.post("/login", data={"username": ROLE_USERS[role], "password": PASSWORD, "csrf_token": token})
    assert r.status_code == 302, r.get_data(as_text=True)[:500]
    return client


@pytest.fixture
def login(client):
    """login(role) signs the client in as the user of that role; returns the client."""
    return lambda role="admin": sign_in(client, role)


@pytest.fixture(scope="module")
def shared_aws():
    """One mock_aws emulation for a whole module, seeded like ``seeded``; yields the settings."""
    from moto import mock_aws

    from infra.bootstrap import bootstrap
    from vvolguard.adapters import aws as aws_adapter
    from vvolguard.settings import Settings

    with mock_aws():
        aws_adapter.reset_clients()
        settings = Settings.from_env()
        bootstrap(settings)
        seed(settings)
        yield settings
        aws_adapter.reset_clients()


@pytest.fixture(scope="module")
def shared_app(shared_aws):
    return _make_app(shared_aws)
