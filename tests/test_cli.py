"""The admin CLI `vvg` (docs/cli.md) against moto, in-process."""
from __future__ import annotations

import base64
import json

import pytest
import yaml

from tests.conftest import all_audit_records
from vvolguard.adapters import aws as aws_adapter
from vvolguard.adapters.audit import AuditLog
from vvolguard.adapters.models import HostItem, PolicyItem, UserItem
from vvolguard.domain.policy import parse_policy_text
from vvolguard.domain.secrets import check_password

GOOD = [
    {"volume_id": "vvol-a", "vm_id": "vm-a", "host_id": "host-1", "storage_array": "S1", "size_mb": 10,
     "attach_on": "preboot", "detach_on": "postboot", "os_disk_encryption": True},
    {"volume_id": "vvol-b", "vm_id": "vm-b", "host_id": "host-1", "storage_array": "S1", "size_mb": 100,
     "attach_on": "app_start", "detach_on": "app_stop", "app": "A1", "authorized_apps": ["A1"]},
    {"volume_id": "vvol-c", "vm_id": "vm-a", "host_id": "host-1", "storage_array": "S2", "size_mb": 20,
     "attach_on": "request", "detach_on": "request", "max_attach_seconds": 60, "min_key_bits": 256},
]
MAC, SERIAL = "02:00:00:00:00:01", "SER-1"


def write(tmp_path, docs, name="p.yaml") -> str:
    """Write a policy file (a list of entries, or raw text) and return its path."""
    p = tmp_path / name
    p.write_text(docs if isinstance(docs, str) else yaml.safe_dump({"volumes": docs}, sort_keys=False))
    return str(p)


def one_line(err: str) -> str:
    """stderr holds exactly one line; return it."""
    assert err.endswith("\n") and err.count("\n") == 1, repr(err)
    return err


def tables(settings) -> dict:
    """Every item of every table, raw: the strongest 'nothing was written' check."""
    ddb = aws_adapter.client("dynamodb", settings.region)
    out = {}
    for name in (settings.state_table, settings.hosts_table, settings.users_table, settings.events_table,
                 settings.audit_table):
        items = ddb.scan(TableName=name, ConsistentRead=True)["Items"]
        out[name] = sorted(json.dumps(i, sort_keys=True) for i in items)
    return out


def audit_ids(settings) -> list[tuple[str, int]]:
    return [(r.chain, int(r.seq)) for r in all_audit_records()]


def audit_dump(settings) -> str:
    return "\n".join(json.dumps(r.attribute_values, default=str) for r in all_audit_records())


class Snapshot:
    """Policy export, audit records and every table item, to compare before/after a refused command."""

    def __init__(self, settings, vvg) -> None:
        self.export = vvg("policy", "export").out
        self.audit = audit_ids(settings)
        self.tables = tables(settings)

    def assert_unchanged(self, settings, vvg) -> None:
        assert vvg("policy", "export").out == self.export
        assert audit_ids(settings) == self.audit
        assert tables(settings) == self.tables


@pytest.fixture
def seeded(aws, vvg, tmp_path):
    """The three GOOD volumes applied."""
    r = vvg("policy", "apply", write(tmp_path, GOOD, "seed.yaml"))
    assert r.code == 0, r
    assert r.json() == {"created": 3, "updated": 0, "unchanged": 0}
    return aws


def policy(volume_id: str) -> PolicyItem:
    return next(PolicyItem.by_volume.query(volume_id))


# ---------------------------------------------------------------- apply / export


def test_apply__new_file__creates_every_volume_and_export_shows_them(aws, vvg, tmp_path):
    r = vvg("policy", "apply", write(tmp_path, GOOD))
    assert (r.code, r.err) == (0, "")
    assert r.json() == {"created": 3, "updated": 0, "unchanged": 0}
    exported = vvg("policy", "export")
    assert exported.code == 0
    vols = {v["volume_id"]: v for v in exported.json()["volumes"]}
    assert sorted(vols) == ["vvol-a", "vvol-b", "vvol-c"]
    assert vols["vvol-b"]["app"] == "A1" and vols["vvol-b"]["authorized_apps"] == ["A1"]
    assert vols["vvol-c"]["max_attach_seconds"] == 60 and vols["vvol-c"]["min_key_bits"] == 256
    assert vols["vvol-a"]["os_disk_encryption"] is True and vols["vvol-a"]["max_attach_seconds"] == 900
    assert parse_policy_text(exported.out.encode(), "export.json") == parse_policy_text(
        yaml.safe_dump({"volumes": GOOD}).encode())


