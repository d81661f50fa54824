"""Hostile bodies and headers straight through the POST /v1/events handler (issue 7, item 4).

Every case is correctly signed (so it reaches the parser) unless it is about the headers, goes through
``vvolguard.handlers.events.handler`` like API Gateway would deliver it (non-UTF-8 bodies base64-encoded, as
the gateway does), and asserts the status, the contract's error code and body, and that nothing was written
(tests/statecheck.py: policies and attachment state, grants, event records, hosts, the provider).
"""
from __future__ import annotations

import json

from tests.conftest import attached_volume_ids
from tests.statecheck import snapshot

MAX = 64 * 1024


def valid(event_id: str = "edge-1", **over) -> dict:
    return {"event_id": event_id, "type": "vm.preboot", "vm_id": "vm-1", **over}


def dumps(doc) -> bytes:
    return json.dumps(doc).encode()


def send(webhook, raw: bytes, headers: dict | None = None) -> tuple[int, dict]:
    """Signed over the exact bytes; bodies that are not UTF-8 travel base64-encoded, as the gateway sends them."""
    try:
        raw.decode("utf-8")
        b64 = False
    except UnicodeDecodeError:
        b64 = True
    return webhook.raw(raw, webhook.signed_headers(raw) if headers is None else headers, b64=b64)


class Unchanged:
    """Asserts that nothing was written since the last check (one snapshot per request, not two)."""

    def __init__(self) -> None:
        self.state = snapshot()

    def check(self, what) -> None:
        now = snapshot()
        assert now == self.state, what
        self.state = now


def refused(webhook, raw: bytes, status: int | set[int], code: str | set[str], headers: dict | None = None,
            unchanged: Unchanged | None = None) -> dict:
    """Send; expect the contract's error with ``status``/``code``; expect nothing written."""
    unchanged = unchanged or Unchanged()
    got, body = send(webhook, raw, headers)
    codes = {code} if isinstance(code, str) else code
    statuses = {status} if isinstance(status, int) else status
    assert got in statuses and body.get("error", {}).get("code") in codes, (raw[:200], got, body)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    unchanged.check(raw[:200])
    return body


def run_cases(webhook, subtests, cases) -> None:
    unchanged = Unchanged()
    for case in cases:
        name, raw, status, code = case[:4]
        headers = case[4] if len(case) > 4 else None
        with subtests.test(case=name):
            try:
                refused(webhook, raw, status, code, headers=headers, unchanged=unchanged)
            except BaseException:
                unchanged.state = snapshot()  # report this case; do not blame the next ones for its writes
                raise


# ---------------------------------------------------------------------------------------------- not an object


def test_empty_null_scalar_array_and_duplicate_key_bodies_are_refused(webhook, subtests):
    one = dumps(valid())
    run_cases(webhook, subtests, [
        ("empty", b"", 400, "invalid_json"),
        ("whitespace only", b" \n\t ", 400, "invalid_json"),
        ("null", b"null", 400, "invalid_event"),
        ("true", b"true", 400, "invalid_event"),
        ("number", b"1", 400, "invalid_event"),
        ("string", b'"vm.preboot"', 400, "invalid_event"),
        ("empty array", b"[]", 400, "invalid_event"),
        ("array of a valid event", b"[" + one + b"]", 400, "invalid_event"),
        ("two events in an array", b"[" + one + b"," + one + b"]", 400, "invalid_event"),
        ("empty object", b"{}", 400, "invalid_event"),
        ("two objects", one + one, 400, "invalid_json"),
        ("trailing garbage", one + b"x", 400, "invalid_json"),
        ("a NUL byte", b"\x00", 400, "invalid_json"),
    ])
    # Duplicate keys, whatever their values (strict JSON: RFC 8259's "names SHOULD be unique", I-JSON's MUST).
    run_cases(webhook, subtests, [
        ("vm_id twice, different", b'{"event_id":"edge-1","type":"vm.preboot","vm_id":"vm-1","vm_id":"vm-2"}',
         400, "invalid_json"),
        ("vm_id twice, same", b'{"event_id":"edge-1","type":"vm.preboot","vm_id":"vm-1","vm_id":"vm-1"}',
         400, "invalid_json"),
        ("type twice", b'{"event_id":"edge-1","type":"vm.booted","vm_id":"vm-1","type":"vm.preboot"}',
         400, "invalid_json"),
        ("event_id twice", b'{"event_id":"edge-1","event_id":"edge-2","type":"vm.preboot","vm_id":"vm-1"}',
         400, "invalid_json"),
        ("key spelled with an escape", b'{"event_id":"edge-1","type":"vm.preboot","vm_id":"vm-1","vm\\u005fid":"vm-2"}',
         400, "invalid_json"),
        ("inside apps[]", b'{"event_id":"edge-1","type":"guest.inventory","vm_id":"vm-1","apps":[{"name":"L",'
                          b'"type":"disk_encryption","key_bits":256,"key_bits":1}]}', 400, "invalid_json"),
    ])


