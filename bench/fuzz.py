"""Hostile input at scale: fuzz POST /v1/events of a local stack from openapi.yaml.

    make fuzz                                   # 10,000 requests against a fresh local stack
    python -m bench.fuzz --requests 2000 --seed 7

Every request is generated from the OpenAPI document by Schemathesis (its positive strategy per event type,
and its negative strategy for the whole union), then sent as one of:

- valid: a positive body, biased towards the seeded VMs, volumes, apps and hosts so that it reaches the
  engine and the provider, correctly signed by the VM's host (or by another enrolled host);
- negative: Schemathesis' schema-violating bodies, correctly signed (so they reach the parser);
- mutant: a positive body with one byte- or structure-level mutation (flips, truncation, duplicate keys, deep
  nesting, huge numbers, NaN, invalid UTF-8, look-alike and CR/LF ids, BOM, UTF-16, 64 KiB padding...);
- auth: one authentication fault (a header missing, malformed, wrong or stale signature, unknown or
  revoked host);
- replay: an earlier accepted body again (same bytes: a duplicate; same event_id, other body: a conflict);
- edge: empty, null, array and oversized bodies; and GET /v1/health.

The oracle is the document, not the product: a request's verdict (valid / invalid / too large) comes from a
strict standard JSON parse and the document's JSON Schema. Every answer must be documented for its status
(a 2xx, or a 4xx with the contract's error body), match the verdict (400 for invalid, 413 for too large,
never 400 for valid), and never be a 5xx. A model built only from the 200 answers' decisions (done attach /
detach / create / grant / revoke, migration grants) predicts the provider's attachments and tags, the policy
table and the grants; it is compared with the real state (EC2 and DynamoDB through boto3) at checkpoints and
at the end, and every difference is an unexpected write. Finally `vvg audit verify` must pass.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import http.client
import json
import os
import re
import socket
import subprocess
import sys
from datetime import datetime, timezone
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from vvolguard.domain.policy import no_duplicate_keys

ROOT = Path(__file__).resolve().parent.parent
OPENAPI = ROOT / "openapi.yaml"
MAX_BODY = 64 * 1024
EVENTS = "/v1/events"

# What the fuzz run adds to the Table 1 seed (docs/policy-file.md), so that every decision kind is reachable:
# a password-protected request volume, a license volume with min_key_bits (its attaches are decided against the
# latest guest.inventory: `no_qualifying_software`, or `software` on a done attach), a VM without an instance at the
# provider (attaches fail `vm_not_found`), and an app volume whose app is not authorized.
FUZZ_PASSWORD = "fuzz-pw-1"
FUZZ_POLICIES = f"""volumes:
  - {{volume_id: vvol-6, vm_id: vm-1, host_id: host-1, storage_array: S1, size_mb: 10, attach_on: request, detach_on: request, password: "{FUZZ_PASSWORD}"}}
  - {{volume_id: vvol-7, vm_id: vm-3, host_id: host-1, storage_array: S1, size_mb: 10, attach_on: license_check, detach_on: license_verified, app: L1, min_key_bits: 256}}
  - {{volume_id: vvol-8, vm_id: vm-6, host_id: host-1, storage_array: S1, size_mb: 10, attach_on: preboot, detach_on: shutdown}}
  - {{volume_id: vvol-9, vm_id: vm-2, host_id: host-1, storage_array: S1, size_mb: 2048, attach_on: app_start, detach_on: app_stop, app: A3, authorized_apps: [A1]}}