def test_apply__reports_created_updated_unchanged_counts(seeded, vvg, tmp_path):
    docs = json.loads(json.dumps(GOOD))
    docs[1]["size_mb"] = 200                       # updated
    docs.append(dict(GOOD[0], volume_id="vvol-d"))  # created
    r = vvg("policy", "apply", write(tmp_path, docs, "second.yaml"))
    assert r.code == 0, r
    assert r.json() == {"created": 1, "updated": 1, "unchanged": 2}
    assert int(policy("vvol-b").size_mb) == 200
    assert int(policy("vvol-b").policy_version) == 2
    assert int(policy("vvol-a").policy_version) == 1
    again = vvg("policy", "apply", write(tmp_path, docs, "second.yaml"))
    assert again.json() == {"created": 0, "updated": 0, "unchanged": 4}


def test_apply__same_file_twice__second_run_is_all_unchanged_and_writes_nothing(seeded, vvg, tmp_path):
    snap = Snapshot(seeded, vvg)
    r = vvg("policy", "apply", write(tmp_path, GOOD, "again.yaml"))
    assert r.json() == {"created": 0, "updated": 0, "unchanged": 3}
    snap.assert_unchanged(seeded, vvg)


def test_apply__file_omitting_a_volume__leaves_that_volume_alone(seeded, vvg, tmp_path):
    r = vvg("policy", "apply", write(tmp_path, GOOD[:1], "one.yaml"))
    assert r.json() == {"created": 0, "updated": 0, "unchanged": 1}
    assert len(vvg("policy", "export").json()["volumes"]) == 3


def test_apply__each_change_is_audited(seeded, vvg, tmp_path):
    before = audit_ids(seeded)
    docs = json.loads(json.dumps(GOOD))
    docs[0]["size_mb"] = 11
    assert vvg("policy", "apply", write(tmp_path, docs, "x.yaml")).code == 0
    new = [r for r in all_audit_records() if (r.chain, int(r.seq)) not in before]
    assert [(r.action, r.volume_id, r.actor) for r in new] == [("policy_update", "vvol-a", "cli")]


def test_export_then_apply__json_round_trip_is_all_unchanged(seeded, vvg, tmp_path):
    exported = vvg("policy", "export")
    assert exported.code == 0 and exported.err == ""
    path = tmp_path / "export.json"
    path.write_text(exported.out)
    snap = Snapshot(seeded, vvg)
    r = vvg("policy", "apply", str(path))
    assert r.code == 0, r
    assert r.json() == {"created": 0, "updated": 0, "unchanged": 3}
    snap.assert_unchanged(seeded, vvg)


def test_export_yaml_then_apply__round_trip_is_all_unchanged(seeded, vvg, tmp_path):
    exported = vvg("policy", "export", "--format", "yaml")
    assert exported.code == 0
    doc = yaml.safe_load(exported.out)
    assert sorted(v["volume_id"] for v in doc["volumes"]) == ["vvol-a", "vvol-b", "vvol-c"]
    path = tmp_path / "export.yaml"
    path.write_text(exported.out)
    snap = Snapshot(seeded, vvg)
    r = vvg("policy", "apply", str(path))
    assert r.json() == {"created": 0, "updated": 0, "unchanged": 3}
    snap.assert_unchanged(seeded, vvg)


def test_export__of_an_empty_table__is_a_valid_empty_policy_file(aws, vvg, tmp_path):
    r = vvg("policy", "export")
    assert r.code == 0 and r.json() == {"volumes": []}
    path = tmp_path / "empty.json"
    path.write_text(r.out)
    assert vvg("policy", "apply", str(path)).json() == {"created": 0, "updated": 0, "unchanged": 0}


def test_apply__from_stdin_dash__works_like_a_file(aws, vvg):
    r = vvg("policy", "apply", "-", stdin=yaml.safe_dump({"volumes": GOOD}))
    assert r.code == 0, r
    assert r.json() == {"created": 3, "updated": 0, "unchanged": 0}


# ---------------------------------------------------------------- passwords


def with_password(pw, *, index=2):
    docs = json.loads(json.dumps(GOOD))
    docs[index]["password"] = pw
    return docs


