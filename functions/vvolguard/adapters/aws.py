"""Lazy, cached boto3 clients (never at import time) and the keys held outside the tables."""
from __future__ import annotations

import base64
import threading
from functools import lru_cache

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from vvolguard.errors import VvgError
from vvolguard.settings import Settings

_lock = threading.RLock()
_sessions: dict[str, boto3.session.Session] = {}


class KeyUnavailable(VvgError):
    """A key held outside the tables (KMS / Secrets Manager) could not be used."""

    status_code = 500
    code = "key_unavailable"


def session(region: str) -> boto3.session.Session:
    """One boto3 session per region per process (sessions are not free to build)."""
    with _lock:
        if region not in _sessions:
            _sessions[region] = boto3.session.Session(region_name=region)
        return _sessions[region]


def client(service: str, region: str):
    """A cached client; boto3 clients are thread-safe once built."""
    return _client(service, region)


@lru_cache(maxsize=None)
def _client(service: str, region: str):
    with _lock:
        return session(region).client(service, config=Config(retries={"mode": "standard", "max_attempts": 3}))


def reset_clients() -> None:
    """Forget cached clients and keys (tests switch between mocks and servers)."""
    _client.cache_clear()
    audit_key.cache_clear()
    with _lock:
        _sessions.clear()
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
