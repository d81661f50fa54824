"""Property tests (Hypothesis) of the pure parts: the policy validator and the engine's invariants.

No AWS, no I/O. A few hundred examples in all, no deadline (CI machines are slow), no example database
(nothing written to the work tree). What each property states, and why where it is narrower than the plain
words, is in its docstring.
"""
from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vvolguard.domain.engine import VolumeView, decide
from vvolguard.domain.events import Event, Software
from vvolguard.domain.policy import (
    ATTACH_ON,
    DETACH_ON,
    KEYS,
    MAX_KEY_BITS,
    MAX_LEASE,
    MAX_PASSWORD_LEN,
    MAX_SIZE_MB,
    PolicySpec,
    dump_policy_file,
    parse_policy_text,
)
from vvolguard.errors import PolicyValidationError

UTC = timezone.utc
NOW = datetime(2026, 11, 27, 5, 0, 0, tzinfo=UTC)
FAST = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------------------------------- strategies

ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
ids = st.text(ID_CHARS, min_size=1, max_size=64)
chars = st.characters(blacklist_categories=("Cs",))  # any character a UTF-8 file can hold
# Ids that YAML would read as something else if written unquoted: export must quote them.
tricky_ids = st.sampled_from(["1", "0.5", "1e3", "1_000", "0x1F", "0o17", "true", "False", "yes", "No", "on", "off",
                              "null", "Null", "-", "-1", ".inf", "-.Inf", ".NaN", "y", "n", "0", "00", "010",
                              "1.", ".5", "...", "---", "_"])
any_id = st.one_of(ids, tricky_ids)


def valid_triggers() -> st.SearchStrategy[tuple[str, str]]:
    """(attach_on, detach_on) pairs the contract allows."""
    pairs = [(a, d) for a in ATTACH_ON for d in DETACH_ON
             if not (d == "app_stop" and a != "app_start") and not (d == "license_verified" and a != "license_check")]
    return st.sampled_from(pairs)


APP_TRIGGERS = {"app_start", "app_stop", "license_check", "license_verified"}


@st.composite
def valid_entry(draw, volume_id: str | None = None) -> dict:
    """One valid policy entry, optional keys present or not."""
    attach_on, detach_on = draw(valid_triggers())
    e = {"volume_id": volume_id or draw(any_id), "vm_id": draw(any_id), "host_id": draw(any_id),
         "storage_array": draw(any_id), "size_mb": draw(st.integers(1, MAX_SIZE_MB)),
         "attach_on": attach_on, "detach_on": detach_on}
    if {attach_on, detach_on} & APP_TRIGGERS:
        e["app"] = draw(any_id)
    if draw(st.booleans()):
        e["authorized_apps"] = draw(st.lists(any_id, max_size=5, unique=True))
    if draw(st.booleans()):
        e["os_disk_encryption"] = draw(st.booleans())
    if draw(st.booleans()):
        e["max_attach_seconds"] = draw(st.integers(1, MAX_LEASE))
    if draw(st.booleans()):
        e["min_key_bits"] = draw(st.integers(1, MAX_KEY_BITS))
    if draw(st.booleans()):
        e["password"] = draw(st.one_of(st.none(), st.text(chars, min_size=1, max_size=MAX_PASSWORD_LEN)))
    return e


@st.composite
def valid_document(draw, min_size: int = 0) -> list[dict]:
    vids = draw(st.lists(any_id, min_size=min_size, max_size=5, unique=True))
    return [draw(valid_entry(v)) for v in vids]


def as_text(entries: list[dict], fmt: str) -> tuple[bytes, str]:
    """The policy file as a user would write it: YAML or JSON."""
    doc = {"volumes": entries}
    if fmt == "json":
        return json.dumps(doc).encode(), "policy.json"
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode(), "policy.yaml"


def expected_spec(e: dict) -> PolicySpec:
    """The spec the contract says an entry means (defaults of section 3)."""
    return PolicySpec(volume_id=e["volume_id"], vm_id=e["vm_id"], host_id=e["host_id"],
                      storage_array=e["storage_array"], size_mb=e["size_mb"], attach_on=e["attach_on"],
                      detach_on=e["detach_on"], app=e.get("app"), authorized_apps=tuple(e.get("authorized_apps", ())),
                      os_disk_encryption=e.get("os_disk_encryption", False),
                      max_attach_seconds=e.get("max_attach_seconds", 900), min_key_bits=e.get("min_key_bits"))


