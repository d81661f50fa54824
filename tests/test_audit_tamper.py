"""Tamper evidence of the audit history (docs/threat-model.md): every stored field of a record is under its
MAC, and signed checkpoints in an Object Lock bucket catch what a table writer can do without the keys:
delete a whole chain with its head, put back an old head after deleting newer records, hide a record from
the indexes. Each scenario is played with the table access an attacker would have, then `vvg audit verify`
must exit 1 naming the record, and a refused command must write nothing."""
from __future__ import annotations

import base64
import json
import threading
import time

import boto3
import pytest
from botocore.exceptions import ClientError

from vvolguard.adapters.audit import HEAD_SK, STORED_FIELDS, AuditLog, AuditRecord
from vvolguard.adapters.checkpoints import PREFIX, CheckpointStore


def ddb():
    return boto3.client("dynamodb", region_name="us-east-1")


def s3():
    return boto3.client("s3", region_name="us-east-1")


def write(settings, vm: str, n: int) -> None:
    log = AuditLog(settings)
    for i in range(n):
        log.append([AuditRecord(actor="cli", action="attach", outcome="done", reason=f"r{i}", vm_id=vm,
                                volume_id=f"vvol-{vm}", event_id=f"{vm}-ev-{i}", event_type="vm.preboot",
                                policy_version=1, detail={"n": str(i)})])


def chain_items(settings, chain: str) -> list[dict]:
    out = ddb().query(TableName=settings.audit_table, KeyConditionExpression="chain = :c",
                      ExpressionAttributeValues={":c": {"S": chain}}, ConsistentRead=True)["Items"]
    return sorted(out, key=lambda i: int(i["seq"]["N"]))


def head_item(settings, chain: str) -> dict:
    return ddb().get_item(TableName=settings.state_table, Key={"pk": {"S": chain}, "sk": {"S": HEAD_SK}},
                          ConsistentRead=True)["Item"]


def delete_record(settings, item: dict) -> None:
    ddb().delete_item(TableName=settings.audit_table, Key={"chain": item["chain"], "seq": item["seq"]})


def dump_tables(settings) -> dict:
    out = {}
    for name in (settings.state_table, settings.audit_table):
        out[name] = sorted(json.dumps(i, sort_keys=True) for i in ddb().scan(TableName=name, ConsistentRead=True)["Items"])
    return out


def objects(settings) -> list[tuple[str, str]]:
    page = s3().list_object_versions(Bucket=settings.audit_checkpoint_bucket, Prefix=PREFIX)
    return [(v["Key"], v["VersionId"]) for v in page.get("Versions", [])]


@pytest.fixture
def history(aws):
    """Two VM chains (vm-1: 5 records, vm-2: 3) and a user chain."""
    write(aws, "vm-1", 5)
    write(aws, "vm-2", 3)
    AuditLog(aws).append([AuditRecord(actor="user:alice", action="user_add", outcome="done")])
    return aws


def verify_fails(vvg, chain: str, seq: int, words: str) -> dict:
    r = vvg("audit", "verify")
    assert r.code == 1, r
    line = r.err.strip()
    assert line.count("\n") == 0 and f"record {seq} of chain {chain}:" in line and words in line, line
    return r.json()


# ---------------------------------------------------------------- the table writer's attacks


def test_intact_history_with_a_checkpoint__verifies_and_the_summary_names_the_checkpoint(history, vvg):
    cp = vvg("audit", "checkpoint")
    assert cp.code == 0, cp
    out = cp.json()
    assert out["chains"] == 3 and out["location"].startswith(f"s3://{history.audit_checkpoint_bucket}/{PREFIX}")
    assert set(out) >= {"at", "chains", "location"}
    r = vvg("audit", "verify")
    assert r.code == 0, r
    assert r.json()["checkpoint"] == {"at": out["at"], "chains": 3, "location": out["location"]}