def test_apply_password__is_stored_hashed_and_never_exported(aws, vvg, tmp_path):
    pw = "Corr3ct-Horse-Battery"
    r = vvg("policy", "apply", write(tmp_path, with_password(pw)))
    assert r.json() == {"created": 3, "updated": 0, "unchanged": 0}
    stored = policy("vvol-c").password_hash
    assert stored and pw not in stored
    assert check_password(pw, stored) and not check_password(pw + "x", stored)
    digest = stored.split("$")[-1]
    salt = stored.split("$")[-2]
    for fmt in ("json", "yaml"):
        out = vvg("policy", "export", "--format", fmt).out
        assert "vvol-c" in out
        assert pw not in out
        assert stored not in out and digest not in out and salt not in out
        assert "password" not in out and "scrypt" not in out
    dump = audit_dump(aws)
    assert pw not in dump and stored not in dump and digest not in dump
    listed = vvg("audit", "list", "--limit", "1000").out
    assert pw not in listed and stored not in listed and digest not in listed


def test_apply_password__same_password_again_is_unchanged(aws, vvg, tmp_path):
    path = write(tmp_path, with_password("pw-one-1234"))
    vvg("policy", "apply", path)
    stored = policy("vvol-c").password_hash
    r = vvg("policy", "apply", path)
    assert r.json() == {"created": 0, "updated": 0, "unchanged": 3}
    assert policy("vvol-c").password_hash == stored


def test_apply_password__new_value_is_an_update_with_a_new_hash(aws, vvg, tmp_path):
    vvg("policy", "apply", write(tmp_path, with_password("pw-one-1234")))
    stored = policy("vvol-c").password_hash
    r = vvg("policy", "apply", write(tmp_path, with_password("pw-two-5678"), "two.yaml"))
    assert r.json() == {"created": 0, "updated": 1, "unchanged": 2}
    assert policy("vvol-c").password_hash not in (None, stored)


def test_apply_password__absent_on_reapply_keeps_it(aws, vvg, tmp_path):
    vvg("policy", "apply", write(tmp_path, with_password("pw-keep-1234")))
    stored = policy("vvol-c").password_hash
    r = vvg("policy", "apply", write(tmp_path, GOOD, "nopw.yaml"))
    assert r.json() == {"created": 0, "updated": 0, "unchanged": 3}
    assert policy("vvol-c").password_hash == stored


def test_apply_password__export_round_trip_keeps_it(aws, vvg, tmp_path):
    vvg("policy", "apply", write(tmp_path, with_password("pw-keep-1234")))
    stored = policy("vvol-c").password_hash
    path = tmp_path / "export.json"
    path.write_text(vvg("policy", "export").out)
    assert vvg("policy", "apply", str(path)).json() == {"created": 0, "updated": 0, "unchanged": 3}
    assert policy("vvol-c").password_hash == stored


def test_apply_password__null_removes_it(aws, vvg, tmp_path):
    vvg("policy", "apply", write(tmp_path, with_password("pw-gone-1234")))
    assert policy("vvol-c").password_hash
    r = vvg("policy", "apply", write(tmp_path, with_password(None), "null.yaml"))
    assert r.json() == {"created": 0, "updated": 1, "unchanged": 2}
    assert policy("vvol-c").password_hash is None
    again = vvg("policy", "apply", write(tmp_path, with_password(None), "null.yaml"))
    assert again.json() == {"created": 0, "updated": 0, "unchanged": 3}


def test_apply_bad_password__refused_without_echoing_it(seeded, vvg, tmp_path):
    snap = Snapshot(seeded, vvg)
    r = vvg("policy", "apply", write(tmp_path, with_password(31415926535), "bad.yaml"))
    assert r.code != 0
    line = one_line(r.err)
    assert "volumes[2] (vvol-c)" in line and "password" in line
    assert "31415926535" not in r.err + r.out
    snap.assert_unchanged(seeded, vvg)


# ---------------------------------------------------------------- all or nothing


def test_apply__one_bad_entry_among_good__applies_nothing(seeded, vvg, tmp_path):
    snap = Snapshot(seeded, vvg)
    docs = json.loads(json.dumps(GOOD))
    docs[0]["size_mb"] = 50                                     # a valid update
    docs.insert(1, dict(GOOD[0], volume_id="vvol-new"))         # a valid create
    docs[3]["size_mb"] = 0                                      # volumes[3] is vvol-c: bad
    r = vvg("policy", "apply", write(tmp_path, docs, "mixed.yaml"))
    assert r.code != 0 and r.out == ""
    line = one_line(r.err)
    assert "volumes[3] (vvol-c)" in line and "size_mb" in line and "nothing was applied" in line
    snap.assert_unchanged(seeded, vvg)


