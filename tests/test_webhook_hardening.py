"""Issue 10's webhook and revocation holes, each through the real POST /v1/events handler (or the real `vvg`
CLI) under moto, each asserting the refusal and that nothing was written (docs/webhook-hardening.md).

The snapshot is tests/statecheck.py's: policies with their attachment state, grants, event records, hosts
and the provider's volumes (tags and attachments).
"""
from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import attached_volume_ids, managed_volumes
from tests.statecheck import snapshot
from tests.test_webhook_contract import REQUEST_VOLUME, add_policies, assert_error, audit_records, enroll, new_audit


def _replay(wh, raw: bytes, secret: str | None = None, host_id: str | None = None):
    """The same body again, freshly signed (a replay within the 300 s window is just this)."""
    return wh.raw(raw, wh.signed_headers(raw, host_id=host_id, secret=secret))


def _body(**fields) -> bytes:
    return json.dumps(fields).encode()


# ------------------------------------------------------------------ 1. authenticate first, always


def test_replay_after_rotation_in_a_warm_container__401_not_the_stored_answer(webhook, aws):
    from vvolguard.services.hosts import HostService

    raw = _body(event_id="r-1", type="vm.preboot", vm_id="vm-1")
    code, first = _replay(webhook, raw)
    assert code == 200 and first["decisions"][0]["outcome"] == "done"
    old = webhook.secret
    new = HostService(aws).rotate("host-1")["secret"]
    before = snapshot()
    assert_error(_replay(webhook, raw, secret=old), 401, "bad_signature")  # the container still caches the old secret
    assert_error(_replay(webhook, raw, secret=old), 401, "bad_signature")
    assert snapshot() == before
    code, again = _replay(webhook, raw, secret=new)  # the host as it is now still gets its duplicate
    assert code == 200 and again == {**first, "duplicate": True}


def test_replay_from_a_revoked_host_in_a_warm_container__401_not_the_stored_answer(webhook, aws):
    from vvolguard.services.hosts import HostService

    raw = _body(event_id="r-2", type="vm.booted", vm_id="vm-4")
    assert _replay(webhook, raw)[0] == 200
    HostService(aws).revoke("host-1")
    before = snapshot()
    assert_error(_replay(webhook, raw), 401, "unknown_host")
    assert snapshot() == before


# ------------------------------------------------------------------ 2. occurred_at in the future


def test_occurred_at_more_than_300_s_ahead__400_invalid_event_and_nothing_written(webhook, aws):
    now = datetime.now(timezone.utc)
    before, n = snapshot(), len(audit_records(aws))
    for ahead in (timedelta(seconds=400), timedelta(days=3650)):
        when = (now + ahead).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert_error(webhook.send("vm.preboot", "vm-1", event_id="f-1", occurred_at=when), 400, "invalid_event")
        assert snapshot() == before
    assert attached_volume_ids() == set()
    assert [r.reason for r in new_audit(aws, n)] == ["invalid_event", "invalid_event"]  # the host's own refusals
    # not used up, and a time within the tolerance is fine; a later event is not made stale
    when = (now + timedelta(seconds=120)).strftime("%Y-%m-%dT%H:%M:%SZ")
    code, body = webhook.send("vm.preboot", "vm-1", event_id="f-1", occurred_at=when)
    assert code == 200 and body["decisions"][0]["outcome"] == "done", body


# ------------------------------------------------------------------ 3. no guessable digest of a password


WORDS = ["password", "123456", "s3cret", "letmein", "qwerty", "admin", "secret"]


def test_events_table_keeps_nothing_a_password_guess_can_be_tested_against_offline(webhook, aws, production_hash_cost):
    from vvolguard.adapters.models import EventItem

    add_policies(aws, REQUEST_VOLUME)
    raw = _body(event_id="pw-1", type="volume.attach_request", vm_id="vm-1", volume_id="vvol-req", password="s3cret")
    code, body = _replay(webhook, raw)
    assert code == 200 and body["decisions"][0]["outcome"] == "done"
    item = EventItem.get("host-1/pw-1")
    stored = " ".join(str(v) for v in item.attribute_values.values())
    assert "s3cret" not in stored
    # a table reader's dictionary attack: each candidate body under every plain digest, and under an HMAC
    # keyed with anything the table holds, matches nothing stored
    for word in WORDS:
        cand = _body(event_id="pw-1", type="volume.attach_request", vm_id="vm-1", volume_id="vvol-req", password=word)
        for algo in ("sha256", "sha1", "md5", "sha512", "blake2b"):
            assert hashlib.new(algo, cand).hexdigest() not in stored, (word, algo)
        for key in (b"", b"host-1", b"host-1/pw-1"):
            assert hmac.new(key, cand, hashlib.sha256).hexdigest() not in stored, (word, key)
    assert item.password_tag.startswith("scrypt$16384$")  # salted, as slow as the policy's own hash


