"""Two fixes to moto's DynamoDB emulation, installed wherever vvolguard runs it (local stack, bench, tests).

moto's TransactWriteItems deep-copies every table it touches before each transaction and, when the
transaction is cancelled, puts those copies back. That makes each transaction cost O(table size) (seconds
at 100,000 items) and, with concurrent requests on the moto server, a cancelled transaction silently undoes
other requests' writes made meanwhile. DynamoDB does neither. Here a transaction snapshots only the items it
names and restores only those, and DynamoDB operations of one process are serialised by one lock, so a
transaction is atomic and isolated as it is on AWS. Nothing else of moto changes: every request is still
answered by moto's own code.

Two changes make the emulation cheaper to start, with nothing vvolguard uses behaving differently:
EC2 knows only the one image vvolguard's VMs are started from (infra/moto-amis.json, moto's own record of
it) instead of building ~1,300 stock images per region backend (about 0.2 s for each test and each local
stack; set MOTO_AMIS_PATH to choose another list), and a KMS key of the default symmetric spec gets the RSA
key pair moto builds for every key (unused by encrypt/decrypt) only when something first asks for it.
And moto lists a response class's methods once per class, not on every request.
"""
from __future__ import annotations

import copy
import os
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


class _LazyPrivateKey:
    """moto's private key of a key whose spec is not asymmetric, built on first use (moto builds an RSA-2048
    pair for every key, which costs ~50 ms, and only Sign/Verify/GetPublicKey would ever use it)."""

    def __init__(self, build: Any, key_spec: str) -> None:
        self._build, self._spec, self._key = build, key_spec, None
        self._key_lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # copy/pickle probes and this object's own fields
            raise AttributeError(name)
        with self._key_lock:
            if self._key is None:
                self._key = self._build(self._spec)
        return getattr(self._key, name)


def _lazy_symmetric_kms_keys() -> None:
    import moto.kms.models as kms_models
    from moto.kms.utils import KeySpec

    build = kms_models.generate_private_key
    asymmetric = set(KeySpec.rsa_key_specs()) | set(KeySpec.ecc_key_specs()) | {KeySpec.SM2.value}

    def generate_private_key(key_spec: str) -> Any:
        return build(key_spec) if key_spec in asymmetric else _LazyPrivateKey(build, key_spec)

    kms_models.generate_private_key = generate_private_key  # type: ignore[attr-defined]


def _method_names_once() -> None:
    """moto lists a response class's methods (inspect.getmembers) on every request to find the action's
    handler; the list of a class does not change, so it is made once per class."""
    import moto.core.responses as responses

    listed: dict[type, frozenset[str]] = {}
    names = responses.method_names_from_class

    def method_names_from_class(clazz: Any) -> frozenset[str]:
        found = listed.get(clazz)
        if found is None:
            found = listed[clazz] = frozenset(names(clazz))
        return found

    responses.method_names_from_class = method_names_from_class  # type: ignore[assignment]


def install() -> None:
    """Patch moto's DynamoDB backend (idempotent)."""
    global _installed
    if _installed:
        return
    os.environ.setdefault("MOTO_AMIS_PATH", os.path.join(os.path.dirname(os.path.abspath(__file__)), "moto-amis.json"))
    _lazy_symmetric_kms_keys()
    _method_names_once()
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