def test_apply__several_problems__each_named_and_the_last_line_says_nothing_applied(seeded, vvg, tmp_path):
    snap = Snapshot(seeded, vvg)
    docs = json.loads(json.dumps(GOOD))
    docs[0]["colour"] = "red"
    docs[1]["vm_id"] = "bad id"
    docs[2]["max_attach_seconds"] = 0
    r = vvg("policy", "apply", write(tmp_path, docs, "bad3.yaml"))
    assert r.code != 0
    lines = r.err.splitlines()
    assert 1 <= len(lines) <= 3 and r.err.endswith("\n"), r.err  # one line, or one per problem
    assert all(line.startswith("vvg: error: ") for line in lines)
    assert any("volumes[0] (vvol-a)" in x and "colour" in x for x in lines)
    assert any("volumes[1] (vvol-b)" in x and "vm_id" in x for x in lines)
    assert any("volumes[2] (vvol-c)" in x and "max_attach_seconds" in x for x in lines)
    assert "nothing was applied" in lines[-1]
    snap.assert_unchanged(seeded, vvg)


def _bad(field, value, index=1):
    docs = json.loads(json.dumps(GOOD))
    if value is _DROP:
        docs[index].pop(field)
    else:
        docs[index][field] = value
    return docs


_DROP = object()


BAD_ENTRIES = [  # (case, entries, texts the one stderr line must hold)
    ("unknown-key", lambda: _bad("colour", "red"), ["volumes[1] (vvol-b)", "colour", "unknown key"]),
    ("bad-vm-id", lambda: _bad("vm_id", "vm b!"), ["volumes[1] (vvol-b)", "vm_id", "[A-Za-z0-9._-]{1,64}"]),
    ("bad-volume-id", lambda: _bad("volume_id", "vvol/b"), ["volumes[1]", "volume_id", "[A-Za-z0-9._-]{1,64}"]),
    ("bad-host-id", lambda: _bad("host_id", "host 1"), ["volumes[1] (vvol-b)", "host_id", "[A-Za-z0-9._-]{1,64}"]),
    ("bad-array", lambda: _bad("storage_array", ""), ["volumes[1] (vvol-b)", "storage_array"]),
    ("size-0", lambda: _bad("size_mb", 0), ["volumes[1] (vvol-b)", "size_mb", "1 to 1048576"]),
    ("size-too-large", lambda: _bad("size_mb", 1048577), ["volumes[1] (vvol-b)", "size_mb", "1 to 1048576"]),
    ("size-not-int", lambda: _bad("size_mb", "10"), ["volumes[1] (vvol-b)", "size_mb", "1 to 1048576"]),
    ("app_stop-without-app_start", lambda: _bad("attach_on", "preboot"),
     ["volumes[1] (vvol-b)", "detach_on", "app_stop", "app_start"]),
    ("app-trigger-without-app", lambda: _bad("app", _DROP), ["volumes[1] (vvol-b)", "app", "required"]),
    ("app-without-app-trigger", lambda: _bad("app", "A1", index=0), ["volumes[0] (vvol-a)", "app", "absent"]),
    ("bad-detach_on", lambda: _bad("detach_on", "whenever"), ["volumes[1] (vvol-b)", "detach_on", "must be one of"]),
    ("missing-required", lambda: _bad("host_id", _DROP), ["volumes[1] (vvol-b)", "host_id", "required"]),
    ("lease-too-long", lambda: _bad("max_attach_seconds", 86401), ["volumes[1] (vvol-b)", "max_attach_seconds"]),
    ("duplicate-volume", lambda: GOOD + [dict(GOOD[0])], ["volumes[3] (vvol-a)", "volume_id", "volumes[0]"]),
]


def test_apply__bad_entry__one_line_naming_entry_and_field_and_nothing_changes(seeded, vvg, tmp_path):
    snap = Snapshot(seeded, vvg)
    for case, make, expect in BAD_ENTRIES:
        r = vvg("policy", "apply", write(tmp_path, make(), f"{case}.yaml"))
        assert (r.code, r.out) == (1, ""), case
        line = one_line(r.err)
        assert line.startswith("vvg: error: "), case
        for text in expect + ["nothing was applied"]:
            assert text in line, (case, text, line)
        snap.assert_unchanged(seeded, vvg)