def test_deleting_a_whole_chain_with_its_head__fails_verify(history, vvg):
    assert vvg("audit", "checkpoint").code == 0
    for item in chain_items(history, "VM#vm-1"):
        delete_record(history, item)
    ddb().delete_item(TableName=history.state_table, Key={"pk": {"S": "VM#vm-1"}, "sk": {"S": HEAD_SK}})
    summary = verify_fails(vvg, "VM#vm-1", 5, "chain removed")
    assert summary["ok"] is False and summary["checkpoint"]["chains"] == 3


def test_putting_back_an_old_head_after_deleting_newer_records__fails_verify(history, vvg):
    old_head = head_item(history, "VM#vm-1")  # saved by the attacker at seq 5
    write(history, "vm-1", 3)                 # records 6..8
    assert vvg("audit", "checkpoint").code == 0
    for item in chain_items(history, "VM#vm-1")[5:]:
        delete_record(history, item)
    ddb().put_item(TableName=history.state_table, Item=old_head)
    verify_fails(vvg, "VM#vm-1", 8, "head was rolled back")


def test_a_rolled_back_head_is_never_signed_by_a_later_checkpoint(history, vvg):
    """The next checkpoint (the reconciler's) keeps the earlier entry: the rollback stays visible."""
    old_head = head_item(history, "VM#vm-1")
    write(history, "vm-1", 2)
    assert vvg("audit", "checkpoint").code == 0
    for item in chain_items(history, "VM#vm-1")[5:]:
        delete_record(history, item)
    ddb().put_item(TableName=history.state_table, Item=old_head)
    again = vvg("audit", "checkpoint")
    assert again.code == 0 and again.json()["held_back"] == 1 and "behind the previous checkpoint" in again.err
    verify_fails(vvg, "VM#vm-1", 7, "head was rolled back")


@pytest.mark.parametrize("field,value", [("month", "1999-01"), ("at_key", "1999-01-01T00:00:00.000Z#VM#vm-1#000000000003")])
def test_changing_a_records_index_keys__hides_it_from_list_but_fails_verify(history, vvg, field, value):
    item = chain_items(history, "VM#vm-1")[2]
    ddb().update_item(TableName=history.audit_table, Key={"chain": item["chain"], "seq": item["seq"]},
                      UpdateExpression="SET #f = :v", ExpressionAttributeNames={"#f": field},
                      ExpressionAttributeValues={":v": {"S": value}})
    listed = [json.loads(x) for x in vvg("audit", "list", "--limit", "1000").out.splitlines()]
    if field == "month":
        assert "vm-1-ev-2" not in {x["event_id"] for x in listed}  # the attack works on the listing ...
    verify_fails(vvg, "VM#vm-1", 3, "altered")                       # ... and is caught


CHANGES = {
    "at": {"S": "2020-01-01T00:00:00.000Z"}, "actor": {"S": "reconciler"}, "vm_id": {"S": "vm-9"},
    "volume_id": {"S": "vvol-9"}, "host_id": {"S": "host-9"}, "event_id": {"S": "other"},
    "event_type": {"S": "vm.shutdown"}, "action": {"S": "detach"}, "outcome": {"S": "denied"},
    "reason": {"S": "edited"}, "policy_version": {"N": "7"}, "detail": {"M": {"n": {"S": "99"}}},
    "prev": {"S": "0" * 64}, "month": {"S": "2020-01"}, "at_key": {"S": "x"}, "v": {"N": "1"},
    "mac": {"S": "f" * 64},
}


def test_changing_or_removing_any_stored_field__fails_verify_naming_the_record(history, vvg):
    """Each field in turn (one emulation, the record put back after each): changed, then removed."""
    original = chain_items(history, "VM#vm-2")[1]
    key = {"chain": original["chain"], "seq": original["seq"]}
    assert vvg("audit", "verify").code == 0
    fields = sorted(set(STORED_FIELDS) - {"chain", "seq"} | {"mac"})
    assert set(fields) == set(CHANGES)
    for field in fields:
        for how in ("SET #f = :v", "REMOVE #f"):
            extra = {"ExpressionAttributeValues": {":v": CHANGES[field]}} if how.startswith("SET") else {}
            ddb().update_item(TableName=history.audit_table, Key=key, UpdateExpression=how,
                              ExpressionAttributeNames={"#f": field}, **extra)
            if not (how.startswith("REMOVE") and field == "host_id"):  # the record has no host_id to remove
                r = vvg("audit", "verify")
                assert r.code == 1 and "record 2 of chain VM#vm-2:" in r.err and "altered" in r.err, (field, how, r)
            ddb().put_item(TableName=history.audit_table, Item=original)
    assert vvg("audit", "verify").code == 0


