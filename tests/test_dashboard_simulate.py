"""/simulate: the webhook's schema, authorization and engine over the VM's partition; decisions with
reasons; no provider call and no write."""
from __future__ import annotations

import json
import re

import pytest

from tests.dashboard_support import *  # noqa: F401,F403 - fixtures
from tests.dashboard_support import csrf_token


def _sim(client, **form):
    return client.post("/simulate", data={**form, "csrf_token": csrf_token(client, "/simulate")})


def _decisions(page: str) -> list[tuple[str, str, str]]:
    body = page.split('id="result-h"', 1)[1]
    return re.findall(r'<td class="mono" data-label="Volume"><span class="id">(vvol-[^<]+)</span></td>\s*'
                      r'<td data-label="Action">([a-z]+)</td>.*?<td class="mono" data-label="Reason"><span class="id">([^<]+)</span></td>',
                      body, re.S)


def _everything(settings) -> str:
    from vvolguard.adapters import aws as aws_adapter

    ddb = aws_adapter.client("dynamodb", settings.region)
    out = []
    for name in (settings.state_table, settings.hosts_table, settings.users_table, settings.events_table,
                 settings.audit_table):
        out.append(sorted(json.dumps(i, sort_keys=True) for i in ddb.scan(TableName=name)["Items"]))
    return json.dumps(out)


@pytest.fixture
def provider_calls():
    """Every EC2/STS call any vvolguard client makes (botocore hook)."""
    from vvolguard.adapters import aws as aws_adapter

    calls: list[str] = []

    def hook(model, **_):
        calls.append(model.name)

    for svc in ("ec2", "sts"):
        aws_adapter.add_hook(f"before-call.{svc}", hook)
    yield calls
    for svc in ("ec2", "sts"):
        aws_adapter.remove_hook(f"before-call.{svc}", hook)


def test_preboot__shows_the_engine_s_decisions_with_reasons_no_provider_no_write(client, login, seeded_vms, provider_calls):
    settings = seeded_vms.settings
    login("viewer")
    before = _everything(settings)
    r = _sim(client, vm_id="vm-1", type="vm.preboot")
    page = r.get_data(as_text=True)
    assert r.status_code == 200
    assert _decisions(page) == [("vvol-1", "attach", "attach_on=preboot")]
    assert "would attach" in page and "/dev/sdf" in page
    assert provider_calls == []
    assert _everything(settings) == before


def test_same_answer_as_the_webhook_once_attached(client, login, seeded_vms):
    login("viewer")
    status, answer = seeded_vms.send("vm.preboot", "vm-1")
    assert status == 200 and answer["decisions"][0]["outcome"] == "done"
    page = _sim(client, vm_id="vm-1", type="vm.preboot").get_data(as_text=True)
    assert _decisions(page) == [("vvol-1", "attach", "already_attached")] and "skipped" in page
    page = _sim(client, vm_id="vm-1", type="vm.booted").get_data(as_text=True)
    assert _decisions(page) == [("vvol-1", "detach", "detach_on=postboot")]


def test_app_event_needs_app_and_matches_only_that_app(client, login, seeded):
    login("viewer")
    r = _sim(client, vm_id="vm-4", type="app.started")
    assert r.status_code == 400 and "field &#39;app&#39; is required" in r.get_data(as_text=True)
    page = _sim(client, vm_id="vm-4", type="app.started", app="A1").get_data(as_text=True)
    assert _decisions(page) == [("vvol-4", "attach", "attach_on=app_start")]
    page = _sim(client, vm_id="vm-4", type="app.started", app="A2").get_data(as_text=True)
    assert "No decision" in page


def test_refusals_read_as_the_webhook_s(client, login, seeded):
    login("viewer")
    page = _sim(client, vm_id="vm-1", type="vm.preboot", host_id="host-zz").get_data(as_text=True)
    assert "401 unknown_host" in page
    page = _sim(client, vm_id="vm-1", type="volume.detach_request", volume_id="vvol-2").get_data(as_text=True)
    assert "404 not_found" in page
    r = _sim(client, vm_id="vm-1", type="<script>")
    assert r.status_code == 400 and "type must be one of" in r.get_data(as_text=True)
    assert "<script>" not in r.get_data(as_text=True)


def test_request_attach__password_checked_never_echoed_and_guesses_limited(client, login, seeded):
    from vvolguard.domain.policy import validate_entry
    from vvolguard.services.policies import PolicyService

    spec, _ = validate_entry({"volume_id": "vvol-r", "vm_id": "vm-1", "host_id": "host-1", "storage_array": "S1",
                              "size_mb": 1, "attach_on": "request", "detach_on": "request", "password": "right-pw"}, "t")
    PolicyService(seeded[0]).save_one(spec, "cli", 0)
    login("viewer")
    page = _sim(client, vm_id="vm-1", type="volume.attach_request", volume_id="vvol-r", password="right-pw").get_data(as_text=True)
    assert _decisions(page) == [("vvol-r", "attach", "attach_on=request")] and "right-pw" not in page
    for _ in range(5):
        page = _sim(client, vm_id="vm-1", type="volume.attach_request", volume_id="vvol-r", password="wrong").get_data(as_text=True)
        assert "bad_password" in page
    assert int(PolicyService(seeded[0]).get("vvol-r").failed_passwords or 0) == 0  # the dry run wrote nothing
    page = _sim(client, vm_id="vm-1", type="volume.attach_request", volume_id="vvol-r", password="right-pw").get_data(as_text=True)
    assert "Too many simulated attaches with a wrong password" in page


def test_guest_inventory__selects_software(client, login, seeded):
    login("viewer")
    page = _sim(client, vm_id="vm-1", type="guest.inventory",
                apps="LUKS disk_encryption 512\nAV antivirus 128\nBL disk_encryption 128").get_data(as_text=True)
    assert "LUKS, BL" in page
    r = _sim(client, vm_id="vm-1", type="guest.inventory", apps="not valid")
    assert r.status_code == 400 and "NAME TYPE KEY_BITS" in r.get_data(as_text=True)


def test_no_policies__empty_state(client, login, seeded):
    from vvolguard.adapters.models import PolicyItem

    for p in PolicyItem.scan():
        p.delete()
    login("viewer")
    assert "no policies to simulate against yet" in client.get("/simulate").get_data(as_text=True)