BAD_FILES = [  # (case, file content, text the one stderr line must hold, whether it names the file)
    ("malformed-yaml", b"volumes: [\n  - {volume_id: vvol-a\n", "not valid YAML or JSON", True),
    ("duplicate-yaml-key", b"volumes:\n  - volume_id: x\n    volume_id: y\n", "duplicate key", True),
    ("yaml-alias", b"a: &a [1]\nvolumes: *a\n", "alias", True),
    ("duplicate-json-key", b'{"volumes": [], "volumes": []}', "duplicate key", True),
    ("invalid-utf8", b"volumes: []\n# caf\xe9\n", "UTF-8", True),
    ("too-large", b"volumes: []\n" + b"#" * (4 * 1024 * 1024), "larger than", True),
    ("not-a-mapping", b"- just\n- a list\n", "top level", False),
    ("unknown-top-level-key", b"volumes: []\nhosts: []\n", "top-level key", False),
    ("volumes-not-a-list", b"volumes: {vvol-a: 1}\n", "must be a list", False),
]


def test_apply__malformed_file__one_line_and_nothing_changes(seeded, vvg, tmp_path):
    snap = Snapshot(seeded, vvg)
    for case, content, expect, names_file in BAD_FILES:
        path = tmp_path / f"{case}.yaml"
        path.write_bytes(content)
        r = vvg("policy", "apply", str(path))
        assert (r.code, r.out) == (1, ""), case
        line = one_line(r.err)
        assert expect in line and "nothing was applied" in line, (case, line)
        if names_file:
            assert f"{case}.yaml" in line, (case, line)
        snap.assert_unchanged(seeded, vvg)


def test_apply__nonexistent_file__one_line_and_nothing_changes(seeded, vvg, tmp_path):
    snap = Snapshot(seeded, vvg)
    missing = str(tmp_path / "nope.yaml")
    r = vvg("policy", "apply", missing)
    assert r.code == 1 and r.out == ""
    line = one_line(r.err)
    assert "cannot read" in line and missing in line
    snap.assert_unchanged(seeded, vvg)
    r = vvg("policy", "apply", str(tmp_path))  # a directory
    assert r.code == 1 and "cannot read" in one_line(r.err)
    snap.assert_unchanged(seeded, vvg)


# ---------------------------------------------------------------- policy delete


def test_policy_delete__removes_that_volume_only(seeded, vvg):
    r = vvg("policy", "delete", "vvol-a")
    assert r.code == 0, r
    assert r.json()["volume_id"] == "vvol-a" and r.json()["deleted"] is True
    vols = [v["volume_id"] for v in vvg("policy", "export").json()["volumes"]]
    assert vols == ["vvol-b", "vvol-c"]
    rec = next(iter(AuditLog(seeded).recent(volume_id="vvol-a", limit=1)))
    assert (rec.action, rec.actor) == ("policy_delete", "cli")


def test_policy_delete__unknown_volume__has_no_policy_and_nothing_changes(seeded, vvg):
    snap = Snapshot(seeded, vvg)
    r = vvg("policy", "delete", "vvol-zzz")
    assert r.code != 0 and r.out == ""
    assert "vvol-zzz has no policy" in one_line(r.err)
    snap.assert_unchanged(seeded, vvg)


def test_policy_delete__twice__second_is_has_no_policy(seeded, vvg):
    assert vvg("policy", "delete", "vvol-b").code == 0
    r = vvg("policy", "delete", "vvol-b")
    assert r.code != 0 and "has no policy" in one_line(r.err)


def test_policy_delete__bad_volume_id__refused_in_one_line(seeded, vvg):
    snap = Snapshot(seeded, vvg)
    r = vvg("policy", "delete", "vvol a")
    assert r.code != 0 and "volume id" in one_line(r.err)
    snap.assert_unchanged(seeded, vvg)


# ---------------------------------------------------------------- hosts


def enroll(vvg, host_id="host-1", mac=MAC, serial=SERIAL, *extra):
    return vvg("host", "enroll", host_id, "--mac", mac, "--serial", serial, *extra)


def host_attrs(host_id: str) -> dict:
    item = HostItem.get(host_id, consistent_read=True)
    return {name: getattr(item, name) for name in HostItem.get_attributes()}


