"""The policy engine (docs/webhook-api.md, type table): pure tests of ``decide`` and ``Decision.answer``.

No AWS, no I/O. The volumes are a Table-1-like set put on one VM (``decide`` sees one VM's volumes):
vvol-1 preboot/postboot, vvol-2 preboot/shutdown, vvol-3 preboot/postboot, vvol-4 app_start/app_stop for
A1, vvol-5 app_start/app_stop for A2; some tests add a license volume and a password-protected request volume.
Outcome "pending" means "needs the provider" (it becomes done/failed once the provider has acted).
"""
from __future__ import annotations

import copy
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from vvolguard.domain.engine import LOCK_SECONDS, Decision, VolumeView, decide
from vvolguard.domain.events import Event, Software
from vvolguard.domain.secrets import hash_password

UTC = timezone.utc
NOW = datetime(2026, 11, 27, 5, 0, 0, tzinfo=UTC)
PASSWORD = "s3cret-pw"
PASSWORD_HASH = hash_password(PASSWORD)
LOCK = timedelta(minutes=15)  # the contract's lock, independent of the product's constant


def vol(volume_id: str, attach_on: str = "preboot", detach_on: str = "postboot", **kw) -> VolumeView:
    return VolumeView(volume_id=volume_id, vm_id="vm-1", host_id="host-1", attach_on=attach_on,
                      detach_on=detach_on, **kw)


TABLE1 = [
    vol("vvol-1", "preboot", "postboot", size_mb=10),
    vol("vvol-2", "preboot", "shutdown", size_mb=100, max_attach_seconds=60),
    vol("vvol-3", "preboot", "postboot", size_mb=10, max_attach_seconds=3600),
    vol("vvol-4", "app_start", "app_stop", app="A1"),
    vol("vvol-5", "app_start", "app_stop", app="A2"),
]
LICENSE = vol("vvol-6", "license_check", "license_verified", app="A1")
REQUEST = vol("vvol-7", "request", "request", password_hash=PASSWORD_HASH, exists=True)


def ev(etype: str, **kw) -> Event:
    return Event(event_id="e-1", type=etype, vm_id="vm-1", **kw)


def with_state(volumes: list[VolumeView], **states: dict) -> list[VolumeView]:
    """``with_state(vols, vvol_1={"attached": True})``: the volumes with some of their state replaced."""
    by_id = {k.replace("_", "-"): v for k, v in states.items()}
    return [replace(v, **by_id.get(v.volume_id, {})) for v in volumes]


def attached(*ids: str, volumes=None) -> list[VolumeView]:
    return with_state(volumes or TABLE1, **{i.replace("-", "_"): {"exists": True, "attached": True} for i in ids})


def existing(volumes=None) -> list[VolumeView]:
    return [replace(v, exists=True) for v in (volumes or TABLE1)]


def summary(decisions: list[Decision]) -> list[tuple[str, str, str, str]]:
    return [(d.volume_id, d.action, d.outcome, d.reason) for d in decisions]


def by_volume(decisions: list[Decision]) -> dict[str, Decision]:
    return {d.volume_id: d for d in decisions}


def apply(v: VolumeView, d: Decision) -> VolumeView:
    """The state effects of a password decision, as the service writes them."""
    changes: dict = {}
    if d.failed_passwords is not None:
        changes["failed_passwords"] = d.failed_passwords
    if d.locked_until is not None:
        changes["locked_until"] = d.locked_until
    elif d.failed_passwords == 0:
        changes["locked_until"] = None
    return replace(v, **changes)


def request(v: VolumeView, password: str | None, now: datetime) -> tuple[Decision, VolumeView]:
    [d] = decide(ev("volume.attach_request", volume_id=v.volume_id, password=password), [v], now)
    return d, apply(v, d)


# ---------------------------------------------------------------- one test per type row


def test_vm_created_creates_only_the_volumes_that_do_not_exist_yet():
    vols = with_state(TABLE1, vvol_2={"exists": True}, vvol_4={"exists": True, "attached": True})
    out = decide(ev("vm.created"), vols, NOW)
    assert summary(out)[0][:3] == ("vvol-1", "create", "pending")
    got = {d.volume_id: (d.action, d.outcome) for d in out}
    assert got == {"vvol-1": ("create", "pending"), "vvol-2": ("create", "skipped"), "vvol-3": ("create", "pending"),
                   "vvol-4": ("create", "skipped"), "vvol-5": ("create", "pending")}
    assert [d.volume_id for d in out if d.needs_provider] == ["vvol-1", "vvol-3", "vvol-5"]


