"""Robustness of the host webhook (docs/webhook-api.md and docs/architecture.md#the-storage-provider and docs/security-model.md#the-audit-history, issue 3's acceptance items).

Concurrency, provider faults, moto's permissiveness covered in code, the tamper-evident audit history and
secrets that never leak. Everything runs in-process: the real POST /v1/events handler under moto's
mock_aws, called from threads where the promise is about concurrency.

How provider calls are counted and faults injected
--------------------------------------------------
The provider builds its EC2 clients from a fresh ``boto3.session.Session`` per host (after an STS
AssumeRole), so a handler registered on ``boto3.DEFAULT_SESSION`` would never see them. botocore
registers ``botocore.handlers.BUILTIN_HANDLERS`` on *every* session it creates (that is how moto's own
stubber reaches every client), so the ``hooks`` fixture appends one ``before-call.ec2.*``
handler there for the test's duration. It sees each EC2 API call of every client created afterwards,
whatever code path built it, and either counts it or raises/returns the injected fault. ``before-call``
runs outside botocore's own HTTP retry loop, so each injected fault reaches the provider's retry logic
once per provider attempt. (Patching ``EbsProvider._assume``, or the product's own ``aws.add_hook``, would
also work but would silently miss a client built some other way; a count of "exactly one" must not be able
to pass by missing calls.)

The concurrency tests rely on tests/conftest.py installing infra.moto_patches: plain moto's
TransactWriteItems is not atomic across threads (a cancelled transaction restores whole-table copies and
undoes other threads' writes), which on its own produces double attaches that real DynamoDB never would.
"""
from __future__ import annotations

import json
import logging
import re
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError

from tests.conftest import attached_volume_ids, ec2_client, managed_volumes

ATTEMPTS = 3  # provider attempts per call in these tests (constructor argument, see the `svc` fixture)


# ---------------------------------------------------------------------------------------------- fixtures


class BotocoreHooks:
    """Records every EC2 API call (operation, params) and applies an optional fault per operation."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, dict]] = []
        self.faults: dict[str, object] = {}  # operation -> callable(n_th call of it) -> None | raises | response

    def __call__(self, model=None, params=None, **kwargs):
        op = model.name
        with self.lock:
            self.calls.append((op, dict((params or {}).get("body") or {})))
            n = sum(1 for o, _ in self.calls if o == op)
            fault = self.faults.get(op)
        if fault is not None:
            return fault(n)
        return None

    def count(self, op: str) -> int:
        with self.lock:
            return sum(1 for o, _ in self.calls if o == op)

    def params(self, op: str) -> list[dict]:
        with self.lock:
            return [p for o, p in self.calls if o == op]

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()


@pytest.fixture
def hooks(aws):
    """A before-call hook on every EC2 client created from now on (see the module docstring): on every new
    botocore session, and on the process's cached base session (built before this fixture) as well."""
    import botocore.handlers

    from vvolguard.adapters import aws as aws_adapter

    h = BotocoreHooks()
    base = aws_adapter.session(aws.region)  # before the append: a session built after it has the hook already
    base.events.register("before-call.ec2", h, unique_id="test-ec2-hooks")
    entry = ("before-call.ec2", h)
    botocore.handlers.BUILTIN_HANDLERS.append(entry)
    try:
        yield h
    finally:
        botocore.handlers.BUILTIN_HANDLERS.remove(entry)
        base.events.unregister("before-call.ec2", unique_id="test-ec2-hooks")


@pytest.fixture
def svc(webhook, hooks):
    """The handler's warm service, with a provider whose retries are fast (backoff 1 ms, ATTEMPTS attempts)."""
    from vvolguard.adapters.provider import EbsProvider
    from vvolguard.handlers import events as handler_module
    from vvolguard.services.events import EventService

    service = EventService(webhook.settings, provider=EbsProvider(webhook.settings, attempts=ATTEMPTS, backoff=0.001))
    handler_module._service = service
    return service


