"""The selected security software, enforced (docs/guest-channel.md), through the real events handler under moto.

``guest.inventory`` is recorded with each volume's state, in the transaction that already writes the event:
an attach of a volume with ``min_key_bits`` to a VM whose latest inventory offers no qualifying
``disk_encryption`` product is ``denied`` (``no_qualifying_software``) and nothing is attached at the
provider; a ``done`` attach of such a volume names the products chosen, strongest first. A VM that never
sent an inventory is not refused; volumes without ``min_key_bits`` are never affected.
"""
from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import attached_volume_ids, managed_volumes
from tests.test_webhook_contract import add_policies, assert_error, audit_records, body_of, new_audit, sign_raw, snapshot

DISK = "disk_encryption"
STRONG = [{"name": "veracrypt", "type": DISK, "key_bits": 128},
          {"name": "luks", "type": DISK, "key_bits": 512},
          {"name": "clamav", "type": "antivirus", "key_bits": 4096},
          {"name": "bitlocker", "type": DISK, "key_bits": 256}]
WEAK = [{"name": "veracrypt", "type": DISK, "key_bits": 128}, {"name": "clamav", "type": "antivirus", "key_bits": 4096}]


def min_bits(bits: int | None, volume: str = "vvol-1") -> str:
    """Table 1's vvol-1 (vm-1, preboot/postboot) or vvol-2 (vm-2, preboot/shutdown) with ``min_key_bits``."""
    vm, size, detach = {"vvol-1": ("vm-1", 10, "postboot"), "vvol-2": ("vm-2", 100, "shutdown")}[volume]
    extra = f", min_key_bits: {bits}" if bits is not None else ""
    return (f"volumes:\n  - {{volume_id: {volume}, vm_id: {vm}, host_id: host-1, storage_array: S1, size_mb: {size}, "
            f"attach_on: preboot, detach_on: {detach}, os_disk_encryption: true{extra}}}\n")


def stored(volume_id: str = "vvol-1") -> tuple:
    from vvolguard.adapters.models import PolicyItem

    [item] = list(PolicyItem.by_volume.query(volume_id))
    return item.inventory, item.inventory_at


def decision(body: dict, volume_id: str = "vvol-1") -> dict:
    [d] = [d for d in body["decisions"] if d["volume_id"] == volume_id]
    return d


def detail(rec) -> dict:
    return rec.detail.as_dict() if rec.detail is not None else {}


@pytest.fixture
def guarded(webhook, aws):
    """vvol-1 (vm-1's preboot volume) needs software of at least 256 bits."""
    add_policies(aws, min_bits(256))
    return webhook


def test_a_qualifying_inventory_then_preboot_attaches_and_names_the_software_strongest_first(guarded, aws):
    code, body = guarded.send("guest.inventory", "vm-1", apps=STRONG)
    assert code == 200 and decision(body) == {"volume_id": "vvol-1", "action": "select", "outcome": "done",
                                              "reason": "min_key_bits=256", "software": ["luks", "bitlocker"]}
    assert stored()[0] == ["luks:512", "bitlocker:256", "veracrypt:128"]  # disk_encryption only, never clamav
    code, body = guarded.send("vm.preboot", "vm-1")
    d = decision(body)
    assert code == 200 and (d["action"], d["outcome"], d["software"]) == ("attach", "done", ["luks", "bitlocker"]), body
    assert attached_volume_ids() == {"vvol-1"}
    recs = audit_records(aws)
    attach = [r for r in recs if r.action == "attach" and r.volume_id == "vvol-1"][0]
    select = [r for r in recs if r.action == "select" and r.volume_id == "vvol-1"][0]
    assert detail(attach)["software"] == detail(select)["software"] == "luks,bitlocker"


def test_no_qualifying_software_denies_the_select_and_every_following_attach_with_nothing_at_the_provider(guarded, aws):
    code, body = guarded.send("guest.inventory", "vm-1", apps=WEAK)
    assert code == 200 and (decision(body)["outcome"], decision(body)["reason"]) == ("denied", "no_qualifying_software")
    assert stored()[0] == ["veracrypt:128"]
    before, n = snapshot(), len(audit_records(aws))
    code, body = guarded.send("vm.preboot", "vm-1")
    assert code == 200 and body["decisions"] == [{"volume_id": "vvol-1", "action": "attach", "outcome": "denied",
                                                  "reason": "no_qualifying_software"}], body
    assert snapshot()["provider"] == before["provider"] and attached_volume_ids() == set()
    assert "vvol-1" not in managed_volumes()  # not even created
    [rec] = new_audit(aws, n)
    assert (rec.action, rec.outcome, rec.reason, rec.event_type) == ("attach", "denied", "no_qualifying_software",
                                                                     "vm.preboot")
    # a later inventory that qualifies lifts the refusal
    code, body = guarded.send("guest.inventory", "vm-1", apps=WEAK + [{"name": "luks", "type": DISK, "key_bits": 256}])
    assert code == 200 and decision(body)["software"] == ["luks"]
    code, body = guarded.send("vm.preboot", "vm-1")
    assert code == 200 and (decision(body)["outcome"], decision(body)["software"]) == ("done", ["luks"]), body
    assert attached_volume_ids() == {"vvol-1"}
    # and a later one that does not qualify refuses again (the latest inventory counts)
    assert guarded.send("vm.booted", "vm-1")[0] == 200 and attached_volume_ids() == set()
    assert guarded.send("guest.inventory", "vm-1", apps=WEAK)[0] == 200
    code, body = guarded.send("vm.preboot", "vm-1")
    assert decision(body)["reason"] == "no_qualifying_software" and attached_volume_ids() == set()