def test_adding_an_attribute__fails_verify(history, vvg):
    item = chain_items(history, "VM#vm-2")[2]
    ddb().update_item(TableName=history.audit_table, Key={"chain": item["chain"], "seq": item["seq"]},
                      UpdateExpression="SET note = :n", ExpressionAttributeValues={":n": {"S": "x"}})
    verify_fails(vvg, "VM#vm-2", 3, "an attribute was added")


def test_first_format_records__still_verify_and_their_index_keys_are_checked(history, vvg):
    """Records written before format 2 (no ``v``, MAC over the record's fields) keep verifying."""
    from vvolguard.adapters import aws as aws_adapter
    from vvolguard.adapters.audit import compute_mac, head_tag

    key = aws_adapter.audit_key(history.region, history.audit_key_secret_id)
    at = "2026-01-02T03:04:05.000Z"
    rec = {"at": at, "actor": "cli", "action": "policy_create", "outcome": "done", "volume_id": "vvol-old"}
    mac = compute_mac(key, "ACTOR#old", 1, "", rec)
    item = {"chain": {"S": "ACTOR#old"}, "seq": {"N": "1"}, "month": {"S": "2026-01"}, "prev": {"S": ""},
            "at_key": {"S": f"{at}#ACTOR#old#000000000001"}, "mac": {"S": mac},
            **{k: {"S": v} for k, v in rec.items()}}
    ddb().put_item(TableName=history.audit_table, Item=item)
    ddb().put_item(TableName=history.state_table, Item={
        "pk": {"S": "ACTOR#old"}, "sk": {"S": HEAD_SK}, "kind": {"S": "head"}, "head_seq": {"N": "1"},
        "head_mac": {"S": mac}, "head_tag": {"S": head_tag(key, "ACTOR#old", 1, mac)}})
    assert vvg("audit", "verify").code == 0
    ddb().update_item(TableName=history.audit_table, Key={"chain": item["chain"], "seq": item["seq"]},
                      UpdateExpression="SET #m = :m", ExpressionAttributeNames={"#m": "month"},
                      ExpressionAttributeValues={":m": {"S": "1999-01"}})
    verify_fails(vvg, "ACTOR#old", 1, "index keys")


# ---------------------------------------------------------------- the checkpoints themselves


def _forge(settings, key: str, chains: dict, signature: bytes = b"\x30\x06\x02\x01\x01\x02\x01\x01") -> None:
    body = {"format": "vvg-audit-checkpoint/1", "at": "2099-01-01T00:00:00.000Z", "key": key,
            "chains": chains, "signing_key": "forged", "algorithm": "ECDSA_SHA_256",
            "signature": base64.b64encode(signature).decode()}
    s3().put_object(Bucket=settings.audit_checkpoint_bucket, Key=key, Body=json.dumps(body).encode())


def test_a_forged_checkpoint__is_ignored_and_verify_uses_the_earlier_valid_one(history, vvg):
    good = vvg("audit", "checkpoint").json()
    # Newest by name, naming a chain that does not exist: if it were trusted, verify would fail.
    _forge(history, f"{PREFIX}0000000000001-20990101T000000000Z-deadbeef.json", {"VM#ghost": {"seq": 3, "mac": "a" * 64}})
    r = vvg("audit", "verify")
    assert r.code == 0, r
    assert r.json()["checkpoint"]["location"] == good["location"] and r.json()["checkpoints_ignored"] == 1