# ---------------------------------------------------------------------------------------------- the policy file


@FAST
@given(valid_document(), st.sampled_from(["yaml", "json"]))
def test_every_valid_policy_file_is_accepted_and_round_trips_through_export(entries, fmt):
    """parse(file) is what the file says; parse(export(specs)) == specs (passwords never leave, so they are not
    compared: PolicySpec.password has compare=False, and export has no password key)."""
    data, name = as_text(entries, fmt)
    specs = parse_policy_text(data, name)
    assert specs == [expected_spec(e) for e in entries]
    for spec, e in zip(specs, entries):
        assert spec.password_given == ("password" in e)
    exported = dump_policy_file(specs)
    assert "password" not in exported
    again = parse_policy_text(exported.encode(), "export.yaml")
    from vvolguard.domain.natural import natural_key

    assert again == sorted(specs, key=lambda s: natural_key(s.volume_id))  # natural order: vvol-2 before vvol-11
    assert not any(s.password_given for s in again)
    assert dump_policy_file(again) == exported  # a fixed point


non_id_strings = st.one_of(
    st.just(""), st.text(ID_CHARS, min_size=65, max_size=80),
    st.text(chars, min_size=1, max_size=20).filter(lambda s: any(c not in ID_CHARS for c in s)),
    st.sampled_from(["vm 1", "vm/1", "vm\n1", "vm-1\r\n", "\u0432m-1", "vm\u20121", "vm\u00a01", "ＶＭ-1"]))
non_strings = st.one_of(st.integers(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False),
                        st.lists(st.integers(), max_size=2), st.dictionaries(st.just("a"), st.integers(), max_size=1))
bad_ints = {
    "size_mb": st.one_of(st.integers(max_value=0), st.integers(min_value=MAX_SIZE_MB + 1), st.booleans(),
                         st.just(1.5), st.just("10"), st.just([10])),
    "max_attach_seconds": st.one_of(st.integers(max_value=0), st.integers(min_value=MAX_LEASE + 1), st.booleans(),
                                    st.just(9.5), st.just("900")),
    "min_key_bits": st.one_of(st.integers(max_value=0), st.integers(min_value=MAX_KEY_BITS + 1), st.booleans(),
                              st.just(256.5), st.just("256")),
}


@st.composite
def one_bad_field(draw, entry: dict) -> tuple[dict, str]:
    """``entry`` with exactly one fault injected; returns (bad entry, the field the refusal must name)."""
    e = dict(entry)
    needs_app = bool({e["attach_on"], e["detach_on"]} & APP_TRIGGERS)
    kinds = ["unknown_key", "missing", "bad_id", "bad_int", "bad_attach_on", "bad_detach_on", "bad_ode",
             "bad_apps", "bad_password", "bad_app" if needs_app else "app_not_allowed", "mismatched_trigger"]
    kind = draw(st.sampled_from(kinds))
    if kind == "unknown_key":
        key = draw(st.one_of(st.sampled_from(["colour", "Volume_id", "volumeId", "size", "passwd", "apps", "hosts"]),
                             st.text(ID_CHARS, min_size=1, max_size=20)).filter(lambda k: k not in KEYS))
        e[key] = draw(st.one_of(st.none(), st.integers(), any_id))
        return e, key
    if kind == "missing":
        key = draw(st.sampled_from(["volume_id", "vm_id", "host_id", "storage_array", "size_mb", "attach_on",
                                    "detach_on"]))
        if draw(st.booleans()):
            del e[key]
        else:
            e[key] = None  # null is "missing" too
        return e, key
    if kind == "bad_id":
        key = draw(st.sampled_from(["volume_id", "vm_id", "host_id", "storage_array"]))
        e[key] = draw(st.one_of(non_id_strings, non_strings))
        return e, key
    if kind == "bad_int":
        key = draw(st.sampled_from(sorted(bad_ints)))
        e[key] = draw(bad_ints[key])
        return e, key
    if kind == "bad_attach_on":
        e["attach_on"] = draw(st.one_of(st.text(chars, max_size=12), non_strings).filter(lambda v: v not in ATTACH_ON))
        return e, "attach_on"
    if kind == "bad_detach_on":
        e["detach_on"] = draw(st.one_of(st.text(chars, max_size=12), non_strings).filter(lambda v: v not in DETACH_ON))
        return e, "detach_on"
    if kind == "bad_ode":
        e["os_disk_encryption"] = draw(st.one_of(st.sampled_from(["true", "yes", 1, 0, "false", []]), st.integers()))
        return e, "os_disk_encryption"
    if kind == "bad_apps":
        e["authorized_apps"] = draw(st.one_of(
            any_id, st.integers(), st.just({"a": 1}),
            st.lists(any_id, min_size=1, max_size=3).map(lambda xs: xs + [xs[0]]),  # a duplicate
            st.lists(non_id_strings, min_size=1, max_size=2),
            st.lists(any_id, min_size=65, max_size=66, unique=True)))
        return e, "authorized_apps"
    if kind == "bad_password":
        e["password"] = draw(st.one_of(st.just(""), st.text(chars, min_size=MAX_PASSWORD_LEN + 1,
                                                                      max_size=MAX_PASSWORD_LEN + 3),
                                       st.integers(), st.booleans(), st.lists(st.text(chars, max_size=3), max_size=2)))
        return e, "password"
    if kind == "bad_app":
        e["app"] = draw(st.one_of(non_id_strings, non_strings))
        return e, "app"
    if kind == "app_not_allowed":
        e["app"] = draw(any_id)
        return e, "app"
    # mismatched_trigger: app_stop without app_start, or license_verified without license_check
    detach, attach_ok = draw(st.sampled_from([("app_stop", "app_start"), ("license_verified", "license_check")]))
    e["attach_on"] = draw(st.sampled_from([a for a in ATTACH_ON if a != attach_ok]))
    e["detach_on"] = detach
    e["app"] = e.get("app") or "A1"
    return e, "detach_on"