def client_error(code: str, status: int):
    """A before-call fault answering an EC2 error response (what a throttled or failing EC2 returns)."""

    def fault(n):
        http = AWSResponse("https://ec2.us-east-1.amazonaws.com/", status, {}, None)
        return http, {"Error": {"Code": code, "Message": "injected"}, "ResponseMetadata": {"HTTPStatusCode": status}}

    return fault


def raising(exc_factory):
    def fault(n):
        raise exc_factory()

    return fault


def only_first(fault):
    """The fault on the first call only (a transient error)."""
    return lambda n: fault(n) if n == 1 else None


def after_first(fault):
    """Every call but the first fails (the second volume of a multi-volume attach fails persistently)."""
    return lambda n: fault(n) if n > 1 else None


FAULTS = {
    "connect_timeout": raising(lambda: ConnectTimeoutError(endpoint_url="https://ec2.us-east-1.amazonaws.com/")),
    "endpoint_connection_error": raising(lambda: EndpointConnectionError(endpoint_url="https://ec2.us-east-1.amazonaws.com/")),
    "internal_error_500": client_error("InternalError", 500),
    "request_limit_exceeded": client_error("RequestLimitExceeded", 503),
}


# ---------------------------------------------------------------------------------------------- helpers


def policy(vm_id: str, volume_id: str):
    from vvolguard.adapters.models import PolicyItem

    return PolicyItem.get(f"VM#{vm_id}", f"POLICY#{volume_id}", consistent_read=True)


def add_policies(settings, yaml_text: str) -> None:
    from vvolguard.domain.policy import parse_policy_text
    from vvolguard.services.policies import PolicyService

    PolicyService(settings).apply(parse_policy_text(yaml_text.encode(), "extra.yaml"), actor="cli")


def audit_items() -> list[dict]:
    """Every audit record, raw (all attributes), via a plain table scan."""
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    items, kwargs = [], {"TableName": "vvg-audit", "ConsistentRead": True}
    while True:
        page = ddb.scan(**kwargs)
        items += page["Items"]
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def plain(item: dict) -> dict:
    from boto3.dynamodb.types import TypeDeserializer

    d = TypeDeserializer()
    return {k: d.deserialize(v) for k, v in item.items()}


def records_of(event_id: str) -> list[dict]:
    return [plain(i) for i in audit_items() if i.get("event_id", {}).get("S") == event_id]


def attachments_of(volume_id: str) -> list[dict]:
    vol = managed_volumes().get(volume_id)
    return [a for a in (vol or {}).get("Attachments", []) if a["State"] in ("attaching", "attached")]


def assert_clean(vm_id: str, *volume_ids: str) -> None:
    """Nothing half-done: not attached at EC2, not recorded attached, no claim left behind."""
    for vid in volume_ids:
        assert attachments_of(vid) == [], f"{vid} left attached at EC2"
        item = policy(vm_id, vid)
        assert not item.attached, f"{vid} recorded attached"
        assert item.busy_event is None and item.busy_until is None, f"{vid} claim not released"


def run_concurrently(n: int, fn) -> list:
    """Call fn(i) from n threads released together."""
    barrier = threading.Barrier(n)

    def go(i):
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(go, range(n)))


def instance_of(vm_id: str) -> dict:
    res = ec2_client().describe_instances(Filters=[{"Name": "tag:vvg:vm-id", "Values": [vm_id]}])["Reservations"]
    return res[0]["Instances"][0]


# ---------------------------------------------------------------------------------------------- 1. concurrency


