"""Diff before apply (docs/policy-apply.md): `vvg policy validate` and `vvg policy apply --dry-run`,
in-process against moto: what they print, that they write nothing, and hostile files."""
from __future__ import annotations

import json

import pytest
import yaml

from tests.test_cli import GOOD, Snapshot, write
from vvolguard.domain.policy import MAX_FILE_BYTES

HOST = {"mac": "02:00:00:00:00:01", "serial": "SER-1"}


@pytest.fixture(autouse=True)
def _one_botocore_session(aws, monkeypatch):
    """Speed only: the CLI's PynamoDB connections share one botocore session (as tests/test_cli.py does)."""
    import botocore.session

    shared = botocore.session.get_session()
    monkeypatch.setattr("pynamodb.connection.base.get_session", lambda: shared)


@pytest.fixture
def seeded(aws, vvg, tmp_path):
    """GOOD applied (vvol-c with a password) and host-1 enrolled."""
    docs = json.loads(json.dumps(GOOD))
    docs[2]["password"] = "old-pw-123"
    assert vvg("policy", "apply", write(tmp_path, docs, "seed.yaml")).code == 0
    assert vvg("host", "enroll", "host-1", "--mac", HOST["mac"], "--serial", HOST["serial"]).code == 0
    return aws


def entries() -> list[dict]:
    docs = json.loads(json.dumps(GOOD))
    docs[2]["password"] = "old-pw-123"
    return docs


def dry_run(vvg, tmp_path, docs, name="draft.yaml"):
    r = vvg("policy", "apply", write(tmp_path, docs, name), "--dry-run")
    assert r.code == 0, r
    return r.json()


# ---------------------------------------------------------------- dry-run output


def test_dry_run__unchanged_file__lists_nothing_and_warns_nothing(seeded, vvg, tmp_path):
    assert dry_run(vvg, tmp_path, entries()) == {"created": [], "updated": [], "unchanged": 3, "warnings": []}


def test_dry_run__created_updated_unchanged__old_to_new_per_field(seeded, vvg, tmp_path):
    docs = entries()
    docs[0]["size_mb"] = 50
    docs[0]["storage_array"] = "S9"
    docs.append(dict(GOOD[0], volume_id="vvol-new"))
    out = dry_run(vvg, tmp_path, docs)
    assert out["created"] == ["vvol-new"]
    assert out["updated"] == [{"volume_id": "vvol-a", "changes": {"storage_array": ["S1", "S9"], "size_mb": [10, 50]}}]
    assert out["unchanged"] == 2 and out["warnings"] == []


def test_dry_run__predicts_exactly_what_apply_then_does(seeded, vvg, tmp_path):
    docs = entries()
    docs[1]["authorized_apps"] = ["A1", "A2"]
    docs.append(dict(GOOD[0], volume_id="vvol-new"))
    out = dry_run(vvg, tmp_path, docs)
    r = vvg("policy", "apply", write(tmp_path, docs, "real.yaml"))
    assert r.json() == {"created": len(out["created"]), "updated": len(out["updated"]), "unchanged": out["unchanged"]}
    assert dry_run(vvg, tmp_path, docs, "again.yaml")["unchanged"] == 4  # and then nothing is left to do


def test_dry_run__move_to_another_vm_and_host__warns_naming_the_volume(seeded, vvg, tmp_path):
    docs = entries()
    docs[0]["vm_id"] = "vm-z"
    docs[1]["host_id"] = "host-1"  # unchanged
    docs[2]["host_id"] = "host-2"  # moved to a host that is not enrolled either
    out = dry_run(vvg, tmp_path, docs)
    changes = {u["volume_id"]: u["changes"] for u in out["updated"]}
    assert changes == {"vvol-a": {"vm_id": ["vm-a", "vm-z"]}, "vvol-c": {"host_id": ["host-1", "host-2"]}}
    w = out["warnings"]
    assert any("vvol-a" in x and "another VM" in x and "vm-a -> vm-z" in x for x in w), w
    assert any("vvol-c" in x and "another host" in x and "host-1 -> host-2" in x for x in w), w
    assert any("host_id host-2" in x and "not enrolled" in x and "vvol-c" in x for x in w), w
    assert not any("host_id host-1" in x for x in w), w


