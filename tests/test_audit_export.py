"""`vvg audit export` and `vvg audit verify --file` (docs/audit-export.md): an export carries each record's
chain, seq, prev and mac, and is checked offline with the audit key; a good export verifies, an altered,
removed or reordered record fails naming the entry, filtered exports (one VM, since) still verify, and a
refused command writes nothing."""
from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta, timezone

import boto3
import pytest

from vvolguard.adapters.audit import AuditLog, AuditRecord, RECORD_FIELDS

FIELDS = set(RECORD_FIELDS) | {"chain", "seq", "prev", "mac"}


def write(settings, vm: str, n: int, at: str | None = None) -> None:
    log = AuditLog(settings)
    for i in range(n):
        log.append([AuditRecord(actor="cli", action="attach", outcome="done", reason=f"r{i}", vm_id=vm,
                                event_id=f"{vm}-{i}", policy_version=2, detail={"i": str(i)}, at=at or "")])


@pytest.fixture(scope="module")
def history():
    """One emulation for the module (the tests read it; the two that add to it run last): vm-1 has 3 records
    from three days ago and 3 from now, vm-2 has 2, host-5 one."""
    from moto import mock_aws

    from infra.bootstrap import bootstrap
    from vvolguard.adapters import aws as aws_adapter
    from vvolguard.settings import Settings

    with mock_aws():
        aws_adapter.reset_clients()
        settings = Settings.from_env()
        bootstrap(settings)
        old = (datetime.now(timezone.utc) - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        write(settings, "vm-1", 3, at=old)
        write(settings, "vm-1", 3)
        write(settings, "vm-2", 2)
        AuditLog(settings).append([AuditRecord(actor="user:admin", action="host_enroll", outcome="done", host_id="host-5")])
        yield settings
        aws_adapter.reset_clients()


def export(vvg, tmp_path, *args, name="e.json") -> tuple[list, str]:
    out = tmp_path / name
    r = vvg("audit", "export", *args, "--out", str(out))
    assert r.code == 0, r
    data = json.loads(out.read_text())
    assert r.json() == {"records": len(data), "chains": len({d["chain"] for d in data}), "out": str(out)}
    return data, str(out)


def check(vvg, tmp_path, records, *flags) -> object:
    path = tmp_path / "check.json"
    path.write_text(json.dumps(records))
    return vvg("audit", "verify", "--file", str(path), *flags)


def test_export__every_record_with_chain_seq_prev_mac_and_it_verifies(history, vvg, tmp_path):
    data, path = export(vvg, tmp_path)
    assert len(data) == 9 and all(set(d) == FIELDS for d in data)
    assert {d["chain"] for d in data} == {"VM#vm-1", "VM#vm-2", "HOST#host-5"}
    r = vvg("audit", "verify", "--file", path)
    assert r.code == 0, r
    assert r.json()["ok"] is True and r.json()["records"] == 9 and r.json()["chains_starting_after_record_1"] == 0


def test_export__one_vm_and_since__are_partial_chains_that_still_verify(history, vvg, tmp_path):
    one, path = export(vvg, tmp_path, "--vm", "vm-1")
    assert [d["seq"] for d in one] == [1, 2, 3, 4, 5, 6]
    assert vvg("audit", "verify", "--file", path).code == 0
    recent, path = export(vvg, tmp_path, "--since", "1d", name="r.json")
    assert sorted((d["chain"], d["seq"]) for d in recent if d["chain"] == "VM#vm-1") == [("VM#vm-1", s) for s in (4, 5, 6)]
    r = vvg("audit", "verify", "--file", path)
    assert r.code == 0 and r.json()["chains_starting_after_record_1"] == 1, r
    both, path = export(vvg, tmp_path, "--vm", "vm-1", "--since", "2d", name="b.json")
    assert [d["seq"] for d in both] == [4, 5, 6] and vvg("audit", "verify", "--file", path).code == 0


@pytest.mark.parametrize("field,value", [("reason", "edited"), ("at", "2020-01-01T00:00:00.000Z"), ("actor", "reconciler"),
                                         ("detail", {"i": "9"}), ("policy_version", 3), ("seq", 9), ("chain", "VM#vm-2"),
                                         ("mac", "0" * 64), ("prev", "1" * 64), ("vm_id", None)])
def test_verify_file__an_altered_record_fails_naming_its_entry(history, vvg, tmp_path, field, value):
    data, _ = export(vvg, tmp_path, "--vm", "vm-1")
    data[2][field] = value
    r = check(vvg, tmp_path, data)
    assert r.code == 1 and r.err.count("\n") == 1, r
    assert "entry 3 " in r.err and "altered" in r.err, r.err


def test_verify_file__a_removed_record_fails(history, vvg, tmp_path):
    data, _ = export(vvg, tmp_path, "--vm", "vm-1")
    del data[2]
    r = check(vvg, tmp_path, data)
    assert r.code == 1 and "entry 3 (record 4 of chain VM#vm-1): removed" in r.err, r


@pytest.mark.parametrize("i,j", [(1, 2), (0, 5)])
def test_verify_file__reordered_records_fail(history, vvg, tmp_path, i, j):
    data, _ = export(vvg, tmp_path, "--vm", "vm-1")
    data[i], data[j] = data[j], data[i]
    r = check(vvg, tmp_path, data)
    assert r.code == 1 and "reordered" in r.err, r


def test_verify_file__a_record_from_another_history_fails(history, vvg, tmp_path):
    data, _ = export(vvg, tmp_path, "--vm", "vm-1")
    data[3]["prev"], data[3]["mac"] = data[1]["prev"], data[1]["mac"]  # a genuine MAC of another record
    r = check(vvg, tmp_path, data)
    assert r.code == 1 and "entry 4 " in r.err, r


def test_verify_file__a_duplicated_record_fails(history, vvg, tmp_path):
    data, _ = export(vvg, tmp_path, "--vm", "vm-1")
    r = check(vvg, tmp_path, data[:3] + [data[2]] + data[3:])
    assert r.code == 1 and "duplicated" in r.err, r


def test_verify_file__the_newest_first_order_verifies_too(history, vvg, tmp_path):
    data, _ = export(vvg, tmp_path, "--vm", "vm-1")
    assert check(vvg, tmp_path, list(reversed(data))).code == 0


HOSTILE = [
    (b"", "not JSON"), (b"{", "not JSON"), (b'{"a": 1}', "not a JSON array"), (b"[" * 100000 + b"]" * 100000, "not JSON"),
    (b"\xff\xfe", "not JSON"),
]


@pytest.mark.parametrize("content,words", HOSTILE)
def test_verify_file__malformed_files_are_refused_in_one_line(history, vvg, tmp_path, content, words):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    r = vvg("audit", "verify", "--file", str(path))
    assert r.code == 1 and r.out == "" and r.err.count("\n") == 1 and words in r.err, r


@pytest.mark.parametrize("rows", [[1, 2], [None], [{"chain": "VM#x"}], [{"chain": 1, "seq": "1", "mac": [], "prev": "", "at": ""}],
                                  [{"chain": "VM#x", "seq": True, "mac": "", "prev": "", "at": ""}]])
def test_verify_file__entries_that_are_not_records_fail_naming_them(history, vvg, tmp_path, rows):
    r = check(vvg, tmp_path, rows)
    assert r.code == 1 and "entry 1 " in r.err, r


def test_verify_file__a_missing_file_and_a_stray_flag(history, vvg, tmp_path):
    r = vvg("audit", "verify", "--file", str(tmp_path / "nope.json"))
    assert r.code == 1 and "cannot read" in r.err
    r = vvg("audit", "verify", "--allow-gaps")
    assert r.code == 2 and r.out == ""


@pytest.mark.parametrize("args,words", [
    (("--since", "yesterday"), "duration"), (("--since", "99999d"), "3660d"), (("--vm", "../etc"), "vm_id"),
    (("--since", ""), "duration"),
])
def test_export__bad_arguments_are_refused_and_no_file_is_written(history, vvg, tmp_path, args, words):
    out = tmp_path / "x.json"
    r = vvg("audit", "export", *args, "--out", str(out))
    assert r.code == 1 and r.out == "" and words in r.err, r
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_export__an_unwritable_destination_is_refused(history, vvg, tmp_path):
    r = vvg("audit", "export", "--out", str(tmp_path / "missing" / "x.json"))
    assert r.code == 1 and "does not exist" in r.err
    r = vvg("audit", "export", "--out", str(tmp_path))
    assert r.code == 1 and "is a directory" in r.err
    assert vvg("audit", "export").code == 2  # --out is required
    assert list(tmp_path.iterdir()) == []


def test_export__nothing_secret_in_it(history, vvg, tmp_path):
    from vvolguard.adapters import aws as aws_adapter

    key = aws_adapter.audit_key(history.region, history.audit_key_secret_id).decode()
    _, path = export(vvg, tmp_path)
    assert key not in open(path).read()


# ---- these two add to the shared history: they run last


def test_dashboard_json_export__verifies_offline(history, vvg, tmp_path):
    from tests.dashboard_support import _make_app, sign_in, seed

    seed(history)
    app = _make_app(history)
    client = app.test_client()
    sign_in(client, "viewer")
    data = json.loads(client.get("/audit/export.json").get_data(as_text=True))
    assert data and all({"chain", "seq", "mac", "prev"} <= set(d) for d in data)
    r = check(vvg, tmp_path, data)
    assert r.code == 0, r
    text = client.get("/audit/export.csv").get_data(as_text=True)
    assert {"chain", "seq", "prev", "mac"} <= set(next(csv.reader(io.StringIO(text))))
    # Filtered by type: records are missing between present ones, which only --allow-gaps accepts.
    AuditLog(history).append([AuditRecord(actor="cli", action="detach", outcome="done", vm_id="vm-1")])
    write(history, "vm-1", 1)
    attaches = json.loads(client.get("/audit/export.json?vm=vm-1&type=attach").get_data(as_text=True))
    assert check(vvg, tmp_path, attaches).code == 1
    assert check(vvg, tmp_path, attaches, "--allow-gaps").code == 0


def test_verify_file__another_audit_key_fails_every_record(history, vvg, tmp_path):
    data, _ = export(vvg, tmp_path, "--vm", "vm-2")
    boto3.client("secretsmanager", region_name="us-east-1").put_secret_value(
        SecretId=history.audit_key_secret_id, SecretString="another-key")
    from vvolguard.adapters import aws as aws_adapter

    aws_adapter.audit_key.cache_clear()
    try:
        r = check(vvg, tmp_path, data)
        assert r.code == 1 and "entry 1 " in r.err, r
    finally:
        aws_adapter.audit_key.cache_clear()