def test_same_event_id_with_another_password__409_event_conflict_and_no_new_verdict(webhook, aws):
    from vvolguard.services.policies import PolicyService

    add_policies(aws, REQUEST_VOLUME)
    wrong = _body(event_id="pw-2", type="volume.attach_request", vm_id="vm-1", volume_id="vvol-req", password="guess-1")
    code, first = _replay(webhook, wrong)
    assert code == 200 and first["decisions"][0]["reason"] == "bad_password"
    before = snapshot()
    right = _body(event_id="pw-2", type="volume.attach_request", vm_id="vm-1", volume_id="vvol-req", password="s3cret")
    for raw in (right, _body(event_id="pw-2", type="volume.attach_request", vm_id="vm-1", volume_id="vvol-req",
                             password="guess-2")):
        assert_error(_replay(webhook, raw), 409, "event_conflict")  # never the verdict on this password
        assert snapshot() == before
    assert int(PolicyService(aws).get("vvol-req").failed_passwords) == 1 and attached_volume_ids() == set()
    code, again = _replay(webhook, wrong)  # the very same body is still a duplicate
    assert code == 200 and again == {**first, "duplicate": True}
    assert snapshot() == before


# ------------------------------------------------------------------ 4. unauthenticated refusals aggregated


def test_many_unsigned_requests_naming_an_enrolled_host_make_one_counted_record_not_one_each(webhook, aws):
    from vvolguard.adapters.audit import AuditLog
    from vvolguard.adapters.models import RefusalItem
    from vvolguard.services.reconcile import Reconciler

    n_req = 60
    raw = _body(event_id="u-1", type="vm.preboot", vm_id="vm-1")
    before, n = snapshot(), len(audit_records(aws))
    for i in range(n_req):
        headers = {"x-vvg-host": "host-1"} if i % 2 else webhook.signed_headers(raw, secret="not-the-secret")
        assert webhook.raw(raw, headers)[0] == 401
    for i in range(10):  # names never enrolled: nothing counted, nothing written
        assert_error(_replay(webhook, raw, host_id=f"nobody-{i}"), 401, "unknown_host")
    assert snapshot() == before and new_audit(aws, n) == []
    counters = list(RefusalItem.scan())
    assert {c.named_host for c in counters} == {"host-1"} and sum(int(c.refusals) for c in counters) == n_req
    # the reconciler folds each closed minute into one record that says the sender was not authenticated
    summary = Reconciler(aws).run(datetime.now(timezone.utc) + timedelta(minutes=2))
    assert summary["refusal_windows"] == len(counters), summary
    recs = new_audit(aws, n)
    assert len(recs) == len(counters) <= 2
    for r in recs:
        assert (r.actor, r.action, r.outcome, r.reason, r.host_id) == ("reconciler", "refuse", "denied",
                                                                       "unauthenticated", "host-1")
        assert r.detail["authenticated"] == "false"
    assert sum(int(r.detail["count"]) for r in recs) == n_req
    assert {c for r in recs for c in r.detail["codes"].split(",")} == {"missing_signature", "bad_signature"}
    assert not any(r.actor == "host:host-1" for r in audit_records(aws))
    assert list(RefusalItem.scan()) == [] and AuditLog(aws).verify()["ok"] is True
    assert snapshot() == before


# ------------------------------------------------------------------ 5. revoked and never enrolled look the same


def _calls(fn) -> list[str]:
    from vvolguard.adapters import aws as aws_adapter

    seen: list[str] = []

    def hook(model=None, **kw):
        seen.append(f"{model.service_model.service_name}.{model.name}")

    aws_adapter.add_hook("before-call", hook)
    try:
        fn()
    finally:
        aws_adapter.remove_hook("before-call", hook)
    return seen