def test_an_altered_checkpoint__is_ignored_and_its_original_version_still_counts(history, vvg):
    good = vvg("audit", "checkpoint").json()
    key = good["location"].split("/", 3)[3]
    obj = json.loads(s3().get_object(Bucket=history.audit_checkpoint_bucket, Key=key)["Body"].read())
    obj["chains"].pop("VM#vm-1")  # hide a chain from the checkpoint, keep the signature
    s3().put_object(Bucket=history.audit_checkpoint_bucket, Key=key, Body=json.dumps(obj).encode())
    for item in chain_items(history, "VM#vm-1"):
        delete_record(history, item)
    ddb().delete_item(TableName=history.state_table, Key={"pk": {"S": "VM#vm-1"}, "sk": {"S": HEAD_SK}})
    summary = verify_fails(vvg, "VM#vm-1", 5, "chain removed")
    assert summary["checkpoint"]["location"] == good["location"] and summary["checkpoints_ignored"] == 1


def test_an_old_checkpoint_copied_under_a_newer_name__is_ignored(history, vvg):
    first = vvg("audit", "checkpoint").json()
    write(history, "vm-1", 2)
    second = vvg("audit", "checkpoint").json()
    old = s3().get_object(Bucket=history.audit_checkpoint_bucket, Key=first["location"].split("/", 3)[3])["Body"].read()
    s3().put_object(Bucket=history.audit_checkpoint_bucket,
                    Key=f"{PREFIX}0000000000001-20990101T000000000Z-0badc0de.json", Body=old)
    r = vvg("audit", "verify")
    assert r.code == 0 and r.json()["checkpoint"]["location"] == second["location"], r


def test_object_lock__refuses_to_delete_a_checkpoint_and_a_delete_marker_does_not_hide_it(history, vvg):
    good = vvg("audit", "checkpoint").json()
    [(key, version)] = objects(history)
    with pytest.raises(ClientError) as exc:
        s3().delete_object(Bucket=history.audit_checkpoint_bucket, Key=key, VersionId=version)
    assert exc.value.response["Error"]["Code"] == "AccessDenied"
    s3().delete_object(Bucket=history.audit_checkpoint_bucket, Key=key)  # only a delete marker
    assert objects(history) == [(key, version)]
    for item in chain_items(history, "VM#vm-2"):
        delete_record(history, item)
    ddb().delete_item(TableName=history.state_table, Key={"pk": {"S": "VM#vm-2"}, "sk": {"S": HEAD_SK}})
    summary = verify_fails(vvg, "VM#vm-2", 3, "chain removed")
    assert summary["checkpoint"]["location"] == good["location"]


def test_the_bucket_has_compliance_retention_and_versioning(history):
    lock = s3().get_object_lock_configuration(Bucket=history.audit_checkpoint_bucket)["ObjectLockConfiguration"]
    assert lock["ObjectLockEnabled"] == "Enabled" and lock["Rule"]["DefaultRetention"]["Mode"] == "COMPLIANCE"
    assert s3().get_bucket_versioning(Bucket=history.audit_checkpoint_bucket)["Status"] == "Enabled"
    key = boto3.client("kms", region_name="us-east-1").describe_key(KeyId=history.audit_checkpoint_key_id)["KeyMetadata"]
    assert (key["KeySpec"], key["KeyUsage"]) == ("ECC_NIST_P256", "SIGN_VERIFY")


def test_finding_the_latest_checkpoint__lists_one_bounded_page(history, vvg):
    """Many checkpoints: the reader asks S3 for one page of versions, newest first (never the whole bucket)."""
    store = CheckpointStore(history)
    log = AuditLog(history)
    for _ in range(51):  # more than one page of 50
        log.checkpoint(store)
    calls = []
    from vvolguard.adapters import aws as aws_adapter

    hook = lambda model, **_: calls.append(model.name)  # noqa: E731
    aws_adapter.add_hook("before-call.s3", hook)
    try:
        cp, ignored = store.latest()
    finally:
        aws_adapter.remove_hook("before-call.s3", hook)
    assert cp is not None and ignored == 0
    assert calls == ["ListObjectVersions", "GetObject"]
    assert cp.key == min(k for k, _ in objects(history))


