"""openapi.yaml (issue 7): generated from the code, a valid OpenAPI 3.1 document, and in agreement with the
handler.

- The committed file is exactly what ``python -m infra.openapi`` prints (one source: the code's schema).
- It validates as OpenAPI 3.1 (openapi-spec-validator) and says what docs/webhook-api.md says.
- Every event type's example is accepted by parse_event; bodies Schemathesis generates from the document are
  accepted, schema-violating ones refused.
- Every documented error is reproduced through the real handler (the ``webhook`` fixture), with the
  documented body, and writes nothing; a 200 answer matches the documented answer schema.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fuzz import Document, strict_json
from infra import openapi
from infra.template import ROOT
from tests.statecheck import snapshot
from vvolguard.domain.events import TYPES, parse_event
from vvolguard.errors import InvalidEvent, InvalidJson

DOC = Document()
EVENTS = "/v1/events"

# docs/webhook-api.md, written out independently of the code: status -> codes.
CONTRACT_ERRORS = {
    400: {"invalid_json", "invalid_event"},
    401: {"missing_signature", "bad_signature", "stale_signature", "unknown_host"},
    403: {"forbidden"},
    404: {"not_found"},
    409: {"event_conflict", "event_in_progress"},
    413: {"payload_too_large"},
    503: {"provider_unavailable"},
}
CONTRACT_TYPES = {"vm.created", "vm.preboot", "vm.booted", "vm.shutdown", "app.started", "app.stopped",
                  "license.check", "license.verified", "volume.attach_request", "volume.detach_request",
                  "vm.migrate.start", "vm.migrate.complete", "guest.inventory", "vm.heartbeat"}


# ---------------------------------------------------------------------------------------------- the document


def test_the_committed_document_is_the_generated_one():
    committed = (ROOT / "openapi.yaml").read_text()
    assert committed == openapi.dump(), "openapi.yaml is stale: run `python -m infra.openapi > openapi.yaml`"


def test_the_document_is_valid_openapi_3_1():
    from openapi_spec_validator import OpenAPIV31SpecValidator, validate

    assert DOC.doc["openapi"].startswith("3.1.")
    validate(DOC.doc, cls=OpenAPIV31SpecValidator)


def test_the_document_has_both_operations_and_the_signature_headers_as_security_schemes():
    paths = DOC.doc["paths"]
    assert set(paths) == {"/v1/events", "/v1/health"}
    assert set(paths["/v1/events"]) == {"post"} and set(paths["/v1/health"]) == {"get"}
    schemes = DOC.doc["components"]["securitySchemes"]
    assert {(s["type"], s["in"], s["name"]) for s in schemes.values()} == {
        ("apiKey", "header", "X-VVG-Host"), ("apiKey", "header", "X-VVG-Signature")}
    assert paths["/v1/events"]["post"]["security"] == [{name: [] for name in schemes}]  # both, together
    assert paths["/v1/health"]["get"]["security"] == []
    health = paths["/v1/health"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert DOC.validator("/paths/~1v1~1health/get/responses/200/content/application~1json/schema").is_valid(
        {"status": "ok"})
    assert health["additionalProperties"] is False


def test_the_event_is_a_discriminated_union_of_one_closed_schema_per_type():
    event = DOC.doc["components"]["schemas"]["Event"]
    mapping = event["discriminator"]["mapping"]
    assert event["discriminator"]["propertyName"] == "type"
    assert set(mapping) == CONTRACT_TYPES == set(TYPES)
    assert sorted(r["$ref"] for r in event["oneOf"]) == sorted(mapping.values())
    for etype, ref in mapping.items():
        schema = DOC.doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
        assert schema["additionalProperties"] is False
        assert schema["properties"]["type"]["const"] == etype
        required, optional = TYPES[etype]
        assert set(schema["required"]) == {"event_id", "type", "vm_id", *required}
        assert set(schema["properties"]) == {"event_id", "type", "vm_id", "occurred_at", *required, *optional}


def test_the_documented_limits_are_the_contracts():
    props = {}
    for s in DOC.doc["components"]["schemas"].values():
        props.update(s.get("properties", {}))
    assert props["event_id"]["pattern"] == "^[A-Za-z0-9._:-]{1,128}$"
    for key in ("vm_id", "app", "volume_id", "destination_host", "source_host"):
        assert props[key]["pattern"] == "^[A-Za-z0-9._-]{1,64}$", key
    assert (props["password"]["minLength"], props["password"]["maxLength"]) == (1, 256)
    assert props["occurred_at"]["format"] == "date-time"
    apps = props["apps"]
    assert apps["maxItems"] == 64
    item = apps["items"]
    assert item["required"] == ["name", "type", "key_bits"] and item["additionalProperties"] is False
    assert (item["properties"]["key_bits"]["type"], item["properties"]["key_bits"]["minimum"],
            item["properties"]["key_bits"]["maximum"]) == ("integer", 1, 65536)
    assert DOC.doc["paths"][EVENTS]["post"]["x-vvg-max-body-bytes"] == 65536
    # ECMA-262's $ (JSON Schema's dialect) ends the input: a trailing newline is refused, as the server does.
    event = DOC.validator("/components/schemas/Event")
    assert event.is_valid({"event_id": "e-1", "type": "vm.preboot", "vm_id": "vm-1"})
    assert not event.is_valid({"event_id": "e-1", "type": "vm.preboot", "vm_id": "vm-1\n"})
    assert not event.is_valid({"event_id": "e-1\n", "type": "vm.preboot", "vm_id": "vm-1"})


def test_every_response_is_documented_with_the_contracts_codes():
    responses = DOC.doc["paths"][EVENTS]["post"]["responses"]
    assert set(responses) == {"200"} | {str(s) for s in CONTRACT_ERRORS}
    by_status: dict[int, set[str]] = {}
    for status, code in DOC.documented_errors():
        by_status.setdefault(status, set()).add(code)
    assert by_status == CONTRACT_ERRORS
    decision = DOC.doc["components"]["schemas"]["Decision"]
    assert set(decision["properties"]["action"]["enum"]) == {"create", "attach", "detach", "grant", "revoke", "select", "renew"}
    assert set(decision["properties"]["outcome"]["enum"]) == {"done", "skipped", "denied", "failed"}
    assert set(decision["required"]) == {"volume_id", "action", "outcome", "reason"}
    assert {"device", "lease_expires_at", "software"} <= set(decision["properties"])
    answer = DOC.doc["components"]["schemas"]["EventAnswer"]
    assert set(answer["required"]) == {"event_id", "duplicate", "decisions"}


def test_the_generator_lists_every_error_the_event_path_can_raise():
    """A new error class imported on the event path must be documented (WEBHOOK_ERRORS) to pass."""
    import inspect

    from vvolguard import errors
    from vvolguard.domain import events as domain_events, registry
    from vvolguard.services import auth, event_refusals, event_stores, events as service_events, executors

    from vvolguard.adapters.provider import ProviderRefused

    bases = {errors.VvgError, errors.AuthError, errors.InvalidInput, errors.Conflict}
    bases.add(ProviderRefused)  # never answered as an error: the service turns it into a `failed` decision
    path = (domain_events, registry, auth, service_events, event_stores, event_refusals, executors)
    raised = {obj for mod in path for obj in vars(mod).values()
              if inspect.isclass(obj) and issubclass(obj, errors.VvgError) and obj not in bases}
    assert raised == {cls for cls, _ in openapi.WEBHOOK_ERRORS}


# ---------------------------------------------------------------------------------------------- request bodies


@pytest.mark.parametrize("etype", sorted(CONTRACT_TYPES))
def test_the_documents_example_of_every_event_type_is_accepted(etype):
    examples = DOC.doc["paths"][EVENTS]["post"]["requestBody"]["content"]["application/json"]["examples"]
    body = examples[etype]["value"]
    assert DOC.validator("/components/schemas/Event").is_valid(body)
    schema_examples = DOC.doc["components"]["schemas"][openapi.schema_name(etype)]["examples"]
    assert schema_examples == [body]
    event = parse_event(json.dumps(body).encode())
    assert (event.event_id, event.type, event.vm_id) == (body["event_id"], etype, body["vm_id"])


POSITIVE, NEGATIVE = DOC.strategies()
FAST = settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@FAST
@given(st.sampled_from(sorted(POSITIVE)).flatmap(lambda t: POSITIVE[t]))
def test_bodies_generated_from_the_document_are_accepted_by_parse_event(body):
    raw = json.dumps(body).encode()
    event = parse_event(raw)  # integral floats such as key_bits 256.0 included (a fixed fuzz finding)
    assert event.type == body["type"] and event.event_id == body["event_id"]


@FAST
@given(NEGATIVE)
def test_bodies_the_document_forbids_are_refused_by_parse_event(case):
    body = case.body
    raw = bytes(body) if isinstance(body, (bytes, bytearray)) else json.dumps(body).encode()
    if DOC.verdict(raw) == "valid":
        return  # Schemathesis made a header or another part negative; the body itself is fine
    with pytest.raises((InvalidEvent, InvalidJson)):
        parse_event(raw, datetime.now(timezone.utc))  # the server's clock: an occurred_at >300 s ahead is refused


def test_an_integral_float_key_bits_which_the_document_allows_is_accepted():
    body = {"event_id": "e-1", "type": "guest.inventory", "vm_id": "vm-1",
            "apps": [{"name": "LUKS", "type": "disk_encryption", "key_bits": 256.0}]}
    assert DOC.validator("/components/schemas/Event").is_valid(body)
    event = parse_event(json.dumps(body).encode())
    assert event.apps[0].key_bits == 256


# ---------------------------------------------------------------------------------------------- through the handler


def body_of(**fields) -> bytes:
    return json.dumps({"event_id": f"oa-{time.monotonic_ns()}", **fields}).encode()


def _signed(w, raw: bytes, **kw) -> tuple[int, dict]:
    return w.raw(raw, w.signed_headers(raw, **kw))


def r_invalid_json(w, ctx):
    return _signed(w, b'{"event_id": "e-1", "type": ')


def r_invalid_event(w, ctx):
    return _signed(w, body_of(type="vm.preboot", vm_id="vm-1", colour="red"))


def r_missing_signature(w, ctx):
    raw = body_of(type="vm.preboot", vm_id="vm-1")
    return w.raw(raw, {"content-type": "application/json", "x-vvg-host": w.host_id})


def r_bad_signature(w, ctx):
    return _signed(w, body_of(type="vm.preboot", vm_id="vm-1"), secret="not-the-secret")


def r_stale_signature(w, ctx):
    return _signed(w, body_of(type="vm.preboot", vm_id="vm-1"), t=int(time.time()) - 301)


def r_unknown_host(w, ctx):
    return _signed(w, body_of(type="vm.preboot", vm_id="vm-1"), host_id="host-404")


def r_forbidden(w, ctx):
    return _signed(w, body_of(type="vm.migrate.start", vm_id="vm-1", destination_host=w.host_id))


def r_not_found(w, ctx):
    return _signed(w, body_of(type="volume.detach_request", vm_id="vm-1", volume_id="vvol-2"))


def r_event_conflict(w, ctx):
    first = json.dumps({"event_id": "oa-conflict", "type": "vm.booted", "vm_id": "vm-3"}).encode()
    assert _signed(w, first)[0] == 200
    ctx["before"] = snapshot()  # what the refused one must leave alone
    return _signed(w, json.dumps({"event_id": "oa-conflict", "type": "vm.shutdown", "vm_id": "vm-3"}).encode())


def r_event_in_progress(w, ctx):
    from vvolguard.adapters.models import EventItem

    raw = json.dumps({"event_id": "oa-busy", "type": "vm.preboot", "vm_id": "vm-1"}).encode()
    now = int(time.time())
    from vvolguard.adapters import aws as aws_adapter
    from vvolguard.domain.fingerprint import body_key, body_mac

    key = body_key(aws_adapter.audit_key(w.settings.region, w.settings.audit_key_secret_id))
    EventItem(event_id=f"{w.host_id}/oa-busy", body_mac=body_mac(key, raw, json.loads(raw)), host_id=w.host_id,
              status="in_progress", lease_until=now + 60, expires_at=now + 3600).save()  # another worker's claim
    ctx["before"] = snapshot()
    return _signed(w, raw)


def r_payload_too_large(w, ctx):
    raw = body_of(type="vm.preboot", vm_id="vm-1")
    return _signed(w, raw + b" " * (65536 + 1 - len(raw)))


def r_provider_unavailable(w, ctx):
    from vvolguard.adapters.provider import EbsProvider
    from vvolguard.errors import ProviderUnavailable

    def down(*a, **kw):
        raise ProviderUnavailable("the storage provider failed after 3 attempts (injected)")

    ctx["monkeypatch"].setattr(EbsProvider, "attach", down)
    raw = json.dumps({"event_id": "oa-down", "type": "vm.preboot", "vm_id": "vm-1"}).encode()
    ctx["retry"] = raw
    return _signed(w, raw)


RECIPES = {name[2:]: fn for name, fn in globals().items() if name.startswith("r_")}


def without_versions(policies: dict) -> dict:
    return {v: {k: x for k, x in p.items() if k != "state_version"} for v, p in policies.items()}


def test_every_documented_error_is_reproduced_through_the_handler_with_its_documented_body(
        webhook, monkeypatch, subtests):
    documented = DOC.documented_errors()
    assert {code for _, code in documented} == set(RECIPES), "a documented error without a recipe, or vice versa"
    for status, code in documented:
        with subtests.test(status=status, code=code):
            ctx = {"monkeypatch": monkeypatch}
            before = snapshot()
            got_status, body = RECIPES[code](webhook, ctx)
            assert (got_status, body.get("error", {}).get("code")) == (status, code), body
            problem = DOC.check_answer(EVENTS, "post", got_status, "application/json", json.dumps(body).encode())
            assert problem is None, problem
            after = snapshot()
            before = ctx.get("before", before)
            if code == "provider_unavailable":
                # The claim is released (the volumes' internal state_version moves on) and the event is marked
                # failed, so that the same event_id can be retried; nothing else changed, the provider included.
                assert {k: v for k, v in after.items() if k not in ("events", "policies")} == \
                       {k: v for k, v in before.items() if k not in ("events", "policies")}
                assert without_versions(after["policies"]) == without_versions(before["policies"])
                assert [e["status"] for e in after["events"].values() if e not in before["events"].values()] == ["failed"]
                monkeypatch.undo()
                retried, answer = _signed(webhook, ctx["retry"])
                assert retried == 200 and answer["decisions"][0]["outcome"] == "done", answer
            else:
                assert after == before


def test_a_200_answer_of_every_outcome_matches_the_documented_answer(webhook):
    sends = [("vm.created", "vm-1", {}), ("vm.preboot", "vm-1", {}), ("vm.preboot", "vm-1", {}),
             ("vm.booted", "vm-1", {}), ("vm.shutdown", "vm-1", {}), ("app.started", "vm-4", {"app": "A1"}),
             ("guest.inventory", "vm-2", {"apps": [{"name": "LUKS", "type": "disk_encryption", "key_bits": 512},
                                                   {"name": "ClamAV", "type": "antivirus", "key_bits": 1}]}),
             ("vm.preboot", "vm-404", {})]
    seen = set()
    for etype, vm, extra in sends:
        status, answer = webhook.send(etype, vm, **extra)
        assert status == 200, answer
        assert DOC.check_answer(EVENTS, "post", 200, "application/json", json.dumps(answer).encode()) is None, answer
        seen |= {(d["action"], d["outcome"]) for d in answer["decisions"]}
    raw = json.dumps({"event_id": "t-1", "type": "vm.created", "vm_id": "vm-1"}).encode()
    status, dup = webhook.raw(raw, webhook.signed_headers(raw))
    assert status == 200 and dup["duplicate"] is True
    assert DOC.check_answer(EVENTS, "post", 200, "application/json", json.dumps(dup).encode()) is None
    assert {("create", "done"), ("attach", "done"), ("attach", "skipped"), ("detach", "done"),
            ("select", "done")} <= seen
    assert strict_json(json.dumps(dup).encode())["event_id"] == "t-1"