"""
VMS = [f"vm-{n}" for n in range(1, 7)]
VOLUMES = [f"vvol-{n}" for n in range(1, 10)]
APPS = ["A1", "A2", "A3", "L1"]
SOFTWARE = ["LUKS", "BitLocker", "VeraCrypt", "ClamAV"]
LOOKALIKES = {"a": "\u0430", "e": "\u0435", "o": "\u043e", "p": "\u0440", "c": "\u0441", "x": "\u0445",
              "-": "\u2010", "1": "\uff11", "v": "\u0475", "m": "\u043c", "l": "\u04cf", "h": "\u04bb"}
KNOWN_DISAGREEMENTS = {
    "integral_float_key_bits": "key_bits written as an integral float (e.g. 256.0): an integer to JSON Schema, "
                               "refused by parse_event (tests/test_openapi.py, xfail)",
    "occurred_at_space": "occurred_at with a space instead of T: accepted by parse_event, not an RFC 3339 "
                         "date-time to the document (the server is laxer than documented)",
}
KNOWN_BUGS = {
    "migration_left_volume_behind": "vm.migrate.complete answered a `failed` revoke (host_not_allowed): a volume "
                                    "created after vm.migrate.start stays with the source host "
                                    "(tests/test_fuzz_findings.py, xfail)",
}


# ---------------------------------------------------------------------------------------------- the document


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def strict_json(raw: bytes) -> Any:
    """Standard strict JSON (RFC 8259 + I-JSON's unique keys): raises ValueError when it is not."""
    text = raw.decode("utf-8")  # strict: overlong forms and encoded surrogates are errors
    return json.loads(text, object_pairs_hook=no_duplicate_keys, parse_constant=_no_constant)


class Document:
    """openapi.yaml as the fuzzer's oracle and generator."""

    def __init__(self, path: Path = OPENAPI) -> None:
        import yaml
        from jsonschema import Draft202012Validator
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT202012

        self.path = path
        self.doc = yaml.safe_load(path.read_text())
        self._registry = Registry().with_resource("urn:vvg:openapi", Resource.from_contents(
            python_patterns(copy.deepcopy(self.doc)), default_specification=DRAFT202012))
        self._validators: dict[str, Any] = {}
        self._cls = Draft202012Validator

    def validator(self, pointer: str):
        """A JSON Schema validator of the document's schema at ``pointer`` (e.g. ``/components/schemas/Event``)."""
        if pointer not in self._validators:
            self._validators[pointer] = self._cls({"$ref": f"urn:vvg:openapi#{pointer}"}, registry=self._registry,
                                                  format_checker=self._cls.FORMAT_CHECKER)
        return self._validators[pointer]

    def operation(self, path: str, method: str) -> dict[str, Any]:
        return self.doc["paths"][path][method.lower()]

    def response(self, path: str, method: str, status: int) -> dict[str, Any] | None:
        resp = self.operation(path, method)["responses"].get(str(status))
        if resp and "$ref" in resp:
            resp = self.doc["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
        return resp

    def response_pointer(self, path: str, method: str, status: int) -> str | None:
        """The JSON pointer of the documented body schema of ``status`` (None: the status is not documented)."""
        resp = self.operation(path, method)["responses"].get(str(status))
        if resp is None:
            return None
        if "$ref" in resp:
            name = resp["$ref"].rsplit("/", 1)[1]
            resp = self.doc["components"]["responses"][name]
            base = f"/components/responses/{name}"
        else:
            base = f"/paths/{path.replace('/', '~1')}/{method.lower()}/responses/{status}"
        return f"{base}/content/application~1json/schema"

    def documented_errors(self) -> list[tuple[int, str]]:
        """Every (status, code) POST /v1/events documents."""
        out = []
        for status in self.operation(EVENTS, "post")["responses"]:
            if int(status) >= 400:
                schema = self.response(EVENTS, "post", int(status))["content"]["application/json"]["schema"]
                name = schema["$ref"].rsplit("/", 1)[1]
                codes = self.doc["components"]["schemas"][name]["properties"]["error"]["properties"]["code"]["enum"]
                out += [(int(status), c) for c in codes]
        return out

    def check_answer(self, path: str, method: str, status: int, content_type: str, raw: bytes) -> str | None:
        """None when the answer is documented: its status, JSON content and body schema; else the problem."""
        pointer = self.response_pointer(path, method, status)
        if pointer is None:
            return f"status {status} is not documented"
        if not content_type.startswith("application/json"):
            return f"content-type {content_type!r}"
        try:
            body = strict_json(raw)
        except ValueError:
            return "the body is not JSON"
        errors = sorted(self.validator(pointer).iter_errors(body), key=lambda e: list(e.path))
        if errors:
            return f"body does not match the document: {errors[0].message[:200]}"
        return None

    def verdict(self, raw: bytes) -> str:
        """What the document says of a request body: ``too_large``, ``invalid`` or ``valid``."""
        if len(raw) > MAX_BODY:
            return "too_large"
        try:
            doc = strict_json(raw)
        except (ValueError, RecursionError):
            return "invalid"
        if not self.validator("/components/schemas/Event").is_valid(doc):
            return "invalid"
        return "invalid" if too_far_ahead(doc) else "valid"

    def type_names(self) -> list[str]:
        return list(self.doc["components"]["schemas"]["Event"]["discriminator"]["mapping"])

    def strategies(self):
        """(positive body strategy per event type, negative Case strategy of the whole union), from Schemathesis."""
        import schemathesis
        from schemathesis.generation import GenerationMode

        positive = {}
        for etype, ref in self.doc["components"]["schemas"]["Event"]["discriminator"]["mapping"].items():
            variant = copy.deepcopy(self.doc)
            variant["paths"] = {EVENTS: {"post": variant["paths"][EVENTS]["post"]}}
            content = variant["paths"][EVENTS]["post"]["requestBody"]["content"]["application/json"]
            content["schema"] = {"$ref": ref}
            content.pop("examples", None)
            op = schemathesis.openapi.from_dict(variant)[EVENTS]["POST"]
            positive[etype] = op.as_strategy(generation_mode=GenerationMode.POSITIVE).map(lambda c: c.body)
        op = schemathesis.openapi.from_dict(self.doc)[EVENTS]["POST"]
        negative = op.as_strategy(generation_mode=GenerationMode.NEGATIVE)
        return positive, negative


def python_patterns(node: Any) -> Any:
    """The document's patterns as Python must read them to mean what ECMA-262 (JSON Schema) means.

    jsonschema runs ``pattern`` with Python's ``re``, whose ``$`` also matches before a final newline: there
    ``^[a-z]{1,64}$`` accepts "vm-1\\n", which ECMA-262 (and the server) refuse. ``\\Z`` is ECMA's ``$``."""
    if isinstance(node, dict):
        return {k: (v[:-1] + "\\Z" if k == "pattern" and isinstance(v, str) and v.endswith("$")
                    and not v.endswith("\\$") else python_patterns(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [python_patterns(v) for v in node]
    return node


MAX_AHEAD_S = 300  # the contract: an occurred_at more than 300 s ahead of the server's clock is invalid_event


def too_far_ahead(doc: Any) -> bool:
    """Whether ``doc``'s occurred_at is more than MAX_AHEAD_S ahead of now (less 2 s for the trip to the server;
    the fuzzer's own times stay 60 s inside the line, so only a generated time within 2 s of it could differ)."""
    text = doc.get("occurred_at") if isinstance(doc, dict) else None
    if not isinstance(text, str):
        return False
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        when = datetime.fromisoformat(text.upper().replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        return False
    if when.tzinfo is None:
        return False
    return (when - datetime.now(timezone.utc)).total_seconds() > MAX_AHEAD_S - 2


def known_disagreement(raw: bytes) -> str | None:
    """Which documented difference between the document and parse_event this body shows, if any."""
    try:
        doc = strict_json(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    if isinstance(doc.get("occurred_at"), str) and re.match(r"^\d{4}-\d{2}-\d{2} ", doc["occurred_at"]):
        return "occurred_at_space"
    return None


# ---------------------------------------------------------------------------------------------- the target


@dataclass
class Target:
    """A running local stack: its URLs, the hosts' secrets, and a way to run `vvg` against it."""

    api_url: str
    aws_url: str
    hosts: dict[str, str]
    vvg: Callable[..., Any]
    revoked: dict[str, str] = field(default_factory=dict)

    def client(self, service: str):
        import boto3

        return boto3.client(service, endpoint_url=self.aws_url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")


def prepare(target: Target) -> None:
    """Add the fuzz run's fixtures: host-2 (a migration destination), host-3 (enrolled, then revoked), and the
    extra policies of FUZZ_POLICIES."""
    for host_id, n in (("host-2", 2), ("host-3", 3)):
        r = target.vvg("host", "enroll", host_id, "--mac", f"02:00:00:00:00:0{n}", "--serial", f"FUZZ-{n}")
        if r.code != 0:
            r = target.vvg("host", "rotate", host_id)
        assert r.code == 0, r
        target.hosts[host_id] = json.loads(r.out)["secret"]
    target.revoked["host-3"] = target.hosts.pop("host-3")
    r = target.vvg("host", "revoke", "host-3")
    assert r.code == 0, r
    r = target.vvg("policy", "apply", "-", stdin=FUZZ_POLICIES)
    assert r.code == 0, r


def sign(secret: str, t: int, body: bytes) -> str:
    """X-VVG-Signature, written from the contract (not imported from the product)."""
    import hmac

    return f"t={t},v1=" + hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


# ---------------------------------------------------------------------------------------------- the model

TYPE_KEY = "S"


def _ddb_items(target: Target, table: str) -> list[dict[str, Any]]:
    from boto3.dynamodb.types import TypeDeserializer

    des = TypeDeserializer()
    ddb = target.client("dynamodb")
    out, kwargs = [], {"TableName": table, "ConsistentRead": True}
    while True:
        page = ddb.scan(**kwargs)
        out += [{k: des.deserialize(v) for k, v in item.items()} for item in page.get("Items", [])]
        if "LastEvaluatedKey" not in page:
            return out
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


@dataclass
class Actual:
    """The state a model is compared with."""

    policies: dict[str, dict[str, Any]]
    volumes: dict[str, dict[str, Any]]  # vvg:volume-id -> {"hosts": [...], "attached_to": instance or None}
    instances: dict[str, str]  # instance id -> vm id
    grants: dict[tuple[str, str], str]  # (vm, destination) -> source
    events: dict[str, str]  # "host/event_id" -> status

    @classmethod
    def read(cls, target: Target) -> "Actual":
        from vvolguard.settings import Settings

        s = Settings()
        state = _ddb_items(target, s.state_table)
        policies = {i["volume_id"]: i for i in state if str(i.get("sk", "")).startswith("POLICY#")}
        grants = {(i["vm_id"], i["destination_host"]): i["source_host"] for i in state
                  if str(i.get("sk", "")).startswith("GRANT#")}
        events = {i["event_id"]: i["status"] for i in _ddb_items(target, s.events_table)}
        ec2 = target.client("ec2")
        volumes = {}
        for page in ec2.get_paginator("describe_volumes").paginate(
                Filters=[{"Name": "tag-key", "Values": ["vvg:volume-id"]}]):
            for v in page["Volumes"]:
                tags = {t["Key"]: t["Value"] for t in v.get("Tags", [])}
                atts = [a["InstanceId"] for a in v.get("Attachments", []) if a["State"] in ("attaching", "attached")]
                volumes[tags["vvg:volume-id"]] = {"hosts": sorted(h for h in tags.get("vvg:hosts", "").split(",") if h),
                                                  "attached_to": atts, "vm": tags.get("vvg:vm-id")}
        instances = {}
        for page in ec2.get_paginator("describe_instances").paginate():
            for r in page["Reservations"]:
                for i in r["Instances"]:
                    tags = {t["Key"]: t["Value"] for t in i.get("Tags", [])}
                    if "vvg:vm-id" in tags:
                        instances[i["InstanceId"]] = tags["vvg:vm-id"]
        return cls(policies, volumes, instances, grants, events)


CONFIG_KEYS = ("vm_id", "storage_array", "size_mb", "attach_on", "detach_on", "app", "authorized_apps",
               "os_disk_encryption", "password_hash", "max_attach_seconds", "min_key_bits", "policy_version")


class Model:
    """What the valid events asked for, built from the 200 answers only."""

    def __init__(self, actual: Actual) -> None:
        self.config = {v: {k: p.get(k) for k in CONFIG_KEYS} for v, p in actual.policies.items()}
        self.vm_of = {v: p["vm_id"] for v, p in actual.policies.items()}
        self.host = {v: p["host_id"] for v, p in actual.policies.items()}
        self.attached = {v: bool(p.get("attached")) for v, p in actual.policies.items()}
        self.exists: dict[str, bool | None] = {v: bool(p.get("provider_volume_id")) for v, p in actual.policies.items()}
        self.tags: dict[str, set[str] | None] = {v: set(actual.volumes[v]["hosts"]) if v in actual.volumes else set()
                                                 for v in actual.policies}
        self.grants = dict(actual.grants)
        self.events = dict(actual.events)
        self.instances = actual.instances

    def volumes_of(self, vm_id: str) -> set[str]:
        return {v for v, vm in self.vm_of.items() if vm == vm_id}

    def host_of(self, vm_id: str) -> str | None:
        hosts = Counter(self.host[v] for v in self.volumes_of(vm_id))
        return hosts.most_common(1)[0][0] if hosts else None

    def apply(self, sender: str, event: dict[str, Any], answer: dict[str, Any]) -> None:
        """Carry out one 200 answer (not a duplicate) as the contract says it was carried out."""
        self.events[f"{sender}/{event['event_id']}"] = "done"
        etype, vm = event["type"], event["vm_id"]
        for d in answer["decisions"]:
            v, action, outcome = d["volume_id"], d["action"], d["outcome"]
            if outcome == "failed" and action in ("attach", "create"):
                self.exists[v] = None if not self.exists.get(v) else True  # a lazy create may have happened
                if not self.tags.get(v):
                    self.tags[v] = None
            if outcome != "done":
                continue
            if action in ("create", "attach") and not self.exists.get(v):
                self.exists[v] = True
                self.tags[v] = {sender}
            if action == "attach":
                self.attached[v] = True
            elif action == "detach":
                self.attached[v] = False
            elif action == "grant" and self.tags.get(v) is not None:
                self.tags[v] = set(self.tags[v]) | {event["destination_host"]}
            elif action == "revoke":
                if self.exists.get(v) and self.tags.get(v) is not None:
                    self.tags[v] = set(self.tags[v]) - {event["source_host"]}
                self.host[v] = sender
        if etype == "vm.migrate.start":
            self.grants[(vm, event["destination_host"])] = sender
        elif etype == "vm.migrate.complete" and any(d["reason"] != "already_complete" for d in answer["decisions"]):
            self.grants.pop((vm, sender), None)

    def compare(self, actual: Actual) -> list[str]:
        """Every difference between what was asked for and what is there; the model then adopts the actual
        state (each difference is reported once)."""
        diffs = []
        if set(actual.policies) != set(self.config):
            diffs.append(f"policy table rows {sorted(set(actual.policies) ^ set(self.config))} appeared/disappeared")
        for v, p in actual.policies.items():
            if v not in self.config:
                continue
            now = {k: p.get(k) for k in CONFIG_KEYS}
            if now != self.config[v]:
                diffs.append(f"{v}: policy changed {[k for k in CONFIG_KEYS if now[k] != self.config[v][k]]}")
                self.config[v] = now
            if p["host_id"] != self.host[v]:
                diffs.append(f"{v}: host_id {p['host_id']} (asked for {self.host[v]})")
                self.host[v] = p["host_id"]
            if bool(p.get("attached")) != self.attached[v]:
                diffs.append(f"{v}: attached={bool(p.get('attached'))} in the policy table (asked for {self.attached[v]})")
            if p.get("busy_event"):
                diffs.append(f"{v}: still busy with {p['busy_event']} after its event was answered")
            exists = bool(p.get("provider_volume_id"))
            if self.exists[v] is not None and exists != self.exists[v]:
                diffs.append(f"{v}: provider_volume_id {'set' if exists else 'absent'} (asked for {self.exists[v]})")
            self.exists[v] = exists
        extra = set(actual.volumes) - set(self.config)
        if extra:
            diffs.append(f"unmanaged volumes at the provider: {sorted(extra)}")
        for v in self.config:
            at = actual.volumes.get(v)
            if bool(at) != bool(self.exists[v]):
                diffs.append(f"{v}: {'exists' if at else 'missing'} at the provider (asked for exists={self.exists[v]})")
            want_attached = self.attached[v]
            got = at["attached_to"] if at else []
            if bool(got) != want_attached:
                diffs.append(f"{v}: {'attached' if got else 'not attached'} at the provider (asked for {want_attached})")
            elif got and any(self.instances.get(i) != self.vm_of[v] for i in got):
                diffs.append(f"{v}: attached to another VM's instance {got}")
            if at and self.tags[v] is not None and set(at["hosts"]) != self.tags[v]:
                diffs.append(f"{v}: vvg:hosts {sorted(at['hosts'])} (asked for {sorted(self.tags[v])})")
            self.attached[v] = bool(got)
            self.tags[v] = set(at["hosts"]) if at else set()
        if actual.grants != self.grants:
            diffs.append(f"migration grants {actual.grants} (asked for {self.grants})")
            self.grants = dict(actual.grants)
        unasked = {k: s for k, s in actual.events.items() if self.events.get(k) != s and s != "failed"}
        if unasked:
            diffs.append(f"event records no 200 answer accounts for: {sorted(unasked)[:5]} ({len(unasked)})")
        self.events = dict(actual.events)
        return diffs


# ---------------------------------------------------------------------------------------------- the fuzzer


@dataclass
class Report:
    requests: int = 0
    by_status: Counter = field(default_factory=Counter)
    by_category: Counter = field(default_factory=Counter)
    by_category_status: Counter = field(default_factory=Counter)
    by_code: Counter = field(default_factory=Counter)
    decisions: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    five_xx: int = 0
    violations: list[str] = field(default_factory=list)
    unexpected_writes: list[str] = field(default_factory=list)
    disagreements: Counter = field(default_factory=Counter)
    known_bugs: Counter = field(default_factory=Counter)
    audit_ok: bool | None = None
    audit: str = ""
    seconds: float = 0.0
    checkpoints: int = 0

    def ok(self) -> bool:
        return (self.five_xx == 0 and not self.violations and not self.unexpected_writes
                and self.audit_ok is not False)

    def lines(self) -> list[str]:
        rate = self.requests / self.seconds if self.seconds else 0.0
        out = [f"requests sent:      {self.requests} in {self.seconds:.0f} s ({rate:.0f}/s)",
               "answers by status:  " + ", ".join(f"{s}: {n}" for s, n in sorted(self.by_status.items())),
               "error codes:        " + ", ".join(f"{c}: {n}" for c, n in sorted(self.by_code.items())),
               "requests by kind:   " + ", ".join(f"{c}: {n}" for c, n in sorted(self.by_category.items())),
               "  kind/status:      " + ", ".join(f"{c}: {n}" for c, n in sorted(self.by_category_status.items())),
               "decisions (200):    " + ", ".join(f"{c}: {n}" for c, n in sorted(self.decisions.items())),
               "  not done, why:    " + ", ".join(f"{c}: {n}" for c, n in sorted(self.reasons.items())),
               f"5xx:                {self.five_xx}",
               f"unexpected writes:  {len(self.unexpected_writes)} (state compared at {self.checkpoints} checkpoints)",
               f"contract violations: {len(self.violations)}",
               f"audit verify:       {'passed' if self.audit_ok else 'FAILED' if self.audit_ok is False else 'not run'}"
               + (f" {self.audit}" if self.audit else "")]
        for name, n in sorted(self.disagreements.items()):
            out.append(f"known document/code difference: {name}: {n} ({KNOWN_DISAGREEMENTS.get(name, '?')})")
        for name, n in sorted(self.known_bugs.items()):
            out.append(f"known bug seen: {name}: {n} ({KNOWN_BUGS.get(name, '?')})")
        out += [f"  VIOLATION {v}" for v in self.violations[:20]]
        out += [f"  UNEXPECTED WRITE {w}" for w in self.unexpected_writes[:20]]
        return out

    def summary(self) -> dict[str, Any]:
        return {"requests": self.requests, "seconds": round(self.seconds, 1),
                "by_status": {str(k): v for k, v in sorted(self.by_status.items())}, "five_xx": self.five_xx,
                "unexpected_writes": len(self.unexpected_writes), "violations": len(self.violations),
                "audit_verify": self.audit_ok}


@dataclass
class Request:
    category: str
    method: str
    raw: bytes
    headers: dict[str, str]
    verdict: str = "valid"  # valid | invalid | too_large | health
    statuses: set[int] | None = None  # what the contract allows for this request; None: by verdict
    codes: set[str] | None = None
    sender: str | None = None
    event: dict[str, Any] | None = None
    replay_of: dict[str, Any] | None = None


class Fuzzer:
    """One run against ``target``; sequential, so the model knows the order every answer was made in."""

    CATEGORIES = [("valid", 50), ("negative", 14), ("mutant", 14), ("auth", 10), ("replay", 6), ("edge", 4),
                  ("health", 2)]

    def __init__(self, target: Target, document: Document | None = None, seed: int = 0,
                 checkpoint_every: int = 500, log: Callable[[str], None] | None = None) -> None:
        self.target = target
        self.doc = document or Document()
        self.seed = seed
        self.checkpoint_every = checkpoint_every
        self.log = log or (lambda s: None)
        u = urlsplit(target.api_url)
        self.host, self.port = u.hostname, u.port
        self.report = Report()
        self.positive, self.negative = self.doc.strategies()
        self.types = self.doc.type_names()
        # Lifecycle events that attach and detach, more often than the rest (every type still comes up).
        weight = {"vm.preboot": 4, "vm.booted": 3, "vm.shutdown": 3, "app.started": 3, "app.stopped": 3,
                  "license.check": 2, "license.verified": 2, "volume.attach_request": 4, "volume.detach_request": 3}
        self.weighted_types = [t for t in self.types for _ in range(weight.get(t, 1))]
        self.model = Model(Actual.read(target))
        self.accepted: list[tuple[str, bytes, dict[str, Any], dict[str, Any]]] = []  # sender, raw, event, answer
        self.used: dict[str, str] = {}  # "host/event_id" -> sha256 of the body of its 200
        self.first: dict[str, dict[str, Any]] = {}  # "host/event_id" -> its first answer
        self.n = 0
        self.clock = int(time.time())
        self.stopped = False
        self.unanswered = 0

    # ---- transport

    def send(self, method: str, path: str, raw: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
        """One request on a fresh connection (the local gateway's keep-alive answers stall ~40 ms each)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.putrequest(method, path, skip_accept_encoding=True)
            for k, v in headers.items():
                conn.putheader(k, v)
            if method == "POST":
                conn.putheader("Content-Length", str(len(raw)))
            conn.putheader("Connection", "close")
            conn.endheaders(raw if method == "POST" else None)
            resp = conn.getresponse()
            return resp.status, resp.getheader("content-type", ""), resp.read()
        finally:
            conn.close()

    # ---- generation

    def signed(self, raw: bytes, host: str | None = None, secret: str | None = None, t: int | None = None,
               content_type: str = "application/json") -> dict[str, str]:
        host = host or "host-1"
        secret = self.target.hosts[host] if secret is None else secret
        h = {"X-VVG-Host": host, "X-VVG-Signature": sign(secret, int(time.time()) if t is None else t, raw)}
        if content_type:
            h["Content-Type"] = content_type
        return h

    def fresh_id(self, data) -> str:
        self.n += 1
        return f"fz-{self.seed}-{self.n}"

    def focus(self, data, body: dict[str, Any]) -> dict[str, Any]:
        """Point a generated body at the seeded VMs, volumes, apps and hosts, mostly (values stay valid)."""
        from hypothesis import strategies as st

        b = copy.deepcopy(body)
        if data.draw(st.integers(0, 99), label="keep event_id") < 96:  # 0, Hypothesis' favourite, is "fresh"
            b["event_id"] = self.fresh_id(data)
        if data.draw(st.integers(0, 99), label="focus") < 85:
            vm = data.draw(st.sampled_from(VMS), label="vm")
            if "volume_id" in b:  # mostly a real (VM, volume) pair; else any volume (another VM's: 404)
                b["volume_id"] = data.draw(st.sampled_from(VOLUMES + ["vvol-0"]), label="volume")
                if b["type"] == "volume.attach_request" and data.draw(st.booleans(), label="the request volume"):
                    b["volume_id"] = "vvol-6"
                if data.draw(st.integers(0, 99), label="its vm") < 80 and b["volume_id"] in self.model.vm_of:
                    vm = self.model.vm_of[b["volume_id"]]
            b["vm_id"] = vm
            if "app" in b:  # mostly an app one of the VM's volumes names
                theirs = sorted({self.model.config[v]["app"] for v in self.model.volumes_of(vm)} - {None})
                pick = data.draw(st.integers(0, 99), label="app")
                b["app"] = theirs[pick % len(theirs)] if theirs and pick < 70 else APPS[pick % len(APPS)]
            if "destination_host" in b:
                b["destination_host"] = data.draw(st.sampled_from(["host-2", "host-1", "host-3", "host-9"]))
            if "source_host" in b:
                b["source_host"] = data.draw(st.sampled_from(["host-1", "host-2", "host-3"]))
            if "password" in b or b["type"] == "volume.attach_request":
                choice = data.draw(st.sampled_from(["right", "right", "wrong", "generated", "absent"]), label="pw")
                if choice == "right":
                    b["password"] = FUZZ_PASSWORD
                elif choice == "wrong":
                    b["password"] = "wrong-pw"
                elif choice == "absent":
                    b.pop("password", None)
            if "apps" in b:
                for a in b["apps"]:
                    if data.draw(st.booleans(), label="real software"):
                        a["name"] = data.draw(st.sampled_from(SOFTWARE))
                        a["type"] = data.draw(st.sampled_from(["disk_encryption", "disk_encryption", "antivirus"]))
                        a["key_bits"] = data.draw(st.sampled_from([128, 256, 512, 1]))
        when = data.draw(st.integers(0, 99), label="occurred_at")
        if when < 70:
            b.pop("occurred_at", None)
        elif when < 90:
            # Increasing, but never more than 240 s ahead of now (the server refuses more than 300 s).
            self.clock = min(self.clock + 1, int(time.time()) + 240)
            b["occurred_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock))
        return b

    def encode(self, data, body: Any) -> bytes:
        from hypothesis import strategies as st

        style = data.draw(st.integers(0, 9), label="json style")
        if style < 6:
            return json.dumps(body).encode()
        if style < 8:
            return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        return json.dumps(body, indent=2, ensure_ascii=False).encode()

    def sender_for(self, data, body: dict[str, Any]) -> str:
        from hypothesis import strategies as st

        owner = self.model.host_of(body.get("vm_id", "")) or "host-1"
        if body.get("type") == "vm.migrate.complete":
            owner = "host-2" if owner == "host-1" else "host-1"
        other = "host-2" if owner == "host-1" else "host-1"
        return owner if data.draw(st.integers(0, 99), label="sender") < 85 else other

    def positive_body(self, data) -> dict[str, Any]:
        from hypothesis import strategies as st

        etype = data.draw(st.sampled_from(self.weighted_types), label="type")
        return self.focus(data, data.draw(self.positive[etype], label="body"))

    def make(self, data) -> Request:
        from hypothesis import strategies as st

        # Every draw's shape must depend on earlier draws only, never on the run's state (what was accepted so
        # far, who holds a VM now): Hypothesis checks that a choice sequence always draws the same way.
        kinds = [k for k, w in self.CATEGORIES for _ in range(w)]
        category = data.draw(st.sampled_from(kinds), label="category")
        return getattr(self, f"make_{category}")(data)

    def make_valid(self, data) -> Request:
        body = self.positive_body(data)
        raw = self.encode(data, body)
        sender = self.sender_for(data, body)
        return Request("valid", "POST", raw, self.signed(raw, sender), verdict=self.doc.verdict(raw), sender=sender,
                       event=body)

    def make_negative(self, data) -> Request:
        case = data.draw(self.negative, label="negative case")
        body = case.body
        if isinstance(body, (bytes, bytearray)):
            raw = bytes(body)
        else:
            try:
                raw = json.dumps(body).encode()
            except (TypeError, ValueError):
                raw = repr(body).encode()
        ev = strict_or_none(raw)
        return Request("negative", "POST", raw, self.signed(raw), verdict=self.doc.verdict(raw), sender="host-1",
                       event=ev)

    def make_mutant(self, data) -> Request:
        from hypothesis import strategies as st

        body = self.positive_body(data)
        name = data.draw(st.sampled_from(sorted(MUTATIONS)), label="mutation")
        raw = MUTATIONS[name](data, body, self.encode(data, body))
        sender = self.sender_for(data, body)
        return Request("mutant", "POST", raw, self.signed(raw, sender), verdict=self.doc.verdict(raw),
                       sender=sender, event=strict_or_none(raw))

    def make_auth(self, data) -> Request:
        from hypothesis import strategies as st

        body = self.positive_body(data)
        raw = self.encode(data, body)
        now = int(time.time())
        good = self.signed(raw, "host-1")
        fault = data.draw(st.sampled_from(AUTH_FAULTS), label="auth fault")
        h = dict(good)
        code = "bad_signature"
        if fault == "no_headers":
            h = {"Content-Type": "application/json"}
            code = "missing_signature"
        elif fault in ("no_host", "no_signature"):
            h.pop("X-VVG-Host" if fault == "no_host" else "X-VVG-Signature")
            code = "missing_signature"
        elif fault == "empty_host":
            h["X-VVG-Host"] = ""
            code = "missing_signature"
        elif fault == "malformed":
            sig = h["X-VVG-Signature"]
            h["X-VVG-Signature"] = data.draw(st.sampled_from([
                sig.upper(), sig[:-1], sig + "0", sig.replace("v1=", "v2="), sig.replace("t=", "ts="),
                sig.split(",")[1], f"t=abc,{sig.split(',')[1]}", "", "t=,v1=", "sha256=" + sig.split("v1=")[1],
                sig.replace(",", ";"), f"t={now},v1={'g' * 64}", f"t={'9' * 13},v1={'0' * 64}"]))
            if h["X-VVG-Signature"] == "":
                code = "missing_signature"
        elif fault == "wrong_secret":
            h = self.signed(raw, "host-1", secret=data.draw(st.sampled_from(["", "x", self.target.hosts["host-2"]])))
        elif fault == "other_body":
            h = self.signed(raw + b" ", "host-1")
        elif fault == "stale":
            skew = data.draw(st.integers(301, 10 ** 9), label="skew")
            t = now - skew if data.draw(st.booleans(), label="past") else now + skew
            h = self.signed(raw, "host-1", t=max(t, 0))
            code = "stale_signature"
        elif fault == "unknown_host":
            host = data.draw(st.sampled_from(["host-9", "ghost", "HOST-1", "host-1.", "a" * 64]), label="host")
            h = {**self.signed(raw, "host-1"), "X-VVG-Host": host}
            code = "unknown_host"
        elif fault == "bad_host_pattern":
            h["X-VVG-Host"] = data.draw(st.sampled_from(["host 1", "host/1", "a" * 65, "host-1;", "h\u00f6st"]))
            code = "unknown_host"
        elif fault == "revoked_host":
            h = self.signed(raw, "host-3", secret=self.target.revoked["host-3"])
            code = "unknown_host"
        return Request("auth", "POST", raw, h, verdict=self.doc.verdict(raw), statuses={401}, codes={code})

    def make_replay(self, data) -> Request:
        from hypothesis import strategies as st

        pick = data.draw(st.integers(0, 199), label="earlier")
        same = data.draw(st.booleans(), label="same bytes")
        if not self.accepted:
            return self.make_health(data)
        recent = self.accepted[-200:]
        sender, raw, event, answer = recent[pick % len(recent)]
        if same:
            return Request("replay", "POST", raw, self.signed(raw, sender), verdict="valid", sender=sender,
                           event=event, replay_of=answer)
        other = dict(event)
        if "occurred_at" in other:
            other.pop("occurred_at")
        else:
            other["occurred_at"] = "2000-01-01T00:00:00Z"
        raw2 = json.dumps(other).encode()
        return Request("replay", "POST", raw2, self.signed(raw2, sender), verdict="valid", sender=sender, event=other,
                       statuses={409, 403, 404}, codes={"event_conflict", "forbidden", "not_found"})

    def make_edge(self, data) -> Request:
        from hypothesis import strategies as st

        body = self.positive_body(data)
        raw = json.dumps(body).encode()
        kind = data.draw(st.sampled_from(["empty", "null", "array", "string", "deep", "exact", "over", "huge"]))
        if kind == "empty":
            raw = b""
        elif kind == "null":
            raw = b"null"
        elif kind == "array":
            raw = b"[" + raw + b"]"
        elif kind == "string":
            raw = json.dumps(raw.decode()).encode()
        elif kind == "deep":
            depth = data.draw(st.integers(33, 30000), label="depth")
            raw = b"[" * depth + b"]" * depth
        elif kind == "exact":
            raw = raw + b" " * (MAX_BODY - len(raw))
        elif kind == "over":
            raw = raw + b" " * (MAX_BODY + 1 - len(raw))
        else:
            raw = raw + b" " * data.draw(st.integers(MAX_BODY, 2 * 1024 * 1024), label="padding")
        sender = self.sender_for(data, body)
        return Request("edge", "POST", raw, self.signed(raw, sender), verdict=self.doc.verdict(raw), sender=sender,
                       event=body if kind == "exact" else None)

    def make_health(self, data) -> Request:
        return Request("health", "GET", b"", {}, verdict="health", statuses={200})

    # ---- one step

    def step(self, data) -> None:
        from hypothesis.errors import HypothesisException

        if self.stopped:
            return
        try:
            req = self.make(data)
        except HypothesisException:
            raise  # e.g. a strategy rejecting its draw: Hypothesis discards this example (the run tops up)
        except Exception as exc:  # a fuzzer bug must not look like a product bug, nor stop the run
            self.report.violations.append(f"fuzzer could not build a request: {type(exc).__name__}: {exc}")
            return
        try:
            status, ctype, raw_answer = self.send(req.method, EVENTS if req.method == "POST" else "/v1/health",
                                                  req.raw, req.headers)
        except (OSError, http.client.HTTPException) as exc:
            self.report.violations.append(f"{req.category}: no answer ({type(exc).__name__}: {exc})")
            self.unanswered += 1
            if self.unanswered >= 20:
                self.report.violations.append("20 requests in a row got no answer: the run stops")
                self.stopped = True
            return
        self.unanswered = 0
        try:
            self.check(req, status, ctype, raw_answer)
        except Exception as exc:  # a fuzzer bug: reported, never replayed by Hypothesis as a "failure"
            self.report.violations.append(f"fuzzer could not check an answer: {type(exc).__name__}: {exc} "
                                          f"({req.category} {req.raw[:120]!r} -> {status} {raw_answer[:120]!r})")
        self.report.requests += 1
        if self.checkpoint_every and self.report.requests % self.checkpoint_every == 0:
            self.checkpoint()

    def check(self, req: Request, status: int, ctype: str, raw_answer: bytes) -> None:
        rep = self.report
        rep.by_status[status] += 1
        rep.by_category[req.category] += 1
        rep.by_category_status[f"{req.category}/{status}"] += 1
        shown = {k: v for k, v in req.headers.items() if k.lower().startswith("x-vvg")}
        sample = f"{req.category} {shown} {req.raw[:160]!r} -> {status} {raw_answer[:200]!r}"
        if status >= 500:
            rep.five_xx += 1
            rep.violations.append(f"5xx: {sample}")
            return
        path = EVENTS if req.method == "POST" else "/v1/health"
        problem = self.doc.check_answer(path, req.method, status, ctype, raw_answer)
        if problem:
            rep.violations.append(f"undocumented answer ({problem}): {sample}")
            return
        answer = json.loads(raw_answer)
        code = answer.get("error", {}).get("code") if status >= 400 else None
        if code:
            rep.by_code[code] += 1
        if req.verdict == "health":
            return
        allowed, codes = self.expected(req)
        if status not in allowed or (code and codes is not None and code not in codes):
            known = known_disagreement(req.raw)
            if known and status in (200, 400, 403, 404, 409):
                rep.disagreements[known] += 1
            else:
                rep.violations.append(f"expected {sorted(allowed)} {sorted(codes or [])}: {sample}")
            if status != 200:
                return
        if status == 200:
            self.accept(req, answer, sample)

    def expected(self, req: Request) -> tuple[set[int], set[str] | None]:
        if req.statuses is not None:
            return req.statuses, req.codes
        if req.verdict == "too_large":
            return {413}, {"payload_too_large"}
        if req.verdict == "invalid":
            return {400}, {"invalid_json", "invalid_event"}
        ev = req.event or {}
        key = f"{req.sender}/{ev.get('event_id')}"
        digest = hashlib.sha256(req.raw).hexdigest()
        if key in self.used and self.used[key] != digest:
            return {409, 403, 404}, {"event_conflict", "forbidden", "not_found"}
        return {200, 403, 404}, {"forbidden", "not_found"}

    def accept(self, req: Request, answer: dict[str, Any], sample: str) -> None:
        ev = req.event
        if not isinstance(ev, dict) or "event_id" not in ev:
            self.report.violations.append(f"200 for a body the fuzzer cannot read: {sample}")
            return
        key = f"{req.sender}/{ev['event_id']}"
        digest = hashlib.sha256(req.raw).hexdigest()
        if answer["event_id"] != ev["event_id"]:
            self.report.violations.append(f"answer names another event_id: {sample}")
        if answer["duplicate"]:
            first = self.first.get(key)
            if self.used.get(key) != digest or first is None:
                self.report.violations.append(f"duplicate: true for an event_id never answered with this body: {sample}")
            elif {**answer, "duplicate": False} != first:
                self.report.violations.append(f"a duplicate's answer differs from the first answer: {sample}")
            return
        if key in self.used:
            self.report.violations.append(f"an event_id answered twice as new: {sample}")
        mine = self.model.volumes_of(ev["vm_id"])
        for d in answer["decisions"]:
            self.report.decisions[f"{d['action']}/{d['outcome']}"] += 1
            if d["outcome"] != "done":
                self.report.reasons[f"{d['action']}/{d['outcome']}/{d['reason'].split(' ')[0]}"] += 1
            if d["volume_id"] not in mine:
                self.report.violations.append(f"a decision about a volume of another VM: {sample}")
        if ev["type"] == "vm.migrate.complete" and any(
                d["outcome"] == "failed" and d["reason"] == "host_not_allowed" for d in answer["decisions"]):
            self.report.known_bugs["migration_left_volume_behind"] += 1
        self.used[key] = digest
        self.first[key] = answer
        self.accepted.append((req.sender, req.raw, ev, answer))
        self.model.apply(req.sender, ev, answer)

    def checkpoint(self) -> None:
        actual = None
        for attempt in range(5):
            try:
                actual = Actual.read(self.target)
                break
            except Exception as exc:  # the emulation is unreachable (a crashed or overloaded stack)
                error = f"{type(exc).__name__}: {exc}"
                time.sleep(1 + attempt)
        if actual is None:
            self.report.violations.append(f"the state could not be read after {self.report.requests} requests "
                                          f"({error}); the run stops")
            self.stopped = True
            return
        self.report.checkpoints += 1
        diffs = self.model.compare(actual)
        self.report.unexpected_writes += [f"after {self.report.requests} requests: {d}" for d in diffs]
        self.log(f"  {self.report.requests} requests, {self.report.five_xx} 5xx, "
                 f"{len(self.report.unexpected_writes)} unexpected writes, {len(self.report.violations)} violations")

    # ---- the run

    def run(self, requests: int) -> Report:
        from hypothesis import HealthCheck, Phase, given, seed, settings
        from hypothesis import strategies as st

        started = time.monotonic()

        @seed(self.seed)
        @settings(max_examples=requests, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(st.data())
        def one(data):
            self.step(data)

        one()
        # Hypothesis may stop a little early (it dedupes identical draws): top up to the count asked for.
        while self.report.requests < requests:
            @seed(self.seed + self.report.requests)
            @settings(max_examples=requests - self.report.requests, deadline=None, database=None,
                      phases=[Phase.generate], suppress_health_check=list(HealthCheck))
            @given(st.data())
            def more(data):
                self.step(data)

            before = self.report.requests
            more()
            if self.report.requests == before or self.stopped:
                break
        if not self.stopped:
            self.checkpoint()
        r = self.target.vvg("audit", "verify")
        self.report.audit_ok = r.code == 0
        self.report.audit = (r.out or r.err).strip().splitlines()[-1][:200] if (r.out or r.err).strip() else ""
        self.report.seconds = time.monotonic() - started
        return self.report


def strict_or_none(raw: bytes) -> dict[str, Any] | None:
    try:
        doc = strict_json(raw)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


AUTH_FAULTS = ["no_headers", "no_host", "no_signature", "empty_host", "malformed", "wrong_secret", "other_body",
               "stale", "unknown_host", "bad_host_pattern", "revoked_host"]


# ---------------------------------------------------------------------------------------------- mutations


def _at(data, raw: bytes) -> int:
    from hypothesis import strategies as st

    return data.draw(st.integers(0, max(0, len(raw) - 1)), label="position")


def _set(data, body: dict[str, Any], value: Any) -> bytes:
    from hypothesis import strategies as st

    b = dict(body)
    b[data.draw(st.sampled_from(sorted(b)), label="field")] = value
    return json.dumps(b).encode()


def _id_field(data, body: dict[str, Any]) -> str:
    from hypothesis import strategies as st

    return data.draw(st.sampled_from([k for k in ("vm_id", "volume_id", "app", "event_id", "destination_host",
                                                  "source_host") if k in body]), label="id field")


def m_flip(data, body, raw):
    from hypothesis import strategies as st

    i = _at(data, raw)
    return raw[:i] + bytes([data.draw(st.integers(0, 255), label="byte")]) + raw[i + 1:]


def m_delete(data, body, raw):
    from hypothesis import strategies as st

    i = _at(data, raw)
    return raw[:i] + raw[i + data.draw(st.integers(1, 8), label="n"):]


def m_insert(data, body, raw):
    from hypothesis import strategies as st

    i = _at(data, raw)
    junk = data.draw(st.sampled_from([b"\xff", b"\x00", b'"', b",", b"{", b"}", b"[", b"\\", b"\\u", b"\xc0\xaf",
                                      b"\xed\xa0\x80", b"\r\n", b"/*", b"'", b"\t"]), label="junk")
    return raw[:i] + junk + raw[i:]


def m_truncate(data, body, raw):
    return raw[:_at(data, raw)]


def m_duplicate_key(data, body, raw):
    from hypothesis import strategies as st

    key = data.draw(st.sampled_from(sorted(body)), label="key")
    value = data.draw(st.sampled_from([body[key], "vm-2", "vm.shutdown"]), label="value")
    return b"{" + json.dumps(key).encode() + b":" + json.dumps(value).encode() + b"," + raw[1:]


def m_unknown_field(data, body, raw):
    from hypothesis import strategies as st

    key = data.draw(st.sampled_from(["extra", "host_id", "Type", "vmId", "vm_id ", "__proto__", "constructor",
                                     "password", "apps", "volume_id", "occurredAt", ""]), label="key")
    if key in body:
        key = key + "_"
    b = dict(body)
    b[key] = data.draw(st.sampled_from([1, None, "x", [], {}]), label="value")
    return json.dumps(b).encode()


def m_drop_field(data, body, raw):
    from hypothesis import strategies as st

    b = dict(body)
    b.pop(data.draw(st.sampled_from(sorted(b)), label="field"))
    return json.dumps(b).encode()


def m_wrong_type(data, body, raw):
    from hypothesis import strategies as st

    return _set(data, body, data.draw(st.sampled_from([None, 1, 0, -1, True, False, [], {}, "", 1.5, "x" * 300,
                                                       ["vm-1"], {"id": "vm-1"}]), label="value"))


def m_deep(data, body, raw):
    from hypothesis import strategies as st

    depth = data.draw(st.integers(2, 3000), label="depth")
    key = data.draw(st.sampled_from(sorted(body)), label="field")
    inner = json.dumps(body[key])
    text = json.dumps({**{k: v for k, v in body.items() if k != key}})[:-1]
    sep = ", " if len(body) > 1 else ""
    return (text + f'{sep}"{key}": ' + "[" * depth + inner + "]" * depth + "}").encode()


def m_huge_number(data, body, raw):
    from hypothesis import strategies as st

    number = data.draw(st.sampled_from(["1" + "0" * 20, "9" * 19, "-" + "9" * 25, "1e400", "-1e400", "1e308", "0.5",
                                        "1" * 5000, "1." + "0" * 60 + "1", "256.0", "2.56e2", "-0", "65537",
                                        "0", "1E+2"]), label="number")
    b = dict(body)
    if isinstance(b.get("apps"), list) and b["apps"]:
        b["apps"] = [dict(a) for a in b["apps"]]
        b["apps"][0]["key_bits"] = "@N@"
    else:
        b[data.draw(st.sampled_from(sorted(b)), label="field")] = "@N@"
    return json.dumps(b).encode().replace(b'"@N@"', number.encode())


def m_nan(data, body, raw):
    from hypothesis import strategies as st

    b = dict(body)
    b[data.draw(st.sampled_from(sorted(b)), label="field")] = "@N@"
    token = data.draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "nan", "undefined"]), label="token")
    return json.dumps(b).encode().replace(b'"@N@"', token.encode())


def m_bad_utf8(data, body, raw):
    from hypothesis import strategies as st

    field_ = _id_field(data, body)
    junk = data.draw(st.sampled_from([b"\xff", b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                                      b"\xe2\x82"]), label="bytes")
    b = dict(body)
    b[field_] = "@S@"
    return json.dumps(b).encode().replace(b"@S@", b"x" + junk)


def m_surrogate(data, body, raw):
    field_ = _id_field(data, body)
    b = dict(body)
    b[field_] = "@S@"
    return json.dumps(b).encode().replace(b"@S@", str(body[field_]).encode() + b"\\ud800")


def m_lookalike(data, body, raw):
    from hypothesis import strategies as st

    field_ = _id_field(data, body)
    value = str(body[field_])
    spots = [i for i, c in enumerate(value) if c in LOOKALIKES]
    b = dict(body)
    if spots:
        i = data.draw(st.sampled_from(spots), label="spot")
        b[field_] = value[:i] + LOOKALIKES[value[i]] + value[i + 1:]
    else:
        b[field_] = value + data.draw(st.sampled_from(["\u200b", "\u00a0", "\u2028", "\ufeff"]), label="invisible")
    return json.dumps(b, ensure_ascii=data.draw(st.booleans(), label="ascii")).encode()


def m_crlf(data, body, raw):
    from hypothesis import strategies as st

    field_ = _id_field(data, body)
    b = dict(body)
    b[field_] = str(body[field_]) + data.draw(st.sampled_from(["\r\nX-Injected: 1", "\n", "\r", "\r\n\r\n{}",
                                                                "%0d%0aX: 1", " ", "\t"]), label="suffix")
    return json.dumps(b).encode()


def m_escaped_ascii(data, body, raw):
    """Every character of one id escaped as \\uXXXX: the same JSON string, so the same (valid) event."""
    field_ = _id_field(data, body)
    b = dict(body)
    b[field_] = "@S@"
    escaped = "".join(f"\\u{ord(c):04x}" for c in str(body[field_]))
    return json.dumps(b).encode().replace(b"@S@", escaped.encode())


def m_type_case(data, body, raw):
    b = dict(body)
    b["type"] = str(b["type"]).upper()
    return json.dumps(b).encode()


def m_bom(data, body, raw):
    return b"\xef\xbb\xbf" + raw


def m_utf16(data, body, raw):
    from hypothesis import strategies as st

    return raw.decode().encode(data.draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32"]), label="encoding"))


def m_non_object(data, body, raw):
    from hypothesis import strategies as st

    return data.draw(st.sampled_from([b"null", b"true", b"1", b'"vm.preboot"', b"[" + raw + b"]", b"[]", b"{}",
                                      b"  ", b"\x00", raw + raw, raw + b"garbage"]), label="replacement")


def m_pad(data, body, raw):
    from hypothesis import strategies as st

    target = data.draw(st.sampled_from([MAX_BODY - 1, MAX_BODY, MAX_BODY + 1, MAX_BODY + 1000]), label="size")
    filler = data.draw(st.sampled_from([b" ", b"\n", b"\t"]), label="filler")
    return raw + filler * max(0, target - len(raw))


def m_big_apps(data, body, raw):
    from hypothesis import strategies as st

    n = data.draw(st.sampled_from([63, 64, 65, 500]), label="apps")
    b = {k: v for k, v in body.items() if k not in ("apps",)}
    b["type"] = "guest.inventory"
    for k in ("app", "volume_id", "password", "destination_host", "source_host"):
        b.pop(k, None)
    b["apps"] = [{"name": f"p{i}", "type": "disk_encryption", "key_bits": 256} for i in range(n)]
    return json.dumps(b).encode()


def m_long_strings(data, body, raw):
    from hypothesis import strategies as st

    field_ = data.draw(st.sampled_from(["event_id", "vm_id", "password"]), label="field")
    n = data.draw(st.sampled_from([64, 65, 128, 129, 256, 257, 5000]), label="length")
    b = dict(body)
    b[field_] = "a" * n
    if field_ == "password":
        b["type"] = "volume.attach_request"
        b.setdefault("volume_id", "vvol-6")
        for k in ("app", "apps", "destination_host", "source_host"):
            b.pop(k, None)
    return json.dumps(b).encode()


MUTATIONS: dict[str, Callable[[Any, dict[str, Any], bytes], bytes]] = {
    name[2:]: fn for name, fn in list(globals().items()) if name.startswith("m_") and callable(fn)}


# ---------------------------------------------------------------------------------------------- the CLI


@dataclass
class CliResult:
    code: int
    out: str
    err: str


class FuzzStack:
    """A fresh local stack (infra.local.LocalStack, as `make run` starts it, on free ports, seeded) and the CLI
    pointed at it."""

    def __init__(self) -> None:
        import logging

        from infra.local import LocalStack

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the dashboard's access log, as `make run` has it
        self.stack = LocalStack(seed=True, admin_password="fuzz-admin-pass", quiet=True,
                                environ={"VVG_LOG_EVENTS": "0"})
        self.stack.__enter__()
        self.aws_url, self.api_url = self.stack.aws_url, self.stack.api_url
        self.host_id, self.host_secret = self.stack.host_id, self.stack.host_secret

    def state(self) -> str:
        """What to show if the run stops early: whether the emulation is still up."""
        moto = self.stack.moto
        return "the AWS emulation " + ("exited with " + str(moto.poll()) if moto and moto.poll() is not None
                                       else "is running")

    def vvg(self, *argv: str, stdin: str = "") -> CliResult:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VVG_"))}
        env.update(AWS_ENDPOINT_URL=self.aws_url, AWS_REGION="us-east-1", AWS_ACCESS_KEY_ID="testing",
                   AWS_SECRET_ACCESS_KEY="testing")
        exe = str(Path(sys.executable).with_name("vvg"))
        p = subprocess.run([exe, *argv], input=stdin, capture_output=True, text=True, env=env, timeout=120)
        return CliResult(p.returncode, p.stdout, p.stderr)

    def stop(self) -> None:
        self.stack.__exit__(None, None, None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=10000, help="requests to send (default 10000)")
    p.add_argument("--seed", type=int, default=20261127, help="Hypothesis seed (default fixed: reproducible)")
    p.add_argument("--checkpoint-every", type=int, default=1000, help="compare the state every N requests")
    args = p.parse_args(argv)
    print("starting a local stack ...", flush=True)
    stack = FuzzStack()
    try:
        target = Target(stack.api_url, stack.aws_url, {stack.host_id: stack.host_secret}, stack.vvg)
        prepare(target)
        print(f"fuzzing {stack.api_url}/v1/events with {args.requests} requests from {OPENAPI.name} "
              f"(seed {args.seed}) ...", flush=True)
        fuzzer = Fuzzer(target, seed=args.seed, checkpoint_every=args.checkpoint_every,
                        log=lambda s: print(s, flush=True))
        report = fuzzer.run(args.requests)
        if fuzzer.stopped:
            print(f"the run stopped early; {stack.state()}", flush=True)
    finally:
        stack.stop()
    print()
    print("\n".join(report.lines()))
    print(json.dumps(report.summary()))
    return 0 if report.ok() else 1


if __name__ == "__main__":
    raise SystemExit(main())