def test_host_enroll__prints_host_id_and_secret(aws, vvg):
    r = enroll(vvg, "host-1", MAC, SERIAL, "--hardware", "rack 4, slot 2")
    assert (r.code, r.err) == (0, "")
    out = r.json()
    assert set(out) == {"host_id", "secret"}
    assert out["host_id"] == "host-1" and isinstance(out["secret"], str) and len(out["secret"]) >= 32
    attrs = host_attrs("host-1")
    assert attrs["status"] == "active" and int(attrs["secret_version"]) == 1


def test_host_enroll__two_hosts__get_different_secrets(aws, vvg):
    a = enroll(vvg, "host-1").json()["secret"]
    b = enroll(vvg, "host-2", "02:00:00:00:00:02", "SER-2").json()["secret"]
    assert a != b


def test_host_enroll__same_id_again__already_enrolled_and_item_unchanged(aws, vvg):
    first = enroll(vvg, "host-1").json()
    before = host_attrs("host-1")
    snap = Snapshot(aws, vvg)
    r = enroll(vvg, "host-1", "02:00:00:00:00:09", "OTHER")
    assert r.code != 0 and r.out == ""
    assert "already enrolled" in one_line(r.err)
    assert host_attrs("host-1") == before
    assert aws_adapter.decrypt_secret(aws, before["secret_enc"],
                                      {"vvg:host-id": "host-1", "vvg:secret-version": "1"}) == first["secret"]
    snap.assert_unchanged(aws, vvg)


BAD_ENROLLS = [  # (case, host id, mac, serial, hardware, text the one stderr line must hold)
    ("host-id-space", "host 1", MAC, SERIAL, "", "host id"),
    ("host-id-too-long", "h" * 65, MAC, SERIAL, "", "host id"),
    ("host-id-slash", "host/1", MAC, SERIAL, "", "host id"),
    ("host-id-reserved-for-ec2-vms", "aws-ec2", MAC, SERIAL, "", "reserved"),
    ("mac-short", "host-1", "02:00:00:00:00", SERIAL, "", "--mac"),
    ("mac-not-hex", "host-1", "zz:00:00:00:00:01", SERIAL, "", "--mac"),
    ("mac-dots", "host-1", "0200.0000.0001", SERIAL, "", "--mac"),
    ("serial-space", "host-1", MAC, "has space", "", "--serial"),
    ("serial-too-long", "host-1", MAC, "s" * 129, "", "--serial"),
    ("serial-empty", "host-1", MAC, "", "", "--serial"),
    ("hardware-newline", "host-1", MAC, SERIAL, "a\nb", "--hardware"),
]


def test_host_enroll__bad_host_id_mac_or_serial__refused_in_one_line_and_nothing_written(aws, vvg):
    snap = Snapshot(aws, vvg)
    for case, host_id, mac, serial, hardware, expect in BAD_ENROLLS:
        r = enroll(vvg, host_id, mac, serial, "--hardware", hardware)
        assert r.code == 1 and r.out == "", case
        assert expect in one_line(r.err), (case, r.err)
        snap.assert_unchanged(aws, vvg)
    assert list(HostItem.scan()) == []


def test_host_enroll__bad_mac__message_does_not_echo_it(aws, vvg):
    r = enroll(vvg, "host-1", "SECRETMAC-XYZ", SERIAL)
    assert r.code != 0 and "SECRETMAC" not in r.err


def test_host_rotate__new_secret_and_version_bump(aws, vvg):
    old = enroll(vvg, "host-1").json()["secret"]
    r = vvg("host", "rotate", "host-1")
    assert r.code == 0, r
    out = r.json()
    assert out["host_id"] == "host-1" and out["secret"] != old and len(out["secret"]) >= 32
    attrs = host_attrs("host-1")
    assert int(attrs["secret_version"]) == 2
    from vvolguard.services.hosts import HostService
    assert HostService(aws).secret_of(HostItem.get("host-1")) == out["secret"]
    r2 = vvg("host", "rotate", "host-1")
    assert r2.json()["secret"] not in (old, out["secret"])
    assert int(host_attrs("host-1")["secret_version"]) == 3


def test_host_rotate_or_revoke__unknown_host__not_enrolled_and_nothing_written(aws, vvg):
    enroll(vvg, "host-1")
    snap = Snapshot(aws, vvg)
    for action in ("rotate", "revoke"):
        r = vvg("host", action, "host-404")
        assert r.code != 0 and r.out == "", action
        assert "host-404 is not enrolled" in one_line(r.err), action
        snap.assert_unchanged(aws, vvg)