def test_vm_created_when_every_volume_exists_needs_no_provider():
    out = decide(ev("vm.created"), existing(), NOW)
    assert out and all(d.outcome == "skipped" and not d.needs_provider for d in out)


def test_vm_preboot_attaches_only_the_preboot_volumes_with_a_device_and_a_lease():
    out = decide(ev("vm.preboot"), TABLE1, NOW)
    assert [(d.volume_id, d.action, d.outcome) for d in out] == [
        ("vvol-1", "attach", "pending"), ("vvol-2", "attach", "pending"), ("vvol-3", "attach", "pending")]
    leases = {d.volume_id: d.lease_expires_at for d in out}
    assert leases == {"vvol-1": NOW + timedelta(seconds=900), "vvol-2": NOW + timedelta(seconds=60),
                      "vvol-3": NOW + timedelta(seconds=3600)}
    devices = [d.device for d in out]
    assert all(dev and dev.startswith("/dev/") for dev in devices)
    assert len(set(devices)) == len(devices)
    assert all("preboot" in d.reason for d in out)


def test_a_volumes_device_is_stable_across_events():
    first = by_volume(decide(ev("vm.preboot"), TABLE1, NOW))
    later = by_volume(decide(ev("vm.preboot"), list(reversed(TABLE1)), NOW + timedelta(hours=1)))
    assert {k: d.device for k, d in first.items()} == {k: d.device for k, d in later.items()}


def test_vm_booted_detaches_only_the_attached_postboot_volumes_and_skips_the_not_attached():
    vols = attached("vvol-1", "vvol-2", "vvol-4")
    out = decide(ev("vm.booted"), vols, NOW)
    assert [(d.volume_id, d.action, d.outcome) for d in out] == [
        ("vvol-1", "detach", "pending"), ("vvol-3", "detach", "skipped")]
    assert by_volume(out)["vvol-3"].reason == "not_attached"
    assert not by_volume(out)["vvol-3"].needs_provider


def test_vm_shutdown_detaches_every_attached_volume_whatever_its_detach_on():
    vols = attached("vvol-1", "vvol-2", "vvol-4", volumes=TABLE1 + [LICENSE, REQUEST])
    vols = with_state(vols, vvol_6={"exists": True, "attached": True}, vvol_7={"attached": True})
    out = decide(ev("vm.shutdown"), vols, NOW)
    assert [(d.volume_id, d.action, d.outcome) for d in out] == [
        ("vvol-1", "detach", "pending"), ("vvol-2", "detach", "pending"), ("vvol-4", "detach", "pending"),
        ("vvol-6", "detach", "pending"), ("vvol-7", "detach", "pending")]


def test_vm_shutdown_with_nothing_attached_decides_nothing():
    assert decide(ev("vm.shutdown"), existing(), NOW) == []


@pytest.mark.parametrize("app,volume_id", [("A1", "vvol-4"), ("A2", "vvol-5")])
def test_app_started_attaches_the_app_start_volumes_of_that_app(app, volume_id):
    out = decide(ev("app.started", app=app), TABLE1 + [LICENSE], NOW)
    assert [(d.volume_id, d.action, d.outcome) for d in out] == [(volume_id, "attach", "pending")]
    assert out[0].device and out[0].lease_expires_at == NOW + timedelta(seconds=900)
    assert "app_start" in out[0].reason


@pytest.mark.parametrize("app,volume_id", [("A1", "vvol-4"), ("A2", "vvol-5")])
def test_app_stopped_detaches_the_app_stop_volumes_of_that_app(app, volume_id):
    vols = attached("vvol-4", "vvol-5", volumes=TABLE1 + [LICENSE])
    vols = with_state(vols, vvol_6={"exists": True, "attached": True})
    out = decide(ev("app.stopped", app=app), vols, NOW)
    assert [(d.volume_id, d.action, d.outcome) for d in out] == [(volume_id, "detach", "pending")]
    assert "app_stop" in out[0].reason