def test_a_vm_that_never_sent_an_inventory_is_not_refused_and_its_attach_names_no_software(guarded):
    assert stored() == (None, None)
    code, body = guarded.send("vm.preboot", "vm-1")
    d = decision(body)
    assert code == 200 and d["outcome"] == "done" and "software" not in d, body
    assert attached_volume_ids() == {"vvol-1"}


def test_volumes_without_min_key_bits_are_unaffected_by_an_inventory_with_nothing_qualifying(guarded):
    code, body = guarded.send("guest.inventory", "vm-2", apps=WEAK[1:])  # vm-2: vvol-2, no min_key_bits
    assert code == 200 and decision(body, "vvol-2")["outcome"] == "denied"
    assert stored("vvol-2")[0] == []
    code, body = guarded.send("vm.preboot", "vm-2")
    d = decision(body, "vvol-2")
    assert code == 200 and d["outcome"] == "done" and "software" not in d, body
    assert attached_volume_ids() == {"vvol-2"}


def test_a_policy_change_of_min_key_bits_applies_to_the_recorded_inventory_at_once(guarded, aws):
    assert guarded.send("guest.inventory", "vm-1", apps=STRONG)[0] == 200
    add_policies(aws, min_bits(1024))  # raised above what the VM offers
    code, body = guarded.send("vm.preboot", "vm-1")
    assert decision(body)["reason"] == "no_qualifying_software" and attached_volume_ids() == set()
    add_policies(aws, min_bits(128))  # lowered: a weaker product qualifies too, without a new inventory
    code, body = guarded.send("vm.preboot", "vm-1")
    assert (decision(body)["outcome"], decision(body)["software"]) == ("done", ["luks", "bitlocker", "veracrypt"])


def test_an_inventory_older_than_the_recorded_one_is_stale_and_changes_nothing(guarded):
    now = datetime.now(timezone.utc).replace(microsecond=0)
    newer, older = [(now - timedelta(seconds=s)).strftime("%Y-%m-%dT%H:%M:%SZ") for s in (10, 20)]
    assert guarded.send("guest.inventory", "vm-1", apps=STRONG, occurred_at=newer)[0] == 200
    kept = stored()
    code, body = guarded.send("guest.inventory", "vm-1", apps=WEAK, occurred_at=older)
    assert code == 200 and {k: decision(body)[k] for k in ("action", "outcome", "reason")} == {
        "action": "select", "outcome": "skipped", "reason": "stale"}
    assert stored() == kept
    assert decision(guarded.send("vm.preboot", "vm-1")[1])["outcome"] == "done"


def test_a_request_volume_checks_its_password_then_the_software(webhook, aws):
    add_policies(aws, "volumes:\n  - {volume_id: vvol-r, vm_id: vm-1, host_id: host-1, storage_array: S1, "
                      "size_mb: 10, attach_on: request, detach_on: request, password: pw-r-1234, min_key_bits: 256}\n")
    assert webhook.send("guest.inventory", "vm-1", apps=WEAK)[0] == 200
    _, body = webhook.send("volume.attach_request", "vm-1", volume_id="vvol-r", password="wrong")
    assert decision(body, "vvol-r")["reason"] == "bad_password"
    _, body = webhook.send("volume.attach_request", "vm-1", volume_id="vvol-r", password="pw-r-1234")
    assert decision(body, "vvol-r")["reason"] == "no_qualifying_software" and attached_volume_ids() == set()
    assert webhook.send("guest.inventory", "vm-1", apps=STRONG)[0] == 200
    _, body = webhook.send("volume.attach_request", "vm-1", volume_id="vvol-r", password="pw-r-1234")
    d = decision(body, "vvol-r")
    assert (d["outcome"], d["software"]) == ("done", ["luks", "bitlocker"]) and attached_volume_ids() == {"vvol-r"}
    dump = json.dumps([r.attribute_values for r in audit_records(aws)], default=str)
    assert "pw-r-1234" not in dump


