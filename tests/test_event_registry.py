"""The event registry (domain/registry.py), vm.heartbeat, and the executors' handling of a provider refusal
(docs/webhook-api.md)."""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import attached_volume_ids, managed_volumes
from tests.test_webhook_contract import assert_error, audit_records, enroll, policy_item, snapshot

NOW = datetime(2026, 11, 27, 5, 0, tzinfo=timezone.utc)


# ---------------------------------------------------------------- the registry is the one source


def test_the_parser_the_openapi_document_and_the_dashboard_lists_take_their_types_from_the_registry():
    from infra import openapi
    from vvolguard.domain.events import TYPES, parse_doc
    from vvolguard.domain.registry import REGISTRY

    assert list(TYPES) == list(REGISTRY)
    doc = openapi.build()
    assert set(doc["components"]["schemas"]["Event"]["discriminator"]["mapping"]) == set(REGISTRY)
    for name, spec in REGISTRY.items():
        assert parse_doc(spec.example).type == name  # every example is a valid event
        assert doc["components"]["schemas"][openapi.schema_name(name)]["description"] == spec.doc


def test_an_unregistered_type_is_refused_by_the_parser_naming_the_registered_ones():
    from vvolguard.domain.events import parse_doc
    from vvolguard.errors import InvalidEvent

    with pytest.raises(InvalidEvent) as err:
        parse_doc({"event_id": "e-1", "type": "vm.reboot", "vm_id": "vm-1"})
    assert "vm.heartbeat" in err.value.message


def test_actions_and_outcomes_are_strings_so_answers_stay_byte_identical():
    import json

    from vvolguard.domain.constants import Action, Outcome
    from vvolguard.domain.engine import Decision

    d = Decision("vvol-1", Action.RENEW, Outcome.DONE, "vm.heartbeat", lease_expires_at=NOW)
    assert json.dumps(d.answer()) == ('{"volume_id": "vvol-1", "action": "renew", "outcome": "done", '
                                      '"reason": "vm.heartbeat", "lease_expires_at": "2026-11-27T05:00:00Z"}')


# ---------------------------------------------------------------- vm.heartbeat: the engine


def _view(volume_id: str, detach_on: str, attached: bool = True, **kw):
    from vvolguard.domain.engine import VolumeView

    return VolumeView(volume_id=volume_id, vm_id="vm-1", host_id="host-1", attach_on="preboot", detach_on=detach_on,
                      attached=attached, exists=True, **kw)


def test_heartbeat_renews_attached_volumes_except_postboot_ones_which_get_no_decision():
    from vvolguard.domain.engine import decide
    from vvolguard.domain.events import parse_doc

    vols = [_view("v-a", "shutdown", max_attach_seconds=600), _view("v-b", "postboot"),
            _view("v-c", "app_stop", attached=False), _view("v-d", "request"),
            _view("v-e", "shutdown", busy_until=NOW + timedelta(seconds=30)),
            _view("v-f", "shutdown", last_event_at=NOW)]
    event = parse_doc({"event_id": "e-1", "type": "vm.heartbeat", "vm_id": "vm-1",
                       "occurred_at": "2026-11-27T04:59:00Z"})
    got = [(d.volume_id, d.action, d.outcome, d.reason, d.lease_expires_at) for d in decide(event, vols, NOW)]
    assert got == [("v-a", "renew", "done", "vm.heartbeat", NOW + timedelta(seconds=600)),
                   ("v-d", "renew", "done", "vm.heartbeat", NOW + timedelta(seconds=900)),
                   ("v-e", "renew", "skipped", "in_progress", None),
                   ("v-f", "renew", "skipped", "stale", None)]


# ---------------------------------------------------------------- vm.heartbeat: through the webhook


def _count_calls():
    from vvolguard.adapters import aws as aws_adapter

    calls: Counter = Counter()

    def record(model, **_):
        calls[model.service_model.service_name] += 1

    aws_adapter.add_hook("before-call", record)
    return calls, lambda: aws_adapter.remove_hook("before-call", record)


def test_heartbeat_renews_the_lease_with_one_conditional_write_no_provider_call_and_audits_it(webhook, aws):
    assert webhook.send("vm.preboot", "vm-2")[0] == 200
    first = policy_item("vvol-2")
    before = len(audit_records(aws))
    calls, stop = _count_calls()
    try:
        code, body = webhook.send("vm.heartbeat", "vm-2")
    finally:
        stop()
    assert code == 200, body
    [d] = body["decisions"]
    assert (d["volume_id"], d["action"], d["outcome"], d["reason"]) == ("vvol-2", "renew", "done", "vm.heartbeat")
    item = policy_item("vvol-2")
    assert d["lease_expires_at"] == item.lease_expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert item.lease_expires_at >= first.lease_expires_at
    assert item.attached and item.device == first.device and attached_volume_ids() == {"vvol-2"}
    assert calls["dynamodb"] <= 2 and calls["ec2"] == 0 and calls["sts"] == 0, calls
    [rec] = audit_records(aws)[: len(audit_records(aws)) - before]
    assert (rec.action, rec.outcome, rec.volume_id, rec.event_type) == ("renew", "done", "vvol-2", "vm.heartbeat")
    assert rec.detail["lease_expires_at"] == d["lease_expires_at"]