def test_license_check_attaches_the_license_volumes_of_that_app_only():
    out = decide(ev("license.check", app="A1"), TABLE1 + [LICENSE], NOW)
    assert [(d.volume_id, d.action, d.outcome) for d in out] == [("vvol-6", "attach", "pending")]
    assert out[0].lease_expires_at == NOW + timedelta(seconds=900)
    assert decide(ev("license.check", app="A2"), TABLE1 + [LICENSE], NOW) == []


def test_license_verified_detaches_the_license_volumes_of_that_app_only():
    vols = attached("vvol-4", "vvol-6", volumes=TABLE1 + [LICENSE])
    out = decide(ev("license.verified", app="A1"), vols, NOW)
    assert [(d.volume_id, d.action, d.outcome) for d in out] == [("vvol-6", "detach", "pending")]
    assert decide(ev("license.verified", app="A2"), vols, NOW) == []


def test_an_app_start_volume_is_denied_to_an_app_outside_its_authorized_apps():
    vols = with_state(TABLE1, vvol_4={"authorized_apps": ("A9",)})
    out = decide(ev("app.started", app="A1"), vols, NOW)
    assert summary(out) == [("vvol-4", "attach", "denied", "not_authorized_app")]
    assert not out[0].needs_provider and out[0].device is None and out[0].lease_expires_at is None


def test_a_license_volume_is_denied_to_an_app_outside_its_authorized_apps():
    out = decide(ev("license.check", app="A1"), [replace(LICENSE, authorized_apps=("A2",))], NOW)
    assert summary(out) == [("vvol-6", "attach", "denied", "not_authorized_app")]


def test_an_app_inside_authorized_apps_gets_the_volume():
    vols = with_state(TABLE1, vvol_4={"authorized_apps": ("A0", "A1")})
    out = decide(ev("app.started", app="A1"), vols, NOW)
    assert [(d.volume_id, d.outcome) for d in out] == [("vvol-4", "pending")]


def test_volume_attach_request_with_the_right_password_attaches():
    [d] = decide(ev("volume.attach_request", volume_id="vvol-7", password=PASSWORD), TABLE1 + [REQUEST], NOW)
    assert (d.volume_id, d.action, d.outcome) == ("vvol-7", "attach", "pending")
    assert d.device and d.lease_expires_at == NOW + timedelta(seconds=900)
    assert d.locked_until is None and d.failed_passwords in (None, 0)


def test_volume_attach_request_without_a_password_attaches_a_volume_that_has_none():
    v = replace(REQUEST, password_hash=None)
    [d] = decide(ev("volume.attach_request", volume_id="vvol-7"), [v], NOW)
    assert (d.action, d.outcome) == ("attach", "pending")


@pytest.mark.parametrize("password", ["wrong", PASSWORD.upper(), PASSWORD + " ", None])
def test_volume_attach_request_with_a_wrong_or_missing_password_is_denied_and_counted(password):
    v = replace(REQUEST, failed_passwords=2)
    [d] = decide(ev("volume.attach_request", volume_id="vvol-7", password=password), [v], NOW)
    assert summary([d]) == [("vvol-7", "attach", "denied", "bad_password")]
    assert d.failed_passwords == 3
    assert d.locked_until is None
    assert not d.needs_provider and d.device is None and d.lease_expires_at is None


def test_the_fifth_wrong_password_in_a_row_locks_the_volume_for_15_minutes():
    v = REQUEST
    for i in range(1, 5):
        d, v = request(v, "wrong", NOW + timedelta(seconds=i))
        assert (d.outcome, d.reason, d.failed_passwords, d.locked_until) == ("denied", "bad_password", i, None)
    d, v = request(v, "wrong", NOW + timedelta(seconds=5))
    assert (d.outcome, d.reason) == ("denied", "bad_password")
    assert d.locked_until == NOW + timedelta(seconds=5) + LOCK
    assert LOCK_SECONDS == LOCK.total_seconds()
    assert v.locked_until == d.locked_until


def test_while_locked_even_the_right_password_is_denied_locked():
    v = replace(REQUEST, locked_until=NOW + timedelta(minutes=10))
    for t in (NOW, NOW + timedelta(minutes=9, seconds=59)):
        [d] = decide(ev("volume.attach_request", volume_id="vvol-7", password=PASSWORD), [v], t)
        assert summary([d]) == [("vvol-7", "attach", "denied", "locked")]
        assert not d.needs_provider and d.locked_until is None


