"""The policy key `attach_to` (docs/policy-file.md, docs/deployment-modes.md): vm (default) | host, one value
per VM, stored, exported only when not the default, shown in the dry-run diff and the dashboard's form."""
from __future__ import annotations


import pytest
import yaml

from tests.dashboard_support import *  # noqa: F401,F403 - fixtures
from tests.dashboard_support import csrf_token
from vvolguard.domain.policy import parse_policy_text
from vvolguard.errors import PolicyValidationError

BASE = "{volume_id: %s, vm_id: %s, host_id: host-1, storage_array: S1, size_mb: 10, attach_on: preboot, detach_on: postboot%s}"


def _doc(*entries) -> bytes:
    return ("volumes:\n" + "".join(f"  - {BASE % e}\n" for e in entries)).encode()


def test_attach_to_defaults_to_vm_and_accepts_host():
    a, b = parse_policy_text(_doc(("v1", "vm-1", ""), ("v2", "vm-2", ", attach_to: host")))
    assert (a.attach_to, b.attach_to) == ("vm", "host")
    assert "attach_to" not in a.to_file_entry() and b.to_file_entry()["attach_to"] == "host"


@pytest.mark.parametrize("value", ["HOST", "'vm '", "[host]", "1", "true", "'" + "h" * 5000 + "'", "'host\\0'"])
def test_a_bad_attach_to_is_refused_naming_entry_and_field(value):
    with pytest.raises(PolicyValidationError) as err:
        parse_policy_text(_doc(("v1", "vm-1", f", attach_to: {value}")))
    [msg] = err.value.errors
    assert msg.startswith("volumes[0] (v1): attach_to: must be one of vm, host"), msg
    assert len(msg) < 200  # an oversized value is not echoed whole


def test_a_mix_within_one_vm_is_refused_naming_the_entry_and_the_field():
    with pytest.raises(PolicyValidationError) as err:
        parse_policy_text(_doc(("v1", "vm-1", ", attach_to: host"), ("v2", "vm-1", ""), ("v3", "vm-3", "")))
    assert err.value.errors == ["volumes[1] (v2): attach_to: every volume of vm-1 must have the same value; "
                                "v1 has host, this one vm"]


def test_apply_export_round_trip_and_the_diff(aws, vvg, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_bytes(_doc(("v1", "vm-1", ", attach_to: host"), ("v2", "vm-1", ", attach_to: host"), ("v3", "vm-3", "")))
    assert vvg("policy", "apply", str(path)).code == 0
    from vvolguard.services.policies import PolicyService

    assert PolicyService(aws).get("v1").attach_to == "host"
    out = tmp_path / "export.yaml"
    r = vvg("policy", "export")
    assert r.code == 0, r
    out.write_text(r.out)
    exported = {e["volume_id"]: e for e in yaml.safe_load(out.read_text())["volumes"]}
    assert exported["v1"]["attach_to"] == "host" and "attach_to" not in exported["v3"]
    r = vvg("policy", "apply", str(out), "--dry-run")
    assert r.code == 0 and r.json()["updated"] == [] and r.json()["created"] == [], r  # round-trip: no change
    path.write_bytes(_doc(("v3", "vm-3", ", attach_to: host")))
    diff = vvg("policy", "apply", str(path), "--dry-run").json()
    assert diff["updated"] == [{"volume_id": "v3", "changes": {"attach_to": ["vm", "host"]}}]


def test_apply_refuses_a_mix_with_the_volumes_already_stored_and_writes_nothing(aws, vvg, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_bytes(_doc(("v1", "vm-1", ", attach_to: host")))
    assert vvg("policy", "apply", str(path)).code == 0
    before = vvg("audit", "list").out
    path.write_bytes(_doc(("v2", "vm-1", "")))
    r = vvg("policy", "apply", str(path))
    assert r.code != 0 and "v2" in r.err and "attach_to" in r.err, r
    from vvolguard.services.policies import PolicyService

    assert PolicyService(aws).find("v2") is None
    assert vvg("audit", "list").out == before


# ---------------------------------------------------------------------------------------------- dashboard

FORM = {"volume_id": "kvm-1", "vm_id": "vm-9", "host_id": "host-1", "storage_array": "S1", "size_mb": "10",
        "attach_on": "preboot", "detach_on": "postboot", "max_attach_seconds": "900", "policy_version": "0"}


def _post(client, path, form):
    return client.post(path, data={**form, "csrf_token": csrf_token(client, "/simulate")})


def test_dashboard_form_has_an_attach_to_select_and_saves_it(client, login, seeded):
    from vvolguard.services.policies import PolicyService

    login("editor")
    page = client.get("/policies/new").get_data(as_text=True)
    assert '<select id="attach_to" name="attach_to"' in page and '<option value="host"' in page
    r = _post(client, "/policies/new", {**FORM, "attach_to": "host"})
    assert r.status_code == 302, r.get_data(as_text=True)[:500]
    assert PolicyService(seeded[0]).get("kvm-1").attach_to == "host"
    page = client.get("/policies/kvm-1").get_data(as_text=True)
    assert '<option value="host" selected>' in page


@pytest.mark.parametrize("value", ["hypervisor", "x" * 300, "<script>alert(1)</script>"])
def test_dashboard_refuses_a_bad_attach_to_and_writes_nothing(client, login, seeded, value):
    from vvolguard.services.policies import PolicyService

    login("editor")
    r = _post(client, "/policies/new", {**FORM, "attach_to": value})
    body = r.get_data(as_text=True)
    assert r.status_code == 400 and "attach_to" in body and "<script>alert" not in body
    assert PolicyService(seeded[0]).find("kvm-1") is None


def test_dashboard_refuses_a_mix_within_a_vm(client, login, seeded):
    from vvolguard.services.policies import PolicyService

    login("editor")
    assert _post(client, "/policies/new", {**FORM, "attach_to": "host"}).status_code == 302
    r = _post(client, "/policies/new", {**FORM, "volume_id": "kvm-2"})  # vm-9, attach_to absent: vm
    assert r.status_code == 400 and "every volume of vm-9" in r.get_data(as_text=True)
    assert PolicyService(seeded[0]).find("kvm-2") is None


def test_dashboard_save_needs_a_signed_in_editor(client, login, seeded):
    from vvolguard.services.policies import PolicyService

    r = client.post("/policies/new", data={**FORM, "attach_to": "host"})  # signed out, no token
    assert r.status_code in (302, 400, 401, 403) and PolicyService(seeded[0]).find("kvm-1") is None
    login("viewer")
    r = _post(client, "/policies/new", {**FORM, "attach_to": "host"})
    assert r.status_code == 403 and PolicyService(seeded[0]).find("kvm-1") is None