def test_a_flood_of_forged_checkpoints__fails_verify_instead_of_hiding_the_real_ones(history, vvg, monkeypatch):
    from vvolguard.adapters import checkpoints

    assert vvg("audit", "checkpoint").code == 0
    monkeypatch.setattr(checkpoints, "MAX_EXAMINED", 3)
    for i in range(3):
        _forge(history, f"{PREFIX}000000000000{i}-20990101T000000000Z-0000000{i}.json", {})
    s3().put_object(Bucket=history.audit_checkpoint_bucket, Key=f"{PREFIX}junk", Body=b"x")  # skipped unread
    r = vvg("audit", "verify")
    assert r.code == 1 and r.out == "" and "no checkpoint with a valid signature among the newest 3" in r.err, r


def test_without_any_checkpoint__verify_reports_none(history, vvg):
    r = vvg("audit", "verify")
    assert r.code == 0 and r.json()["checkpoint"] is None


def test_a_missing_bucket__verify_and_checkpoint_fail_with_one_line_and_write_nothing(history, vvg, monkeypatch):
    monkeypatch.setenv("VVG_AUDIT_CHECKPOINT_BUCKET", "vvg-no-such-bucket")
    before = dump_tables(history)
    for argv in (("audit", "verify"), ("audit", "checkpoint")):
        r = vvg(*argv)
        assert r.code == 1 and r.out == "" and r.err.count("\n") == 1 and "vvg-no-such-bucket" in r.err, (argv, r)
    assert dump_tables(history) == before


# ---------------------------------------------------------------- the reconciler writes them


def test_each_reconciler_pass__writes_a_checkpoint(history):
    from vvolguard.services.reconcile import Reconciler

    first = Reconciler(history).run()
    second = Reconciler(history).run()
    assert first["ok"] and second["ok"], (first, second)
    assert first["checkpoint"]["chains"] == 3 and first["checkpoint"]["location"] != second["checkpoint"]["location"]
    assert len(objects(history)) == 2
    assert AuditLog(history).verify()["checkpoint"]["location"] == second["checkpoint"]["location"]


def test_a_reconciler_pass_after_a_chain_was_deleted__reports_it(history):
    from vvolguard.services.reconcile import Reconciler

    Reconciler(history).run()
    for item in chain_items(history, "VM#vm-2"):
        delete_record(history, item)
    ddb().delete_item(TableName=history.state_table, Key={"pk": {"S": "VM#vm-2"}, "sk": {"S": HEAD_SK}})
    out = Reconciler(history).run()
    assert out["ok"] is False and "VM#vm-2" in out["errors"][0] and out["checkpoint"]["chains"] == 3


def test_the_local_stacks_reconciler_loop__writes_checkpoints(history, monkeypatch):
    from infra.local import LocalStack

    monkeypatch.setenv("VVG_RECONCILE_SECONDS", "0.05")
    stack = LocalStack(1, 2, 3, seed=False, admin_password="x" * 12, quiet=True)
    t = threading.Thread(target=stack._reconcile_loop, args=(history,), daemon=True)
    t.start()
    deadline = time.time() + 20
    while not objects(history) and time.time() < deadline:
        time.sleep(0.05)
    stack._stopping.set()
    t.join(10)
    assert not t.is_alive() and objects(history)


@pytest.mark.parametrize("value", ["abc", "-1", "1e9", "nan"])
def test_the_local_stack__refuses_a_bad_reconcile_interval(monkeypatch, value):
    from infra.local import LocalStack

    monkeypatch.setenv("VVG_RECONCILE_SECONDS", value)
    with pytest.raises(SystemExit) as exc:
        LocalStack(1, 2, 3)
    assert "VVG_RECONCILE_SECONDS" in str(exc.value)


# ---------------------------------------------------------------- the template declares them


