"""The host webhook's OpenAPI 3.1 document (docs/webhook-api.md), built from the code's own schema.

    python -m infra.openapi > openapi.yaml

One source: every event type (its fields, description and example) comes from the event registry
(``vvolguard.domain.registry``), every field's JSON Schema from ``vvolguard.domain.events`` (COMMON,
OPTIONAL_COMMON and FIELD_SCHEMAS, which mirror parse_event's checks), the answer's vocabulary from
``vvolguard.domain.constants``, every error from ``vvolguard.errors`` (status and code). This module only adds
the fields' prose and the answer's shape.
``tests/test_openapi.py`` checks that the committed openapi.yaml is exactly what this prints, that it is a
valid OpenAPI 3.1 document, and that the handler and the document agree.
"""
from __future__ import annotations

import copy
import sys
import tomllib
from typing import Any

import yaml

from infra.template import ROOT
from vvolguard import errors
from vvolguard.domain import events as ev
from vvolguard.domain.constants import ANSWERED_OUTCOMES, Action
from vvolguard.domain.registry import REGISTRY

# ---------------------------------------------------------------- prose (the contract's words)

FIELD_DOCS: dict[str, str] = {
    "event_id": "Unique per event and host. A repeat with the same body is answered idempotently "
                "(`duplicate: true`, nothing done again); with another body it is refused 409 `event_conflict`.",
    "type": "The lifecycle event; decides which other fields are required or allowed.",
    "vm_id": "The VM.",
    "occurred_at": "RFC 3339 time of the event at the host (leap seconds are not accepted). Events are applied "
                   "in this order per VM and volume; an event older than one already applied is answered "
                   "`skipped` with reason `stale`.",
    "app": "The application.",
    "volume_id": "The volume asked for; 404 `not_found` when it is not a volume of this VM.",
    "password": "The volume's password, when it has one. Never logged, never echoed, never audited.",
    "destination_host": "Where the VM is going: another enrolled, active host.",
    "source_host": "Where the VM came from.",
    "apps": "Installed security software, at most 64 products.",
}

APP_ITEM_DOCS = {"name": "The product's name.", "type": "Its kind, e.g. `disk_encryption`.",
                 "key_bits": "Its key size in bits (a JSON integer, not `256.0`)."}

# Every error POST /v1/events answers (docs/webhook-api.md), in the contract's order, with when it happens.
WEBHOOK_ERRORS: list[tuple[type[errors.VvgError], str]] = [
    (errors.InvalidJson, "The body is not JSON: not UTF-8, malformed, a duplicate key, NaN/Infinity, a number of "
                         f"more than 20 digits, or nesting deeper than {ev.MAX_DEPTH} levels."),
    (errors.InvalidEvent, "Not an object, or a missing, unknown or malformed field."),
    (errors.MissingSignature, "`X-VVG-Host` or `X-VVG-Signature` is missing."),
    (errors.BadSignature, "The signature is malformed or wrong."),
    (errors.StaleSignature, "The signature's timestamp is more than 300 s from the server's clock."),
    (errors.UnknownHost, "The host is not enrolled, or was revoked."),
    (errors.Forbidden, "The host is not the VM's host (or, for `vm.migrate.complete`, was not granted; for "
                       "`vm.migrate.start`, the destination is not another enrolled, active host)."),
    (errors.NotFound, "`volume.*` names a volume that is not this VM's."),
    (errors.EventConflict, "The `event_id` was used with another body."),
    (errors.EventInProgress, "The `event_id` is being processed right now; retry with the same `event_id`."),
    (errors.PayloadTooLarge, f"The body is over {ev.MAX_BODY} bytes."),
    (errors.ProviderUnavailable, "The storage provider failed after retries; nothing is left half-done and the "
                                 "same `event_id` may be retried."),
]
STATUS_NAMES = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
                413: "PayloadTooLarge", 503: "ProviderUnavailable"}

# The answer's vocabulary (docs/webhook-api.md).
ACTIONS = [a.value for a in Action]
OUTCOMES = ANSWERED_OUTCOMES
UTC_SECOND = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$"


def schema_name(etype: str) -> str:
    """``vm.migrate.start`` -> ``VmMigrateStartEvent``."""
    return "".join(p.capitalize() for p in etype.replace("_", ".").split(".")) + "Event"


def _field(name: str) -> dict[str, Any]:
    out = copy.deepcopy(ev.FIELD_SCHEMAS[name])
    out["description"] = FIELD_DOCS[name]
    if name == "apps":
        for k, doc in APP_ITEM_DOCS.items():
            out["items"]["properties"][k]["description"] = doc
    return out