def test_unknown_host_answer_and_aws_calls_are_the_same_for_a_revoked_and_a_never_enrolled_host(webhook, aws):
    """Timing follows the work done: both paths make the same AWS calls in the same order and answer the same
    bytes (bench/unknown_host_timing.py measures the medians). In a warm container (the revoked host cached
    as active) with a guessed secret, and in a cold one with the revoked host's real secret or a guess."""
    from vvolguard.handlers import events as handler_module
    from vvolguard.services.hosts import HostService

    secret2 = enroll(aws, "host-2")
    raw = _body(event_id="t-1", type="vm.booted", vm_id="vm-1")
    assert webhook.send("vm.booted", "vm-99", host_id="host-2", secret=secret2)[0] == 200  # warm: cached in the container
    HostService(aws).revoke("host-2")
    before = snapshot()
    for cold, secret in ((False, "some-guess"), (True, secret2), (True, "some-guess")):
        answers, calls = {}, {}
        for host_id in ("host-2", "never-enrolled"):
            if cold:
                handler_module.reset()
            calls[host_id] = _calls(lambda: answers.__setitem__(host_id, _replay(webhook, raw, secret=secret,
                                                                                 host_id=host_id)))
        assert answers["host-2"] == answers["never-enrolled"] == (401, answers["host-2"][1])
        assert answers["host-2"][1]["error"]["code"] == "unknown_host"
        assert calls["host-2"] == calls["never-enrolled"], (cold, secret == secret2, calls)
        assert not any("kms" in c for c in calls["host-2"])  # no decryption for a host that will be refused
    assert snapshot() == before


# ------------------------------------------------------------------ 6. settings out of range


@pytest.mark.parametrize("value", ["315360000", "-5", "0", "3601", "abc", "", "1e3"])
def test_migration_grant_seconds_out_of_range__refused_at_start_in_one_line(value, aws, vvg, monkeypatch):
    from vvolguard.settings import Settings, SettingsError

    with pytest.raises(SettingsError) as err:
        Settings.from_env({"VVG_MIGRATION_GRANT_SECONDS": value})
    assert "VVG_MIGRATION_GRANT_SECONDS" in err.value.message and "1 to 3600" in err.value.message
    assert "\n" not in err.value.message
    before, n = snapshot(), len(audit_records(aws))
    monkeypatch.setenv("VVG_MIGRATION_GRANT_SECONDS", value)
    r = vvg("reconcile")
    assert r.code != 0 and r.out == "" and len(r.err.strip().splitlines()) == 1, r
    assert "VVG_MIGRATION_GRANT_SECONDS" in r.err
    assert snapshot() == before and len(audit_records(aws)) == n


@pytest.mark.parametrize("value", ["1", "3600"])
def test_migration_grant_seconds_in_range__accepted(value):
    from vvolguard.settings import Settings

    assert Settings.from_env({"VVG_MIGRATION_GRANT_SECONDS": value}).migration_grant_seconds == int(value)


def test_webhook_with_out_of_range_grant_setting__answers_an_error_and_writes_nothing(webhook, aws, monkeypatch):
    from vvolguard.handlers import events as handler_module

    handler_module.reset()
    monkeypatch.setenv("VVG_MIGRATION_GRANT_SECONDS", "315360000")
    before = snapshot()
    code, body = webhook.send("vm.preboot", "vm-1")
    assert code == 500 and body["error"]["code"] == "configuration_error"
    assert snapshot() == before and attached_volume_ids() == set()


# ------------------------------------------------------------------ 7. revocation revokes


def _hosts_tags() -> dict[str, set[str]]:
    return {vid: set(filter(None, v["TagMap"].get("vvg:hosts", "").split(","))) for vid, v in managed_volumes().items()}