def test_after_the_lock_expires_the_right_password_attaches_and_clears_the_count():
    v = REQUEST
    for i in range(5):
        _, v = request(v, "wrong", NOW)
    d, locked_v = request(v, PASSWORD, NOW + LOCK - timedelta(seconds=1))
    assert d.reason == "locked"
    d, v = request(locked_v, PASSWORD, NOW + LOCK)
    assert (d.action, d.outcome) == ("attach", "pending")
    assert v.failed_passwords == 0
    assert v.locked_until is None or v.locked_until <= NOW + LOCK


def test_after_the_lock_expires_a_single_wrong_password_does_not_lock_again():
    v = REQUEST
    for _ in range(5):
        _, v = request(v, "wrong", NOW)
    d, v = request(v, "wrong", NOW + LOCK)
    assert (d.outcome, d.reason, d.locked_until) == ("denied", "bad_password", None)
    assert v.failed_passwords == 1


def test_a_right_password_resets_the_count_so_only_wrong_ones_in_a_row_lock():
    v = REQUEST
    for _ in range(4):
        _, v = request(v, "wrong", NOW)
    assert v.failed_passwords == 4
    d, v = request(v, PASSWORD, NOW)
    assert d.outcome == "pending" and v.failed_passwords == 0
    d, v = request(v, "wrong", NOW)
    assert (d.reason, d.failed_passwords, d.locked_until) == ("bad_password", 1, None)


def test_volume_attach_request_for_a_volume_not_attached_on_request_is_denied():
    vols = existing(TABLE1)
    [d] = decide(ev("volume.attach_request", volume_id="vvol-1"), vols, NOW)
    assert (d.volume_id, d.action, d.outcome) == ("vvol-1", "attach", "denied")
    assert d.reason and d.reason not in ("bad_password", "locked")
    assert not d.needs_provider and d.device is None


def test_volume_attach_request_touches_only_the_named_volume():
    vols = TABLE1 + [REQUEST, replace(REQUEST, volume_id="vvol-8")]
    out = decide(ev("volume.attach_request", volume_id="vvol-8", password=PASSWORD), vols, NOW)
    assert [(d.volume_id, d.outcome) for d in out] == [("vvol-8", "pending")]


def test_volume_detach_request_detaches_the_named_volume():
    vols = attached("vvol-1", "vvol-3")
    out = decide(ev("volume.detach_request", volume_id="vvol-3"), vols, NOW)
    assert summary(out) == [("vvol-3", "detach", "pending", out[0].reason)]
    assert out[0].reason


def test_volume_detach_request_for_a_volume_not_attached_is_skipped():
    out = decide(ev("volume.detach_request", volume_id="vvol-3"), existing(), NOW)
    assert summary(out) == [("vvol-3", "detach", "skipped", "not_attached")]


def test_vm_migrate_start_grants_the_destination_every_volume_of_the_vm():
    out = decide(ev("vm.migrate.start", destination_host="host-2"), existing(), NOW)
    assert [(d.volume_id, d.action) for d in out] == [(v.volume_id, "grant") for v in TABLE1]


def test_vm_migrate_complete_revokes_the_source_on_every_volume_of_the_vm():
    vols = [replace(v, grants=("host-2",)) for v in existing()]
    out = decide(ev("vm.migrate.complete", source_host="host-1"), vols, NOW)
    assert [(d.volume_id, d.action) for d in out] == [(v.volume_id, "revoke") for v in TABLE1]


# ---------------------------------------------------------------- guest.inventory

INVENTORY = (
    Software("BitLocker", "disk_encryption", 256),
    Software("ClamAV", "antivirus", 4096),
    Software("VeraCrypt", "disk_encryption", 128),
    Software("LUKS", "disk_encryption", 512),
)


def test_guest_inventory_selects_every_disk_encryption_product_strongest_first_without_min_key_bits():
    out = decide(ev("guest.inventory", apps=INVENTORY), TABLE1, NOW)
    assert [d.volume_id for d in out] == [v.volume_id for v in TABLE1]
    for d in out:
        assert (d.action, d.outcome) == ("select", "done")
        assert d.software == ["LUKS", "BitLocker", "VeraCrypt"]
        assert not d.needs_provider