def event_schema(etype: str) -> dict[str, Any]:
    """One event type's body: exactly the fields parse_event allows for it."""
    spec = REGISTRY[etype]
    required, optional = spec.required, spec.optional
    props: dict[str, Any] = {}
    for name in ev.COMMON + required + ev.OPTIONAL_COMMON + optional:
        props[name] = _field(name)
    props["type"] = {"type": "string", "const": etype, "description": FIELD_DOCS["type"]}
    return {"title": etype, "description": spec.doc, "type": "object",
            "required": list(ev.COMMON + required), "additionalProperties": False,
            "properties": props, "examples": [spec.example]}


def error_schema(status: int, classes: list[type[errors.VvgError]]) -> dict[str, Any]:
    return {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "description": f"The contract's error body for HTTP {status}.",
        "properties": {"error": {
            "type": "object", "required": ["code", "message"], "additionalProperties": False,
            "properties": {
                "code": {"type": "string", "enum": [c.code for c in classes]},
                "message": {"type": "string", "minLength": 1, "description": "Safe to show; never echoes a secret."},
            },
        }},
    }


def answer_schemas() -> dict[str, Any]:
    decision = {
        "type": "object", "required": ["volume_id", "action", "outcome", "reason"], "additionalProperties": False,
        "description": "One decision about one volume of the VM.",
        "properties": {
            "volume_id": _plain("volume_id", "The volume decided about."),
            "action": {"type": "string", "enum": ACTIONS,
                       "description": "What was decided; `select` carries `software`, and so does a `done` "
                                      "`attach` of a volume with `min_key_bits` after an inventory; `renew` "
                                      "(vm.heartbeat) carries the new `lease_expires_at`."},
            "outcome": {"type": "string", "enum": OUTCOMES,
                        "description": "`done`; `skipped` (already in that state, or `stale`); `denied` (with the "
                                       "reason: `bad_password`, `locked`, `not_authorized_app` ...); `failed` "
                                       "(with the reason, e.g. `vm_not_found`)."},
            "reason": {"type": "string", "description": "Why, e.g. `attach_on=preboot`, `not_attached`, `stale`."},
            "device": {"type": "string", "description": "The device the volume is (or stays) attached as.",
                       "examples": ["/dev/sdf"]},
            "lease_expires_at": {"type": "string", "format": "date-time", "pattern": UTC_SECOND,
                                 "description": "When the reconciler detaches the volume unless it is detached "
                                                "before (UTC, whole seconds)."},
            "provider_volume_id": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$",
                                   "description": "On a `done` `attach`: the storage provider's id of the volume "
                                                  "(EBS: `vol-...`), so that a host can find the device "
                                                  "(`/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol...`).",
                                   "examples": ["vol-0abc1234def567890"]},
            "software": {"type": "array", "items": _plain("app", "A product's name."),
                         "description": "The qualifying products, strongest first: on a `select`, and on a "
                                        "`done` `attach` of a volume with `min_key_bits` (which product the "
                                        "guest hands the key to)."},
        },
    }
    answer = {
        "type": "object", "required": ["event_id", "duplicate", "decisions"], "additionalProperties": False,
        "description": "The decisions the event made, in volume order; `[]` when it matches no volume.",
        "properties": {
            "event_id": _plain("event_id", "The event's id."),
            "duplicate": {"type": "boolean", "description": "True when this is the stored answer of a repeat."},
            "decisions": {"type": "array", "items": {"$ref": "#/components/schemas/Decision"}},
        },
        "examples": [{"event_id": "e-1", "duplicate": False, "decisions": [
            {"volume_id": "vvol-1", "action": "attach", "outcome": "done", "reason": "attach_on=preboot",
             "device": "/dev/sdf", "lease_expires_at": "2026-11-27T05:15:00Z",
             "provider_volume_id": "vol-0abc1234def567890"}]}],
    }
    return {"EventAnswer": answer, "Decision": decision}


def _plain(field: str, description: str) -> dict[str, Any]:
    out = copy.deepcopy(ev.FIELD_SCHEMAS[field])
    out["description"] = description
    return out


def _version() -> str:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