def test_host_revoke__detaches_untags_and_answers_the_counts(webhook, aws, vvg):
    from vvolguard.adapters import aws as aws_adapter
    from vvolguard.services.policies import PolicyService

    for vm in ("vm-1", "vm-2", "vm-3"):
        assert webhook.send("vm.preboot", vm)[0] == 200
    assert webhook.send("vm.booted", "vm-3")[0] == 200  # vvol-3 exists, detached: untagged, not detached
    assert attached_volume_ids() == {"vvol-1", "vvol-2"}
    ops: list[str] = []
    hook = lambda model=None, **kw: ops.append(model.name)  # noqa: E731
    aws_adapter.add_hook("before-call.dynamodb", hook)
    try:
        r = vvg("host", "revoke", "host-1")
    finally:
        aws_adapter.remove_hook("before-call.dynamodb", hook)
    assert r.code == 0, r
    assert r.json() == {"host_id": "host-1", "revoked": True, "detached": 2, "untagged": 3}
    assert "Scan" not in ops  # by the by-host index, never a scan of the policy table
    assert attached_volume_ids() == set()
    assert all("host-1" not in hosts for hosts in _hosts_tags().values())
    assert not any(PolicyService(aws).get(v).attached for v in ("vvol-1", "vvol-2", "vvol-3"))
    recs = [json.loads(line) for line in vvg("audit", "list", "--limit", "50").out.splitlines()]
    detaches = {x["volume_id"] for x in recs if x["action"] == "detach" and x["reason"] == "host_revoked"}
    assert detaches == {"vvol-1", "vvol-2"}
    assert vvg("audit", "verify").code == 0
    # refused from then on, and a second run finds nothing left
    before = snapshot()
    assert_error(webhook.send("vm.preboot", "vm-1"), 401, "unknown_host")
    assert snapshot() == before
    assert vvg("host", "revoke", "host-1").json() == {"host_id": "host-1", "revoked": True, "detached": 0, "untagged": 0}


def test_a_grant_given_by_a_revoked_host_lets_the_destination_neither_complete_nor_attach(webhook, aws):
    from vvolguard.adapters.models import GrantItem
    from vvolguard.services.hosts import HostService

    secret2 = enroll(aws, "host-2")
    assert webhook.send("vm.preboot", "vm-1")[0] == 200
    code, body = webhook.send("vm.migrate.start", "vm-1", destination_host="host-2")
    assert code == 200 and body["decisions"][0]["outcome"] == "done", body
    assert _hosts_tags()["vvol-1"] == {"host-1", "host-2"}
    out = HostService(aws).revoke("host-1")
    assert out == {"host_id": "host-1", "revoked": True, "detached": 1, "untagged": 1}
    assert list(GrantItem.scan()) == [] and _hosts_tags()["vvol-1"] == set()
    before = snapshot()
    assert_error(webhook.send("vm.migrate.complete", "vm-1", host_id="host-2", secret=secret2, source_host="host-1"),
                 403, "forbidden")
    assert_error(webhook.send("vm.preboot", "vm-1", host_id="host-2", secret=secret2), 403, "forbidden")
    assert snapshot() == before and attached_volume_ids() == set()


def test_a_grant_received_by_a_revoked_host_dies_and_the_source_keeps_its_volumes(webhook, aws):
    from vvolguard.adapters.models import GrantItem
    from vvolguard.services.hosts import HostService

    secret2 = enroll(aws, "host-2")
    assert webhook.send("vm.preboot", "vm-1")[0] == 200
    assert webhook.send("vm.migrate.start", "vm-1", destination_host="host-2")[0] == 200
    out = HostService(aws).revoke("host-2")
    assert out == {"host_id": "host-2", "revoked": True, "detached": 0, "untagged": 1}
    assert list(GrantItem.scan()) == [] and _hosts_tags()["vvol-1"] == {"host-1"}
    assert attached_volume_ids() == {"vvol-1"}
    before = snapshot()
    assert_error(webhook.send("vm.migrate.complete", "vm-1", host_id="host-2", secret=secret2, source_host="host-1"),
                 401, "unknown_host")
    assert snapshot() == before


def test_migrate_complete_with_a_grant_whose_source_was_revoked__403_even_if_the_grant_item_survived(webhook, aws):
    """Belt and braces: a grant item written back (or missed by a revocation cut short) still dies with its source."""
    from vvolguard.adapters.models import GrantItem, HostItem

    secret2 = enroll(aws, "host-2")
    assert webhook.send("vm.preboot", "vm-1")[0] == 200
    assert webhook.send("vm.migrate.start", "vm-1", destination_host="host-2")[0] == 200
    HostItem.get("host-1").update(actions=[HostItem.status.set("revoked")])  # status only: the grant stays
    assert len(list(GrantItem.scan())) == 1
    before = snapshot()
    assert_error(webhook.send("vm.migrate.complete", "vm-1", host_id="host-2", secret=secret2, source_host="host-1"),
                 403, "forbidden")
    assert snapshot() == before


def test_occurred_at_out_of_datetimes_range_in_utc__400_invalid_event_not_500(webhook):
    before = snapshot()
    for when in ("9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00"):
        assert_error(webhook.send("vm.preboot", "vm-1", occurred_at=when), 400, "invalid_event")
        assert snapshot() == before
