"""Two shortcuts through moto's response serializer, for the tests' emulations only (docs/test-speed.md).

moto 5 writes every response by walking the operation's botocore output shape and, for each member of each
item, asking a chain of alias providers where the member lives on the emulated object. A DynamoDB Query of
ten items walks some 1,500 members that way; in a test process that was a fifth of the CPU of a reconciler
pass. Both shortcuts give the same bytes as moto's own serializer (with VVG_TEST_CHECK_SERIALIZER=1 every
response is written both ways and compared; tests/test_moto_speed.py does so for every kind of value):

- the alias chain runs once per (picker, object class, member shape, member name), not per item;
- DynamoDB's item operations (GetItem, Query, Scan, ...) already hold their result in the wire format
  (moto's DynamoResult converts the items), so their body is written by a walk of the output shape compiled
  once per shape: members by name, None and non-member keys left out, numbers, blobs and enums as moto
  writes them. Anything else (timestamps, a key moto could read as a member's alias, an error) goes the
  usual way.

The test processes install them (tests/conftest.py), and so does the moto server of a local stack they
start: they set VVG_MOTO_SHORTCUTS=1, which infra/motoserver.py reads. `make run` and the benchmarks run moto
as it is, so `make bench`'s floors (bare boto3 calls against the same emulation) are measured as before.
"""
from __future__ import annotations

import base64
import json
import os
from enum import Enum
from typing import Any, Callable

ITEM_OPERATIONS = frozenset({"GetItem", "Query", "Scan", "BatchGetItem", "PutItem", "UpdateItem", "DeleteItem",
                             "TransactWriteItems", "TransactGetItems", "BatchWriteItem"})
CHECK = os.environ.get("VVG_TEST_CHECK_SERIALIZER") == "1"  # compare with moto's own bytes on every response
TAKEN = {"fast": 0}  # responses written by the shortcut (tests/test_moto_speed.py reads it)
_installed = False


class _Slow(Exception):
    """This value needs moto's own serializer."""


def _compile(shape: Any, cache: dict[Any, Callable[[Any], Any]]) -> Callable[[Any], Any]:
    found = cache.get(shape)
    if found is not None:
        return found
    kind = shape.type_name

    if kind == "structure":
        if shape.is_document_type:
            def write(value: Any) -> Any:
                return value
        else:
            members: list[tuple[str, Callable[[Any], Any]]] = []
            names = frozenset(shape.members)
            aliases = _aliases(shape)

            def write(value: Any) -> Any:
                if not isinstance(value, dict):
                    raise _Slow  # an object: moto finds its members through aliases
                extra = value.keys() - names  # moto leaves out keys that are no member's (ConsumedCapacityUnits)
                if extra and not aliases.isdisjoint(extra):
                    raise _Slow  # ... unless a member could be found under that key
                out = {}
                for name, member in members:
                    v = value.get(name)
                    if v is not None:
                        out[name] = member(v)
                return out

            cache[shape] = write  # before the members: AttributeValue's M and L hold AttributeValues
            members.extend((name, _compile(m, cache)) for name, m in shape.members.items())
            return write
    elif kind == "list":
        item = shape.member

        def write(value: Any) -> Any:
            if not isinstance(value, list):
                raise _Slow
            return [_compile(item, cache)(v) for v in value]
    elif kind == "map":
        val = shape.value

        def write(value: Any) -> Any:
            if not isinstance(value, dict) or any(v is None for v in value.values()):
                raise _Slow
            return {k: _compile(val, cache)(v) for k, v in value.items()}
    elif kind == "string":
        def write(value: Any) -> Any:
            if isinstance(value, Enum):
                value = value.value
            return str(value) if value not in (None, {}, []) else value
    elif kind in ("integer", "long"):
        write = int
    elif kind in ("float", "double"):
        write = float
    elif kind == "blob":
        def write(value: Any) -> Any:
            raw = value.encode("utf-8") if isinstance(value, str) else value
            return base64.b64encode(raw).strip().decode("utf-8")
    elif kind == "boolean":
        def write(value: Any) -> Any:
            return value
    else:  # timestamps and anything new: moto's own way
        def write(value: Any) -> Any:
            raise _Slow
    cache[shape] = write
    return write


def _aliases(shape: Any) -> frozenset[str]:
    """Every other key under which moto's alias providers could find a member of ``shape`` in a dict."""
    from botocore import xform_name

    found = set()
    for name, member in shape.members.items():
        keys = {name, member.serialization.get("name", name)}
        for prefix in (shape.name, "dict"):
            if name.lower().startswith(prefix.lower()):
                keys.add(name[len(prefix):])
        found |= keys | {xform_name(k) for k in keys}
    return frozenset(found - set(shape.members))


def _alias_keys_once() -> None:
    from moto.core import serialize

    for picker in (serialize.AttributePicker, serialize.XFormedAttributePicker):
        original = picker.get_possible_keys
        cache: dict[tuple[Any, ...], tuple[str, ...]] = {}

        def get_possible_keys(self: Any, context: Any, _original: Any = original,
                              _cache: dict[tuple[Any, ...], tuple[str, ...]] = cache) -> Any:
            obj = context.obj
            key = (type(self), tuple(self.alias_providers), type(obj), getattr(obj, "Meta", None),
                   context.shape, context.key)  # the shape itself (kept alive here), never a reused id
            found = _cache.get(key)
            if found is None:
                found = _cache[key] = tuple(_original(self, context))
            return found

        picker.get_possible_keys = get_possible_keys  # type: ignore[method-assign]


def _plain_dynamodb_bodies() -> None:
    import moto.core.responses as responses
    from moto.dynamodb.responses import DynamoHandler

    original = responses.BaseResponse.serialized
    compiled: dict[Any, Callable[[Any], Any]] = {}

    def serialized(self: Any, action_result: Any) -> Any:
        result = action_result.result
        if not isinstance(self, DynamoHandler) or not isinstance(result, dict):
            return original(self, action_result)
        operation = self._get_action()
        if operation not in ITEM_OPERATIONS:
            return original(self, action_result)
        model = responses.get_service_model(self.boto3_service_name).operation_model(operation)
        try:
            body = json.dumps(_compile(model.output_shape, compiled)(result))
        except _Slow:
            return original(self, action_result)
        version = model.service_model.metadata.get("jsonVersion", "1.0")
        headers = {"Content-Type": f"application/x-amz-json-{version}", **self.response_headers}
        fast = (model.http.get("responseCode", 200), headers, body)
        TAKEN["fast"] += 1
        if CHECK:
            slow = original(self, action_result)
            assert slow == fast, (operation, slow, fast)
        return fast

    responses.BaseResponse.serialized = serialized  # type: ignore[method-assign]


def install() -> None:
    """Install both shortcuts in this process (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    _alias_keys_once()
    _plain_dynamodb_bodies()
