"""/policies/impact (docs/policy-impact.md) and the VM page's preflight checks (docs/preflight.md): editors
paste or upload a draft and see the diff and the replay; hostile input is refused, nothing is written."""
from __future__ import annotations

import io
import json
import re

import boto3
import pytest

from tests.dashboard_support import *  # noqa: F401,F403

DRAFT = ("volumes:\n  - {volume_id: vvol-1, vm_id: vm-1, host_id: host-1, storage_array: S1, size_mb: 10, "
         "attach_on: preboot, detach_on: shutdown, os_disk_encryption: true}\n")


def snapshot(settings) -> dict:
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    return {t: sorted(json.dumps(i, sort_keys=True) for i in ddb.scan(TableName=t)["Items"])
            for t in (settings.state_table, settings.audit_table, settings.hosts_table, settings.events_table)}


@pytest.fixture
def booted(seeded_vms):
    assert seeded_vms.send("vm.preboot", "vm-1")[0] == 200
    assert seeded_vms.send("vm.booted", "vm-1")[0] == 200
    return seeded_vms


def post(client, **data):
    from tests.dashboard_support import csrf_token

    data.setdefault("csrf_token", csrf_token(client, "/policies/impact"))
    return client.post("/policies/impact", data=data, content_type="multipart/form-data")


def test_pasted_draft__shows_diff_and_the_changed_booted_decision_writes_nothing(booted, app, client, login):
    login("editor")
    before = snapshot(booted.settings)
    r = post(client, policy=DRAFT, since="7d")
    page = r.get_data(as_text=True)
    assert r.status_code == 200, page[:2000]
    assert 'id="changed-count">1<' in page
    assert "vm.booted" in page and "detach_on=postboot" in page and "no decision" in page
    assert "detach_on" in page and "postboot" in page and "shutdown" in page  # the diff
    assert snapshot(booted.settings) == before


def test_uploaded_draft__same_answer(booted, app, client, login):
    login("editor")
    r = post(client, file=(io.BytesIO(DRAFT.encode()), "draft.yaml"), since="1d")
    assert r.status_code == 200
    assert 'id="changed-count">1<' in r.get_data(as_text=True)


@pytest.mark.parametrize("data,needle", [
    ({"policy": "volumes: [\n  - {volume_id: "}, "line"),
    ({"policy": "volumes:\n  - {volume_id: vvol-1}\n"}, "vm_id"),
    ({"policy": ""}, "paste a policy file"),
    ({"policy": DRAFT, "since": "91d"}, "at most 90d"),
    ({"policy": DRAFT, "since": "7 days"}, "a duration is"),
    ({"policy": DRAFT, "since": "0m"}, "more than 0"),
    ({"policy": "\x00\xff<script>alert(1)</script>"}, "not"),
])
def test_malformed_draft_or_period__400_with_the_problem_nothing_written(seeded, client, login, data, needle):
    login("editor")
    before = snapshot(seeded[0])
    r = post(client, **data)
    page = r.get_data(as_text=True)
    assert r.status_code == 400 and needle in page, page[:3000]
    assert "<script>alert(1)" not in page
    assert snapshot(seeded[0]) == before


def test_malformed_upload__400(seeded, client, login):
    login("editor")
    r = post(client, file=(io.BytesIO(b"\xff\xfe not utf-8"), "x.yaml"))
    assert r.status_code == 400 and "not UTF-8" in r.get_data(as_text=True)


def test_oversized_paste_or_upload__413_nothing_written(seeded, client, login):
    login("editor")
    before = snapshot(seeded[0])
    r = post(client, policy="volumes: []\n" + "#" * (300 * 1024))
    assert r.status_code == 413
    r = post(client, file=(io.BytesIO(b"#" * (300 * 1024)), "big.yaml"))
    assert r.status_code == 413
    assert snapshot(seeded[0]) == before


def test_viewer_403_signed_out_to_login_without_csrf_400(seeded, client, login):
    r = client.get("/policies/impact")
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    r = client.post("/policies/impact", data={"policy": DRAFT})
    assert r.status_code in (302, 400)
    login("viewer")
    assert client.get("/policies/impact").status_code == 403
    from tests.dashboard_support import csrf_token

    token = csrf_token(client, "/policies")
    assert client.post("/policies/impact", data={"policy": DRAFT, "csrf_token": token}).status_code == 403


def test_editor_without_csrf_token__400(seeded, client, login):
    login("editor")
    r = client.post("/policies/impact", data={"policy": DRAFT})
    assert r.status_code == 400 and "security token" in r.get_data(as_text=True)


def test_vm_page__shows_preflight_checks(booted, app, client, login):
    login("viewer")
    page = client.get("/vms/vm-1").get_data(as_text=True)
    assert 'id="preflight"' in page
    for name in ("host", "quarantine", "policies", "instance", "volumes", "key_volumes", "locks"):
        assert f'data-label="Check">{name}<' in page
    text = re.sub(r"<[^>]+>", "", page)  # identifiers in a detail are wrapped whole (dashboard keep_ids)
    assert "vvg key provision vvol-1" in text  # its key volume is not provisioned in this seed
    assert "not ready" in page
