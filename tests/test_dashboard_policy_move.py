"""The dashboard's policy form shows the dry-run diff of a move and saves it only when confirmed
(docs/policy-apply.md): a second POST with the confirm field, the same CSRF token and version."""
from __future__ import annotations

import re

from tests.dashboard_support import *  # noqa: F401,F403 - fixtures
from tests.dashboard_support import csrf_token
from tests.test_dashboard_policies import _form_of, _item, _state

_CONFIRM = re.compile(r'name="confirm" value="([0-9a-f]+)"')


def _post(client, path, form):
    return client.post(path, data={**form, "csrf_token": csrf_token(client, "/simulate")})


def test_move_without_confirm__nothing_saved_and_the_diff_shown(client, login, seeded):
    settings = seeded[0]
    login("editor")
    before = _state(settings)
    r = _post(client, "/policies/vvol-1", _form_of(settings, "vvol-1", vm_id="vm-9", host_id="host-7", size_mb="12"))
    page = r.get_data(as_text=True)
    assert r.status_code == 200
    assert _state(settings) == before
    diff = page.split('id="diff"', 1)[1].split("</section>", 1)[0]
    for field, old, new in (("vm_id", "vm-1", "vm-9"), ("host_id", "host-1", "host-7"), ("size_mb", "10", "12")):
        assert re.search(rf">{field}</th><td class=\"mono\">{old}</td><td class=\"mono\">{new}</td>", diff), field
    assert "vm-1 -&gt; vm-9" in diff and "host-1 -&gt; host-7" in diff
    assert "host_id host-7 is not enrolled" in diff
    assert _CONFIRM.search(page) and 'name="policy_version" value="1"' in page
    assert "Confirm and save" in page and "<script" not in page


def test_move_with_confirm__saved(client, login, seeded):
    settings = seeded[0]
    login("editor")
    form = _form_of(settings, "vvol-1", vm_id="vm-9")
    token = _CONFIRM.search(_post(client, "/policies/vvol-1", form).get_data(as_text=True)).group(1)
    r = _post(client, "/policies/vvol-1", {**form, "confirm": token})
    assert r.status_code == 302
    item = _item(settings, "vvol-1")
    assert item.vm_id == "vm-9" and int(item.policy_version) == 2


def test_confirm_of_another_change__shows_the_new_diff_and_saves_nothing(client, login, seeded):
    settings = seeded[0]
    login("editor")
    form = _form_of(settings, "vvol-1", vm_id="vm-9")
    token = _CONFIRM.search(_post(client, "/policies/vvol-1", form).get_data(as_text=True)).group(1)
    before = _state(settings)
    for changed in ({**form, "vm_id": "vm-8", "confirm": token},           # edited after the diff was shown
                    {**form, "password": "new-pw-1", "confirm": token},    # a password added after it
                    {**form, "confirm": "1"}, {**form, "confirm": "x" * 5000}):
        r = _post(client, "/policies/vvol-1", changed)
        assert r.status_code == 200 and 'id="diff"' in r.get_data(as_text=True)
        assert _state(settings) == before


def test_confirm_after_someone_else_changed_it__refused_nothing_overwritten(client, login, seeded):
    settings = seeded[0]
    login("editor")
    form = _form_of(settings, "vvol-1", vm_id="vm-9")
    token = _CONFIRM.search(_post(client, "/policies/vvol-1", form).get_data(as_text=True)).group(1)
    assert _post(client, "/policies/vvol-1", _form_of(settings, "vvol-1", size_mb="33")).status_code == 302
    r = _post(client, "/policies/vvol-1", {**form, "confirm": token})
    assert r.status_code == 409
    item = _item(settings, "vvol-1")
    assert item.vm_id == "vm-1" and int(item.size_mb) == 33


def test_confirm_without_csrf_or_as_viewer__refused(client, login, seeded):
    settings = seeded[0]
    login("editor")
    form = _form_of(settings, "vvol-1", vm_id="vm-9")
    token = _CONFIRM.search(_post(client, "/policies/vvol-1", form).get_data(as_text=True)).group(1)
    before = _state(settings)
    r = client.post("/policies/vvol-1", data={**form, "confirm": token})
    assert r.status_code == 400 and _state(settings) == before
    login("viewer")
    assert _post(client, "/policies/vvol-1", {**form, "confirm": token}).status_code == 403
    assert _state(settings) == before


def test_password_in_a_move__diff_says_set_never_the_password(client, login, seeded):
    settings = seeded[0]
    login("editor")
    r = _post(client, "/policies/vvol-1", _form_of(settings, "vvol-1", host_id="host-2", password="hunter2-pw"))
    page = r.get_data(as_text=True)
    assert ">password</th><td class=\"mono\">none</td><td class=\"mono\">set</td>" in page
    assert "hunter2-pw" not in page and "Type the new password again" in page
    assert _item(settings, "vvol-1").password_hash is None


def test_change_that_is_not_a_move__saved_at_once(client, login, seeded):
    settings = seeded[0]
    login("editor")
    assert _post(client, "/policies/vvol-1", _form_of(settings, "vvol-1", size_mb="64")).status_code == 302
    assert int(_item(settings, "vvol-1").size_mb) == 64