def test_guest_inventory_honours_each_volumes_min_key_bits():
    vols = with_state(TABLE1, vvol_1={"min_key_bits": 256}, vvol_2={"min_key_bits": 512},
                      vvol_3={"min_key_bits": 1024})
    out = by_volume(decide(ev("guest.inventory", apps=INVENTORY), vols, NOW))
    assert out["vvol-1"].software == ["LUKS", "BitLocker"]
    assert out["vvol-2"].software == ["LUKS"]
    assert (out["vvol-3"].action, out["vvol-3"].outcome, out["vvol-3"].reason) == (
        "select", "denied", "no_qualifying_software")
    assert not out["vvol-3"].software
    assert out["vvol-4"].software == ["LUKS", "BitLocker", "VeraCrypt"]


def test_guest_inventory_never_selects_a_product_of_another_type_however_strong():
    vols = [replace(TABLE1[0], min_key_bits=2048)]
    [d] = decide(ev("guest.inventory", apps=INVENTORY), vols, NOW)
    assert (d.outcome, d.reason) == ("denied", "no_qualifying_software")
    assert "ClamAV" not in (d.software or [])


@pytest.mark.parametrize("apps", [(), (Software("ClamAV", "antivirus", 4096),)])
def test_guest_inventory_without_disk_encryption_is_denied(apps):
    out = decide(ev("guest.inventory", apps=apps), TABLE1[:2], NOW)
    assert summary(out) == [("vvol-1", "select", "denied", "no_qualifying_software"),
                            ("vvol-2", "select", "denied", "no_qualifying_software")]


def test_guest_inventory_ordering_does_not_depend_on_the_reported_order():
    a = decide(ev("guest.inventory", apps=INVENTORY), TABLE1[:1], NOW)
    b = decide(ev("guest.inventory", apps=tuple(reversed(INVENTORY))), TABLE1[:1], NOW)
    assert a[0].software == b[0].software == ["LUKS", "BitLocker", "VeraCrypt"]


# ---------------------------------------------------------------- already in state / stale / busy


@pytest.mark.parametrize("event,volume", [
    (ev("vm.preboot"), TABLE1[0]),
    (ev("app.started", app="A1"), TABLE1[3]),
    (ev("license.check", app="A1"), LICENSE),
    (ev("volume.attach_request", volume_id="vvol-7", password=PASSWORD), REQUEST),
])
def test_an_attach_of_an_already_attached_volume_is_skipped_already_attached(event, volume):
    v = replace(volume, exists=True, attached=True)
    [d] = decide(event, [v], NOW)
    assert (d.action, d.outcome, d.reason) == ("attach", "skipped", "already_attached")
    assert not d.needs_provider


STALE_CASES = [
    (lambda at: ev("vm.preboot", occurred_at=at), TABLE1[0], False),
    (lambda at: ev("vm.booted", occurred_at=at), TABLE1[0], True),
    (lambda at: ev("vm.shutdown", occurred_at=at), TABLE1[1], True),
    (lambda at: ev("app.started", app="A1", occurred_at=at), TABLE1[3], False),
    (lambda at: ev("app.stopped", app="A1", occurred_at=at), TABLE1[3], True),
    (lambda at: ev("license.check", app="A1", occurred_at=at), LICENSE, False),
    (lambda at: ev("license.verified", app="A1", occurred_at=at), LICENSE, True),
    (lambda at: ev("volume.attach_request", volume_id="vvol-7", password=PASSWORD, occurred_at=at), REQUEST, False),
    (lambda at: ev("volume.detach_request", volume_id="vvol-7", occurred_at=at), REQUEST, True),
]


@pytest.mark.parametrize("make,volume,is_attached", STALE_CASES)
def test_an_event_older_than_the_last_applied_one_is_skipped_stale(make, volume, is_attached):
    v = replace(volume, exists=True, attached=is_attached, last_event_at=NOW - timedelta(seconds=10))
    [d] = decide(make(NOW - timedelta(seconds=11)), [v], NOW)
    assert (d.outcome, d.reason) == ("skipped", "stale")
    assert not d.needs_provider
    assert d.failed_passwords is None and d.locked_until is None