@FAST
@given(st.data(), valid_document(min_size=1), st.sampled_from(["yaml", "json"]))
def test_every_policy_file_with_one_bad_field_is_refused_naming_the_entry_and_the_field(data, entries, fmt):
    """Inject one fault into one entry of a valid file: the file is refused, and every problem reported is about
    that entry; one of them names the field (``volumes[i] (vid): field: ...``). A secret is never echoed."""
    i = data.draw(st.integers(0, len(entries) - 1), label="entry")
    bad, field = data.draw(one_bad_field(entries[i]), label="fault")
    entries = entries[:i] + [bad] + entries[i + 1:]
    payload, name = as_text(entries, fmt)
    with pytest.raises(PolicyValidationError) as info:
        parse_policy_text(payload, name)
    errors = info.value.errors
    assert errors, info.value
    assert all(msg.startswith(f"volumes[{i}]") for msg in errors), errors
    assert any(f": {field}: " in msg for msg in errors), (field, errors)
    vid = bad.get("volume_id")
    if field != "volume_id" and isinstance(vid, str) and vid in [e["volume_id"] for e in entries]:
        assert any(msg.startswith(f"volumes[{i}] ({vid}): {field}: ") for msg in errors), errors
    if field == "password" and isinstance(bad["password"], str) and bad["password"]:
        assert all(bad["password"] not in msg for msg in errors)


# ---------------------------------------------------------------------------------------------- the engine


def cheap_hash(password: str) -> str:
    """A stored hash in hash_password's format, with a tiny scrypt cost so hundreds of checks stay fast."""
    salt = b"0123456789abcdef"
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2, r=1, p=1, dklen=32)
    return f"scrypt$2$1$1${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


RIGHT = "right-pw"
RIGHT_HASH = cheap_hash(RIGHT)
APPS = ["A1", "A2", "L1"]
HOSTS = ["host-1", "host-2", "host-3"]
VOLUME_IDS = [f"vvol-{n}" for n in range(1, 9)]
times = st.one_of(st.none(), st.integers(-3600, 3600).map(lambda s: NOW + timedelta(seconds=s)))