# ---------------------------------------------------------------------------------------------- nesting


def nested(depth: int, open_: bytes = b"[", close: bytes = b"]") -> bytes:
    return open_ * depth + close * depth


def test_deeply_nested_json_is_refused_without_recursing(webhook, subtests):
    head = b'{"event_id": "edge-1", "type": "vm.preboot", "vm_id": "vm-1", "x": '
    run_cases(webhook, subtests, [
        ("33 arrays", nested(33), 400, "invalid_json"),
        ("30,000 arrays (under 64 KiB)", nested(30000), 400, "invalid_json"),
        ("objects 10,000 deep", b'{"a":' * 10000 + b"1" + b"}" * 10000, 400, "invalid_json"),
        ("deep inside a valid event", head + nested(40) + b"}", 400, "invalid_json"),
        ("unclosed nesting", b"[" * 50000, 400, "invalid_json"),
        ("nesting 31 deep in an unknown field (JSON, not an event)", head + nested(31) + b"}", 400,
         "invalid_event"),
    ])
    with subtests.test(case="brackets inside strings are text, not nesting"):
        brackets_inside_strings_are_parsed(webhook)


def brackets_inside_strings_are_parsed(webhook):
    """A 64-deep bracket run inside a JSON string is text, not nesting: the event is parsed (and answered)."""
    status, body = send(webhook, dumps(valid(occurred_at="[" * 64)))
    assert (status, body["error"]["code"]) == (400, "invalid_event") and "occurred_at" in body["error"]["message"]
    raw = dumps({"event_id": "edge-s", "type": "volume.attach_request", "vm_id": "vm-1", "volume_id": "vvol-1",
                 "password": "[{" * 64 + '\\"]' * 10})
    status, body = send(webhook, raw)
    assert status == 200 and body["decisions"][0]["reason"] == "not_a_request_volume", body


# ---------------------------------------------------------------------------------------------- numbers


def inventory(bits: bytes) -> bytes:
    return (b'{"event_id":"edge-1","type":"guest.inventory","vm_id":"vm-1","apps":[{"name":"LUKS",'
            b'"type":"disk_encryption","key_bits":' + bits + b"}]}")


def test_huge_and_special_numbers_are_refused(webhook, subtests):
    run_cases(webhook, subtests, [
        ("21 digits", inventory(b"1" + b"0" * 20), 400, "invalid_json"),
        ("5,000 digits (over Python's int limit)", inventory(b"9" * 5000), 400, "invalid_json"),
        ("60,000 digits", inventory(b"9" * 60000), 400, "invalid_json"),
        ("negative 30 digits", inventory(b"-" + b"9" * 30), 400, "invalid_json"),
        ("1e400 (infinity)", inventory(b"1e400"), 400, "invalid_json"),
        ("-1e400", inventory(b"-1e400"), 400, "invalid_json"),
        ("a 50-digit fraction", inventory(b"1." + b"0" * 48 + b"1"), 400, "invalid_json"),
        ("NaN", inventory(b"NaN"), 400, "invalid_json"),
        ("Infinity", inventory(b"Infinity"), 400, "invalid_json"),
        ("-Infinity", inventory(b"-Infinity"), 400, "invalid_json"),
        ("20 digits: parsed, out of range", inventory(b"9" * 20), 400, "invalid_event"),
        ("65537", inventory(b"65537"), 400, "invalid_event"),
        ("0", inventory(b"0"), 400, "invalid_event"),
        ("-1", inventory(b"-1"), 400, "invalid_event"),
        ("a fraction", inventory(b"256.5"), 400, "invalid_event"),
        ("1e308 (finite, not an integer)", inventory(b"1e308"), 400, "invalid_event"),
        ("true is not an integer", inventory(b"true"), 400, "invalid_event"),
        ("a string", inventory(b'"256"'), 400, "invalid_event"),
        ("a number as vm_id", b'{"event_id":"edge-1","type":"vm.preboot","vm_id":1}', 400, "invalid_event"),
        ("a huge number as vm_id", b'{"event_id":"edge-1","type":"vm.preboot","vm_id":' + b"1" * 400 + b"}",
         400, "invalid_json"),
    ])
    with subtests.test(case="65536, the largest key_bits, is accepted"):
        status, body = send(webhook, inventory(b"65536"))
        assert status == 200 and body["decisions"][0]["software"] == ["LUKS"], body