@pytest.mark.parametrize("make,volume,is_attached", STALE_CASES)
def test_an_event_as_new_as_the_last_applied_one_is_not_stale(make, volume, is_attached):
    v = replace(volume, exists=True, attached=is_attached, last_event_at=NOW - timedelta(seconds=10))
    for at in (NOW - timedelta(seconds=10), NOW - timedelta(seconds=9), None):
        [d] = decide(make(at), [v], NOW)
        assert d.outcome == "pending", (at, d)


def test_a_stale_wrong_password_is_not_counted():
    v = replace(REQUEST, last_event_at=NOW, failed_passwords=4)
    [d] = decide(ev("volume.attach_request", volume_id="vvol-7", password="wrong",
                    occurred_at=NOW - timedelta(minutes=1)), [v], NOW)
    assert (d.outcome, d.reason) == ("skipped", "stale")
    assert d.failed_passwords is None and d.locked_until is None


@pytest.mark.parametrize("make,volume,is_attached", STALE_CASES)
def test_a_volume_busy_with_another_event_is_skipped_in_progress(make, volume, is_attached):
    v = replace(volume, exists=True, attached=is_attached, busy_until=NOW + timedelta(seconds=30))
    [d] = decide(make(None), [v], NOW)
    assert (d.outcome, d.reason) == ("skipped", "in_progress")
    assert not d.needs_provider


@pytest.mark.parametrize("make,volume,is_attached", STALE_CASES)
def test_a_busy_mark_that_has_expired_does_not_block(make, volume, is_attached):
    v = replace(volume, exists=True, attached=is_attached, busy_until=NOW)
    [d] = decide(make(None), [v], NOW)
    assert d.outcome == "pending"


def test_vm_shutdown_skips_a_busy_volume_in_progress():
    vols = attached("vvol-1")
    vols = with_state(vols, vvol_3={"busy_until": NOW + timedelta(seconds=30)})
    out = decide(ev("vm.shutdown"), vols, NOW)
    assert [(d.volume_id, d.outcome, d.reason) for d in out] == [
        ("vvol-1", "pending", out[0].reason), ("vvol-3", "skipped", "in_progress")]


# ---------------------------------------------------------------- nothing matches


@pytest.mark.parametrize("event", [
    ev("vm.created"), ev("vm.preboot"), ev("vm.booted"), ev("vm.shutdown"),
    ev("app.started", app="A1"), ev("app.stopped", app="A1"),
    ev("license.check", app="A1"), ev("license.verified", app="A1"),
    ev("vm.migrate.start", destination_host="host-2"), ev("vm.migrate.complete", source_host="host-1"),
    ev("guest.inventory", apps=INVENTORY),
])
def test_an_event_for_a_vm_without_volumes_decides_nothing(event):
    assert decide(event, [], NOW) == []


@pytest.mark.parametrize("event", [
    ev("app.started", app="A3"), ev("app.stopped", app="A3"),
    ev("license.check", app="A2"), ev("license.verified", app="A2"),
])
def test_an_event_matching_no_volume_decides_nothing(event):
    assert decide(event, attached("vvol-4", "vvol-5", volumes=TABLE1 + [LICENSE]), NOW) == []


def test_preboot_and_booted_on_a_vm_without_such_volumes_decide_nothing():
    app_only = attached("vvol-4", "vvol-5")[3:]
    assert decide(ev("vm.preboot"), app_only, NOW) == []
    assert decide(ev("vm.booted"), app_only, NOW) == []


@pytest.mark.parametrize("event", [ev("volume.attach_request", volume_id="vvol-9", password=PASSWORD),
                                   ev("volume.detach_request", volume_id="vvol-9")])
def test_a_volume_request_naming_no_volume_of_the_vm_decides_nothing(event):
    assert decide(event, TABLE1, NOW) == []


# ---------------------------------------------------------------- purity


PURITY_EVENTS = [
    ev("vm.created"), ev("vm.preboot"), ev("vm.booted"), ev("vm.shutdown"),
    ev("app.started", app="A1"), ev("app.stopped", app="A1"),
    ev("license.check", app="A1"), ev("license.verified", app="A1"),
    ev("volume.attach_request", volume_id="vvol-7", password=PASSWORD),
    ev("volume.attach_request", volume_id="vvol-7", password="wrong"),
    ev("volume.detach_request", volume_id="vvol-1"),
    ev("guest.inventory", apps=INVENTORY),
]