@st.composite
def volume(draw, volume_id: str, vm_id: str = "vm-1", host_id: str = "host-1") -> VolumeView:
    attach_on, detach_on = draw(valid_triggers())
    app = draw(st.sampled_from(APPS)) if {attach_on, detach_on} & APP_TRIGGERS else None
    exists = draw(st.booleans())
    return VolumeView(
        volume_id=volume_id, vm_id=vm_id, host_id=host_id, attach_on=attach_on, detach_on=detach_on, app=app,
        authorized_apps=tuple(draw(st.lists(st.sampled_from(APPS), unique=True, max_size=2))),
        password_hash=draw(st.sampled_from([None, RIGHT_HASH])),
        max_attach_seconds=draw(st.integers(1, MAX_LEASE)),
        min_key_bits=draw(st.one_of(st.none(), st.sampled_from([128, 256, 512]))),
        policy_version=draw(st.integers(1, 5)), exists=exists, attached=exists and draw(st.booleans()),
        last_event_at=draw(times), failed_passwords=draw(st.integers(0, 4)), locked_until=draw(times),
        busy_until=draw(st.one_of(st.none(), times)),
        grants=tuple(draw(st.lists(st.sampled_from(["host-2", "host-3"]), unique=True, max_size=2))),
    )


@st.composite
def volumes(draw, vm_id: str = "vm-1", host_id: str = "host-1", max_size: int = 5) -> list[VolumeView]:
    vids = draw(st.lists(st.sampled_from(VOLUME_IDS), unique=True, max_size=max_size))
    return [draw(volume(v, vm_id, host_id)) for v in vids]


EVENT_TYPES = ["vm.created", "vm.preboot", "vm.booted", "vm.shutdown", "app.started", "app.stopped", "license.check",
               "license.verified", "volume.attach_request", "volume.detach_request", "vm.migrate.start",
               "vm.migrate.complete", "guest.inventory"]
DETACH_TYPES = ["vm.booted", "vm.shutdown", "app.stopped", "license.verified", "volume.detach_request"]
software = st.builds(Software, name=st.sampled_from(["LUKS", "BitLocker", "VeraCrypt", "ClamAV"]),
                     type=st.sampled_from(["disk_encryption", "antivirus"]), key_bits=st.sampled_from([1, 128, 256, 512]))


@st.composite
def event(draw, types=EVENT_TYPES, vm_id: str = "vm-1") -> Event:
    t = draw(st.sampled_from(types))
    kw: dict = {"occurred_at": draw(times)}
    if t.startswith(("app.", "license.")):
        kw["app"] = draw(st.sampled_from(APPS))
    if t.startswith("volume."):
        kw["volume_id"] = draw(st.sampled_from(VOLUME_IDS + ["vvol-other"]))
    if t == "volume.attach_request":
        kw["password"] = draw(st.sampled_from([None, RIGHT, "wrong-pw"]))
    if t == "vm.migrate.start":
        kw["destination_host"] = draw(st.sampled_from(HOSTS))
    if t == "vm.migrate.complete":
        kw["source_host"] = draw(st.sampled_from(HOSTS))
    if t == "guest.inventory":
        kw["apps"] = tuple(draw(st.lists(software, max_size=4)))
    return Event(event_id="e-1", type=t, vm_id=vm_id, **kw)


def apply_effects(vols: list[VolumeView], event: Event, decisions, now: datetime) -> list[VolumeView]:
    """The state after the service carried the decisions out with the provider succeeding: a pending attach is
    attached, a pending detach detached, a create/attach leaves the volume existing, a grant adds the grantee,
    and every state update the decision carries (failed passwords, lock) is written. A done decision records
    the event's time (the service's last_event_at)."""
    by_id = {v.volume_id: v for v in vols}
    for d in decisions:
        v = by_id[d.volume_id]
        if d.outcome == "pending":
            if d.action in ("attach", "create"):
                v = replace(v, exists=True, attached=v.attached or d.action == "attach")
            elif d.action == "detach":
                v = replace(v, attached=False)
            elif d.action == "grant":
                v = replace(v, grants=v.grants + (event.destination_host,))
            v = replace(v, last_event_at=event.occurred_at or now)
        if d.failed_passwords is not None:
            v = replace(v, failed_passwords=d.failed_passwords)
            if d.failed_passwords == 0 and d.locked_until is None:
                v = replace(v, locked_until=None)
        if d.locked_until is not None:
            v = replace(v, locked_until=d.locked_until)
        by_id[d.volume_id] = v
    return [by_id[v.volume_id] for v in vols]