# ---------------------------------------------------------------------------------------------- encodings


def test_bodies_that_are_not_utf8_are_refused(webhook, aws, subtests):
    good = dumps(valid())
    run_cases(webhook, subtests, [
        ("0xff inside a string", good.replace(b"vm-1", b"vm-\xff"), 400, "invalid_json"),
        ("a truncated sequence", good.replace(b"vm-1", b"vm-\xc3"), 400, "invalid_json"),
        ("an overlong '/'", good.replace(b"vm-1", b"vm\xc0\xaf1"), 400, "invalid_json"),
        ("an encoded surrogate", good.replace(b"vm-1", b"vm-\xed\xa0\x80"), 400, "invalid_json"),
        ("above U+10FFFF", good.replace(b"vm-1", b"vm-\xf4\x90\x80\x80"), 400, "invalid_json"),
        ("Latin-1", json.dumps(valid(vm_id="vm-\u00e9"), ensure_ascii=False).encode("latin-1"), 400, "invalid_json"),
        ("UTF-16 with BOM", good.decode().encode("utf-16"), 400, "invalid_json"),
        ("UTF-16-LE (NULs)", good.decode().encode("utf-16-le"), 400, "invalid_json"),
        ("UTF-8 BOM", b"\xef\xbb\xbf" + good, 400, "invalid_json"),
        ("an escaped lone surrogate in an id", good.replace(b'"vm-1"', b'"vm-1\\ud800"'), 400, "invalid_event"),
    ])
    with subtests.test(case="an escaped lone surrogate as password"):
        lone_surrogate_password_is_answered(webhook, aws)


def lone_surrogate_password_is_answered(webhook, aws):
    """JSON may escape a lone surrogate; it is a 1-character password that can never match (no 500)."""
    from tests.test_webhook_contract import add_policies

    add_policies(aws, 'volumes:\n  - {volume_id: vvol-r, vm_id: vm-1, host_id: host-1, storage_array: S1, '
                      'size_mb: 10, attach_on: request, detach_on: request, password: "s3cret"}\n')
    raw = b'{"event_id":"edge-sur","type":"volume.attach_request","vm_id":"vm-1","volume_id":"vvol-r",' \
          b'"password":"\\ud800"}'
    status, body = send(webhook, raw)
    assert status == 200 and body["decisions"][0]["reason"] == "bad_password", body
    assert attached_volume_ids() == set()


# ---------------------------------------------------------------------------------------------- the 64 KiB limit


def padded(size: int, doc: dict | None = None, filler: bytes = b" ") -> bytes:
    raw = dumps(doc or valid("edge-big"))
    return raw + filler * (size - len(raw))


def test_64_kib_is_accepted_and_one_byte_more_is_refused_413(webhook, subtests):
    multibyte = dumps(valid("edge-mb"))[:-1] + b', "x": "' + "\u00e9".encode() * 40000 + b'"}'
    run_cases(webhook, subtests, [
        ("64 KiB + 1 of whitespace", padded(MAX + 1), 413, "payload_too_large"),
        ("64 KiB + 1 of newlines", padded(MAX + 1, filler=b"\n"), 413, "payload_too_large"),
        ("1 MiB", padded(1024 * 1024), 413, "payload_too_large"),
        ("64 KiB of characters but more bytes (UTF-8 counts bytes)", multibyte, 413, "payload_too_large"),
        # Over the limit: refused before anything is read from the tables, signed or not (401 or 413 both keep
        # the contract; the handler says 413).
        ("64 KiB + 1, unsigned", padded(MAX + 1), {401, 413}, {"missing_signature", "payload_too_large"},
         {"content-type": "application/json"}),
    ])
    with subtests.test(case="exactly 64 KiB is accepted"):
        raw = padded(MAX)
        assert len(raw) == MAX
        status, body = send(webhook, raw)
        assert status == 200 and body["decisions"][0]["outcome"] == "done", body
        assert attached_volume_ids() == {"vvol-1"}


# ---------------------------------------------------------------------------------------------- header injection


