"""The policy file (docs/policy-file.md): pure tests of the validator, no AWS."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from vvolguard.domain.policy import (
    MAX_FILE_BYTES,
    MAX_KEY_BITS,
    MAX_PASSWORD_LEN,
    PolicySpec,
    dump_policy_file,
    parse_policy_text,
    validate_document,
)
from vvolguard.errors import PolicyValidationError

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "infra" / "demo-policies.yaml"


_DELETE = object()


def entry(n: int = 1, **over) -> dict:
    """A valid entry vvol-N on vm-N; keyword None deletes a key, anything else sets it."""
    e = {"volume_id": f"vvol-{n}", "vm_id": f"vm-{n}", "host_id": "host-1", "storage_array": "S1",
         "size_mb": 10, "attach_on": "preboot", "detach_on": "postboot"}
    for k, v in over.items():
        if v is _DELETE:
            e.pop(k, None)
        else:
            e[k] = v
    return e


def doc_with_bad_third(**over) -> dict:
    """Two good entries and, at index 2, vvol-3 with ``over`` applied."""
    return {"volumes": [entry(1), entry(2), entry(3, **over)]}


def errors_of(doc) -> list[str]:
    with pytest.raises(PolicyValidationError) as exc:
        validate_document(doc)
    return exc.value.errors


def parse_errors(data: bytes, name: str = "policy file") -> list[str]:
    with pytest.raises(PolicyValidationError) as exc:
        parse_policy_text(data, name)
    return exc.value.errors


def only_error(doc) -> str:
    errs = errors_of(doc)
    assert len(errs) == 1, errs
    return errs[0]


# ---------------------------------------------------------------- valid files


FULL_YAML = b"""\
volumes:
  - volume_id: vvol-1
    vm_id: vm-1
    host_id: host-1
    storage_array: S1
    size_mb: 10
    attach_on: app_start
    detach_on: app_stop
    app: A1
    authorized_apps: [A1, A1.helper]
    os_disk_encryption: true
    password: "s3cret"
    max_attach_seconds: 600
    min_key_bits: 256
  - volume_id: vvol-2
    vm_id: vm-2
    host_id: host-2
    storage_array: S2
    size_mb: 1048576
    attach_on: request
    detach_on: request