@FAST
@given(volumes(), event(types=["vm.shutdown"]))
def test_a_shutdown_leaves_nothing_attached(vols, ev):
    """Every attached volume gets a detach decision; carried out, nothing stays attached. The two exceptions
    the contract itself makes are kept visible: a stale shutdown is `skipped` (`stale`), and a volume another
    event is changing right now is `skipped` (`in_progress`)."""
    decisions = decide(ev, vols, NOW)
    by_volume = {d.volume_id: d for d in decisions}
    assert len(by_volume) == len(decisions)
    for v in vols:
        if v.attached:
            assert v.volume_id in by_volume and by_volume[v.volume_id].action == "detach", (v, decisions)
    after = apply_effects(vols, ev, decisions, NOW)
    left = {v.volume_id for v in after if v.attached}
    excused = {d.volume_id for d in decisions if d.outcome == "skipped" and d.reason in ("stale", "in_progress")}
    assert left <= excused, (left, decisions)
    stale = any(ev.occurred_at and v.last_event_at and ev.occurred_at < v.last_event_at for v in vols)
    busy = any(v.busy_until and v.busy_until > NOW for v in vols)
    if not stale and not busy:
        assert not left


@FAST
@given(st.data(), st.sampled_from(["vm-1", "vm-2"]), st.sampled_from(["host-1", "host-2"]))
def test_no_decision_touches_a_volume_it_was_not_given(data, vm_id, host_id):
    """The service passes decide() the VM's volumes of the sending host only; whatever the event (volume_id
    naming another VM's volume included), every decision is about one of those, at most one per volume."""
    universe: list[VolumeView] = []
    for i, (vm, host) in enumerate([("vm-1", "host-1"), ("vm-1", "host-2"), ("vm-2", "host-1"), ("vm-2", "host-2")]):
        n = data.draw(st.integers(0, 2), label=f"{vm}/{host}")
        universe += [data.draw(volume(f"vvol-{vm}-{host}-{k}", vm, host)) for k in range(n)]
    mine = [v for v in universe if v.vm_id == vm_id and v.host_id == host_id]
    ev = data.draw(event(vm_id=vm_id), label="event")
    if ev.volume_id and data.draw(st.booleans(), label="name a real volume"):
        ev = replace(ev, volume_id=data.draw(st.sampled_from([v.volume_id for v in universe] or ["vvol-x"])))
    decisions = decide(ev, mine, NOW)
    given_ids = {v.volume_id for v in mine}
    assert {d.volume_id for d in decisions} <= given_ids
    assert len({d.volume_id for d in decisions}) == len(decisions)
    assert all(d.action in ("create", "attach", "detach", "grant", "revoke", "select") for d in decisions)
    assert all(d.outcome in ("pending", "done", "skipped", "denied") for d in decisions)


@FAST
@given(volumes(), event(types=[t for t in EVENT_TYPES if t != "vm.migrate.complete"]))
def test_the_same_event_applied_twice_changes_nothing_the_second_time(vols, ev):
    """decide, carry the decisions out, decide again on the new state: the second time nothing needs the
    provider and no state changes. Narrower than the words, on purpose: a wrong password is counted per
    attempt (each `bad_password` is a new failure; a repeated *delivery* of one event is answered from the
    event table by event_id, which is the service's job, not decide's), and vm.migrate.complete's second time
    is answered `already_complete` by the service (decide has no notion of a grant already consumed)."""
    first = decide(ev, vols, NOW)
    if any(d.reason == "bad_password" for d in first):
        return
    after = apply_effects(vols, ev, first, NOW)
    second = decide(ev, after, NOW)
    assert not [d for d in second if d.needs_provider], (first, second)
    assert apply_effects(after, ev, second, NOW) == after, (first, second)


@FAST
@given(st.data(), volumes(max_size=4), event(types=DETACH_TYPES))
def test_a_detach_never_depends_on_a_password(data, vols, ev):
    """For every detaching event, the decisions are the same whatever the volumes' password, failed-password
    count and lock."""
    base = decide(ev, vols, NOW)
    varied = [replace(v, password_hash=data.draw(st.sampled_from([None, RIGHT_HASH, "scrypt$bogus"])),
                      failed_passwords=data.draw(st.integers(0, 10)),
                      locked_until=data.draw(st.sampled_from([None, NOW - timedelta(minutes=1), NOW + timedelta(minutes=15)])))
              for v in vols]
    assert decide(ev, varied, NOW) == base