@pytest.mark.parametrize("event", PURITY_EVENTS, ids=lambda e: f"{e.type}-{e.password or ''}")
def test_decide_is_pure_same_inputs_same_outputs_inputs_untouched(event):
    vols = with_state(TABLE1 + [LICENSE, REQUEST], vvol_1={"exists": True, "attached": True},
                      vvol_2={"min_key_bits": 256}, vvol_7={"failed_passwords": 4})
    vols_before, event_before = copy.deepcopy(vols), copy.deepcopy(event)
    given = list(vols)
    first = decide(event, given, NOW)
    second = decide(event, given, NOW)
    assert first == second
    assert first is not second
    assert given == vols and given == vols_before  # the list itself is neither reordered nor changed
    assert [id(v) for v in given] == [id(v) for v in vols]
    assert event == event_before


def test_decisions_come_in_volume_order_whatever_the_input_order():
    forward = decide(ev("vm.created"), TABLE1, NOW)
    backward = decide(ev("vm.created"), list(reversed(TABLE1)), NOW)
    assert forward == backward


# ---------------------------------------------------------------- Decision.answer()


def test_answer_formats_the_lease_as_rfc3339_utc_with_z():
    d = Decision("vvol-1", "attach", "done", "attach_on=preboot", device="/dev/sdf",
                 lease_expires_at=datetime(2026, 11, 27, 5, 15, 0, 123456, tzinfo=UTC))
    assert d.answer() == {"volume_id": "vvol-1", "action": "attach", "outcome": "done",
                          "reason": "attach_on=preboot", "device": "/dev/sdf",
                          "lease_expires_at": "2026-11-27T05:15:00Z"}


def test_answer_converts_a_non_utc_lease_to_utc_before_writing_z():
    plus2 = timezone(timedelta(hours=2))
    d = Decision("vvol-1", "attach", "done", "r", lease_expires_at=datetime(2026, 11, 27, 7, 15, tzinfo=plus2))
    assert d.answer()["lease_expires_at"] == "2026-11-27T05:15:00Z"


def test_answer_omits_the_keys_a_decision_does_not_have():
    d = Decision("vvol-1", "detach", "skipped", "not_attached", policy_version=3, failed_passwords=0,
                 locked_until=NOW)
    assert d.answer() == {"volume_id": "vvol-1", "action": "detach", "outcome": "skipped", "reason": "not_attached"}


def test_answer_of_a_select_carries_the_software_names():
    [d] = decide(ev("guest.inventory", apps=INVENTORY), TABLE1[:1], NOW)
    assert d.answer() == {"volume_id": "vvol-1", "action": "select", "outcome": "done", "reason": d.reason,
                          "software": ["LUKS", "BitLocker", "VeraCrypt"]}


def test_answer_never_carries_password_state():
    [d] = decide(ev("volume.attach_request", volume_id="vvol-7", password="wrong"),
                 [replace(REQUEST, failed_passwords=4)], NOW)
    assert d.locked_until is not None
    answer = d.answer()
    assert set(answer) == {"volume_id", "action", "outcome", "reason"}
    assert answer["reason"] == "bad_password"
    assert PASSWORD_HASH not in str(answer) and "wrong" not in str(answer)


def test_answer_of_a_pending_attach_has_its_device_and_lease():
    [d] = decide(ev("vm.preboot"), TABLE1[:1], NOW)
    answer = d.answer()
    assert answer["device"] == d.device
    assert answer["lease_expires_at"] == "2026-11-27T05:15:00Z"


# ---------------------------------------------------------------- the recorded inventory (docs/guest-channel.md)

OFFER = (("LUKS", 512), ("BitLocker", 256), ("VeraCrypt", 128))  # what a select records: disk_encryption only


def test_a_select_carries_the_disk_encryption_products_to_record_strongest_first_and_when():
    later = NOW - timedelta(seconds=5)
    [d] = decide(ev("guest.inventory", apps=INVENTORY, occurred_at=later), [replace(TABLE1[0], min_key_bits=256)], NOW)
    assert (d.outcome, d.software, d.inventory, d.inventory_at) == ("done", ["LUKS", "BitLocker"], OFFER, later)
    [d] = decide(ev("guest.inventory", apps=(Software("ClamAV", "antivirus", 4096),)), TABLE1[:1], NOW)
    assert (d.outcome, d.reason, d.inventory, d.inventory_at) == ("denied", "no_qualifying_software", (), NOW)
    assert "inventory" not in d.answer()  # recorded, never answered