def test_host_revoke__sets_status_revoked_and_rotate_is_then_refused(aws, vvg):
    enroll(vvg, "host-1")
    r = vvg("host", "revoke", "host-1")
    assert r.code == 0, r
    assert r.json() == {"host_id": "host-1", "revoked": True, "detached": 0, "untagged": 0}
    assert host_attrs("host-1")["status"] == "revoked"
    snap = Snapshot(aws, vvg)
    rot = vvg("host", "rotate", "host-1")
    assert rot.code != 0 and "revoked" in one_line(rot.err)
    snap.assert_unchanged(aws, vvg)


def test_host_secret__never_in_the_hosts_table_nor_the_audit_history(aws, vvg):
    secrets = [enroll(vvg, "host-1", MAC, SERIAL, "--hardware", "hv").json()["secret"]]
    secrets.append(vvg("host", "rotate", "host-1").json()["secret"])
    vvg("host", "revoke", "host-1")
    item = HostItem.get("host-1", consistent_read=True)
    for name in HostItem.get_attributes():
        value = str(getattr(item, name))
        for s in secrets:
            assert s not in value, name
    raw_cipher = base64.b64decode(item.secret_enc)
    for s in secrets:
        assert s.encode() not in raw_cipher
    dump = audit_dump(aws) + vvg("audit", "list", "--limit", "1000").out
    for s in secrets:
        assert s not in dump
    actions = [json.loads(x)["action"] for x in vvg("audit", "list").out.splitlines()]
    assert actions == ["host_revoke", "host_rotate", "host_enroll"]


# ---------------------------------------------------------------- users


def test_user_add__creates_a_user_that_can_authenticate(aws, vvg):
    from vvolguard.services.users import UserService

    r = vvg("user", "add", "alice", "--role", "viewer", "--password-stdin", stdin="alice-pass-123\n")
    assert (r.code, r.err) == (0, ""), r
    assert r.json() == {"username": "alice", "role": "viewer"}
    users = UserService(aws)
    user = users.authenticate("alice", "alice-pass-123")
    assert user is not None and user.role == "viewer"
    assert users.authenticate("alice", "alice-pass-124") is None
    assert "alice-pass-123" not in json.dumps(tables(aws))
    assert "alice-pass-123" not in vvg("audit", "list").out


def test_user_add__each_role_is_accepted(aws, vvg):
    for role in ("viewer", "editor", "admin"):
        r = vvg("user", "add", f"u-{role}", "--role", role, "--password-stdin", stdin="long-enough-pw")
        assert r.code == 0 and UserItem.get(f"u-{role}").role == role


def test_user_add__duplicate_name__refused_and_unchanged(aws, vvg):
    vvg("user", "add", "alice", "--role", "viewer", "--password-stdin", stdin="alice-pass-123\n")
    snap = Snapshot(aws, vvg)
    r = vvg("user", "add", "alice", "--role", "admin", "--password-stdin", stdin="other-pass-456\n")
    assert r.code != 0 and r.out == ""
    assert "already exists" in one_line(r.err)
    snap.assert_unchanged(aws, vvg)
    from vvolguard.services.users import UserService
    assert UserService(aws).authenticate("alice", "alice-pass-123").role == "viewer"


BAD_USER_ADDS = [  # (case, argv after 'user add', stdin, exit code, text the one stderr line must hold)
    ("bad-role", ("alice", "--role", "root", "--password-stdin"), "alice-pass-123\n", 2, "--role"),
    ("missing-role", ("alice", "--password-stdin"), "alice-pass-123\n", 2, "--role"),
    ("no-password-stdin", ("alice", "--role", "viewer"), "alice-pass-123\n", 2, "--password-stdin"),
    ("short-password", ("alice", "--role", "viewer", "--password-stdin"), "short\n", 1, "password"),
    ("empty-stdin", ("alice", "--role", "viewer", "--password-stdin"), "", 1, "password"),
    ("bad-name", ("al ice", "--role", "viewer", "--password-stdin"), "alice-pass-123\n", 1, "user name"),
]


