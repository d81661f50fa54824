"""Host events (docs/webhook-api.md): the strict schema, parsed into a typed request. Pure.

Which fields each type takes comes from the event registry (``vvolguard.domain.registry``); this module knows
the fields themselves."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NamedTuple

from vvolguard.domain.constants import EVENT_ID_RE, ID_RE, KEY_BITS, PASSWORD_LEN, no_duplicate_keys
from vvolguard.errors import InvalidEvent, InvalidJson

if TYPE_CHECKING:
    from vvolguard.domain.engine import Decision

MAX_BODY = 64 * 1024
RFC3339_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})\Z")
MAX_APPS = 64
MAX_AHEAD_S = 300  # an occurred_at further ahead of the server's clock is refused (it would make later events stale)

COMMON = ("event_id", "type", "vm_id")
OPTIONAL_COMMON = ("occurred_at",)


def json_pattern(rx: re.Pattern[str]) -> str:
    """One of this module's patterns as JSON Schema (ECMA-262) writes it.

    ``\\Z`` becomes ``$`` (ECMA's ``$`` without the m flag only matches at the very end) and ``\\d`` becomes
    ``[0-9]`` (Python's ``\\d`` also matches other scripts' digits, which parse_time then refuses anyway)."""
    return rx.pattern.replace("\\Z", "$").replace("\\d", "[0-9]")


def _id_schema(rx: re.Pattern[str]) -> dict[str, Any]:
    """An id pattern ending in ``{min,max}\\Z`` as a string schema with its length bounds."""
    lo, hi = re.search(r"\{(\d+),(\d+)\}\\Z$", rx.pattern).groups()  # type: ignore[union-attr]
    return {"type": "string", "pattern": json_pattern(rx), "minLength": int(lo), "maxLength": int(hi)}


# What parse_event accepts, field by field, as JSON Schema fragments (draft 2020-12). infra/openapi.py builds
# the webhook's OpenAPI document from these, the registry's entries, COMMON and OPTIONAL_COMMON; tests/test_openapi.py checks
# the document against parse_event. Metadata only: parse_event does not read it.
FIELD_SCHEMAS: dict[str, dict[str, Any]] = {
    "event_id": _id_schema(EVENT_ID_RE),
    "type": {"type": "string"},  # one of the registry's types (the document writes each as a const)
    "vm_id": _id_schema(ID_RE),
    "occurred_at": {"type": "string", "format": "date-time", "pattern": json_pattern(RFC3339_RE)},
    "app": _id_schema(ID_RE),
    "volume_id": _id_schema(ID_RE),
    "password": {"type": "string", "minLength": PASSWORD_LEN[0], "maxLength": PASSWORD_LEN[1]},
    "destination_host": _id_schema(ID_RE),
    "source_host": _id_schema(ID_RE),
    "apps": {
        "type": "array", "maxItems": MAX_APPS,
        "items": {
            "type": "object", "required": ["name", "type", "key_bits"], "additionalProperties": False,
            "properties": {
                "name": _id_schema(ID_RE),
                "type": _id_schema(ID_RE),
                "key_bits": {"type": "integer", "minimum": KEY_BITS[0], "maximum": KEY_BITS[1]},
            },
        },
    },
}


class Software(NamedTuple):  # immutable records as NamedTuples: see adapters/provider.py HostIdentity
    """One installed security product reported by guest.inventory."""

    name: str
    type: str
    key_bits: int


@dataclass(frozen=True)
class Event:
    """A validated host event."""

    event_id: str
    type: str
    vm_id: str
    occurred_at: datetime | None = None
    app: str | None = None
    volume_id: str | None = None
    password: str | None = field(default=None, repr=False)
    destination_host: str | None = None
    source_host: str | None = None
    apps: tuple[Software, ...] = ()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _int(text: str) -> int:
    if len(text.lstrip("-")) > 20:
        raise ValueError("number too large")
    return int(text)


MAX_DEPTH = 32


def _max_depth(text: str) -> int:
    """The deepest [ / { nesting outside JSON strings."""
    depth = deepest = 0
    in_str = escaped = False
    for ch in text:
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def loads(body: bytes) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity, no huge numbers, bounded nesting."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidJson("the body is not UTF-8") from None
    if _max_depth(text) > MAX_DEPTH:  # refuse deep nesting before the parser recurses into it
        raise InvalidJson(f"the body nests deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(text, object_pairs_hook=no_duplicate_keys, parse_constant=_reject_constant, parse_int=_int,
                          parse_float=lambda s: _float(s))
    except (ValueError, RecursionError) as exc:
        msg = str(exc).split(":")[0] if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise InvalidJson(f"the body is not valid JSON: {msg[:80]}") from None


def _float(text: str) -> float:
    if len(text) > 40:
        raise ValueError("number too large")
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number too large")
    return value


def parse_time(value: Any) -> datetime:
    """An RFC 3339 timestamp as an aware UTC datetime."""
    if not isinstance(value, str) or not RFC3339_RE.match(value):
        raise InvalidEvent("occurred_at must be an RFC 3339 time, e.g. 2026-11-27T05:00:00Z")
    text = value.upper().replace(" ", "T").replace("Z", "+00:00")
    frac = re.search(r"\.(\d+)", text)
    if frac and len(frac.group(1)) > 6:
        text = text.replace(frac.group(0), "." + frac.group(1)[:6])
    try:
        return datetime.fromisoformat(text).astimezone(timezone.utc)
    except (ValueError, OverflowError):  # 9999-12-31T23:59:59-05:00 is past datetime's range in UTC
        raise InvalidEvent("occurred_at must be an RFC 3339 time, e.g. 2026-11-27T05:00:00Z") from None


def _id(doc: dict[str, Any], key: str, pattern: re.Pattern[str] = ID_RE) -> str:
    v = doc.get(key)
    if not isinstance(v, str) or not pattern.match(v):
        raise InvalidEvent(f"{key} must be a string matching {pattern.pattern[1:-1]}")
    return v


def parse_event(body: bytes, now: datetime | None = None) -> Event:
    """Parse and validate one event body; unknown or out-of-place fields are refused. Given ``now`` (the
    server's clock), an ``occurred_at`` more than MAX_AHEAD_S seconds ahead of it is refused too."""
    return parse_doc(loads(body), now)


def parse_doc(doc: Any, now: datetime | None = None) -> Event:
    """:func:`parse_event` of an already decoded body."""
    if not isinstance(doc, dict):
        raise InvalidEvent("the body must be a JSON object")
    etype = doc.get("type")
    if not isinstance(etype, str):
        raise InvalidEvent(f"type must be one of {', '.join(_registry.REGISTRY)}")
    spec = _registry.entry(etype)
    required, optional = spec.required, spec.optional
    allowed = set(COMMON) | set(OPTIONAL_COMMON) | set(required) | set(optional)
    unknown = sorted(str(k)[:40] for k in doc if k not in allowed)
    if unknown:
        raise InvalidEvent(f"field {unknown[0]!r} is not allowed for {etype}")
    for key in COMMON + required:
        if key not in doc:
            raise InvalidEvent(f"field {key!r} is required for {etype}")
    event_id = _id(doc, "event_id", EVENT_ID_RE)
    vm_id = _id(doc, "vm_id")
    kwargs: dict[str, Any] = {}
    if "occurred_at" in doc:
        kwargs["occurred_at"] = parse_time(doc["occurred_at"])
        if now is not None and (kwargs["occurred_at"] - now).total_seconds() > MAX_AHEAD_S:
            raise InvalidEvent(f"occurred_at is more than {MAX_AHEAD_S} s ahead of the server's clock")
    for key in ("app", "volume_id", "destination_host", "source_host"):
        if key in doc:
            kwargs[key] = _id(doc, key)
    if "password" in doc:
        pw = doc["password"]
        if not isinstance(pw, str) or not PASSWORD_LEN[0] <= len(pw) <= PASSWORD_LEN[1]:
            raise InvalidEvent(f"password must be a string of {PASSWORD_LEN[0]} to {PASSWORD_LEN[1]} characters")
        kwargs["password"] = pw
    if "apps" in doc:
        apps = doc["apps"]
        if not isinstance(apps, list) or len(apps) > MAX_APPS:
            raise InvalidEvent(f"apps must be a list of at most {MAX_APPS} products")
        out = []
        for i, a in enumerate(apps):
            if not isinstance(a, dict) or set(a) != {"name", "type", "key_bits"}:
                raise InvalidEvent(f"apps[{i}] must be an object with exactly name, type and key_bits")
            name, typ, bits = a["name"], a["type"], a["key_bits"]
            if isinstance(bits, float) and bits.is_integer():  # JSON Schema counts 256.0 as an integer
                bits = int(bits)
            if not isinstance(name, str) or not ID_RE.match(name):
                raise InvalidEvent(f"apps[{i}].name must match [A-Za-z0-9._-]{{1,64}}")
            if not isinstance(typ, str) or not ID_RE.match(typ):
                raise InvalidEvent(f"apps[{i}].type must match [A-Za-z0-9._-]{{1,64}}")
            if not isinstance(bits, int) or isinstance(bits, bool) or not KEY_BITS[0] <= bits <= KEY_BITS[1]:
                raise InvalidEvent(f"apps[{i}].key_bits must be an integer from {KEY_BITS[0]} to {KEY_BITS[1]}")
            out.append(Software(name, typ, bits))
        kwargs["apps"] = tuple(out)
    return Event(event_id=event_id, type=etype, vm_id=vm_id, **kwargs)


# ---- what the audit keeps of an event for a policy-impact replay (domain/replay.py, docs/policy-impact.md);
# here, not in replay.py, so that recording an event does not import the replay (docs/benchmarks.md#cold-start)

def password_verdict(event: Event, decision: Decision) -> str:
    """ok: a password was presented and the decision got past the password check; bad: it was presented and
    refused, or never checked (locked, stale, not a request volume), so nothing proves it; none: none sent."""
    if event.type != "volume.attach_request" or event.password is None:
        return "none"
    if decision.reason in ("bad_password", "locked", "not_a_request_volume", "stale", "quarantined"):
        return "bad"
    return "ok"


def replay_fields(event: Event, decision: Decision) -> dict[str, str | None]:
    """The audit record's replay fields for one decision of ``event`` (adapters/audit.py REPLAY_FIELDS)."""
    return {
        "occurred_at": event.occurred_at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z" if event.occurred_at else "",
        "app": event.app, "destination_host": event.destination_host, "source_host": event.source_host,
        "apps": ",".join(f"{s.name}:{s.type}:{s.key_bits}" for s in event.apps) if event.apps else None,
        "password_verdict": password_verdict(event, decision),
    }


from vvolguard.domain import registry as _registry  # noqa: E402 (the registry's entries use Event)


def __getattr__(name: str) -> Any:
    """``TYPES``: type -> (required fields beyond the common ones, optional fields), from the registry."""
    if name == "TYPES":
        return {e.name: (e.required, e.optional) for e in _registry.ENTRIES}
    raise AttributeError(name)
