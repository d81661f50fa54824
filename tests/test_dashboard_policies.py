"""Policies in the dashboard: forms named as the policy file's keys, the one validator, optimistic
locking, CSRF, hostile input, change history; every change audited as user:NAME."""
from __future__ import annotations

import json
import re

from tests.dashboard_support import *  # noqa: F401,F403 - fixtures
from tests.dashboard_support import csrf_token

NEW = {"volume_id": "vvol-9", "vm_id": "vm-9", "host_id": "host-1", "storage_array": "S2", "size_mb": "20",
       "attach_on": "app_start", "detach_on": "app_stop", "app": "A9", "authorized_apps": "A9, A10",
       "os_disk_encryption": "true", "max_attach_seconds": "600", "min_key_bits": "256", "policy_version": "0"}


def _post(client, path, form, token=None):
    return client.post(path, data={**form, "csrf_token": token if token is not None else csrf_token(client, "/simulate")})


def _item(settings, volume_id):
    from vvolguard.services.policies import PolicyService

    return PolicyService(settings).find(volume_id)


def _state(settings):
    """Every policy and every audit record: the 'nothing changed' check."""
    from vvolguard.adapters.models import AuditItem, PolicyItem

    pols = sorted(json.dumps(p.attribute_values, default=str, sort_keys=True) for p in PolicyItem.scan())
    recs = sorted((r.chain, int(r.seq)) for r in AuditItem.scan())
    return pols, recs


def _form_of(settings, vid, **changes):
    item = _item(settings, vid)
    form = {"volume_id": item.volume_id, "vm_id": item.vm_id, "host_id": item.host_id,
            "storage_array": item.storage_array, "size_mb": str(int(item.size_mb)), "attach_on": item.attach_on,
            "detach_on": item.detach_on, "max_attach_seconds": str(int(item.max_attach_seconds)),
            "policy_version": str(int(item.policy_version))}
    if item.app:
        form["app"] = item.app
    if item.authorized_apps:
        form["authorized_apps"] = ",".join(item.authorized_apps)
    if item.os_disk_encryption:
        form["os_disk_encryption"] = "true"
    form.update(changes)
    return form


def test_create__fields_named_as_policy_keys__saved_and_audited_as_the_user(client, login, seeded):
    settings = seeded[0]
    login("editor")
    r = _post(client, "/policies/new", {**NEW, "password": "s3cret-pw"})
    assert r.status_code == 302 and r.headers["Location"] == "/policies/vvol-9"
    item = _item(settings, "vvol-9")
    assert (item.vm_id, int(item.size_mb), item.attach_on, item.detach_on, item.app) == ("vm-9", 20, "app_start", "app_stop", "A9")
    assert list(item.authorized_apps) == ["A9", "A10"] and item.os_disk_encryption is True
    assert int(item.max_attach_seconds) == 600 and int(item.min_key_bits) == 256 and int(item.policy_version) == 1
    assert item.password_hash and "s3cret-pw" not in item.password_hash
    from vvolguard.adapters.audit import AuditLog

    rec = next(AuditLog(settings).recent(volume_id="vvol-9"))
    assert rec.actor == "user:eddie" and rec.action == "policy_create"
    page = client.get("/policies/vvol-9").get_data(as_text=True)
    assert "Created the policy of vvol-9" in page
    assert "s3cret-pw" not in page and item.password_hash not in page  # write-only
    assert 'name="password" type="password"' in page and "a password is set" in page
    listing = client.get("/policies?vm_id=vm-9").get_data(as_text=True)
    assert "vvol-9" in listing and "vvol-1" not in listing


def test_create__the_validator_s_refusals_are_shown_per_field_and_nothing_is_written(client, login, seeded):
    login("editor")
    before = _state(seeded[0])
    bad = {**NEW, "size_mb": "0", "attach_on": "preboot", "detach_on": "app_stop", "vm_id": "vm 9!"}
    r = _post(client, "/policies/new", bad)
    page = r.get_data(as_text=True)
    assert r.status_code == 400
    assert "size_mb" in page and "must be an integer from 1 to 1048576" in page
    assert "app_stop needs attach_on: app_start" in page
    assert "must match [A-Za-z0-9._-]{1,64}" in page
    assert 'aria-invalid="true"' in page
    assert _state(seeded[0]) == before


def test_create__an_existing_volume_is_refused_not_overwritten(client, login, seeded):
    login("editor")
    before = _state(seeded[0])
    r = _post(client, "/policies/new", {**NEW, "volume_id": "vvol-1"})
    assert r.status_code == 409 and "already has a policy" in r.get_data(as_text=True)
    assert _state(seeded[0]) == before


