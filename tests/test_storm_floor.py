"""bench/stormfloor.py's replay rules (docs/benchmarks.md, the boot storm's floor): a replayed write never
lands on a key the event path reads, reads and condition checks go as they were, and the floor volumes
suffice for every recorded attach and detach. Pure: no emulation."""
from __future__ import annotations

from types import SimpleNamespace

from bench.stormfloor import StormFloor, _Thread

SETTINGS = SimpleNamespace(hosts_table="vvg-hosts", state_table="vvg-state")


def _floor(recorded=None) -> tuple[StormFloor, _Thread]:
    floor = StormFloor("http://127.0.0.1:1", "us-east-1", SETTINGS, recorded or {"host-00": []})
    floor.keys = {"vvg-state": ("pk", "sk", "S"), "vvg-events": ("event_id", None, None),
                  "vvg-audit": ("chain", "seq", "N"), "vvg-hosts": ("host_id", None, None)}
    return floor, _Thread("host-00", {})


CLAIM = {"TransactItems": [
    {"ConditionCheck": {"TableName": "vvg-hosts", "Key": {"host_id": {"S": "host-00"}},
                        "ConditionExpression": "#0 = :0", "ExpressionAttributeNames": {"#0": "status"},
                        "ExpressionAttributeValues": {":0": {"S": "active"}}}},
    {"Put": {"TableName": "vvg-events", "Item": {"event_id": {"S": "host-00/e1"}, "status": {"S": "in_progress"}},
             "ConditionExpression": "attribute_not_exists (#0)", "ExpressionAttributeNames": {"#0": "event_id"}}},
    {"Put": {"TableName": "vvg-state", "Item": {"pk": {"S": "VM#vm-1"}, "sk": {"S": "CLAIM#host-00/e1"}}}},
    {"Update": {"TableName": "vvg-state", "Key": {"pk": {"S": "VM#vm-1"}, "sk": {"S": "POLICY#vvol-1"}},
                "ConditionExpression": "#0 = :0", "UpdateExpression": "SET #1 = :1 ADD #2 :2",
                "ExpressionAttributeNames": {"#0": "state_version", "#1": "busy_event", "#2": "state_version"},
                "ExpressionAttributeValues": {":0": {"N": "3"}, ":1": {"S": "host-00/e1"}, ":2": {"N": "1"}}}},
    {"Put": {"TableName": "vvg-audit", "Item": {"chain": {"S": "VM#vm-1"}, "seq": {"N": "4"}, "mac": {"S": "ab"}},
             "ConditionExpression": "attribute_not_exists (#0)", "ExpressionAttributeNames": {"#0": "chain"}}},
    {"Delete": {"TableName": "vvg-state", "Key": {"pk": {"S": "VM#vm-1"}, "sk": {"S": "CLAIM#host-00/e0"}},
                "ConditionExpression": "attribute_exists (#0)", "ExpressionAttributeNames": {"#0": "pk"}}},
]}


def test_replayed_writes_go_to_floor_keys_and_checks_go_as_they_were():
    floor, th = _floor()
    out = floor._ddb(th, "TransactWriteItems", CLAIM)["TransactItems"]
    assert out[0] == CLAIM["TransactItems"][0]  # the host check: read-only, as it was
    kinds = [next(iter(i)) for i in out]
    assert kinds == ["ConditionCheck", "Put", "Put", "Update", "Put", "Delete"]
    for item in out[1:]:
        (kind, body), = item.items()
        key = body["Item"] if kind == "Put" else body["Key"]
        assert all(str(next(iter(v.values()))).startswith(("FLOOR~", "CLAIM#", "POLICY#", "floor"))
                   for k, v in key.items() if k in ("pk", "sk", "event_id", "chain")), body
        assert key.get("pk", key.get("chain", key.get("event_id")))["S"].startswith("FLOOR~"), body
    update = out[3]["Update"]
    assert update["UpdateExpression"] == "SET #1 = :1 ADD #2 :2" and "ConditionExpression" not in update
    assert update["ExpressionAttributeNames"] == {"#1": "busy_event", "#2": "state_version"}
    assert update["ExpressionAttributeValues"] == {":1": {"S": "host-00/e1"}, ":2": {"N": "1"}}
    assert out[1]["Put"]["Item"]["status"] == {"S": "in_progress"}  # the attributes are kept
    assert out[1]["Put"]["ConditionExpression"] == "attribute_not_exists(#fk)"  # a new key each time
    assert "ConditionExpression" not in out[5]["Delete"]
    # the state table's floor keys are re-used (it must not grow: moto's Query walks it whole) ...
    again = floor._ddb(th, "TransactWriteItems", CLAIM)["TransactItems"]
    assert again[2] == out[2] and again[3]["Update"]["Key"] == update["Key"]
    # ... the events and audit tables get a new key per write, all deleted after the replay
    assert again[1]["Put"]["Item"]["event_id"] != out[1]["Put"]["Item"]["event_id"]
    assert again[4]["Put"]["Item"]["seq"] != out[4]["Put"]["Item"]["seq"]
    assert len([t for t, _ in th.written if t == "vvg-state"]) == 3
    assert CLAIM["TransactItems"][2]["Put"]["Item"]["pk"] == {"S": "VM#vm-1"}  # the recording is untouched


def test_reads_go_as_they_were():
    floor, th = _floor()
    q = {"TableName": "vvg-state", "KeyConditionExpression": "#0 = :0", "ConsistentRead": True}
    assert floor._ddb(th, "Query", q) is q
    d = {"VolumeIds": ["vol-1"]}
    assert floor._ec2(th, "DescribeVolumes", d) == d


def test_provider_writes_act_on_floor_volumes_and_instances_only():
    recorded = {"host-00": [
        [("ec2", "CreateVolume", {"Size": 1}), ("ec2", "AttachVolume", {"VolumeId": "vol-real", "InstanceId": "i-vm1",
                                                                         "Device": "/dev/sdf"})],
        [("ec2", "DetachVolume", {"VolumeId": "vol-real2", "InstanceId": "i-vm2"})],  # attached before the storm
        [("ec2", "AttachVolume", {"VolumeId": "vol-real3", "InstanceId": "i-vm3", "Device": "/dev/sdf"})],
    ]}
    floor, th = _floor(recorded)
    floor.instances = {"i-vm1": "i-f1", "i-vm2": "i-f2", "i-vm3": "i-f3"}
    need_free, need_attached = floor._pool(recorded["host-00"])
    assert need_free == 0 and need_attached == [("i-f2", "/dev/sdf")]  # the detach frees one for the last attach
    th.available, th.attached = ["vol-f0"], {"i-f2": "vol-fa"}
    create = floor._ec2(th, "CreateVolume", {"Size": 1, "ClientToken": "t", "TagSpecifications": [
        {"ResourceType": "volume", "Tags": [{"Key": "vvg:volume-id", "Value": "vvol-1"}]}]})
    assert "ClientToken" not in create
    assert create["TagSpecifications"][0]["Tags"] == [{"Key": "vvg:volume-id", "Value": "floor~vvol-1"}]
    attach = floor._ec2(th, "AttachVolume", recorded["host-00"][0][1][2])
    assert attach == {"VolumeId": "vol-f0", "InstanceId": "i-f1", "Device": "/dev/sdf"}
    detach = floor._ec2(th, "DetachVolume", recorded["host-00"][1][0][2])
    assert detach == {"VolumeId": "vol-fa", "InstanceId": "i-f2"}
    tags = floor._ec2(th, "CreateTags", {"Resources": ["vol-real"], "Tags": []})
    assert tags["Resources"][0].startswith("vol-f")
