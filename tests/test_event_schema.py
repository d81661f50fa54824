"""The webhook body (docs/webhook-api.md): pure tests of the strict event schema and the strict JSON reader.

No AWS, no I/O: ``parse_event(bytes) -> Event`` and ``loads(bytes)`` only. Every refusal must be an
``InvalidJson`` (code ``invalid_json``: not JSON) or an ``InvalidEvent`` (code ``invalid_event``: not an
object, or a missing, unknown or malformed field), and no refusal may echo the password it was given.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from vvolguard.domain.events import Event, Software, loads, parse_event
from vvolguard.errors import InvalidEvent, InvalidJson

UTC = timezone.utc
PASSWORD = "hunter2-S3cr3t!pw"

# The contract's table, written out independently of the product: type -> its own required fields.
TYPE_FIELDS: dict[str, dict[str, object]] = {
    "vm.created": {},
    "vm.preboot": {},
    "vm.booted": {},
    "vm.shutdown": {},
    "app.started": {"app": "A1"},
    "app.stopped": {"app": "A1"},
    "license.check": {"app": "A1"},
    "license.verified": {"app": "A1"},
    "volume.attach_request": {"volume_id": "vvol-1"},
    "volume.detach_request": {"volume_id": "vvol-1"},
    "vm.migrate.start": {"destination_host": "host-2"},
    "vm.migrate.complete": {"source_host": "host-1"},
    "guest.inventory": {"apps": []},
    "vm.heartbeat": {},
}
TYPES = list(TYPE_FIELDS)
# type -> optional fields beyond occurred_at
OPTIONAL: dict[str, set[str]] = {t: set() for t in TYPES}
OPTIONAL["volume.attach_request"] = {"password"}
# A valid value for every type-specific field, to put in the wrong place.
FIELD_VALUES: dict[str, object] = {
    "app": "A1",
    "volume_id": "vvol-1",
    "password": PASSWORD,
    "destination_host": "host-2",
    "source_host": "host-1",
    "apps": [{"name": "LUKS", "type": "disk_encryption", "key_bits": 512}],
}


def body(etype: str = "vm.preboot", **over) -> dict:
    """A valid minimal body of ``etype``; keyword None deletes a key, anything else sets it."""
    doc: dict = {"event_id": "e-1", "type": etype, "vm_id": "vm-1", **TYPE_FIELDS[etype]}
    for k, v in over.items():
        if v is None:
            doc.pop(k, None)
        else:
            doc[k] = v
    return doc


def raw(doc) -> bytes:
    return json.dumps(doc).encode("utf-8")


def refused(data: bytes, error=InvalidEvent) -> InvalidEvent | InvalidJson:
    """Parse ``data`` expecting the given refusal; check its contract code and status."""
    with pytest.raises(error) as info:
        parse_event(data)
    exc = info.value
    assert exc.code == ("invalid_event" if error is InvalidEvent else "invalid_json")
    assert exc.status_code == 400
    assert exc.body() == {"error": {"code": exc.code, "message": exc.message}}
    return exc


def assert_no_password(exc: Exception, password: str = PASSWORD) -> None:
    assert password not in str(exc)
    assert password not in getattr(exc, "message", "")
    assert password not in repr(exc)


# ---------------------------------------------------------------- valid bodies


@pytest.mark.parametrize("etype", TYPES)
def test_a_minimal_body_of_every_type_parses(etype):
    event = parse_event(raw(body(etype)))
    assert isinstance(event, Event)
    assert (event.event_id, event.type, event.vm_id) == ("e-1", etype, "vm-1")
    assert event.occurred_at is None
    assert event.password is None


def test_the_type_specific_fields_are_carried_into_the_event():
    assert parse_event(raw(body("app.started"))).app == "A1"
    assert parse_event(raw(body("license.verified"))).app == "A1"
    assert parse_event(raw(body("volume.detach_request"))).volume_id == "vvol-1"
    assert parse_event(raw(body("vm.migrate.start"))).destination_host == "host-2"
    assert parse_event(raw(body("vm.migrate.complete"))).source_host == "host-1"
    event = parse_event(raw(body("volume.attach_request", password=PASSWORD)))
    assert (event.volume_id, event.password) == ("vvol-1", PASSWORD)


def test_the_password_never_shows_in_the_events_repr():
    event = parse_event(raw(body("volume.attach_request", password=PASSWORD)))
    assert PASSWORD not in repr(event)


def test_a_guest_inventory_is_parsed_into_software_in_the_order_given():
    apps = [{"name": "BitLocker", "type": "disk_encryption", "key_bits": 256},
            {"name": "ClamAV", "type": "antivirus", "key_bits": 1}]
    event = parse_event(raw(body("guest.inventory", apps=apps)))
    assert event.apps == (Software("BitLocker", "disk_encryption", 256), Software("ClamAV", "antivirus", 1))


@pytest.mark.parametrize("etype", TYPES)
def test_occurred_at_is_allowed_on_every_type(etype):
    event = parse_event(raw(body(etype, occurred_at="2026-11-27T05:00:00Z")))
    assert event.occurred_at == datetime(2026, 11, 27, 5, 0, tzinfo=UTC)


# ---------------------------------------------------------------- missing / misplaced / unknown fields


@pytest.mark.parametrize("etype,field", [(t, f) for t in TYPES for f in ("event_id", "type", "vm_id", *TYPE_FIELDS[t])])
def test_each_missing_required_field_is_refused(etype, field):
    exc = refused(raw(body(etype, **{field: None})))
    assert field in exc.message


@pytest.mark.parametrize("etype,field", [(t, f) for t in TYPES for f in FIELD_VALUES
                                         if f not in TYPE_FIELDS[t] and f not in OPTIONAL[t]])
def test_each_field_not_allowed_for_the_type_is_refused(etype, field):
    exc = refused(raw(body(etype, **{field: FIELD_VALUES[field]})))
    assert field in exc.message
    assert_no_password(exc)


def test_a_password_on_vm_preboot_is_refused_without_echoing_it():
    exc = refused(raw(body("vm.preboot", password=PASSWORD)))
    assert "password" in exc.message
    assert_no_password(exc)


def test_an_app_on_vm_created_is_refused():
    exc = refused(raw(body("vm.created", app="A1")))
    assert "app" in exc.message


@pytest.mark.parametrize("etype", TYPES)
@pytest.mark.parametrize("field", ["extra", "host_id", "Event_ID", "occurredAt", ""])
def test_an_unknown_field_is_refused(etype, field):
    refused(raw(body(etype, **{field: "x"})))


@pytest.mark.parametrize("etype", ["vm.preboot", "VM.PREBOOT", "vm.unknown", "vm", "", 1, True, ["vm.preboot"], {}])
def test_an_unknown_or_malformed_type_is_refused(etype):
    doc = body("vm.preboot")
    doc["type"] = etype
    if etype == "vm.preboot":
        parse_event(raw(doc))  # the control: the well-formed one parses
    else:
        refused(raw(doc))


def test_a_null_type_is_refused():
    doc = body("vm.preboot")
    doc["type"] = None
    refused(raw(doc))


# ---------------------------------------------------------------- ids


@pytest.mark.parametrize("event_id", ["e", "x" * 128, "2026-11-27T05:00:00Z:host-1.e_1", "A.b_c:d-9"])
def test_a_well_formed_event_id_is_accepted(event_id):
    assert parse_event(raw(body(event_id=event_id))).event_id == event_id


@pytest.mark.parametrize("event_id", [
    "",
    "x" * 129,
    "e\r\nX: y",            # header injection
    "\u0435-1",             # Cyrillic е, a look-alike of the Latin e
    "e 1", "e/1", "e;1", "e*", "e\t1", "e\x001", "e-1\u200b",
    42, 1.5, True, ["e-1"], {"id": "e-1"},
])
def test_a_malformed_event_id_is_refused(event_id):
    exc = refused(raw(body(event_id=event_id)))
    assert "event_id" in exc.message


def test_a_null_event_id_is_refused():
    doc = body()
    doc["event_id"] = None
    refused(raw(doc))


def test_an_event_id_with_a_trailing_newline_is_refused():
    refused(raw(body(event_id="e-1\n")))


@pytest.mark.parametrize("vm_id", ["v", "vm-1", "VM_1.a-b", "x" * 64])
def test_a_well_formed_vm_id_is_accepted(vm_id):
    assert parse_event(raw(body(vm_id=vm_id))).vm_id == vm_id


@pytest.mark.parametrize("vm_id", [
    "", "x" * 65, "vm 1", "vm/1", "vm:1", "vm\r\n1", "\u0435-1", "vm-１", 1, False, ["vm-1"],
])
def test_a_malformed_vm_id_is_refused(vm_id):
    exc = refused(raw(body(vm_id=vm_id)))
    assert "vm_id" in exc.message


def test_a_vm_id_with_a_trailing_newline_is_refused():
    refused(raw(body(vm_id="vm-1\n")))


@pytest.mark.parametrize("etype,field", [("app.started", "app"), ("license.check", "app"),
                                         ("volume.attach_request", "volume_id"),
                                         ("volume.detach_request", "volume_id"),
                                         ("vm.migrate.start", "destination_host"),
                                         ("vm.migrate.complete", "source_host")])
@pytest.mark.parametrize("value", ["", "x" * 65, "a b", "a/b", "\u0435", 7, None, ["A1"]])
def test_a_malformed_id_in_a_type_specific_field_is_refused(etype, field, value):
    doc = body(etype)
    doc[field] = value
    exc = refused(raw(doc))
    assert field in exc.message


# ---------------------------------------------------------------- occurred_at


@pytest.mark.parametrize("text,expected", [
    ("2026-11-27T05:00:00Z", datetime(2026, 11, 27, 5, 0, tzinfo=UTC)),
    ("2026-11-27T06:30:00+01:30", datetime(2026, 11, 27, 5, 0, tzinfo=UTC)),
    ("2026-11-27T00:00:00-05:00", datetime(2026, 11, 27, 5, 0, tzinfo=UTC)),
    ("2026-11-27T05:00:00+00:00", datetime(2026, 11, 27, 5, 0, tzinfo=UTC)),
    ("2026-11-27t05:00:00z", datetime(2026, 11, 27, 5, 0, tzinfo=UTC)),
    ("2026-11-27T05:00:00.5Z", datetime(2026, 11, 27, 5, 0, 0, 500000, tzinfo=UTC)),
    ("2026-11-27T05:00:00.123456Z", datetime(2026, 11, 27, 5, 0, 0, 123456, tzinfo=UTC)),
    ("2026-11-27T05:00:00.123456789Z", datetime(2026, 11, 27, 5, 0, 0, 123456, tzinfo=UTC)),
    ("2026-11-27T07:00:00.25+02:00", datetime(2026, 11, 27, 5, 0, 0, 250000, tzinfo=UTC)),
])
def test_a_valid_occurred_at_becomes_the_same_instant_in_utc(text, expected):
    got = parse_event(raw(body(occurred_at=text))).occurred_at
    assert got == expected
    assert got.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", [
    "", "now", "2026-11-27", "05:00:00Z",
    "2026-11-27T05:00:00",          # no offset
    "2026-11-27T05:00Z",            # no seconds
    "2026-11-27T05:00:00+0100",     # offset without a colon
    "2026-11-27T05:00:00 Z",
    "27/11/2026 05:00:00Z",
    "2026-13-01T00:00:00Z",          # month 13
    "2026-02-30T00:00:00Z",          # no such day
    "2026-11-27T25:00:00Z",          # hour 25
    "2026-11-27T05:61:00Z",
    "2026-11-27T05:00:00.Z",         # empty fraction
    "2026-11-27T05:00:00Z\n",
    " 2026-11-27T05:00:00Z",
    "\u0662\u0660\u0662\u0666-11-27T05:00:00Z",  # Arabic-Indic digits
    "\uff12\uff10\uff12\uff16-11-27T05:00:00Z",  # full-width digits
    1764219600, 1764219600.5, True, ["2026-11-27T05:00:00Z"], {},
])
def test_a_malformed_occurred_at_is_refused(text):
    exc = refused(raw(body(occurred_at=text)))
    assert "occurred_at" in exc.message


def test_a_null_occurred_at_is_refused():
    doc = body()
    doc["occurred_at"] = None
    refused(raw(doc))


# ---------------------------------------------------------------- apps (guest.inventory)


def app(**over) -> dict:
    a = {"name": "LUKS", "type": "disk_encryption", "key_bits": 512}
    a.update(over)
    return a


@pytest.mark.parametrize("apps", [[app()] * 64, [app(key_bits=1)], [app(key_bits=65536)], [app(key_bits=256.0)], []])
def test_a_well_formed_apps_list_is_accepted(apps):
    event = parse_event(raw(body("guest.inventory", apps=apps)))
    assert len(event.apps) == len(apps)


@pytest.mark.parametrize("apps", [
    "LUKS", {"name": "LUKS"}, 1, True,
    [app()] * 65,                                               # over 64 items
    [{"name": "LUKS", "type": "disk_encryption"}],              # missing key_bits
    [{"type": "disk_encryption", "key_bits": 256}],             # missing name
    [{"name": "LUKS", "key_bits": 256}],                        # missing type
    [app(vendor="x")],                                          # extra key
    ["LUKS"], [None], [[]], [app(), 5],
    [app(key_bits=True)], [app(key_bits=False)], [app(key_bits=0)], [app(key_bits=-1)],
    [app(key_bits=65537)], [app(key_bits="256")], [app(key_bits=256.5)], [app(key_bits=None)],
    [app(name="")], [app(name="a b")], [app(name="x" * 65)], [app(name=1)],
    [app(type="")], [app(type="disk encryption")], [app(type=None)],
])
def test_a_malformed_apps_list_is_refused(apps):
    exc = refused(raw(body("guest.inventory", apps=apps)))
    assert "apps" in exc.message


def test_a_null_apps_list_is_refused():
    doc = body("guest.inventory")
    doc["apps"] = None
    refused(raw(doc))


# ---------------------------------------------------------------- password (volume.attach_request)


@pytest.mark.parametrize("password", ["x", "x" * 256, "pä$$ wörd \u00e9", "[{\"}]"])
def test_a_password_of_1_to_256_characters_is_accepted(password):
    assert parse_event(raw(body("volume.attach_request", password=password))).password == password


@pytest.mark.parametrize("password", ["", PASSWORD + "x" * (257 - len(PASSWORD)), PASSWORD * 20])
def test_an_empty_or_too_long_password_is_refused_without_echoing_it(password):
    exc = refused(raw(body("volume.attach_request", password=password)))
    assert "password" in exc.message
    if password:
        assert_no_password(exc, password)
        assert_no_password(exc, PASSWORD)


@pytest.mark.parametrize("password", [12345, True, [PASSWORD], {"pw": PASSWORD}])
def test_a_password_that_is_not_a_string_is_refused_without_echoing_it(password):
    exc = refused(raw(body("volume.attach_request", password=password)))
    assert_no_password(exc)
    assert "12345" not in exc.message


def test_a_null_password_is_refused():
    doc = body("volume.attach_request")
    doc["password"] = None
    refused(raw(doc))


@pytest.mark.parametrize("over", [{"vm_id": "bad id"}, {"event_id": "bad id"}, {"occurred_at": "yesterday"},
                                  {"volume_id": ""}, {"extra": 1}, {"type": "vm.preboot"}])
def test_no_refusal_of_a_body_carrying_a_password_echoes_it(over):
    doc = body("volume.attach_request", password=PASSWORD)
    doc.update(over)
    assert_no_password(refused(raw(doc)))


@pytest.mark.parametrize("tail", [b"", b"}}", b',"a":', b"x"])
def test_a_broken_json_body_carrying_a_password_is_refused_without_echoing_it(tail):
    data = raw(body("volume.attach_request", password=PASSWORD))[:-1] + tail
    assert_no_password(refused(data, InvalidJson))


def test_a_password_made_of_brackets_is_accepted():
    password = "[" * 40
    assert parse_event(raw(body("volume.attach_request", password=password))).password == password


# ---------------------------------------------------------------- strict JSON (loads)


@pytest.mark.parametrize("data", [
    b"\xff",
    b'{"event_id": "e-\xff", "type": "vm.preboot", "vm_id": "vm-1"}',   # invalid UTF-8
    b'{"event_id": "e-1", "type": "vm.preboot", "vm_id": "\xed\xa0\x80"}',  # UTF-8-encoded surrogate
    b"\xfe\xff\x00{\x00}",                                                 # UTF-16
])
def test_a_body_that_is_not_utf8_is_invalid_json(data):
    refused(data, InvalidJson)


@pytest.mark.parametrize("data", [
    b'{"event_id": "e-1", "type": "vm.preboot", "vm_id": "vm-1", "vm_id": "vm-2"}',
    b'{"event_id": "e-1", "type": "vm.preboot", "vm_id": "vm-1", "event_id": "e-1"}',
    b'{"event_id": "e-1", "type": "guest.inventory", "vm_id": "vm-1", "apps": '
    b'[{"name": "a", "type": "disk_encryption", "key_bits": 1, "key_bits": 2}]}',
])
def test_duplicate_keys_are_invalid_json(data):
    refused(data, InvalidJson)


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999",
                                    b"123456789012345678901234567890", b"-123456789012345678901234567890"])
def test_non_finite_and_huge_numbers_are_invalid_json(number):
    refused(b'{"event_id": "e-1", "type": "vm.preboot", "vm_id": "vm-1", "x": ' + number + b"}", InvalidJson)
    refused(number, InvalidJson)
    with pytest.raises(InvalidJson):
        loads(b"[" + number + b"]")


@pytest.mark.parametrize("data", [b"", b" ", b"{", b"{'event_id': 'e-1'}", b'{"a": 1,}', b"{} {}", b"{}x",
                                  b'{"a": tru}', b'{"a": "\\x41"}'])
def test_text_that_is_not_json_is_invalid_json(data):
    refused(data, InvalidJson)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_nesting_32_deep_is_json():
    assert loads(nested(32)) is not None
    doc = body("guest.inventory")
    data = raw(doc)[:-1] + b', "x": ' + nested(31) + b"}"  # 1 (object) + 31 = 32 levels
    assert json.loads(data)  # well-formed; refused only because x is an unknown field
    refused(data, InvalidEvent)


@pytest.mark.parametrize("opener,closer", [(b"[", b"]"), (b'{"a":', b"}")])
def test_nesting_33_deep_is_invalid_json(opener, closer):
    with pytest.raises(InvalidJson) as info:
        loads(opener * 33 + b"1" + closer * 33)
    assert info.value.code == "invalid_json"
    refused(nested(33), InvalidJson)
    refused(nested(5000), InvalidJson)  # no RecursionError escapes


def test_deeply_nested_body_with_a_valid_event_is_invalid_json():
    data = raw(body())[:-1] + b', "x": ' + nested(32) + b"}"  # 1 + 32 = 33 levels
    refused(data, InvalidJson)


def test_closing_brackets_inside_a_string_do_not_lift_the_nesting_limit():
    with pytest.raises(InvalidJson):
        loads(b'["' + b"]" * 40 + b'", ' + nested(60) + b"]")


@pytest.mark.parametrize("data", [b"null", b"[]", b'[{"event_id": "e-1", "type": "vm.preboot", "vm_id": "vm-1"}]',
                                  b'"vm.preboot"', b"1", b"true", b"false", b"1.5"])
def test_json_that_is_not_an_object_is_an_invalid_event(data):
    refused(data, InvalidEvent)


def test_loads_returns_plain_json_values():
    assert loads(b'{"a": [1, 2.5, "x", true, null], "b": {}}') == {"a": [1, 2.5, "x", True, None], "b": {}}
    assert loads(b"null") is None
    assert loads(b"12345678901234567890") == 12345678901234567890