def test_20_concurrent_deliveries_of_one_event_attach_exactly_once(webhook, svc, hooks):
    body = json.dumps({"event_id": "storm-1", "type": "vm.preboot", "vm_id": "vm-1"}).encode()
    headers = webhook.signed_headers(body)

    answers = run_concurrently(20, lambda i: webhook.raw(body, headers))

    statuses = Counter(code for code, _ in answers)
    assert set(statuses) <= {200, 409}, answers
    firsts = [b for c, b in answers if c == 200 and b["duplicate"] is False]
    assert len(firsts) == 1, answers
    for code, b in answers:
        if code == 409:
            assert b == {"error": {"code": "event_in_progress", "message": b["error"]["message"]}}
        else:
            assert b["decisions"] == firsts[0]["decisions"]
            assert b["event_id"] == "storm-1"
    assert firsts[0]["decisions"][0]["outcome"] == "done"
    assert hooks.count("AttachVolume") == 1
    assert len(attachments_of("vvol-1")) == 1
    assert policy("vm-1", "vvol-1").attached
    recs = records_of("storm-1")
    assert [(r["action"], r["outcome"]) for r in recs if r["action"] != "refuse"] == [("attach", "done")]
    refusals = [r for r in recs if r["action"] == "refuse"]
    assert len(refusals) <= statuses[409]  # a 409 of a known host is audited as a refusal (best effort)
    assert all((r["outcome"], r["reason"], r["actor"]) == ("denied", "event_in_progress", "host:host-1")
               for r in refusals)
    # a late redelivery (after the storm) is the stored answer
    code, late = webhook.raw(body, headers)
    assert (code, late["duplicate"], late["decisions"]) == (200, True, firsts[0]["decisions"])
    assert hooks.count("AttachVolume") == 1


def test_10_concurrent_distinct_preboots_of_one_vm_attach_exactly_once(webhook, svc, hooks):
    def send(i):
        return webhook.send("vm.preboot", "vm-1", event_id=f"boot-{i}")

    answers = run_concurrently(10, send)

    done = [b for code, b in answers if code == 200 and b["decisions"][0]["outcome"] == "done"]
    assert len(done) == 1, answers
    assert hooks.count("AttachVolume") == 1
    atts = attachments_of("vvol-1")
    assert len(atts) == 1 and atts[0]["InstanceId"] == instance_of("vm-1")["InstanceId"]
    item = policy("vm-1", "vvol-1")
    assert item.attached and item.busy_event is None
    # Every other event is skipped; one that lost the VM's audit-chain race too often answers 409 and,
    # redelivered with its id as the contract says, is then skipped as well.
    for i, (code, body) in enumerate(answers):
        if code == 409:
            assert body["error"]["code"] == "event_in_progress", body
            code, body = send(i)
        assert code == 200, body
        if body["decisions"][0]["outcome"] != "done":
            assert body["decisions"][0]["outcome"] == "skipped", body
            assert body["decisions"][0]["reason"] in ("in_progress", "already_attached"), body
        assert len([r for r in records_of(f"boot-{i}") if r["action"] != "refuse"]) == 1  # audited once
    assert hooks.count("AttachVolume") == 1
    assert len(attachments_of("vvol-1")) == 1


def test_concurrent_distinct_events_of_one_vm_are_all_answered_never_refused_as_in_progress(webhook, svc, hooks):
    answers = run_concurrently(20, lambda i: webhook.send("vm.preboot", "vm-1", event_id=f"boot-{i}"))

    assert hooks.count("AttachVolume") == 1
    assert [code for code, _ in answers] == [200] * 20, [b for c, b in answers if c != 200][:1]


# ---------------------------------------------------------------------------------------------- 2. provider faults


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_persistent_provider_fault_is_503_with_nothing_half_done_and_the_same_event_retries_cleanly(
        webhook, svc, hooks, vvg, fault):
    hooks.faults["AttachVolume"] = FAULTS[fault]

    code, body = webhook.send("vm.preboot", "vm-1", event_id="ev-fault")

    assert code == 503
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == "provider_unavailable" and body["error"]["message"]
    assert hooks.count("AttachVolume") == ATTEMPTS  # the provider's retries were exhausted
    assert_clean("vm-1", "vvol-1")
    assert records_of("ev-fault") == []  # an error answer is no decision

    del hooks.faults["AttachVolume"]
    hooks.reset()
    code, body = webhook.send("vm.preboot", "vm-1", event_id="ev-fault")

    assert code == 200, body
    assert body["duplicate"] is False
    assert [(d["volume_id"], d["action"], d["outcome"]) for d in body["decisions"]] == [("vvol-1", "attach", "done")]
    assert hooks.count("AttachVolume") == 1
    assert len(attachments_of("vvol-1")) == 1
    assert len(ec2_client().describe_volumes(
        Filters=[{"Name": "tag:vvg:volume-id", "Values": ["vvol-1"]}])["Volumes"]) == 1  # not created twice
    item = policy("vm-1", "vvol-1")
    assert item.attached and item.busy_event is None
    assert [(r["action"], r["outcome"]) for r in records_of("ev-fault")] == [("attach", "done")]
    assert vvg("audit", "verify").code == 0