def test_heartbeat_moves_the_lease_to_now_plus_max_attach_seconds(webhook, aws):
    from vvolguard.adapters.models import PolicyItem, expiry_key

    assert webhook.send("vm.preboot", "vm-2")[0] == 200
    item = policy_item("vvol-2")
    old = datetime.now(timezone.utc) + timedelta(seconds=5)  # as if attached long ago: the lease nearly over
    item.update(actions=[PolicyItem.lease_expires_at.set(old), PolicyItem.expiry_at.set(expiry_key(old))])
    code, body = webhook.send("vm.heartbeat", "vm-2")
    assert code == 200
    item = policy_item("vvol-2")
    assert item.lease_expires_at > old + timedelta(seconds=800)
    assert item.expiry_at == expiry_key(item.lease_expires_at)  # the reconciler's index follows the lease


def test_heartbeat_never_renews_a_postboot_volume(webhook, aws):
    assert webhook.send("vm.preboot", "vm-1")[0] == 200
    before = snapshot()
    code, body = webhook.send("vm.heartbeat", "vm-1")
    assert (code, body["decisions"]) == (200, [])
    after = snapshot()
    assert after["provider"] == before["provider"]
    assert after["policies"]["vvol-1"]["lease_expires_at"] == before["policies"]["vvol-1"]["lease_expires_at"]


def test_heartbeat_from_a_host_that_is_not_the_vms_is_refused_403_and_renews_nothing(webhook, aws):
    assert webhook.send("vm.preboot", "vm-2")[0] == 200
    secret2 = enroll(aws, "host-2")
    before = snapshot()
    assert_error(webhook.send("vm.heartbeat", "vm-2", host_id="host-2", secret=secret2), 403, "forbidden")
    assert snapshot() == before


def test_heartbeat_with_an_unknown_field_is_refused_400_and_writes_nothing(webhook, aws):
    assert webhook.send("vm.preboot", "vm-2")[0] == 200
    before = snapshot()
    assert_error(webhook.send("vm.heartbeat", "vm-2", app="A1"), 400, "invalid_event")
    assert snapshot() == before


# ---------------------------------------------------------------- a provider refusal: failed and undone


def _refuse_attach(exc):
    from vvolguard.adapters import aws as aws_adapter

    def refuse(**_):
        raise exc

    aws_adapter.add_hook("before-call.ec2.AttachVolume", refuse)
    return lambda: aws_adapter.remove_hook("before-call.ec2.AttachVolume", refuse)


def _assert_failed_and_undone(webhook, aws, reason: str, stop) -> None:
    before = len(audit_records(aws))
    try:
        code, body = webhook.send("vm.preboot", "vm-1")  # vvol-1 does not exist yet: created, then the attach fails
    finally:
        stop()
    assert code == 200, body
    assert body["decisions"] == [{"volume_id": "vvol-1", "action": "attach", "outcome": "failed", "reason": reason}]
    assert "vvol-1" not in managed_volumes()  # the volume this event created is deleted again
    item = policy_item("vvol-1")
    assert not item.attached and not item.provider_volume_id and item.busy_event is None
    [rec] = audit_records(aws)[: len(audit_records(aws)) - before]
    assert (rec.action, rec.outcome, rec.reason) == ("attach", "failed", reason) and "created" not in (rec.detail or {})
    code, body = webhook.send("vm.preboot", "vm-1")  # a later preboot starts afresh
    assert body["decisions"][0]["outcome"] == "done" and attached_volume_ids() == {"vvol-1"}


def test_a_provider_refusal_of_an_attach_fails_the_decision_and_deletes_the_volume_the_event_created(webhook, aws):
    from vvolguard.errors import ProviderRefused

    stop = _refuse_attach(ProviderRefused("device_in_use", "the device name is taken"))
    _assert_failed_and_undone(webhook, aws, "device_in_use", stop)


def test_a_non_transient_ec2_error_on_attach_fails_the_decision_and_undoes_the_create(webhook, aws):
    from botocore.exceptions import ClientError

    err = ClientError({"Error": {"Code": "InvalidInstanceID.NotFound", "Message": "gone"},
                       "ResponseMetadata": {"HTTPStatusCode": 400}}, "AttachVolume")
    _assert_failed_and_undone(webhook, aws, "instance_not_found", _refuse_attach(err))