"""


def test_full_example__parses_to_the_right_values():
    specs = parse_policy_text(FULL_YAML)
    assert [s.volume_id for s in specs] == ["vvol-1", "vvol-2"]
    assert all(isinstance(s, PolicySpec) for s in specs)
    s = specs[0]
    assert (s.vm_id, s.host_id, s.storage_array, s.size_mb) == ("vm-1", "host-1", "S1", 10)
    assert (s.attach_on, s.detach_on, s.app) == ("app_start", "app_stop", "A1")
    assert s.authorized_apps == ("A1", "A1.helper")
    assert s.os_disk_encryption is True
    assert s.max_attach_seconds == 600
    assert s.min_key_bits == 256
    assert s.password_given and s.password == "s3cret"


def test_optional_keys_absent__take_the_contract_defaults():
    s = parse_policy_text(FULL_YAML)[1]
    assert s.size_mb == 1048576
    assert s.max_attach_seconds == 900
    assert s.os_disk_encryption is False
    assert s.app is None and s.authorized_apps == () and s.min_key_bits is None
    assert not s.password_given  # absent password: keep the stored one


def test_password_null__means_remove():
    s = validate_document({"volumes": [entry(password=None)]})[0]
    assert s.password_given and s.password is None


def test_password__is_not_in_the_spec_repr_nor_the_file_entry():
    s = parse_policy_text(FULL_YAML)[0]
    assert "s3cret" not in repr(s)
    assert "password" not in s.to_file_entry()
    assert "s3cret" not in dump_policy_file([s])


def test_json_file__parses_like_the_same_yaml():
    as_json = json.dumps(yaml.safe_load(FULL_YAML)).encode()
    assert parse_policy_text(as_json, "p.json") == parse_policy_text(FULL_YAML, "p.yaml")
    assert parse_policy_text(as_json) == parse_policy_text(FULL_YAML)


def test_empty_volume_list__is_valid():
    assert parse_policy_text(b"volumes: []\n") == []


@pytest.mark.parametrize("attach_on,detach_on,app", [
    ("preboot", "postboot", None), ("preboot", "shutdown", None), ("request", "request", None),
    ("preboot", "request", None), ("request", "shutdown", None),
    ("app_start", "app_stop", "A1"), ("app_start", "shutdown", "A1"), ("app_start", "request", "A1"),
    ("license_check", "license_verified", "L1"), ("license_check", "shutdown", "L1"),
])
def test_valid_trigger_combinations__are_accepted(attach_on, detach_on, app):
    over = {"attach_on": attach_on, "detach_on": detach_on}
    if app:
        over["app"] = app
    s = validate_document({"volumes": [entry(**over)]})[0]
    assert (s.attach_on, s.detach_on, s.app) == (attach_on, detach_on, app)


@pytest.mark.parametrize("field,value", [
    ("size_mb", 1), ("size_mb", 1048576),
    ("max_attach_seconds", 1), ("max_attach_seconds", 86400),
    ("min_key_bits", 1), ("min_key_bits", 256), ("min_key_bits", MAX_KEY_BITS),
    ("volume_id", "A" * 64), ("vm_id", "a.b_c-9"), ("host_id", "H" * 64), ("storage_array", "array.01"),
    ("password", "x"), ("password", "p" * MAX_PASSWORD_LEN),
])
def test_boundary_values__are_accepted(field, value):
    s = validate_document({"volumes": [entry(**{field: value})]})[0]
    assert getattr(s, field) == value


def test_dump_then_parse__round_trips():
    specs = parse_policy_text(FULL_YAML)
    again = parse_policy_text(dump_policy_file(specs).encode())
    assert again == specs
    assert not any(s.password_given for s in again)


def test_demo_file__is_table_1():
    specs = parse_policy_text(DEMO.read_bytes(), DEMO.name)
    assert len(specs) == 5
    by_vm = {s.vm_id: s for s in specs}
    assert sorted(by_vm) == ["vm-1", "vm-2", "vm-3", "vm-4", "vm-5"]
    assert [by_vm[f"vm-{i}"].size_mb for i in range(1, 6)] == [10, 100, 10, 10, 10]
    assert {s.storage_array for s in specs} == {"S1"}
    assert len({s.host_id for s in specs}) == 1  # all on the demo host
    want = {
        "vm-1": ("preboot", "postboot", None, True),
        "vm-2": ("preboot", "shutdown", None, True),
        "vm-3": ("preboot", "postboot", None, True),
        "vm-4": ("app_start", "app_stop", "A1", False),
        "vm-5": ("app_start", "app_stop", "A2", False),
    }
    for vm, (a, d, app, ode) in want.items():
        s = by_vm[vm]
        assert (s.attach_on, s.detach_on, s.app, s.os_disk_encryption) == (a, d, app, ode), vm
    assert len({s.volume_id for s in specs}) == 5


# ---------------------------------------------------------------- entry rules


@pytest.mark.parametrize("key", ["volume_id", "vm_id", "host_id", "storage_array", "size_mb", "attach_on", "detach_on"])
@pytest.mark.parametrize("how", ["absent", "null"])
def test_required_key_missing__is_refused_naming_entry_and_field(key, how):
    msg = only_error(doc_with_bad_third(**{key: _DELETE if how == "absent" else None}))
    where = "volumes[2]" if key == "volume_id" else "volumes[2] (vvol-3)"
    assert msg.startswith(f"{where}: {key}: ")
    assert "required" in msg


def test_unknown_key__is_refused_naming_entry_and_key():
    msg = only_error(doc_with_bad_third(colour="red"))
    assert msg.startswith("volumes[2] (vvol-3): colour: ")
    assert "unknown key" in msg


def test_misspelled_key__is_refused_not_ignored():
    msg = only_error(doc_with_bad_third(max_attach_second=60))
    assert msg.startswith("volumes[2] (vvol-3): max_attach_second: ") and "unknown key" in msg


@pytest.mark.parametrize("field", ["volume_id", "vm_id", "host_id", "storage_array"])
@pytest.mark.parametrize("value", ["has space", "semi;colon", "slash/es", "", "x" * 65, "ünï", 123, ["vvol-3"]])
def test_bad_id_pattern__is_refused_naming_entry_and_field(field, value):
    msg = only_error(doc_with_bad_third(**{field: value}))
    where = "volumes[2]" if field == "volume_id" else "volumes[2] (vvol-3)"
    assert msg.startswith(f"{where}: {field}: ")
    assert "[A-Za-z0-9._-]{1,64}" in msg


@pytest.mark.parametrize("value", ["has space", "", "a" * 65, 7])
def test_bad_app_pattern__is_refused(value):
    msg = only_error(doc_with_bad_third(attach_on="app_start", detach_on="app_stop", app=value))
    assert msg.startswith("volumes[2] (vvol-3): app: ")
    assert "[A-Za-z0-9._-]{1,64}" in msg


@pytest.mark.parametrize("value", [0, -1, 1048577, 10**12, 10.5, 10.0, "10", True, False, [10]])
def test_bad_size_mb__is_refused(value):
    msg = only_error(doc_with_bad_third(size_mb=value))
    assert msg.startswith("volumes[2] (vvol-3): size_mb: ")
    assert "1 to 1048576" in msg


def test_size_mb_yaml_true__is_refused_not_read_as_1():
    data = yaml.safe_dump({"volumes": [entry(1)]}).replace("size_mb: 10", "size_mb: true").encode()
    errs = parse_errors(data)
    assert len(errs) == 1 and errs[0].startswith("volumes[0] (vvol-1): size_mb: ")


@pytest.mark.parametrize("field,value", [
    ("attach_on", "boot"), ("attach_on", "PREBOOT"), ("attach_on", "postboot"), ("attach_on", 1),
    ("detach_on", "never"), ("detach_on", "preboot"), ("detach_on", "Shutdown"), ("detach_on", ["shutdown"]),
])
def test_trigger_outside_its_enum__is_refused(field, value):
    msg = only_error(doc_with_bad_third(**{field: value}))
    assert msg.startswith(f"volumes[2] (vvol-3): {field}: ")
    assert "must be one of" in msg


def test_attach_on_enum__lists_the_allowed_values():
    msg = only_error(doc_with_bad_third(attach_on="boot"))
    for v in ("preboot", "app_start", "license_check", "request"):
        assert v in msg


def test_detach_on_enum__lists_the_allowed_values():
    msg = only_error(doc_with_bad_third(detach_on="never"))
    for v in ("postboot", "shutdown", "app_stop", "license_verified", "request"):
        assert v in msg


@pytest.mark.parametrize("attach_on", ["preboot", "request", "license_check"])
def test_app_stop_without_app_start__is_refused(attach_on):
    msg = only_error(doc_with_bad_third(attach_on=attach_on, detach_on="app_stop", app="A1"))
    assert msg.startswith("volumes[2] (vvol-3): detach_on: ")
    assert "app_stop" in msg and "app_start" in msg


@pytest.mark.parametrize("attach_on", ["preboot", "request", "app_start"])
def test_license_verified_without_license_check__is_refused(attach_on):
    msg = only_error(doc_with_bad_third(attach_on=attach_on, detach_on="license_verified", app="L1"))
    assert msg.startswith("volumes[2] (vvol-3): detach_on: ")
    assert "license_verified" in msg and "license_check" in msg


@pytest.mark.parametrize("attach_on,detach_on", [
    ("app_start", "app_stop"), ("app_start", "shutdown"), ("license_check", "license_verified"),
    ("license_check", "postboot"),
])
def test_app_trigger_without_app__is_refused(attach_on, detach_on):
    msg = only_error(doc_with_bad_third(attach_on=attach_on, detach_on=detach_on))
    assert msg.startswith("volumes[2] (vvol-3): app: ")
    assert "required" in msg


@pytest.mark.parametrize("attach_on,detach_on", [
    ("preboot", "postboot"), ("preboot", "shutdown"), ("request", "request"),
])
def test_app_present_when_no_trigger_needs_it__is_refused(attach_on, detach_on):
    msg = only_error(doc_with_bad_third(attach_on=attach_on, detach_on=detach_on, app="A1"))
    assert msg.startswith("volumes[2] (vvol-3): app: ")
    assert "absent" in msg


@pytest.mark.parametrize("value", [0, -5, 86401, 10**9, "900", 1.5, True, [900]])
def test_max_attach_seconds_out_of_range__is_refused(value):
    msg = only_error(doc_with_bad_third(max_attach_seconds=value))
    assert msg.startswith("volumes[2] (vvol-3): max_attach_seconds: ")
    assert "1 to 86400" in msg


@pytest.mark.parametrize("value", [0, -256, MAX_KEY_BITS + 1, "256", 256.0, True])
def test_min_key_bits_out_of_range__is_refused(value):
    msg = only_error(doc_with_bad_third(min_key_bits=value))
    assert msg.startswith("volumes[2] (vvol-3): min_key_bits: ")


@pytest.mark.parametrize("value", ["yes", 1, 0, "true"])
def test_os_disk_encryption_not_a_bool__is_refused(value):
    msg = only_error(doc_with_bad_third(os_disk_encryption=value))
    assert msg.startswith("volumes[2] (vvol-3): os_disk_encryption: ")


@pytest.mark.parametrize("value", ["A1", ["has space"], [1], ["A1", "A1"], ["a"] * 65])
def test_bad_authorized_apps__is_refused(value):
    msg = only_error(doc_with_bad_third(authorized_apps=value))
    assert msg.startswith("volumes[2] (vvol-3): authorized_apps: ")


SECRETISH = "Hunter2-SECRET-value"


@pytest.mark.parametrize("value", [
    987654321, 12.5, True, [SECRETISH], {"v": SECRETISH}, "", SECRETISH * 20,  # 400 characters
])
def test_bad_password__is_refused_without_echoing_it(value):
    assert len(SECRETISH * 20) > MAX_PASSWORD_LEN
    msg = only_error(doc_with_bad_third(password=value))
    assert msg.startswith("volumes[2] (vvol-3): password: ")
    for leak in ("987654321", "12.5", "Hunter2", "SECRET"):
        assert leak not in msg


def test_password_too_long__by_one__is_refused():
    msg = only_error(doc_with_bad_third(password="q" * (MAX_PASSWORD_LEN + 1)))
    assert msg.startswith("volumes[2] (vvol-3): password: ")
    assert "qqqq" not in msg


def test_bad_password_in_yaml_text__is_never_echoed_by_the_parser():
    data = FULL_YAML.replace(b'password: "s3cret"', b"password: 31415926535")
    errs = parse_errors(data)
    assert len(errs) == 1 and errs[0].startswith("volumes[0] (vvol-1): password: ")
    assert "31415926535" not in "\n".join(errs)


def test_duplicate_volume_id_in_one_file__is_refused_naming_both_entries():
    doc = {"volumes": [entry(1), entry(2), entry(3, volume_id="vvol-1", vm_id="vm-9")]}
    msg = only_error(doc)
    assert msg.startswith("volumes[2] (vvol-1): volume_id: ")
    assert "volumes[0]" in msg


def test_entry_not_a_mapping__is_refused_naming_it():
    msg = only_error({"volumes": [entry(1), "vvol-2", entry(3)]})
    assert msg.startswith("volumes[1]: ")


def test_every_problem_of_every_entry__is_reported_not_just_the_first():
    doc = {"volumes": [entry(1, size_mb=0), entry(2), entry(3, colour="x", vm_id="bad id")]}
    errs = errors_of(doc)
    assert len(errs) == 3
    assert any(e.startswith("volumes[0] (vvol-1): size_mb: ") for e in errs)
    assert any(e.startswith("volumes[2] (vvol-3): colour: ") for e in errs)
    assert any(e.startswith("volumes[2] (vvol-3): vm_id: ") for e in errs)


def test_validation__does_not_modify_the_input_document():
    doc = {"volumes": [entry(1, password="pw123456"), entry(2)]}
    before = copy.deepcopy(doc)
    validate_document(doc)
    assert doc == before


# ---------------------------------------------------------------- document shape


@pytest.mark.parametrize("doc", [[entry(1)], "volumes", 42, None])
def test_top_level_not_a_mapping__is_refused(doc):
    errs = errors_of(doc)
    assert len(errs) == 1 and "top level" in errs[0] and "volumes" in errs[0]


def test_empty_file__is_refused():
    errs = parse_errors(b"")
    assert len(errs) == 1 and "top level" in errs[0]


def test_unknown_top_level_key__is_refused():
    errs = errors_of({"volumes": [entry(1)], "hosts": []})
    assert len(errs) == 1 and "top-level key" in errs[0] and "hosts" in errs[0]


@pytest.mark.parametrize("value", [None, {"vvol-1": entry(1)}, "vvol-1", 3])
def test_volumes_not_a_list__is_refused(value):
    errs = errors_of({"volumes": value})
    assert len(errs) == 1 and "'volumes' must be a list" in errs[0]


def test_missing_volumes_key__is_refused():
    errs = errors_of({})
    assert len(errs) == 1 and "volumes" in errs[0]


# ---------------------------------------------------------------- parsing


BILLION_LAUGHS = b"""\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
volumes: [*g,*g,*g,*g,*g,*g,*g,*g,*g]
"""


def test_yaml_aliases__are_refused_billion_laughs():
    errs = parse_errors(BILLION_LAUGHS)
    assert len(errs) == 1 and "alias" in errs[0]


def test_yaml_single_alias_of_an_entry__is_refused():
    data = b"""\