def test_a_503_leaves_no_volume_created_at_the_provider(webhook, svc, hooks):
    assert "vvol-1" not in managed_volumes()
    hooks.faults["AttachVolume"] = FAULTS["connect_timeout"]

    code, body = webhook.send("vm.preboot", "vm-1", event_id="ev-created")

    assert (code, body["error"]["code"]) == (503, "provider_unavailable")
    assert policy("vm-1", "vvol-1").provider_volume_id is None
    assert "vvol-1" not in managed_volumes()


def test_provider_fault_at_sts_assume_role_is_503_and_retryable(webhook, svc, hooks):
    sts_calls = []

    def sts_down(model=None, **kwargs):
        sts_calls.append(model.name)
        if down:
            raise EndpointConnectionError(endpoint_url="https://sts.amazonaws.com/")

    from vvolguard.adapters import aws as aws_adapter

    # The provider's STS client comes from the process's cached base session, built before this test:
    # BUILTIN_HANDLERS no longer reach it, so the hook goes on that session's own event emitter.
    down = True
    base = aws_adapter.session(webhook.settings.region)
    base.events.register("before-call.sts.AssumeRole", sts_down, unique_id="test-sts-down")
    try:
        code, body = webhook.send("vm.preboot", "vm-1", event_id="ev-sts")
        assert (code, body["error"]["code"]) == (503, "provider_unavailable")
        assert len(sts_calls) == ATTEMPTS
        assert hooks.count("AttachVolume") == 0
        assert_clean("vm-1", "vvol-1")
        down = False
        code, body = webhook.send("vm.preboot", "vm-1", event_id="ev-sts")
        assert code == 200 and body["decisions"][0]["outcome"] == "done"
        assert len(attachments_of("vvol-1")) == 1
    finally:
        base.events.unregister("before-call.sts.AssumeRole", unique_id="test-sts-down")


@pytest.mark.parametrize("fault", ["connect_timeout", "internal_error_500"])
def test_transient_provider_fault_is_retried_and_answers_done(webhook, svc, hooks, fault):
    hooks.faults["AttachVolume"] = only_first(FAULTS[fault])

    code, body = webhook.send("vm.preboot", "vm-1")

    assert code == 200, body
    assert body["decisions"][0]["outcome"] == "done"
    assert hooks.count("AttachVolume") == 2
    assert len(attachments_of("vvol-1")) == 1
    assert policy("vm-1", "vvol-1").attached


TWO_VOLUMES = """
volumes:
  - {volume_id: vvol-1b, vm_id: vm-1, host_id: host-1, storage_array: S1, size_mb: 10, attach_on: preboot, detach_on: postboot}
"""


def test_multi_volume_attach_rolls_back_the_first_when_the_second_fails(webhook, svc, hooks):
    add_policies(webhook.settings, TWO_VOLUMES)
    hooks.faults["AttachVolume"] = after_first(FAULTS["request_limit_exceeded"])

    code, body = webhook.send("vm.preboot", "vm-1", event_id="ev-two")

    assert (code, body["error"]["code"]) == (503, "provider_unavailable"), body
    assert hooks.count("AttachVolume") == 1 + ATTEMPTS
    first = hooks.params("AttachVolume")[0]["VolumeId"]  # vvol-1 was created and attached, then...
    assert hooks.count("DetachVolume") == 1  # ...rolled back: detached,
    assert first in [p["VolumeId"] for p in hooks.params("DeleteVolume")]  # and the volumes it created deleted
    assert attached_volume_ids() == set() and managed_volumes() == {}
    for vid in ("vvol-1", "vvol-1b"):
        assert not policy("vm-1", vid).attached
    assert records_of("ev-two") == []