def test_a_product_named_twice_is_recorded_once_at_its_strongest():
    apps = (Software("LUKS", "disk_encryption", 128), Software("LUKS", "disk_encryption", 512))
    [d] = decide(ev("guest.inventory", apps=apps), TABLE1[:1], NOW)
    assert d.inventory == (("LUKS", 512),) and d.software == ["LUKS"]


def test_an_inventory_older_than_the_recorded_one_is_stale_and_records_nothing():
    v = replace(TABLE1[0], inventory=OFFER, inventory_at=NOW)
    [d] = decide(ev("guest.inventory", apps=INVENTORY, occurred_at=NOW - timedelta(seconds=1)), [v], NOW)
    assert (d.action, d.outcome, d.reason, d.inventory, d.software) == ("select", "skipped", "stale", None, None)


@pytest.mark.parametrize("etype, volume, extra", [
    ("vm.preboot", vol("vvol-1", "preboot", "postboot"), {}),
    ("app.started", vol("vvol-4", "app_start", "app_stop", app="A1"), {"app": "A1"}),
    ("license.check", vol("vvol-6", "license_check", "license_verified", app="A1"), {"app": "A1"}),
    ("volume.attach_request", vol("vvol-7", "request", "request", password_hash=PASSWORD_HASH),
     {"volume_id": "vvol-7", "password": PASSWORD}),
])
def test_every_attach_of_a_min_key_bits_volume_is_decided_against_the_recorded_inventory(etype, volume, extra):
    weak = replace(volume, min_key_bits=1024, inventory=OFFER, inventory_at=NOW)
    [d] = decide(ev(etype, **extra), [weak], NOW)
    assert (d.action, d.outcome, d.reason, d.software, d.device) == (
        "attach", "denied", "no_qualifying_software", None, None)
    assert d.answer() == {"volume_id": volume.volume_id, "action": "attach", "outcome": "denied",
                          "reason": "no_qualifying_software"}
    ok = replace(volume, min_key_bits=256, inventory=OFFER, inventory_at=NOW)
    [d] = decide(ev(etype, **extra), [ok], NOW)
    assert (d.action, d.outcome, d.software) == ("attach", "pending", ["LUKS", "BitLocker"])
    d.outcome = "done"  # as the service answers it once the provider attached
    assert d.answer()["software"] == ["LUKS", "BitLocker"]


def test_an_attach_is_not_refused_for_a_vm_that_never_sent_an_inventory_nor_for_a_volume_without_min_key_bits():
    [d] = decide(ev("vm.preboot"), [replace(TABLE1[0], min_key_bits=4096)], NOW)  # inventory None: first boot
    assert (d.outcome, d.software) == ("pending", None) and "software" not in d.answer()
    [d] = decide(ev("vm.preboot"), [replace(TABLE1[0], inventory=(), inventory_at=NOW)], NOW)  # nothing offered
    assert (d.outcome, d.software) == ("pending", None)


def test_an_empty_recorded_inventory_refuses_a_min_key_bits_volume():
    [d] = decide(ev("vm.preboot"), [replace(TABLE1[0], min_key_bits=1, inventory=(), inventory_at=NOW)], NOW)
    assert (d.outcome, d.reason) == ("denied", "no_qualifying_software")


def test_a_wrong_password_is_still_bad_password_before_the_software_is_looked_at():
    v = replace(REQUEST, min_key_bits=4096, inventory=OFFER, inventory_at=NOW)
    [d] = decide(ev("volume.attach_request", volume_id="vvol-7", password="nope"), [v], NOW)
    assert (d.outcome, d.reason, d.failed_passwords) == ("denied", "bad_password", 1)


def test_stale_busy_and_already_attached_attaches_answer_as_before_whatever_the_inventory():
    v = replace(TABLE1[0], min_key_bits=4096, inventory=OFFER, inventory_at=NOW, exists=True)
    [d] = decide(ev("vm.preboot"), [replace(v, attached=True)], NOW)
    assert (d.outcome, d.reason) == ("skipped", "already_attached")
    [d] = decide(ev("vm.preboot", occurred_at=NOW - timedelta(seconds=9)), [replace(v, last_event_at=NOW)], NOW)
    assert (d.outcome, d.reason) == ("skipped", "stale")
