"""Signed checkpoints of the audit chains' heads, kept in an S3 bucket under Object Lock (docs/threat-model.md).

A checkpoint is one JSON object: the sequence number and MAC of the head of every audit chain, signed with
an asymmetric KMS key (ECDSA P-256, ``alias/vvg-audit-checkpoint``), which no table writer holds. The
bucket keeps every version under compliance retention, so a checkpoint can be neither deleted nor replaced
for the retention period; a delete marker or a newer version put on top of it only hides it from plain
listings, which is why the reader lists *versions*.

Object keys sort newest first (``checkpoints/<10^13 - epoch ms>-<time>-<nonce>.json``): finding the latest
is one bounded ``ListObjectVersions`` call, never a listing of the whole bucket. The signed body names its
own key, so an old checkpoint copied under a newer name does not verify.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from vvolguard.adapters import aws
from vvolguard.errors import CheckpointUnavailable  # noqa: F401 - defined in errors.py, imported from here too
from vvolguard.settings import Settings

FORMAT = "vvg-audit-checkpoint/1"
PREFIX = "checkpoints/"
ALGORITHM = "ECDSA_SHA_256"
KEY_RE = re.compile(r"^checkpoints/(\d{13})-(\d{8}T\d{9}Z)-([0-9a-f]{8})\.json\Z")
MAX_OBJECT = 64 * 1024 * 1024
# How many checkpoint objects (versions) the reader examines before giving up: forged or altered objects
# newer than the latest genuine one cost one GET each.
MAX_EXAMINED = 200


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint whose signature verified: when, where, and each chain's (seq, mac)."""

    at: str
    key: str
    bucket: str
    chains: dict[str, tuple[int, str]]

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def summary(self) -> dict[str, Any]:
        return {"at": self.at, "chains": len(self.chains), "location": self.location}


def _signed_part(at: str, key: str, chains: dict[str, tuple[int, str]]) -> dict[str, Any]:
    return {"format": FORMAT, "at": at, "key": key,
            "chains": {c: {"seq": int(s), "mac": m} for c, (s, m) in sorted(chains.items())}}


def _message(signed: dict[str, Any]) -> bytes:
    """What KMS signs (RAW, well under its 4 KiB limit): the format and the SHA-256 of the canonical body."""
    body = json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return f"{FORMAT}\n{hashlib.sha256(body).hexdigest()}".encode("ascii")


def new_key(now: datetime) -> str:
    """A time-ordered object key: newer checkpoints sort first."""
    ms = int(now.timestamp() * 1000)
    stamp = now.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S%f")[:-3] + "Z"
    return f"{PREFIX}{10**13 - ms:013d}-{stamp}-{secrets.token_hex(4)}.json"


def _iso(now: datetime) -> str:
    return now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class CheckpointStore:
    """Write and find signed checkpoints."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bucket = settings.audit_checkpoint_bucket
        self.key_id = settings.audit_checkpoint_key_id

    def _s3(self):
        return aws.client("s3", self.settings.region)

    def _kms(self):
        return aws.client("kms", self.settings.region)

    # ---- writing

    def write(self, chains: dict[str, tuple[int, str]], now: datetime | None = None) -> Checkpoint:
        """Sign ``chains`` and store them as a new object (never overwriting one)."""
        now = now or datetime.now(timezone.utc)
        at, key = _iso(now), new_key(now)
        signed = _signed_part(at, key, chains)
        try:
            sig = self._kms().sign(KeyId=self.key_id, Message=_message(signed), MessageType="RAW",
                                   SigningAlgorithm=ALGORITHM)
        except (ClientError, BotoCoreError) as exc:
            raise CheckpointUnavailable(f"cannot sign with {self.key_id}: {type(exc).__name__}") from None
        doc = {**signed, "signing_key": sig.get("KeyId", self.key_id), "algorithm": ALGORITHM,
               "signature": base64.b64encode(sig["Signature"]).decode("ascii")}
        body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("ascii")
        try:
            self._s3().put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json",
                                  IfNoneMatch="*", ChecksumAlgorithm="SHA256")
        except (ClientError, BotoCoreError) as exc:
            raise CheckpointUnavailable(f"cannot write to s3://{self.bucket}: {type(exc).__name__}") from None
        return Checkpoint(at, key, self.bucket, dict(chains))

    # ---- reading

    def _verify(self, key: str, body: bytes) -> Checkpoint | None:
        """The checkpoint in ``body`` if it is well formed, names ``key`` and its signature verifies."""
        try:
            doc = json.loads(body)
            if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("key") != key:
                return None
            chains = {str(c): (int(v["seq"]), str(v["mac"])) for c, v in doc["chains"].items()}
            signed = _signed_part(str(doc["at"]), key, chains)
            signature = base64.b64decode(doc["signature"], validate=True)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        try:
            out = self._kms().verify(KeyId=self.key_id, Message=_message(signed), MessageType="RAW",
                                     Signature=signature, SigningAlgorithm=ALGORITHM)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("KMSInvalidSignatureException", "ValidationException",
                                                             "InvalidSignatureException"):
                return None
            raise CheckpointUnavailable(f"cannot verify with {self.key_id}: {exc.response['Error'].get('Code')}") from None
        except BotoCoreError as exc:
            raise CheckpointUnavailable(f"cannot verify with {self.key_id}: {type(exc).__name__}") from None
        if not out.get("SignatureValid"):
            return None
        return Checkpoint(signed["at"], key, self.bucket, chains)

    def latest(self) -> tuple[Checkpoint | None, int]:
        """The newest checkpoint whose signature verifies, and how many newer objects were ignored
        (forged, altered, or not checkpoints). Deleted (delete-marked) and overwritten versions are read too.

        Raises CheckpointUnavailable when MAX_EXAMINED objects were examined without finding a valid one
        among forged ones (an attacker must not be able to push the real checkpoints out of reach)."""
        s3 = self._s3()
        ignored = examined = 0
        kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": PREFIX, "MaxKeys": 50}
        try:
            while True:
                page = s3.list_object_versions(**kw)
                for ver in page.get("Versions", []):
                    key = ver["Key"]
                    if not KEY_RE.match(key) or int(ver.get("Size", 0)) > MAX_OBJECT:
                        ignored += 1
                        continue
                    examined += 1
                    if examined > MAX_EXAMINED:
                        raise CheckpointUnavailable(
                            f"no checkpoint with a valid signature among the newest {MAX_EXAMINED} objects of "
                            f"s3://{self.bucket}/{PREFIX} ({ignored} forged or altered): the bucket was tampered with")
                    body = s3.get_object(Bucket=self.bucket, Key=key, VersionId=ver["VersionId"])["Body"].read(MAX_OBJECT)
                    cp = self._verify(key, body)
                    if cp is not None:
                        return cp, ignored
                    ignored += 1
                if not page.get("IsTruncated"):
                    return None, ignored
                kw.update(KeyMarker=page["NextKeyMarker"], VersionIdMarker=page.get("NextVersionIdMarker", ""))
        except (ClientError, BotoCoreError) as exc:
            code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else type(exc).__name__
            raise CheckpointUnavailable(f"cannot read the checkpoints in s3://{self.bucket}: {code}") from None