def test_dry_run__unenrolled_and_revoked_hosts__one_warning_per_host_id(seeded, vvg, tmp_path):
    docs = entries() + [dict(GOOD[0], volume_id=f"vvol-n{i}", host_id="host-9") for i in range(3)]
    vvg("host", "enroll", "host-r", "--mac", "02:00:00:00:00:09", "--serial", "S9")
    vvg("host", "revoke", "host-r")
    docs.append(dict(GOOD[0], volume_id="vvol-r", host_id="host-r"))
    docs.append(dict(GOOD[0], volume_id="vvol-ec2", host_id="aws-ec2"))  # the EC2 VMs' reserved host
    out = dry_run(vvg, tmp_path, docs)
    w = out["warnings"]
    assert len(w) == 2, w
    assert "host_id host-9 is not enrolled" in w[0] and all(f"vvol-n{i}" in w[0] for i in range(3))
    assert "host_id host-r is not enrolled any more (revoked)" in w[1] and "vvol-r" in w[1]


def test_dry_run__absent_optional_key_takes_its_default_shown_in_the_diff_and_warned(seeded, vvg, tmp_path):
    docs = entries()
    del docs[0]["os_disk_encryption"]   # stored true: absent takes the default, false
    del docs[2]["max_attach_seconds"]   # stored 60: absent takes 900
    del docs[2]["password"]             # absent keeps the stored password
    out = dry_run(vvg, tmp_path, docs)
    changes = {u["volume_id"]: u["changes"] for u in out["updated"]}
    assert changes == {"vvol-a": {"os_disk_encryption": [True, False]}, "vvol-c": {"max_attach_seconds": [60, 900]}}
    assert any("vvol-a: os_disk_encryption is absent" in x and "default false" in x for x in out["warnings"])
    assert any("vvol-c: max_attach_seconds is absent" in x and "default 900" in x for x in out["warnings"])
    # and apply does exactly that
    vvg("policy", "apply", write(tmp_path, docs, "real.yaml"))
    exported = {e["volume_id"]: e for e in vvg("policy", "export").json()["volumes"]}
    assert exported["vvol-a"]["os_disk_encryption"] is False and exported["vvol-c"]["max_attach_seconds"] == 900


def test_dry_run__password_changes_show_as_words_never_the_password_or_its_hash(seeded, vvg, tmp_path):
    from vvolguard.services.policies import PolicyService

    stored_hash = PolicyService(seeded).get("vvol-c").password_hash
    docs = entries()
    docs[0]["password"] = "brand-new-pw"
    docs[2]["password"] = "other-pw-456"
    r = vvg("policy", "apply", write(tmp_path, docs, "pw.yaml"), "--dry-run")
    out = r.json()
    changes = {u["volume_id"]: u["changes"] for u in out["updated"]}
    assert changes == {"vvol-a": {"password": ["none", "set"]}, "vvol-c": {"password": ["set", "changed"]}}
    docs[2]["password"] = None
    out = dry_run(vvg, tmp_path, docs, "pw2.yaml")
    assert {u["volume_id"]: u["changes"] for u in out["updated"]}["vvol-c"] == {"password": ["set", "removed"]}
    docs[2]["password"] = "old-pw-123"  # the same password: nothing to change
    assert "vvol-c" not in {u["volume_id"] for u in dry_run(vvg, tmp_path, docs, "pw3.yaml")["updated"]}
    for text in ("brand-new-pw", "other-pw-456", "old-pw-123", stored_hash, stored_hash.split("$")[-1]):
        assert text not in r.out and text not in r.err