def test_user_add__bad_role_no_password_stdin_or_short_password__refused_and_nothing_written(aws, vvg):
    snap = Snapshot(aws, vvg)
    for case, argv, stdin, code, expect in BAD_USER_ADDS:
        r = vvg("user", "add", *argv, stdin=stdin)
        assert (r.code, r.out) == (code, ""), (case, r)
        assert expect in one_line(r.err), (case, r.err)
        snap.assert_unchanged(aws, vvg)
    assert list(UserItem.scan()) == []


def test_user_add__password_never_echoed_on_refusal(aws, vvg):
    r = vvg("user", "add", "alice", "--role", "viewer", "--password-stdin", stdin="tiny\n")
    assert r.code != 0 and "tiny" not in r.err


# ---------------------------------------------------------------- audit verify, argparse


def test_audit_verify__intact_after_policy_host_and_user_changes(aws, vvg, tmp_path):
    vvg("policy", "apply", write(tmp_path, with_password("pw-verify-1")))
    docs = json.loads(json.dumps(GOOD))
    docs[0]["size_mb"] = 99
    docs[1]["vm_id"] = "vm-moved"
    moved = vvg("policy", "apply", write(tmp_path, docs, "b.yaml"))
    assert moved.json() == {"created": 0, "updated": 2, "unchanged": 1}
    vvg("policy", "delete", "vvol-c")
    enroll(vvg, "host-1")
    vvg("host", "rotate", "host-1")
    vvg("host", "revoke", "host-1")
    vvg("user", "add", "bob", "--role", "editor", "--password-stdin", stdin="bob-pass-1234")
    vvg("policy", "apply", write(tmp_path, _bad("size_mb", 0), "bad.yaml"))  # refused
    r = vvg("audit", "verify")
    assert r.code == 0, r
    summary = r.json()
    assert summary["ok"] is True and summary["records"] >= 10
    listed = [json.loads(x) for x in vvg("audit", "list", "--limit", "1000").out.splitlines()]
    assert len(listed) == summary["records"]
    assert [x["at"] for x in listed] == sorted((x["at"] for x in listed), reverse=True)


ARGPARSE_ERRORS = [
    ("frobnicate",), (), ("policy",), ("policy", "frob"), ("policy", "apply"), ("policy", "delete"),
    ("policy", "export", "--format", "xml"), ("policy", "export", "--bogus"),
    ("host", "enroll", "host-1"), ("host", "enroll", "host-1", "--mac", MAC), ("host", "rotate"),
    ("host", "revoke", "host-1", "extra"), ("user", "add"), ("audit", "list", "--limit", "0"),
    ("audit", "list", "--limit", "ten"),
]


def test_argparse_errors__unknown_command_or_missing_args__one_line_exit_2_and_nothing_changes(seeded, vvg):
    snap = Snapshot(seeded, vvg)
    for argv in ARGPARSE_ERRORS:
        r = vvg(*argv)
        assert (r.code, r.out) == (2, ""), (argv, r)
        assert one_line(r.err).startswith("vvg: error: "), argv
    snap.assert_unchanged(seeded, vvg)


# ---------------------------------------------------------------- regressions (bugs found and fixed)


def test_apply__unknown_key_with_newline__error_is_still_one_line(seeded, vvg, tmp_path):
    text = yaml.safe_dump({"volumes": GOOD}, sort_keys=False).replace(
        "  size_mb: 10\n", '  size_mb: 10\n  "evil\\nvvg: ok: applied": 1\n', 1)
    r = vvg("policy", "apply", write(tmp_path, text, "evil.yaml"))
    assert r.code == 1
    one_line(r.err)


def test_apply__large_file_with_a_late_conflict__applies_nothing(aws, vvg, tmp_path, monkeypatch):
    from vvolguard.domain.policy import validate_document
    from vvolguard.services.policies import PolicyService

    many = [dict(GOOD[0], volume_id=f"vvol-{i:02d}", vm_id=f"vm-{i:02d}") for i in range(32)]
    original = PolicyService._commit
    state = {"done": False}

    def commit_after_a_concurrent_create(self, batches):
        if not state["done"]:  # someone creates the last volume between apply's plan and its commit
            state["done"] = True
            PolicyService(self.settings).save_one(validate_document({"volumes": [many[-1]]})[0], "user:eve", 0)
        return original(self, batches)

    monkeypatch.setattr(PolicyService, "_commit", commit_after_a_concurrent_create)
    r = vvg("policy", "apply", write(tmp_path, many, "many.yaml"))
    assert r.code != 0
    assert [v["volume_id"] for v in vvg("policy", "export").json()["volumes"]] == ["vvol-31"]