def build() -> dict[str, Any]:
    """The whole document."""
    missing = set(ev.FIELD_SCHEMAS) ^ set(FIELD_DOCS)
    if missing:
        raise SystemExit(f"infra/openapi.py: document these event fields too: {sorted(missing)}")
    schemas: dict[str, Any] = {}
    mapping: dict[str, str] = {}
    for etype in REGISTRY:
        name = schema_name(etype)
        schemas[name] = event_schema(etype)
        mapping[etype] = f"#/components/schemas/{name}"
    schemas["Event"] = {
        "description": "One host lifecycle event: a discriminated union on `type`. Unknown fields are refused.",
        "oneOf": [{"$ref": ref} for ref in mapping.values()],
        "discriminator": {"propertyName": "type", "mapping": mapping},
    }
    schemas.update(answer_schemas())
    by_status: dict[int, list[tuple[type[errors.VvgError], str]]] = {}
    for cls, when in WEBHOOK_ERRORS:
        by_status.setdefault(cls.status_code, []).append((cls, when))
    responses: dict[str, Any] = {}
    event_responses: dict[str, Any] = {"200": {
        "description": "The decisions (also for a repeated `event_id` with the same body: `duplicate: true`).",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EventAnswer"}}}}}
    for status, items in sorted(by_status.items()):
        name = STATUS_NAMES[status]
        schemas[f"{name}Error"] = error_schema(status, [c for c, _ in items])
        responses[name] = {
            "description": " ".join(f"`{c.code}`: {when}" for c, when in items),
            "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{name}Error"},
                "examples": {c.code: {"value": c().body()} for c, _ in items}}}}
        event_responses[str(status)] = {"$ref": f"#/components/responses/{name}"}
    request_examples = {t: {"summary": t, "value": spec.example} for t, spec in REGISTRY.items()}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "vvolguard host webhook",
            "version": _version(),
            "description": (
                "Hypervisor hosts fire one signed request per VM lifecycle event; vvolguard decides per volume what "
                "to attach, detach, create, grant, revoke or select, does it at the storage provider and audits "
                "every decision. Generated from the code by `python -m infra.openapi`; do not edit by hand.\n\n"
                "Every error answers `{\"error\": {\"code\": CODE, \"message\": TEXT}}` and writes nothing to the "
                "policy table, the attachment state or the provider; a refused request does not use up its "
                "`event_id`. Authentication is checked before the body is parsed."),
        },
        "servers": [{"url": "http://127.0.0.1:3000", "description": "the local stack (`make run`)"}],
        "tags": [{"name": "events", "description": "Host lifecycle events"}, {"name": "health"}],
        "paths": {
            "/v1/events": {"post": {
                "operationId": "postEvent",
                "tags": ["events"],
                "summary": "Send one VM lifecycle event",
                "description": (
                    f"The body is at most {ev.MAX_BODY} bytes of strict JSON (UTF-8, no duplicate keys, no "
                    f"NaN/Infinity, at most {ev.MAX_DEPTH} levels of nesting), `Content-Type: application/json`."),
                "security": [{"HostId": [], "Signature": []}],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Event"}, "examples": request_examples}}},
                "responses": event_responses,
                "x-vvg-max-body-bytes": ev.MAX_BODY,
            }},
            "/v1/health": {"get": {
                "operationId": "getHealth",
                "tags": ["health"],
                "summary": "The API is up",
                "security": [],
                "responses": {"200": {"description": "Up.", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["status"], "additionalProperties": False,
                    "properties": {"status": {"type": "string", "const": "ok"}}}}}}},
            }},
        },
        "components": {
            "securitySchemes": {
                "HostId": {"type": "apiKey", "in": "header", "name": "X-VVG-Host",
                           "description": "The sending host's enrolled id, `[A-Za-z0-9._-]{1,64}`."},
                "Signature": {"type": "apiKey", "in": "header", "name": "X-VVG-Signature",
                              "description": (
                                  "`t=UNIX_SECONDS,v1=HEX`, where HEX is the lower-case hex "
                                  "HMAC-SHA256(host secret, `\"{t}.\"` + the raw body bytes); from a host enrolled "
                                  "with a public key, `t=UNIX_SECONDS,ed25519=BASE64`, the standard base64 (with "
                                  "padding) of its Ed25519 signature over the same bytes (docs/host-keys.md). Each "
                                  "host uses only its own scheme. A timestamp more than "
                                  "300 s from the server's clock is refused (`stale_signature`).")},
            },
            "schemas": schemas,
            "responses": responses,
        },
    }


class _Dumper(yaml.SafeDumper):
    """Plain YAML: no anchors or aliases (the examples appear twice), which some client generators reject."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(doc: dict[str, Any] | None = None) -> str:
    """The document as openapi.yaml holds it."""
    return yaml.dump(doc or build(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)


def main() -> int:
    sys.stdout.write(dump())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