volumes:
  - &one {volume_id: vvol-1, vm_id: vm-1, host_id: h, storage_array: S1, size_mb: 1, attach_on: preboot, detach_on: postboot}
  - *one
"""
    errs = parse_errors(data)
    assert len(errs) == 1 and "alias" in errs[0]


def test_yaml_merge_key_with_alias__is_refused():
    data = b"""\
base: &base {vm_id: vm-1, host_id: h, storage_array: S1, size_mb: 1, attach_on: preboot, detach_on: postboot}
volumes:
  - {<<: *base, volume_id: vvol-1}
"""
    errs = parse_errors(data)
    assert len(errs) == 1 and "alias" in errs[0]


def test_yaml_python_tags__are_refused():
    errs = parse_errors(b'volumes: !!python/object/apply:os.system ["echo pwned"]\n')
    assert len(errs) == 1 and "not valid YAML or JSON" in errs[0]


def test_yaml_duplicate_key_in_an_entry__is_refused():
    data = FULL_YAML.replace(b"    size_mb: 10\n", b"    size_mb: 10\n    size_mb: 20\n")
    errs = parse_errors(data)
    assert len(errs) == 1 and "duplicate key" in errs[0] and "size_mb" in errs[0]


def test_yaml_duplicate_top_level_key__is_refused():
    errs = parse_errors(b"volumes: []\nvolumes: []\n")
    assert len(errs) == 1 and "duplicate key" in errs[0] and "volumes" in errs[0]


def test_yaml_duplicate_password_key__is_refused_without_echoing_either_value():
    data = FULL_YAML.replace(b'    password: "s3cret"\n', b'    password: "first-pw"\n    password: "second-pw"\n')
    errs = parse_errors(data)
    assert len(errs) == 1 and "duplicate key" in errs[0]
    assert "first-pw" not in errs[0] and "second-pw" not in errs[0]


@pytest.mark.parametrize("name", ["p.json", "policy file"])
def test_json_duplicate_key__is_refused(name):
    data = b'{"volumes": [{"volume_id": "vvol-1", "volume_id": "vvol-2", "vm_id": "vm-1", "host_id": "h",' \
           b' "storage_array": "S1", "size_mb": 1, "attach_on": "preboot", "detach_on": "postboot"}]}'
    errs = parse_errors(data, name)
    assert len(errs) == 1 and "duplicate key" in errs[0] and "volume_id" in errs[0]


def test_json_duplicate_top_level_key__is_refused():
    errs = parse_errors(b'{"volumes": [], "volumes": []}')
    assert len(errs) == 1 and "duplicate key" in errs[0]


@pytest.mark.parametrize("data", [b"\xff\xfe\x00v\x00o", b"volumes: [\xc3\x28]", b"\x80" * 10])
def test_invalid_utf8__is_refused(data):
    errs = parse_errors(data)
    assert len(errs) == 1 and "UTF-8" in errs[0]


def test_file_over_4_mib__is_refused_before_parsing():
    data = b"volumes: []\n" + b"#" * MAX_FILE_BYTES
    assert len(data) > 4 * 1024 * 1024
    errs = parse_errors(data)
    assert len(errs) == 1 and "larger than" in errs[0]


def test_file_of_exactly_4_mib__is_accepted():
    head = b"volumes: []\n#"
    data = head + b"x" * (MAX_FILE_BYTES - len(head))
    assert len(data) == 4 * 1024 * 1024
    assert parse_policy_text(data) == []


@pytest.mark.parametrize("data", [
    b"volumes: [\n  - {volume_id: vvol-1\n",
    b"volumes:\n\t- x\n",
    b"]]]: [[[",
    b"\x00\x01\x02binary",
    b'{"volumes": [}',
    b"volumes:\n  - volume_id: 'unterminated\n",
])
def test_non_yaml_garbage__is_refused_as_one_message(data):
    errs = parse_errors(data)
    assert len(errs) == 1 and "not valid YAML or JSON" in errs[0]
    assert "\n" not in errs[0]


def test_file_level_messages__name_the_file():
    errs = parse_errors(b"volumes: [", "/tmp/my-policies.yaml")
    assert errs[0].startswith("/tmp/my-policies.yaml: ")


def test_plain_scalar_document__is_refused():
    errs = parse_errors(b"just some words\n")
    assert len(errs) == 1 and "top level" in errs[0]


# ---------------------------------------------------------------- regressions (bugs found and fixed)


def test_yaml_flow_mapping_file__is_accepted_as_yaml():
    data = (b"{volumes: [{volume_id: vvol-1, vm_id: vm-1, host_id: host-1, storage_array: S1, size_mb: 10, "
            b"attach_on: preboot, detach_on: postboot}]}")
    specs = parse_policy_text(data, "p.yaml")
    assert [s.volume_id for s in specs] == ["vvol-1"]