def test_refused_inventories_record_nothing(guarded, aws):
    """Unauthenticated, malformed, oversized or foreign inventories: the error, and no inventory written."""
    from tests.test_webhook_contract import enroll

    assert guarded.send("guest.inventory", "vm-1", apps=STRONG)[0] == 200
    before = snapshot()
    ok = body_of(event_id="inv-x", type="guest.inventory", vm_id="vm-1", apps=WEAK)
    assert_error(guarded.raw(ok, {"Content-Type": "application/json"}), 401, "missing_signature")
    assert_error(sign_raw(guarded, ok, secret="not-the-secret"), 401, "bad_signature")
    other = enroll(aws, "host-2")
    assert_error(guarded.send("guest.inventory", "vm-1", host_id="host-2", secret=other, apps=WEAK), 403, "forbidden")
    for apps in ([{"name": "luks", "type": DISK}],                                   # missing key_bits
                 [{"name": "luks", "type": DISK, "key_bits": 0}],                     # out of range
                 [{"name": "lu:ks", "type": DISK, "key_bits": 512}],                  # a colon, a space: not a name
                 [{"name": "luks x", "type": DISK, "key_bits": 512}],
                 [{"name": f"p{i}", "type": DISK, "key_bits": 256} for i in range(65)],  # too many
                 "luks:disk_encryption:512"):
        assert_error(guarded.send("guest.inventory", "vm-1", apps=apps), 400, "invalid_event")
    big = body_of(event_id="inv-big", type="guest.inventory", vm_id="vm-1", apps=WEAK, pad="x" * 70000)
    assert_error(sign_raw(guarded, big), 413, "payload_too_large")
    assert snapshot()["policies"] == before["policies"] and stored()[0][0] == "luks:512"


def test_sixty_four_products_are_recorded_and_decided(guarded):
    apps = [{"name": f"p{i:02d}-" + "x" * 56, "type": DISK, "key_bits": 1 + i * 8} for i in range(64)]
    code, body = guarded.send("guest.inventory", "vm-1", apps=apps)
    assert code == 200 and len(decision(body)["software"]) == len([a for a in apps if a["key_bits"] >= 256])
    assert len(stored()[0]) == 64
    d = decision(guarded.send("vm.preboot", "vm-1")[1])
    assert d["outcome"] == "done" and d["software"][0] == apps[-1]["name"]


def _count(webhook, type_: str, vm: str, **fields) -> tuple[dict, Counter]:
    from vvolguard.adapters import aws

    seen: Counter = Counter()

    def count(model, **_):
        seen[(model.service_model.service_name, model.name)] += 1

    aws.add_hook("before-call", count)
    try:
        code, body = webhook.send(type_, vm, **fields)
    finally:
        aws.remove_hook("before-call", count)
    assert code == 200, body
    return body, seen


def test_the_inventory_and_the_warm_preboot_keep_their_round_trip_budget(guarded):
    """No extra DynamoDB round trip: the inventory is read with the VM's partition and written in the
    transaction that records the event; a warm preboot stays 3 DynamoDB round trips and 2 provider calls."""
    assert guarded.send("vm.preboot", "vm-1")[0] == 200  # cold: creates the volume, caches the host
    assert guarded.send("vm.booted", "vm-1")[0] == 200
    body, seen = _count(guarded, "guest.inventory", "vm-1", apps=STRONG)
    assert decision(body)["outcome"] == "done"
    assert {op: n for (svc, op), n in seen.items() if svc == "dynamodb"} == {"Query": 1, "TransactWriteItems": 1}
    assert not [op for (svc, op) in seen if svc == "ec2"], seen
    body, seen = _count(guarded, "vm.preboot", "vm-1")
    assert decision(body)["software"] == ["luks", "bitlocker"]
    assert {op: n for (svc, op), n in seen.items() if svc == "dynamodb"} == {"Query": 1, "TransactWriteItems": 2}
    assert sum(n for (svc, _), n in seen.items() if svc == "ec2") == 2, seen
    # refused: one Query and the one transaction that records the refusal, no provider call
    assert guarded.send("vm.booted", "vm-1")[0] == 200
    assert guarded.send("guest.inventory", "vm-1", apps=WEAK)[0] == 200
    body, seen = _count(guarded, "vm.preboot", "vm-1")
    assert decision(body)["reason"] == "no_qualifying_software"
    assert {op: n for (svc, op), n in seen.items() if svc == "dynamodb"} == {"Query": 1, "TransactWriteItems": 1}
    assert not [op for (svc, op) in seen if svc == "ec2"], seen


def test_the_dashboard_simulator_decides_against_the_recorded_inventory_and_records_nothing(guarded, aws):
    from vvolguard.services.simulate import Simulator

    sim = Simulator(aws)
    assert guarded.send("guest.inventory", "vm-1", apps=WEAK)[0] == 200
    kept = stored()
    [d] = sim.run("vm-1", "host-1", {"type": "vm.preboot"}).decisions
    assert (d.action, d.outcome, d.reason) == ("attach", "denied", "no_qualifying_software")
    [d] = sim.run("vm-1", "host-1", {"type": "guest.inventory", "apps": STRONG}).decisions
    assert (d.outcome, d.software) == ("done", ["luks", "bitlocker"]) and stored() == kept  # a dry run
    assert guarded.send("guest.inventory", "vm-1", apps=STRONG)[0] == 200
    [d] = sim.run("vm-1", "host-1", {"type": "vm.preboot"}).decisions
    assert (d.outcome, d.software) == ("pending", ["luks", "bitlocker"])