def test_multi_volume_503_releases_every_claim_and_the_same_event_retries_to_done(webhook, svc, hooks, vvg):
    add_policies(webhook.settings, TWO_VOLUMES)
    hooks.faults["AttachVolume"] = after_first(FAULTS["request_limit_exceeded"])
    code, body = webhook.send("vm.preboot", "vm-1", event_id="ev-two")
    assert (code, body["error"]["code"]) == (503, "provider_unavailable"), body
    del hooks.faults["AttachVolume"]
    hooks.reset()

    code, body = webhook.send("vm.preboot", "vm-1", event_id="ev-two")

    assert code == 200, body
    assert sorted((d["volume_id"], d["outcome"]) for d in body["decisions"]) == [("vvol-1", "done"), ("vvol-1b", "done")]
    assert hooks.count("AttachVolume") == 2
    assert attached_volume_ids() == {"vvol-1", "vvol-1b"}
    assert all(len(attachments_of(v)) == 1 for v in ("vvol-1", "vvol-1b"))
    for vid in ("vvol-1", "vvol-1b"):
        item = policy("vm-1", vid)
        assert item.attached and item.busy_event is None and item.busy_until is None
    assert vvg("audit", "verify").code == 0


def test_detach_fault_leaves_the_volume_attached_and_recorded_then_retries(webhook, svc, hooks):
    assert webhook.send("vm.preboot", "vm-1")[0] == 200
    hooks.faults["DetachVolume"] = FAULTS["connect_timeout"]

    code, body = webhook.send("vm.booted", "vm-1", event_id="ev-booted")

    assert (code, body["error"]["code"]) == (503, "provider_unavailable")
    assert len(attachments_of("vvol-1")) == 1
    item = policy("vm-1", "vvol-1")
    assert item.attached and item.busy_event is None
    del hooks.faults["DetachVolume"]
    code, body = webhook.send("vm.booted", "vm-1", event_id="ev-booted")
    assert code == 200 and body["decisions"][0]["outcome"] == "done"
    assert attachments_of("vvol-1") == [] and not policy("vm-1", "vvol-1").attached


# ---------------------------------------------------------------------------------------------- 3. moto is permissive


def _in_use(settings):
    """vvol-1 exists at the provider and is attached to another instance of the same zone."""
    ec2 = ec2_client()
    vol = managed_volumes()["vvol-1"]
    other = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="t3.micro",
                              Placement={"AvailabilityZone": vol["AvailabilityZone"]})["Instances"][0]["InstanceId"]
    ec2.attach_volume(VolumeId=vol["VolumeId"], InstanceId=other, Device="/dev/sdz")
    return {"expect_attached_to": other}


def _other_zone(settings):
    """vvol-1's provider volume id points at a volume of another availability zone (tags all correct)."""
    from vvolguard.adapters.models import PolicyItem

    zone = instance_of("vm-1")["Placement"]["AvailabilityZone"]
    other_zone = "us-east-1b" if zone != "us-east-1b" else "us-east-1c"
    vol = ec2_client().create_volume(AvailabilityZone=other_zone, Size=1, TagSpecifications=[{
        "ResourceType": "volume", "Tags": [{"Key": "vvg:volume-id", "Value": "vvol-x"},
                                           {"Key": "vvg:hosts", "Value": "host-1"}, {"Key": "vvg:vm-id", "Value": "vm-1"}]}])
    item = policy("vm-1", "vvol-1")
    item.update(actions=[PolicyItem.provider_volume_id.set(vol["VolumeId"])])
    return {"volume": vol["VolumeId"]}