def test_template__checkpoint_key_and_locked_bucket_are_declared_with_least_privilege():
    from infra.template import Template, load

    res = load()["Resources"]
    key = res["AuditCheckpointKey"]["Properties"]
    assert (key["KeySpec"], key["KeyUsage"]) == ("ECC_NIST_P256", "SIGN_VERIFY")
    actions = [a for st in key["KeyPolicy"]["Statement"] for a in (st["Action"] if isinstance(st["Action"], list) else [st["Action"]])]
    assert not {"kms:ScheduleKeyDeletion", "kms:DisableKey", "kms:Encrypt", "kms:Decrypt"} & set(actions)
    assert Template().ref("AuditCheckpointKeyAlias") == "alias/vvg-audit-checkpoint"
    b = res["AuditCheckpointBucket"]
    p = b["Properties"]
    assert b["DeletionPolicy"] == b["UpdateReplacePolicy"] == "Retain"
    assert p["ObjectLockEnabled"] is True and p["ObjectLockConfiguration"]["Rule"]["DefaultRetention"]["Mode"] == "COMPLIANCE"
    assert p["VersioningConfiguration"] == {"Status": "Enabled"}
    assert p["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert set(p["PublicAccessBlockConfiguration"].values()) == {True} and len(p["PublicAccessBlockConfiguration"]) == 4
    env = Template().environment()
    assert env["VVG_AUDIT_CHECKPOINT_KEY_ID"] == "alias/vvg-audit-checkpoint"
    assert env["VVG_AUDIT_CHECKPOINT_BUCKET"] == Template().ref("AuditCheckpointBucket")
    # Only the reconciler and operators sign; the dashboard verifies; the webhook has nothing to do with it.
    t = Template()

    def acts(role: str) -> set[str]:
        props = t.resources[role]["Properties"]
        docs = [props["PolicyDocument"]] if "PolicyDocument" in props else [x["PolicyDocument"] for x in props["Policies"]]
        return {a for d in docs for st in d["Statement"] for a in (st["Action"] if isinstance(st["Action"], list) else [st["Action"]])}
    assert "kms:Sign" in acts("ReconcileRole") and "kms:Sign" in acts("OperatorPolicy")
    # The dashboard shows the reconciler's stored tamper check (docs/audit-check.md): no checkpoint access at all.
    assert not {a for a in acts("DashboardRole") if a.startswith("s3:") or a in ("kms:Sign", "kms:Verify")}
    assert not {a for a in acts("EventsRole") if a.startswith("s3:") or a in ("kms:Sign", "kms:Verify")}
    assert not {a for r in ("ReconcileRole", "DashboardRole", "OperatorPolicy") for a in acts(r)
                if a.startswith("s3:Delete") or a.startswith("s3:PutObjectRetention") or a == "s3:BypassGovernanceRetention"}


def test_verify_while_records_are_appended__a_live_append_is_not_reported_as_tampering(aws, monkeypatch):
    """`vvg audit verify` on a live system: the table scan and the heads are not one snapshot, so a record
    appended between them (here: right after the scan, to an old chain and to a brand-new one) looked like a
    removed record. Each suspect chain is read again as a consistent snapshot; real tampering still fails."""
    write(aws, "vm-a", 3)
    log = AuditLog(aws)
    log.checkpoint()
    original = AuditLog.heads
    calls = {"n": 0}

    def heads_after_an_append(self):
        calls["n"] += 1
        if calls["n"] == 1:  # a reconciler pass or a webhook writes while verify is between its two reads
            write(aws, "vm-a", 1)
            write(aws, "vm-new", 1)
        return original(self)

    monkeypatch.setattr(AuditLog, "heads", heads_after_an_append)
    summary = AuditLog(aws).verify()
    assert summary["ok"], summary["first_problem"]
    assert calls["n"] == 1
    # the same moment with a record really removed is still caught
    monkeypatch.setattr(AuditLog, "heads", original)
    delete_record(aws, chain_items(aws, "VM#vm-a")[1])
    summary = AuditLog(aws).verify()
    assert not summary["ok"] and summary["first_problem"]["chain"] == "VM#vm-a"
    assert summary["first_problem"]["seq"] == 2
