"""Dashboard: /hosts enrols and rotates a key host from a pasted public key and shows its fingerprint and
the hardware it is bound to; /vms/<vm_id> shows a VM and lets admins quarantine and release it."""
from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import attached_volume_ids
from tests.dashboard_support import *  # noqa: F401,F403 - fixtures
from tests.dashboard_support import csrf_token, sign_in
from vvolguard.domain import hostkeys


def _ssh(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def _enroll(client, **form):
    data = {"host_id": "hv-k", "mac": "02:00:00:00:0b:01", "serial": "SN-HVK", "hardware": "rack 11", **form}
    return client.post("/hosts", data={**data, "csrf_token": csrf_token(client, "/hosts")})


def test_hosts__pasted_public_key_enrols_a_key_host_bound_to_its_hardware(client, login, seeded):
    from vvolguard.adapters.audit import AuditLog
    from vvolguard.adapters.models import HostItem

    settings = seeded[0]
    login("admin")
    key = Ed25519PrivateKey.generate()
    fp = hostkeys.fingerprint(key.public_key())
    r = _enroll(client, public_key=_ssh(key) + " root@hv-k\r\n")
    page = r.get_data(as_text=True)
    assert r.status_code == 200 and fp in page and 'id="secret"' not in page, page[:2000]
    item = HostItem.get("hv-k")
    assert item.auth == "ed25519" and item.fingerprint == fp and item.secret_enc is None
    listing = client.get("/hosts").get_data(as_text=True)
    for shown in (fp, "02:00:00:00:0b:01", "SN-HVK", "rack 11", "Ed25519 key", item.key_binding[:16]):
        assert shown in listing, shown
    assert next(iter(AuditLog(settings).recent(limit=5))).actor == "user:admin"
    # rotate with a pasted key; the old one is gone
    new = Ed25519PrivateKey.generate()
    r = client.post("/hosts/hv-k/rotate", data={"public_key": _ssh(new), "csrf_token": csrf_token(client, "/hosts")})
    assert r.status_code == 200 and hostkeys.fingerprint(new.public_key()) in r.get_data(as_text=True)
    assert HostItem.get("hv-k").fingerprint == hostkeys.fingerprint(new.public_key())


def test_hosts__bad_pasted_keys_are_refused_and_enroll_nothing(client, login, seeded):
    from vvolguard.adapters.models import HostItem

    login("admin")
    priv = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()).decode()
    for pasted, message in (("ssh-ed25519 AAAA<script>x</script>", "could not be read"),
                            (priv, "private key"),
                            ("ssh-rsa " + "A" * 40000, "over")):
        r = _enroll(client, public_key=pasted)
        page = r.get_data(as_text=True)
        assert r.status_code == 400 and message in page, page[:2000]
        assert "<script>x" not in page and priv.splitlines()[1] not in page
    assert sorted(h.host_id for h in HostItem.scan()) == ["host-1"]
    # a secret host rotated with a key: refused, unchanged
    before = HostItem.get("host-1").attribute_values.copy()
    r = client.post("/hosts/host-1/rotate", data={"public_key": _ssh(Ed25519PrivateKey.generate()),
                                                  "csrf_token": csrf_token(client, "/hosts")}, follow_redirects=True)
    assert "Not rotated" in r.get_data(as_text=True)
    assert HostItem.get("host-1").attribute_values == before


def test_vm_page__admin_quarantines_and_releases(seeded_vms, client, login):
    from vvolguard.adapters.models import QuarantineItem

    webhook = seeded_vms
    webhook.send("vm.preboot", "vm-2")
    assert "vvol-2" in attached_volume_ids()
    login("admin")
    page = client.get("/vms/vm-2").get_data(as_text=True)
    assert "vvol-2" in page and "attached" in page and "Quarantine" in page
    r = client.post("/vms/vm-2/quarantine", data={"reason": "stolen laptop", "csrf_token": csrf_token(client, "/vms/vm-2")},
                    follow_redirects=True)
    page = r.get_data(as_text=True)
    assert r.status_code == 200 and "quarantined" in page and "stolen laptop" in page
    assert "vvol-2" not in attached_volume_ids()
    status, body = webhook.send("vm.preboot", "vm-2")
    assert body["decisions"][0]["reason"] == "quarantined"
    r = client.post("/vms/vm-2/release", data={"csrf_token": csrf_token(client, "/vms/vm-2")}, follow_redirects=True)
    assert "is released" in r.get_data(as_text=True) and list(QuarantineItem.scan()) == []
    status, body = webhook.send("vm.preboot", "vm-2")
    assert body["decisions"][0]["outcome"] == "done"


def test_vm_page__viewers_see_no_controls_and_cannot_post_refusals_write_nothing(seeded_vms, app, client, login):
    from vvolguard.adapters.models import QuarantineItem

    login("viewer")
    page = client.get("/vms/vm-2").get_data(as_text=True)
    assert "vvol-2" in page and "Quarantine:" not in page
    assert client.post("/vms/vm-2/quarantine", data={"csrf_token": csrf_token(client, "/vms/vm-2")}).status_code == 403
    client = sign_in(app.test_client(), "admin")
    assert client.get("/vms/vm-404").status_code == 404
    assert client.get("/vms/bad%20id").status_code == 404
    # no CSRF token, an oversize reason, an unknown VM: nothing quarantined
    assert client.post("/vms/vm-2/quarantine", data={"reason": "x"}).status_code == 400
    r = client.post("/vms/vm-2/quarantine", data={"reason": "x" * 400, "csrf_token": csrf_token(client, "/vms/vm-2")},
                    follow_redirects=True)
    assert "Not quarantined" in r.get_data(as_text=True)
    r = client.post("/vms/vm-404/quarantine", data={"csrf_token": csrf_token(client, "/vms/vm-2")})
    assert r.status_code in (302, 404)
    r = client.post("/vms/vm-2/release", data={"csrf_token": csrf_token(client, "/vms/vm-2")}, follow_redirects=True)
    assert "Not released" in r.get_data(as_text=True)
    assert list(QuarantineItem.scan()) == []