def _host_not_listed(settings):
    """vvol-1's vvg:hosts tag no longer names host-1."""
    vol = managed_volumes()["vvol-1"]
    ec2_client().create_tags(Resources=[vol["VolumeId"]], Tags=[{"Key": "vvg:hosts", "Value": "host-9"}])
    return {}


@pytest.mark.parametrize("reason,setup", [("volume_in_use", _in_use), ("zone_mismatch", _other_zone),
                                          ("host_not_allowed", _host_not_listed)])
def test_provider_refuses_what_aws_would_although_moto_allows_it(webhook, svc, hooks, vvg, reason, setup):
    code, body = webhook.send("vm.created", "vm-1")
    assert code == 200 and body["decisions"][0]["outcome"] == "done", body
    ctx = setup(webhook.settings)
    hooks.reset()

    code, body = webhook.send("vm.preboot", "vm-1", event_id="ev-refused")

    assert code == 200, body
    [d] = body["decisions"]
    assert (d["volume_id"], d["action"], d["outcome"], d["reason"]) == ("vvol-1", "attach", "failed", reason)
    assert "device" not in d and "lease_expires_at" not in d
    assert hooks.count("AttachVolume") == 0  # refused in code: nothing reached EC2
    item = policy("vm-1", "vvol-1")
    assert not item.attached and item.busy_event is None
    vm_instance = instance_of("vm-1")["InstanceId"]
    for v in ec2_client().describe_volumes(Filters=[{"Name": "tag-key", "Values": ["vvg:volume-id"]}])["Volumes"]:
        assert all(a["InstanceId"] != vm_instance for a in v.get("Attachments", [])), v
    if "expect_attached_to" in ctx:
        assert [a["InstanceId"] for a in attachments_of("vvol-1")] == [ctx["expect_attached_to"]]
    [rec] = records_of("ev-refused")
    assert (rec["action"], rec["outcome"], rec["reason"]) == ("attach", "failed", reason)
    assert vvg("audit", "verify").code == 0


# ---------------------------------------------------------------------------------------------- 4. audit


def _events(webhook):
    """A few events: attach, detach and attach again on vm-1 (its chain: policy_create, attach, detach, attach),
    plus vm-2 and vm-4."""
    sent = []
    for type_, vm, extra in [("vm.preboot", "vm-1", {}), ("vm.booted", "vm-1", {}), ("vm.preboot", "vm-1", {}),
                             ("vm.preboot", "vm-2", {}), ("app.started", "vm-4", {"app": "A1"}),
                             ("vm.booted", "vm-2", {}), ("app.started", "vm-5", {"app": "nope"})]:
        eid = webhook.event_id()
        code, body = webhook.send(type_, vm, event_id=eid, **extra)
        assert code == 200, body
        sent.append((eid, type_, vm, body))
    return sent


def test_every_decision_has_exactly_one_complete_audit_record(webhook, svc, vvg):
    sent = _events(webhook)
    versions = {("vm-1", "vvol-1"): int(policy("vm-1", "vvol-1").policy_version),
                ("vm-2", "vvol-2"): int(policy("vm-2", "vvol-2").policy_version),
                ("vm-4", "vvol-4"): int(policy("vm-4", "vvol-4").policy_version)}
    n_decisions = 0
    for eid, type_, vm, body in sent:
        recs = records_of(eid)
        assert len(recs) == len(body["decisions"]), (eid, recs, body)
        for d in body["decisions"]:
            n_decisions += 1
            [rec] = [r for r in recs if r["volume_id"] == d["volume_id"]]
            assert rec["actor"] == "host:host-1"
            assert (rec["event_id"], rec["event_type"], rec["vm_id"]) == (eid, type_, vm)
            assert (rec["action"], rec["outcome"], rec["reason"]) == (d["action"], d["outcome"], d["reason"])
            assert rec["policy_version"] == versions[(vm, d["volume_id"])]
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", rec["at"])
    assert n_decisions == 5  # vm.booted of vm-2 (detach_on: shutdown) and an unknown app decide nothing
    # the CLI lists the same records with the contract's fields
    r = vvg("audit", "list", "--vm", "vm-1")
    assert r.code == 0
    listed = [json.loads(line) for line in r.out.splitlines() if line.strip()]
    host_recs = [x for x in listed if x.get("actor") == "host:host-1"]
    assert len(host_recs) == 3
    for x in host_recs:
        for k in ("at", "actor", "vm_id", "volume_id", "event_id", "event_type", "action", "outcome", "reason"):
            assert x.get(k), (k, x)


