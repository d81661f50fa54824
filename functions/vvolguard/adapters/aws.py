"""Lazy, cached boto3 clients (never at import time) and the keys held outside the tables."""
from __future__ import annotations

import base64
import threading
import weakref
from functools import lru_cache
from typing import Any, Callable

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from vvolguard.errors import KeyUnavailable  # noqa: F401 - defined in errors.py, imported from here too
from vvolguard.settings import Settings

_lock = threading.RLock()
_sessions: dict[str, boto3.session.Session] = {}


# botocore event hooks (name, handler) applied to every client vvolguard creates: the benchmark and the
# tests count round trips and inject faults through them.
_hooks: list[tuple[str, Callable[..., Any]]] = []
_tracked: "weakref.WeakSet[Any]" = weakref.WeakSet()


def _uid(name: str, fn: Callable[..., Any]) -> str:
    """The same id for the same handler: a bound method is a new object at each attribute access, so it is
    known by its object and function (otherwise remove_hook would leave it registered)."""
    owner, func = getattr(fn, "__self__", None), getattr(fn, "__func__", None)
    which = f"{id(owner)}.{id(func)}" if owner is not None and func is not None else str(id(fn))
    return f"vvg-hook-{which}-{name}"


def track(client: Any) -> Any:
    """Apply the registered hooks to ``client`` and to every hook registered later; returns it."""
    with _lock:
        for name, fn in _hooks:
            client.meta.events.register(name, fn, unique_id=_uid(name, fn))
        _tracked.add(client)
    return client


def add_hook(name: str, fn: Callable[..., Any]) -> None:
    """Register a botocore event handler (e.g. ``before-call.dynamodb``) on all of vvolguard's clients."""
    with _lock:
        _hooks.append((name, fn))
        for c in list(_tracked):
            c.meta.events.register(name, fn, unique_id=_uid(name, fn))


def remove_hook(name: str, fn: Callable[..., Any]) -> None:
    """Undo :func:`add_hook`."""
    with _lock:
        if (name, fn) in _hooks:
            _hooks.remove((name, fn))
        for c in list(_tracked):
            c.meta.events.unregister(name, fn, unique_id=_uid(name, fn))


_loader: Any = None


def shared_loader() -> Any:
    """One botocore data loader per process: it caches the service models (JSON files of a few MB each)
    it has read, so a fresh session after :func:`reset_clients` does not parse them again."""
    global _loader
    with _lock:
        if _loader is None:
            import botocore.session

            _loader = botocore.session.get_session().get_component("data_loader")
        return _loader


def session(region: str) -> boto3.session.Session:
    """One boto3 session per region per process (sessions are not free to build); every session reads
    the service models through the one shared loader."""
    with _lock:
        if region not in _sessions:
            import botocore.session

            core = botocore.session.get_session()
            core.register_component("data_loader", shared_loader())
            _sessions[region] = boto3.session.Session(region_name=region, botocore_session=core)
            paths = _loader.search_paths  # boto3 appends its data folder to the loader on every session
            paths[:] = list(dict.fromkeys(paths))
        return _sessions[region]


def credentials_session(region: str, access_key: str, secret_key: str, token: str) -> boto3.session.Session:
    """A boto3 session with its own credentials (an assumed role's) that reads the service models through
    the one shared loader: a fresh loader would parse EC2's model again (about a second per session)."""
    import botocore.session

    core = botocore.session.get_session()
    core.register_component("data_loader", shared_loader())
    sess = boto3.session.Session(aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                                 aws_session_token=token, region_name=region, botocore_session=core)
    with _lock:
        paths = _loader.search_paths  # boto3 appends its data folder to the loader on every session
        paths[:] = list(dict.fromkeys(paths))
    return sess


def client(service: str, region: str):
    """A cached client; boto3 clients are thread-safe once built."""
    return _client(service, region)


@lru_cache(maxsize=None)
def _client(service: str, region: str):
    with _lock:
        return track(session(region).client(service, config=Config(retries={"mode": "standard", "max_attempts": 3})))


def reset_clients() -> None:
    """Forget cached clients and keys (tests switch between mocks and servers)."""
    _client.cache_clear()
    with _lock:
        _sessions.clear()
    forget_keys()


def forget_keys() -> None:
    """Forget the cached audit key and decrypted host secrets, keep the clients (a test's fresh emulation)."""
    audit_key.cache_clear()
    _secret_cache.clear()


def encrypt_secret(settings: Settings, plaintext: str, context: dict[str, str]) -> str:
    """Encrypt a host secret with the KMS key; the ciphertext is bound to ``context``."""
    try:
        out = client("kms", settings.region).encrypt(
            KeyId=settings.host_secrets_key_id, Plaintext=plaintext.encode("utf-8"), EncryptionContext=context
        )
    except (ClientError, BotoCoreError) as exc:
        raise KeyUnavailable(f"cannot encrypt with {settings.host_secrets_key_id}: {type(exc).__name__}") from None
    return base64.b64encode(out["CiphertextBlob"]).decode("ascii")


_secret_cache: dict[tuple[str, str], str] = {}


def decrypt_secret(settings: Settings, ciphertext: str, context: dict[str, str]) -> str:
    """Decrypt a host secret, cached per ciphertext in a warm container."""
    key = (ciphertext, repr(sorted(context.items())))
    if key in _secret_cache:
        return _secret_cache[key]
    try:
        out = client("kms", settings.region).decrypt(CiphertextBlob=base64.b64decode(ciphertext), EncryptionContext=context)
    except (ClientError, BotoCoreError) as exc:
        raise KeyUnavailable(f"cannot decrypt a host secret: {type(exc).__name__}") from None
    value = out["Plaintext"].decode("utf-8")
    if len(_secret_cache) > 10000:
        _secret_cache.clear()
    _secret_cache[key] = value
    return value


@lru_cache(maxsize=4)
def audit_key(region: str, secret_id: str) -> bytes:
    """The audit chain's HMAC key, read from Secrets Manager once per container."""
    try:
        value = client("secretsmanager", region).get_secret_value(SecretId=secret_id)["SecretString"]
    except (ClientError, BotoCoreError) as exc:
        raise KeyUnavailable(f"cannot read the audit key {secret_id}: {type(exc).__name__}") from None
    return value.encode("utf-8")


def caller_arn(region: str) -> str | None:
    """The AWS principal these credentials act as (STS GetCallerIdentity), or None when there is none."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return client("sts", region).get_caller_identity().get("Arn") or None
    except (BotoCoreError, ClientError):
        return None
