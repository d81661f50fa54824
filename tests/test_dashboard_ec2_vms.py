"""Dashboard: /vms/<vm_id> of an EC2 VM (host aws-ec2) has Start and Stop for editors (docs/ec2-vms.md); a
viewer, a request without CSRF token, a bad or unknown VM id and a VM of another host change nothing."""
from __future__ import annotations

import pytest

from tests.conftest import attached_volume_ids, ec2_client
from tests.dashboard_support import *  # noqa: F401,F403 - fixtures
from tests.dashboard_support import csrf_token, sign_in
from tests.test_ec2_vms import EC2_POLICIES, _instance, _snapshot, _state


@pytest.fixture
def ec2_page(seeded_vms):
    from vvolguard.domain.policy import parse_policy_text
    from vvolguard.services.policies import PolicyService

    PolicyService(seeded_vms.settings).apply(parse_policy_text(EC2_POLICIES), actor="cli")
    return _instance("vm-e1")


def _audit_actions(settings, vm_id="vm-e1"):
    from vvolguard.adapters.audit import AuditLog

    return [(r.actor, r.action, r.outcome) for r in AuditLog(settings).recent(vm_id=vm_id, limit=100)]


def test_vm_page__editor_starts_and_stops_an_ec2_vm_and_sees_the_decisions(seeded_vms, ec2_page, client, login):
    login("editor")
    page = client.get("/vms/vm-e1").get_data(as_text=True)
    assert 'action="/vms/vm-e1/start"' in page and 'action="/vms/vm-e1/stop"' in page and "Quarantine:" not in page
    r = client.post("/vms/vm-e1/start", data={"csrf_token": csrf_token(client, "/vms/vm-e1")}, follow_redirects=True)
    page = r.get_data(as_text=True)
    assert r.status_code == 200 and "vm-e1 started" in page, page[:3000]
    assert "vvol-e1 attach done" in page and "vvol-e2 attach done" in page
    assert _state(ec2_page) == "running" and attached_volume_ids() == {"vvol-e1", "vvol-e2"}
    assert ("user:eddie", "vm_start", "done") in _audit_actions(seeded_vms.settings)
    r = client.post("/vms/vm-e1/stop", data={"csrf_token": csrf_token(client, "/vms/vm-e1")}, follow_redirects=True)
    page = r.get_data(as_text=True)
    assert "vm-e1 stopped" in page and "vvol-e1 detach done" in page, page[:3000]
    assert _state(ec2_page) == "stopped" and attached_volume_ids() == set()
    # started twice: refused with the reason, nothing changed
    client.post("/vms/vm-e1/start", data={"csrf_token": csrf_token(client, "/vms/vm-e1")})
    before = _snapshot()
    r = client.post("/vms/vm-e1/start", data={"csrf_token": csrf_token(client, "/vms/vm-e1")}, follow_redirects=True)
    assert "Not started" in r.get_data(as_text=True) and "is running" in r.get_data(as_text=True)
    assert _snapshot() == before


def test_vm_page__viewer_sees_no_buttons_and_gets_403(seeded_vms, ec2_page, client, login):
    login("viewer")
    page = client.get("/vms/vm-e1").get_data(as_text=True)
    assert "vvol-e1" in page and "Start instance" not in page and "Stop instance" not in page
    before, audit = _snapshot(), _audit_actions(seeded_vms.settings)
    token = csrf_token(client, "/vms/vm-e1")
    for action in ("start", "stop"):
        assert client.post(f"/vms/vm-e1/{action}", data={"csrf_token": token}).status_code == 403
    assert _snapshot() == before and _state(ec2_page) == "stopped"
    assert _audit_actions(seeded_vms.settings) == audit


def test_vm_page__hostile_requests_change_nothing(seeded_vms, ec2_page, app, client, login):
    client = sign_in(app.test_client(), "editor")
    before, audit = _snapshot(), _audit_actions(seeded_vms.settings)
    audit_vm1 = _audit_actions(seeded_vms.settings, "vm-1")
    token = csrf_token(client, "/vms/vm-e1")
    # no CSRF token, a wrong one, a GET
    assert client.post("/vms/vm-e1/start", data={}).status_code == 400
    assert client.post("/vms/vm-e1/start", data={"csrf_token": "forged"}).status_code == 400
    assert client.get("/vms/vm-e1/start").status_code == 405
    # bad ids: not a route or refused before anything is read
    for bad in ("bad%20id", "x" * 65, "%3Cscript%3E", "..%2F..%2Fetc"):
        assert client.post(f"/vms/{bad}/start", data={"csrf_token": token}).status_code == 404, bad
    # an unknown VM and a VM of another host: refused with the reason
    r = client.post("/vms/vm-404/start", data={"csrf_token": token}, follow_redirects=True)
    assert "Not started: no policy names VM vm-404" in r.get_data(as_text=True)
    page = client.get("/vms/vm-1").get_data(as_text=True)
    assert "Start instance" not in page  # the demo host's VM: no EC2 controls
    r = client.post("/vms/vm-1/stop", data={"csrf_token": token}, follow_redirects=True)
    assert "Not stopped" in r.get_data(as_text=True) and "not an EC2 VM" in r.get_data(as_text=True)
    assert _snapshot() == before and _state(ec2_page) == "stopped"
    assert _audit_actions(seeded_vms.settings) == audit
    assert _audit_actions(seeded_vms.settings, "vm-1") == audit_vm1
    assert not ec2_client().describe_volumes(Filters=[{"Name": "tag:vvg:volume-id", "Values": ["vvol-e1"]}])["Volumes"]
