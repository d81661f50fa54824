"""Two fixes to moto's DynamoDB emulation, installed wherever vvolguard runs it (local stack, bench, tests).

moto's TransactWriteItems deep-copies every table it touches before each transaction and, when the
transaction is cancelled, puts those copies back. That makes each transaction cost O(table size) (seconds
at 100,000 items) and, with concurrent requests on the moto server, a cancelled transaction silently undoes
other requests' writes made meanwhile. DynamoDB does neither. Here a transaction snapshots only the items it
names and restores only those, and DynamoDB operations of one process are serialised by one lock, so a
transaction is atomic and isolated as it is on AWS. Nothing else of moto changes: every request is still
answered by moto's own code.
"""
from __future__ import annotations

import copy
import threading
import types
from typing import Any

_installed = False
_lock = threading.RLock()
_in_tx = threading.local()

LOCKED = ("put_item", "update_item", "delete_item", "get_item", "query", "scan", "batch_get_item",
          "transact_get_items", "create_table", "delete_table", "update_table")


def _key_of(table: Any, attrs: dict[str, Any]) -> tuple[Any, Any]:
    from moto.dynamodb.models.dynamo_type import DynamoType

    h = DynamoType(attrs[table.hash_key_attr])
    r = DynamoType(attrs[table.range_key_attr]) if table.has_range_key and table.range_key_attr in attrs else None
    return h, r


def _snapshot(backend: Any, transact_items: list[dict[str, Any]]) -> list[tuple[Any, Any, Any, Any]]:
    snap = []
    for entry in transact_items:
        _, op = next(iter(entry.items()))
        table = backend.tables.get(op.get("TableName"))
        if table is None:
            continue
        attrs = op.get("Key") or op.get("Item")
        if not attrs or table.hash_key_attr not in attrs:
            continue
        h, r = _key_of(table, attrs)
        if table.has_range_key:
            item = table.items.get(h, {}).get(r)
        else:
            item = table.items.get(h)
        snap.append((table, h, r, copy.deepcopy(item)))
    return snap


def _restore(snap: list[tuple[Any, Any, Any, Any]]) -> None:
    for table, h, r, item in reversed(snap):
        if table.has_range_key:
            if item is None:
                table.items.get(h, {}).pop(r, None)
                if h in table.items and not table.items[h]:
                    del table.items[h]
            else:
                table.items[h][r] = item
        else:
            if item is None:
                table.items.pop(h, None)
            else:
                table.items[h] = item


class _CopyShim(types.SimpleNamespace):
    """moto.dynamodb.models' ``copy``: no whole-table deep copy inside a transaction."""

    @staticmethod
    def deepcopy(obj: Any, memo: Any = None) -> Any:
        from moto.dynamodb.models.table import Table

        if getattr(_in_tx, "active", False) and isinstance(obj, Table):
            return obj
        return copy.deepcopy(obj, memo)

    copy = staticmethod(copy.copy)


def install() -> None:
    """Patch moto's DynamoDB backend (idempotent)."""
    global _installed
    if _installed:
        return
    import moto.dynamodb.models as ddb_models
    from moto.dynamodb.models import DynamoDBBackend

    ddb_models.copy = _CopyShim()  # type: ignore[attr-defined]
    original_tx = DynamoDBBackend.transact_write_items

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        with _lock:
            snap = _snapshot(self, transact_items)
            _in_tx.active = True
            try:
                return original_tx(self, transact_items)
            except Exception:
                _restore(snap)
                raise
            finally:
                _in_tx.active = False

    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]

    def locked(fn: Any) -> Any:
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            with _lock:
                return fn(self, *args, **kwargs)
        wrapper.__name__ = fn.__name__
        wrapper.__doc__ = fn.__doc__
        return wrapper

    for name in LOCKED:
        if hasattr(DynamoDBBackend, name):
            setattr(DynamoDBBackend, name, locked(getattr(DynamoDBBackend, name)))
    _installed = True
