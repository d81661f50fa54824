"""/hosts (admin): enroll shows the secret once, rotate shows a new one (the old stops working), revoke
needs confirming; last event seen; every change audited as user:NAME."""
from __future__ import annotations

import re

from tests.dashboard_support import *  # noqa: F401,F403 - fixtures
from tests.dashboard_support import csrf_token

_SECRET = re.compile(r'id="secret" class="mono secret" value="([^"]+)"')


def _enroll(client, **form):
    data = {"host_id": "host-9", "mac": "02:00:00:00:00:99", "serial": "SER-99", "hardware": "rack 9", **form}
    return client.post("/hosts", data={**data, "csrf_token": csrf_token(client, "/hosts")})


def test_enroll__secret_shown_once_on_the_response_only_and_it_works(client, login, seeded):
    from vvolguard.adapters.audit import AuditLog
    from vvolguard.adapters.models import HostItem
    from vvolguard.services.hosts import HostService

    settings = seeded[0]
    login("admin")
    r = _enroll(client)
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
    secret = _SECRET.search(r.get_data(as_text=True)).group(1)
    assert len(secret) >= 40 and "shown once" in r.get_data(as_text=True)
    assert HostService(settings).secret_of(HostItem.get("host-9")) == secret
    item = HostItem.get("host-9")
    assert secret not in str(item.attribute_values)  # stored encrypted only
    for path in ("/hosts", "/audit", "/audit/export.json", "/audit/export.csv", "/policies"):
        assert secret not in client.get(path).get_data(as_text=True), path
    rec = next(r for r in AuditLog(settings).recent(limit=50) if r.action == "host_enroll" and r.host_id == "host-9")
    assert rec.actor == "user:admin"
    assert "host-9" in client.get("/hosts").get_data(as_text=True)


def test_enroll__refusals_are_messages_and_enroll_nothing(client, login, seeded):
    from vvolguard.adapters.models import HostItem

    login("admin")
    for form, message in [({"host_id": "<script>x</script>"}, "host id must match"),
                          ({"mac": "not-a-mac"}, "mac must be six hex pairs"),
                          ({"serial": "S" * 500}, "serial must be 1 to 128 characters"),
                          ({"host_id": "host-1"}, "already enrolled")]:
        r = _enroll(client, **form)
        page = r.get_data(as_text=True)
        assert r.status_code in (400, 409) and message in page, page[:1500]
        assert "<script>x" not in page and not _SECRET.search(page)
    assert sorted(h.host_id for h in HostItem.scan()) == ["host-1"]


def test_rotate__new_secret_once_and_revoke_needs_confirmation(client, login, seeded):
    from vvolguard.adapters.audit import AuditLog
    from vvolguard.adapters.models import HostItem

    settings, host_id, old_secret = seeded
    login("admin")
    r = client.post(f"/hosts/{host_id}/rotate", data={"csrf_token": csrf_token(client, "/hosts")})
    new = _SECRET.search(r.get_data(as_text=True)).group(1)
    assert new != old_secret and int(HostItem.get(host_id).secret_version) == 2
    assert "previous secret has stopped working" in r.get_data(as_text=True)
    r = client.post(f"/hosts/{host_id}/revoke", data={"csrf_token": csrf_token(client, "/hosts")})
    assert r.status_code == 302 and HostItem.get(host_id).status == "active"
    assert "tick the box" in client.get("/hosts").get_data(as_text=True)
    r = client.post(f"/hosts/{host_id}/revoke", data={"confirm": "1", "csrf_token": csrf_token(client, "/hosts")})
    assert r.status_code == 302 and HostItem.get(host_id).status == "revoked"
    page = client.get("/hosts").get_data(as_text=True)
    assert "Revoked host-1" in page and '<span class="pill bad">revoked</span>' in page
    actions = [(r.action, r.actor) for r in AuditLog(settings).recent(limit=50) if r.host_id == host_id and r.action.startswith("host_")]
    assert ("host_rotate", "user:admin") in actions and ("host_revoke", "user:admin") in actions


def test_last_event_seen__shown_after_a_real_signed_event(client, login, seeded_vms):
    login("admin")
    assert "never" in client.get("/hosts").get_data(as_text=True)
    status, _ = seeded_vms.send("vm.preboot", "vm-1")
    assert status == 200
    page = client.get("/hosts").get_data(as_text=True)
    row = page.split('<span class="id">host-1</span></td>', 1)[1].split("</tr>", 1)[0]
    assert "never" not in row and " UTC" in row


def test_no_hosts__empty_state_says_what_to_do(client, login, seeded):
    from vvolguard.adapters.models import HostItem

    HostItem.get("host-1").delete()
    login("admin")
    assert "No host is enrolled yet. Enroll the first one below" in client.get("/hosts").get_data(as_text=True)


def test_revoke__detaches_and_untags_what_the_host_held_and_says_so(client, login, seeded_vms):
    from tests.conftest import attached_volume_ids, managed_volumes

    login("admin")
    assert seeded_vms.send("vm.preboot", "vm-1")[0] == 200 and seeded_vms.send("vm.preboot", "vm-2")[0] == 200
    assert attached_volume_ids() == {"vvol-1", "vvol-2"}
    r = client.post("/hosts/host-1/revoke", data={"confirm": "1", "csrf_token": csrf_token(client, "/hosts")})
    assert r.status_code == 302
    page = client.get("/hosts").get_data(as_text=True)
    assert "detached 2 volumes attached for its VMs" in page and "removed it from 2 volumes" in page, page[:3000]
    assert attached_volume_ids() == set()
    assert all("host-1" not in v["TagMap"].get("vvg:hosts", "").split(",") for v in managed_volumes().values())
