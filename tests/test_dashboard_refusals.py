"""Refusals that must change nothing: CSRF missing or wrong (400), hostile form input (escaped or refused
with a message). One emulation for the module: each case checks that the state did not move."""
from __future__ import annotations

import html

import pytest

from tests.dashboard_support import *  # noqa: F401,F403 - fixtures
from tests.dashboard_support import sign_in
from tests.test_dashboard_policies import NEW, _post, _state


@pytest.fixture
def editor(shared_app):
    return sign_in(shared_app.test_client(), "editor")


@pytest.fixture
def admin(shared_app):
    return sign_in(shared_app.test_client(), "admin")


@pytest.mark.parametrize("field,value,message", [
    ("volume_id", "<script>alert(1)</script>", "volume_id: must match"),
    ("vm_id", "\"><img src=x onerror=alert(1)>", "vm_id: must match"),
    ("storage_array", "S1'; DROP TABLE x; --", "storage_array: must match"),
    ("host_id", "h" * 5000, "host_id: must match"),
    ("app", "<b>A1</b>", "app: must match"),
    ("size_mb", "1e9", "size_mb: must be an integer"),
    ("size_mb", "99999999999999999999", "size_mb: must be an integer"),
    ("password", "p" * 300, "password: must be a string of 1 to 256 characters"),
    ("colour", "<script>x</script>", "colour: unknown key"),
    ("<script>k</script>", "v", "unknown key"),
])
def test_hostile_input__refused_with_a_message_escaped_and_nothing_changed(editor, shared_aws, field, value, message):
    client = editor
    before = _state(shared_aws)
    r = _post(client, "/policies/new", {**NEW, field: value})
    page = r.get_data(as_text=True)
    assert r.status_code == 400, page[:2000]
    assert html.escape(message, quote=True) in page or message in page
    assert "<script>" not in page and "<img src=x" not in page and "<b>A1</b>" not in page
    assert "p" * 300 not in page  # a refused password is never echoed
    assert _state(shared_aws) == before


@pytest.mark.parametrize("token", [None, "", "not-a-token", "forged.token.value"])
@pytest.mark.parametrize("path,form", [
    ("/policies/new", NEW),
    ("/policies/vvol-1", {"volume_id": "vvol-1", "size_mb": "99", "policy_version": "1"}),
    ("/policies/vvol-1/delete", {"policy_version": "1", "confirm": "1"}),
    ("/hosts", {"host_id": "host-x", "mac": "02:00:00:00:00:07", "serial": "S-7"}),
    ("/hosts/host-1/revoke", {"confirm": "1"}),
    ("/hosts/host-1/rotate", {}),
])
def test_csrf_missing_or_wrong__400_and_nothing_changed(admin, shared_aws, token, path, form):
    from vvolguard.adapters.models import HostItem

    client = admin
    before = _state(shared_aws)
    host_before = HostItem.get("host-1").attribute_values
    data = dict(form)
    if token is not None:
        data["csrf_token"] = token
    r = client.post(path, data=data)
    assert r.status_code == 400
    assert "security token" in r.get_data(as_text=True)
    assert _state(shared_aws) == before
    assert HostItem.get("host-1").attribute_values == host_before