def test_cr_lf_in_ids_and_signature_headers_is_refused(webhook, subtests):
    cases = []
    for field in ("vm_id", "event_id"):
        for suffix in ["\r\nX-Injected: 1", "\n", "\r", "\r\n\r\n{}", "%0d%0aX-Injected:%201", "\u2028", "\u0085"]:
            doc = valid(**{field: (valid()[field]) + suffix})
            cases.append((f"{field} + {suffix!r}", dumps(doc), 400, "invalid_event"))
    run_cases(webhook, subtests, cases + [
        ("volume_id", dumps({"event_id": "edge-1", "type": "volume.detach_request", "vm_id": "vm-1",
                             "volume_id": "vvol-1\r\nX: 1"}), 400, "invalid_event"),
        ("app", dumps({"event_id": "edge-1", "type": "app.started", "vm_id": "vm-4", "app": "A1\n"}),
         400, "invalid_event"),
        ("destination_host", dumps({"event_id": "edge-1", "type": "vm.migrate.start", "vm_id": "vm-1",
                                    "destination_host": "host-2\r\nX: 1"}), 400, "invalid_event"),
        ("apps[].name", dumps({"event_id": "edge-1", "type": "guest.inventory", "vm_id": "vm-1",
                               "apps": [{"name": "L\r\nX: 1", "type": "disk_encryption", "key_bits": 256}]}),
         400, "invalid_event"),
    ])
    raw = dumps(valid())
    good = webhook.signed_headers(raw)
    run_cases(webhook, subtests, [
        ("host + injected header", raw, 401, "unknown_host", {**good, "x-vvg-host": "host-1\r\nX-Injected: 1"}),
        ("host + LF", raw, 401, "unknown_host", {**good, "x-vvg-host": "host-1\n"}),
        ("signature + injected t", raw, 401, "bad_signature",
         {**good, "x-vvg-signature": "t=1\r\n" + good["x-vvg-signature"]}),
        ("signature with a CR inside", raw, 401, "bad_signature",
         {**good, "x-vvg-signature": good["x-vvg-signature"].replace(",", "\r,")}),
    ])


# ---------------------------------------------------------------------------------------------- look-alikes


LOOKALIKE_IDS = {
    "Cyrillic \u043c for m": "v\u043c-1",
    "Cyrillic \u0475 for v": "\u0475m-1",
    "fullwidth digit": "vm-\uff11",
    "Arabic-Indic digit": "vm-\u0661",
    "hyphen U+2010": "vm\u20101",
    "en dash": "vm\u20131",
    "zero-width space": "vm-1\u200b",
    "no-break space": "vm-1\u00a0",
    "BOM inside": "\ufeffvm-1",
    "combining dot": "vm-1\u0307",
    "mathematical v": "\U0001d42fm-1",
    "Kelvin sign for K": "\u212a1",
}


def test_unicode_look_alikes_in_ids_and_host_headers_are_refused_not_folded(webhook, subtests):
    cases = []
    for name, vm_id in LOOKALIKE_IDS.items():
        cases.append((f"vm_id {name}", dumps(valid(vm_id=vm_id)), 400, "invalid_event"))
        cases.append((f"vm_id {name} (raw UTF-8)", json.dumps(valid(vm_id=vm_id), ensure_ascii=False).encode(),
                      400, "invalid_event"))
    cases += [
        ("volume_id Cyrillic \u043e", dumps({"event_id": "edge-1", "type": "volume.detach_request", "vm_id": "vm-1",
                                              "volume_id": "vv\u043el-1"}), 400, "invalid_event"),
        ("event_id fullwidth colon", dumps(valid(event_id="edge\uff1a1")), 400, "invalid_event"),
        ("type with a Cyrillic \u0435", dumps(valid(type="vm.pr\u0435boot")), 400, "invalid_event"),
        ("type upper case", dumps(valid(type="VM.PREBOOT")), 400, "invalid_event"),
        ("key with a Cyrillic \u0435", b'{"\xd0\xb5vent_id":"edge-1","type":"vm.preboot","vm_id":"vm-1"}', 400,
         "invalid_event"),
    ]
    raw = dumps(valid())
    run_cases(webhook, subtests, cases + [
        (name, raw, 401, "unknown_host", {**webhook.signed_headers(raw), "x-vvg-host": host})
        for name, host in [("Cyrillic \u04bb", "\u04bbost-1"), ("fullwidth", "host\uff0d1"),
                           ("trailing ZWSP", "host-1\u200b"), ("upper case", "HOST-1"), ("trailing dot", "host-1.")]])
    with subtests.test(case="an id written with JSON escapes is the same id"):
        # ``"\\u0076\\u006d-\\u0031"`` is the JSON string "vm-1": not a look-alike, the same VM.
        escaped_id_is_the_same_id(webhook)


def escaped_id_is_the_same_id(webhook):
    raw = b'{"event_id":"edge-esc","type":"vm.preboot","vm_id":"\\u0076\\u006d-\\u0031"}'
    status, body = send(webhook, raw)
    assert status == 200 and [d["volume_id"] for d in body["decisions"]] == ["vvol-1"], body
    assert attached_volume_ids() == {"vvol-1"}