def test_dry_run_and_validate__write_nothing(seeded, vvg, tmp_path):
    snap = Snapshot(seeded, vvg)
    docs = entries()
    docs[0]["vm_id"] = "vm-z"
    docs[1]["size_mb"] = 7
    docs[2]["password"] = None
    docs.append(dict(GOOD[0], volume_id="vvol-new", host_id="host-9"))
    path = write(tmp_path, docs, "all.yaml")
    out = vvg("policy", "apply", path, "--dry-run").json()
    assert out["created"] == ["vvol-new"] and len(out["updated"]) == 3
    assert vvg("policy", "validate", path).json() == {"valid": True, "volumes": 4}
    snap.assert_unchanged(seeded, vvg)


def test_dry_run__attached_volume_moved__warns_that_apply_will_refuse(seeded, vvg, tmp_path):
    from vvolguard.adapters.models import PolicyItem

    item = next(PolicyItem.by_volume.query("vvol-a"))
    item.update(actions=[PolicyItem.attached.set(True)])
    docs = entries()
    docs[0]["vm_id"] = "vm-z"
    out = dry_run(vvg, tmp_path, docs)
    assert any("vvol-a: is attached to vm-a" in x and "refuse" in x for x in out["warnings"]), out
    assert vvg("policy", "apply", write(tmp_path, docs, "real.yaml")).code == 1  # as announced


# ---------------------------------------------------------------- validate