AUDIT = "vvg-audit"


def _chain_records(chain: str = "VM#vm-1") -> dict[int, dict]:
    return {int(i["seq"]["N"]): i for i in audit_items() if i["chain"]["S"] == chain}


def _key(seq: int, chain: str = "VM#vm-1") -> dict:
    return {"chain": {"S": chain}, "seq": {"N": str(seq)}}


def _change_field(ddb, recs):
    ddb.update_item(TableName=AUDIT, Key=_key(2), UpdateExpression="SET outcome = :o",
                    ExpressionAttributeValues={":o": {"S": "denied"}})
    return 2


def _change_detail(ddb, recs):
    assert recs[2]["detail"]["M"]["device"]
    ddb.update_item(TableName=AUDIT, Key=_key(2), UpdateExpression="SET detail.device = :d",
                    ExpressionAttributeValues={":d": {"S": "/dev/sdz"}})
    return 2


def _delete_middle(ddb, recs):
    ddb.delete_item(TableName=AUDIT, Key=_key(2))
    return 2


def _delete_last(ddb, recs):
    last = max(recs)
    ddb.delete_item(TableName=AUDIT, Key=_key(last))
    return last


def _swap(ddb, recs):
    a, b = recs[2], recs[3]
    body = lambda r: {k: v for k, v in r.items() if k not in ("chain", "seq")}  # noqa: E731
    ddb.put_item(TableName=AUDIT, Item={**body(b), **_key(2)})
    ddb.put_item(TableName=AUDIT, Item={**body(a), **_key(3)})
    return 2


TAMPERS = {"a changed field": _change_field, "a changed detail": _change_detail, "a removed middle record": _delete_middle,
           "a removed last record": _delete_last, "two swapped records": _swap}


def test_audit_verify_detects_a_changed_removed_or_reordered_record(webhook, svc, vvg):
    from vvolguard.adapters.audit import AuditLog

    _events(webhook)
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    original = _chain_records()
    assert sorted(original) == [1, 2, 3, 4]  # policy_create, attach, detach, attach
    for what, tamper in TAMPERS.items():
        ok = vvg("audit", "verify")
        assert ok.code == 0 and ok.json()["ok"] is True, (what, ok)

        seq = tamper(ddb, original)

        r = vvg("audit", "verify")
        assert r.code == 1, (what, r)
        assert "VM#vm-1" in r.err and re.search(rf"\b{seq}\b", r.err), (what, r.err)
        assert len(r.err.strip().splitlines()) == 1, r.err
        summary = AuditLog(webhook.settings).verify()
        assert summary["ok"] is False
        assert (summary["first_problem"]["chain"], summary["first_problem"]["seq"]) == ("VM#vm-1", seq), what
        for item in original.values():  # restore, for the next tamper
            ddb.put_item(TableName=AUDIT, Item=item)
    assert vvg("audit", "verify").code == 0


def test_audit_verify_detects_a_removed_newest_record_even_when_the_chain_head_is_moved_back(webhook, svc, vvg):
    _events(webhook)
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    recs = _chain_records()
    last = max(recs)
    ddb.delete_item(TableName=AUDIT, Key=_key(last))
    ddb.update_item(TableName="vvg-state", Key={"pk": {"S": "VM#vm-1"}, "sk": {"S": "~AUDIT"}},
                    UpdateExpression="SET head_seq = :s, head_mac = :m",
                    ExpressionAttributeValues={":s": {"N": str(last - 1)}, ":m": recs[last - 1]["mac"]})

    r = vvg("audit", "verify")

    assert r.code == 1, r
    assert "VM#vm-1" in r.err