def test_edit__saves_changes_bumps_version_and_history_shows_who_when_what(client, login, seeded):
    settings = seeded[0]
    login("editor")
    r = _post(client, "/policies/vvol-1", _form_of(settings, "vvol-1", size_mb="64", storage_array="S2"))
    assert r.status_code == 302
    item = _item(settings, "vvol-1")
    assert int(item.size_mb) == 64 and item.storage_array == "S2" and int(item.policy_version) == 2
    page = client.get("/policies/vvol-1").get_data(as_text=True)
    history = page.split("Change history", 1)[1]
    assert "user:eddie" in history
    # each changed field with its old and new value
    text = re.sub(r"<[^>]+>", "", history)
    assert re.search(r"storage_array: S1\s*→\s*S2", text) and re.search(r"size_mb: 10\s*→\s*64", text), text
    assert "cli" in history and "created" in history  # the seed's apply, older
    assert history.index("user:eddie") < history.index("created")  # newest first


def test_edit__password_is_write_only_empty_keeps_it_and_remove_clears_it(client, login, seeded):
    settings = seeded[0]
    login("editor")
    assert _post(client, "/policies/vvol-1", _form_of(settings, "vvol-1", password="first-pw")).status_code == 302
    h1 = _item(settings, "vvol-1").password_hash
    assert h1
    assert _post(client, "/policies/vvol-1", _form_of(settings, "vvol-1", size_mb="11")).status_code == 302
    assert _item(settings, "vvol-1").password_hash == h1  # absent keeps the stored one
    page = client.get("/policies/vvol-1").get_data(as_text=True)
    assert "first-pw" not in page and h1 not in page
    assert _post(client, "/policies/vvol-1", _form_of(settings, "vvol-1", remove_password="1")).status_code == 302
    assert _item(settings, "vvol-1").password_hash is None


def test_edit__a_concurrent_edit_is_refused_with_a_clear_message_never_overwritten(client, login, seeded, app):
    settings = seeded[0]
    login("editor")
    stale = _form_of(settings, "vvol-1", size_mb="77")  # read at version 1
    other = app.test_client()
    from tests.dashboard_support import sign_in

    sign_in(other, "admin")
    assert _post(other, "/policies/vvol-1", _form_of(settings, "vvol-1", size_mb="55")).status_code == 302
    before = _state(settings)
    r = _post(client, "/policies/vvol-1", stale)
    page = r.get_data(as_text=True)
    assert r.status_code == 409
    assert "someone else changed vvol-1 while you were editing it" in page and "version 2" in page
    assert 'value="77"' in page  # the user's own values are kept on the form
    assert int(_item(settings, "vvol-1").size_mb) == 55
    assert _state(settings) == before


def test_edit__volume_id_cannot_be_changed_through_the_form(client, login, seeded):
    login("editor")
    before = _state(seeded[0])
    r = _post(client, "/policies/vvol-1", _form_of(seeded[0], "vvol-1", volume_id="vvol-1b"))
    assert r.status_code == 400 and "cannot be changed here" in r.get_data(as_text=True)
    assert _state(seeded[0]) == before


def test_viewer_reads_the_volume_page_but_the_form_is_disabled(client, login, seeded):
    login("viewer")
    page = client.get("/policies/vvol-1").get_data(as_text=True)
    assert "<fieldset disabled>" in page and "needs the editor role" in page
    assert "Delete policy" not in page
    assert "New policy" not in client.get("/policies").get_data(as_text=True)


def test_delete__needs_confirmation_and_the_version_read(client, login, seeded):
    settings = seeded[0]
    login("editor")
    v = str(int(_item(settings, "vvol-3").policy_version))
    r = _post(client, "/policies/vvol-3/delete", {"policy_version": v})
    assert r.status_code == 302 and _item(settings, "vvol-3") is not None
    assert "tick the box" in client.get("/policies/vvol-3").get_data(as_text=True)
    r = _post(client, "/policies/vvol-3/delete", {"policy_version": str(int(v) + 5), "confirm": "1"})
    assert _item(settings, "vvol-3") is not None
    assert "someone else changed vvol-3" in client.get(r.headers["Location"]).get_data(as_text=True)
    r = _post(client, "/policies/vvol-3/delete", {"policy_version": v, "confirm": "1"})
    assert r.status_code == 302 and _item(settings, "vvol-3") is None
    page = client.get("/policies/vvol-3")
    assert page.status_code == 404
    text = page.get_data(as_text=True)
    assert "has no policy any more" in text and "deleted" in text and "user:eddie" in text


def test_csrf_token_of_another_session_is_refused(app, client, login, seeded):
    from tests.dashboard_support import sign_in

    other = sign_in(app.test_client(), "editor")
    foreign = csrf_token(other, "/simulate")
    login("editor")
    before = _state(seeded[0])
    assert _post(client, "/policies/new", NEW, token=foreign).status_code == 400
    assert _state(seeded[0]) == before


def test_empty_state__says_what_to_do_next(client, login, seeded):
    login("editor")
    page = client.get("/policies?vm_id=nothing-here").get_data(as_text=True)
    assert "No policy matches these filters" in page and "Clear the filters" in page