def test_validate__good_file__valid_and_the_count_without_any_aws(vvg, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: validate needs no AWS
    r = vvg("policy", "validate", write(tmp_path, GOOD))
    assert (r.code, r.json(), r.err) == (0, {"valid": True, "volumes": 3}, "")


def test_validate__every_problem_one_a_line_with_entry_and_field_then_the_total(aws, vvg, tmp_path):
    docs = json.loads(json.dumps(GOOD))
    docs[0]["colour"] = "red"
    docs[1]["vm_id"] = "bad id"
    docs[2]["size_mb"] = "ten"
    docs[2]["attach_on"] = "sometimes"
    r = vvg("policy", "validate", write(tmp_path, docs))
    assert (r.code, r.out) == (1, "")
    lines = r.err.splitlines()
    assert lines[-1] == "4 problems" and len(lines) == 5, lines
    assert "volumes[0] (vvol-a): colour: unknown key" in lines[0]
    assert lines[1].startswith("volumes[1] (vvol-b): vm_id: must match")
    assert any(x.startswith("volumes[2] (vvol-c): size_mb: must be an integer from 1 to 1048576, got 'ten'") for x in lines)
    assert any(x.startswith("volumes[2] (vvol-c): attach_on: must be one of") for x in lines)


def test_validate__one_problem__says_1_problem(aws, vvg, tmp_path):
    r = vvg("policy", "validate", write(tmp_path, GOOD + [dict(GOOD[0])]))
    assert r.code == 1 and r.err.splitlines() == ["volumes[3] (vvol-a): volume_id: duplicates volumes[0]", "1 problem"]


def test_validate__yaml_syntax_error__names_line_and_column(aws, vvg, tmp_path):
    text = ("volumes:\n"
            "  - volume_id: vvol-a\n"
            "    vm_id: vm-a\n"
            "  host_id: host-1\n")  # line 4, column 3: outdented key inside the list
    r = vvg("policy", "validate", write(tmp_path, text, "syntax.yaml"))
    lines = r.err.splitlines()
    assert r.code == 1 and len(lines) == 2 and lines[1] == "1 problem", lines
    assert "syntax.yaml" in lines[0] and "line 4, column 3" in lines[0], lines
    assert "while parsing a block collection started at line 2, column 3" in lines[0]


def test_validate__json_syntax_error__names_line_and_column(aws, vvg, tmp_path):
    r = vvg("policy", "validate", write(tmp_path, '{"volumes": [\n  {"volume_id": "a",}\n]}', "p.json"))
    assert r.code == 1 and "line 2, column 21" in r.err.splitlines()[0], r.err


def test_dry_run__problems__same_lines_as_validate_and_nothing_written(seeded, vvg, tmp_path):
    snap = Snapshot(seeded, vvg)
    docs = entries()
    docs[0]["size_mb"] = 0
    docs[1]["host_id"] = None
    path = write(tmp_path, docs)
    r = vvg("policy", "apply", path, "--dry-run")
    assert (r.code, r.out) == (1, "")
    assert r.err == vvg("policy", "validate", path).err
    assert r.err.splitlines()[-1] == "2 problems"
    snap.assert_unchanged(seeded, vvg)


# ---------------------------------------------------------------- hostile files


HOSTILE = [  # (case, bytes, what the problem line holds)
    ("huge", b"volumes: []\n" + b"#" * MAX_FILE_BYTES, ["larger than 4194304 bytes"]),
    ("aliases", b"a: &a [1, 2]\nb: &b [*a, *a]\nvolumes: *b\n", ["alias", "line 2, column 8"]),
    ("duplicate-keys", b"volumes:\n  - volume_id: x\n    volume_id: y\n", ["line 3, column 5", "duplicate key 'volume_id'"]),
    ("non-utf8", b"volumes: []\n# caf\xe9\n", ["not UTF-8", "line 2, column 6", "0xe9"]),
    ("python-tag", b'volumes: !!python/object/apply:os.system ["id"]\n', ["line 1, column 10"]),
    ("deep-nesting", b"volumes: " + b"[" * 5000 + b"]" * 5000 + b"\n", ["not valid YAML or JSON"]),
    ("binary", b"\x00\x01\x02", ["not valid YAML or JSON"]),
]


@pytest.mark.parametrize("case,content,expect", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_file__problem_lines_and_nothing_written(seeded, vvg, tmp_path, case, content, expect):
    snap = Snapshot(seeded, vvg)
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(content)
    for argv in (("policy", "validate", str(path)), ("policy", "apply", str(path), "--dry-run")):
        r = vvg(*argv)
        assert (r.code, r.out) == (1, ""), (argv, r)
        lines = r.err.splitlines()
        assert lines[-1].endswith(("1 problem", " problems")) and len(lines) >= 2, lines
        assert all(len(x) < 600 for x in lines)
        for text in expect:
            assert text in lines[0], (case, text, lines)
    snap.assert_unchanged(seeded, vvg)


def test_duplicate_keys__every_one_reported_with_its_place_together_with_the_entries_problems(aws, vvg, tmp_path):
    docs = json.loads(json.dumps(GOOD))
    docs[1]["size_mb"] = 0
    text = yaml.safe_dump({"volumes": docs}, sort_keys=False)
    text = text.replace("  storage_array: S1\n", "  storage_array: S1\n  storage_array: S3\n")
    r = vvg("policy", "validate", write(tmp_path, text, "dups.yaml"))
    lines = r.err.splitlines()
    assert sum("duplicate key 'storage_array'" in x for x in lines) == 2, lines
    assert any("volumes[1] (vvol-b): size_mb" in x for x in lines) and lines[-1] == "3 problems", lines


def test_apply_without_dry_run__still_one_line(seeded, vvg, tmp_path):
    docs = entries()
    docs[0]["size_mb"] = 0
    docs[1]["size_mb"] = 0
    r = vvg("policy", "apply", write(tmp_path, docs))
    assert r.code == 1 and r.err.count("\n") == 1 and "nothing was applied" in r.err


def test_export_then_dry_run__round_trips_with_nothing_to_change(seeded, vvg, tmp_path):
    path = tmp_path / "export.json"
    path.write_text(vvg("policy", "export").out)
    out = vvg("policy", "apply", str(path), "--dry-run").json()
    assert out == {"created": [], "updated": [], "unchanged": 3, "warnings": []}  # the password is kept