# ---------------------------------------------------------------------------------------------- 5. secrets


PASSWORD = "Tr0ub4dor&3-horse-battery"


def test_no_secret_password_or_hash_in_audit_logs_or_responses(webhook, vvg, caplog):
    from vvolguard.adapters import aws as aws_adapter
    from vvolguard.adapters.models import HostItem

    add_policies(webhook.settings, f"""
volumes:
  - {{volume_id: vvol-p, vm_id: vm-1, host_id: host-1, storage_array: S1, size_mb: 10, attach_on: request,
     detach_on: request, password: "{PASSWORD}"}}
""")
    pw_hash = policy("vm-1", "vvol-p").password_hash
    host = HostItem.get("host-1", consistent_read=True)
    assert pw_hash and host.secret_enc
    forbidden = {"password": PASSWORD, "host secret": webhook.secret, "password hash": pw_hash,
                 "password hash digest": pw_hash.split("$")[-1], "password hash salt": pw_hash.split("$")[-2],
                 "kms ciphertext": host.secret_enc, "kms ciphertext prefix": host.secret_enc[:40]}

    aws_adapter.reset_clients()  # a cold container: the host secret is decrypted and the audit key read under capture
    caplog.set_level(logging.DEBUG)  # root: every logger propagates here at DEBUG
    bodies = []
    for pw in ("wrong-" + PASSWORD, PASSWORD):
        code, body = webhook.send("volume.attach_request", "vm-1", volume_id="vvol-p", password=pw)
        bodies.append((code, body))
    assert bodies[0][1]["decisions"][0]["reason"] == "bad_password"
    assert bodies[1][1]["decisions"][0]["outcome"] == "done"
    bodies.append(webhook.send("volume.detach_request", "vm-1", volume_id="vvol-p"))
    # refusals echo nothing either: a bad signature and a body whose password field is malformed
    raw = json.dumps({"event_id": "x-1", "type": "volume.attach_request", "vm_id": "vm-1", "volume_id": "vvol-p",
                      "password": PASSWORD}).encode()
    bodies.append(webhook.raw(raw, webhook.signed_headers(raw, secret="not-" + webhook.secret)))
    raw = json.dumps({"event_id": "x-2", "type": "volume.attach_request", "vm_id": "vm-1", "volume_id": "vvol-p",
                      "password": PASSWORD, "extra": PASSWORD}).encode()
    bodies.append(webhook.raw(raw, webhook.signed_headers(raw)))
    assert [c for c, _ in bodies] == [200, 200, 200, 401, 400], bodies
    bodies.append((0, vvg("audit", "list", "--limit", "1000").out))
    caplog.set_level(logging.WARNING)

    audit_text = json.dumps([plain(i) for i in audit_items()], default=str)
    assert '"bad_password"' in audit_text  # the denial is audited...
    response_text = json.dumps(bodies)
    # Log lines: everything the product logs at any level, and every library's INFO and above. botocore's,
    # urllib3's and PynamoDB's own DEBUG lines are wire dumps of requests and responses (a Query response
    # carries the stored hash, a KMS Decrypt request the ciphertext) that appear only when an operator turns
    # DEBUG on for those libraries; the product never does, so they are out of this promise.
    wire = ("botocore", "boto3", "urllib3", "pynamodb", "moto", "s3transfer")
    log_lines = [f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records
                 if r.levelno >= logging.INFO or not r.name.startswith(wire)]
    assert any(r.name.startswith("vvg") for r in caplog.records)  # the product's own lines were captured
    for what, value in forbidden.items():
        assert value not in audit_text, f"{what} in an audit record"
        assert value not in response_text, f"{what} in a response body"
        leaking = [line for line in log_lines if value in line]
        assert not leaking, f"{what} in a log line: {leaking[:1]}"
