"""Constants and vocabularies shared by the domain, the services, the CLI and the dashboard: one place each.

Pure. The enums are ``StrEnum``: a member *is* its string, so JSON answers, audit records and comparisons
with plain strings stay byte-identical (docs/webhook-api.md lists the answer's vocabulary).
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")  # volume, VM, host, app ids (docs/policy-file.md)
EVENT_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}\Z")  # an event's id (docs/webhook-api.md)
DEFAULT_LEASE_S = 900  # max_attach_seconds when a policy leaves it out (docs/policy-file.md)
PASSWORD_LEN = (1, 256)  # a volume password's length in characters, inclusive
KEY_BITS = (1, 65536)  # key_bits of guest.inventory and a policy's min_key_bits, inclusive
ROLES = ("viewer", "editor", "admin")  # dashboard roles, weakest first (docs/dashboard.md)
# Hosts that are never enrolled but are valid host_ids (EC2 VMs' own host; docs/policy-apply.md).
RESERVED_HOSTS = frozenset({"aws-ec2"})


class Action(StrEnum):
    """What a decision does to one volume (the webhook answer's ``action``)."""

    CREATE = "create"
    ATTACH = "attach"
    DETACH = "detach"
    GRANT = "grant"
    REVOKE = "revoke"
    SELECT = "select"
    RENEW = "renew"


class Outcome(StrEnum):
    """How it ended; ``pending`` never leaves the service (it is carried out first)."""

    DONE = "done"
    SKIPPED = "skipped"
    DENIED = "denied"
    FAILED = "failed"
    PENDING = "pending"


ANSWERED_OUTCOMES = [o.value for o in Outcome if o is not Outcome.PENDING]


def rfc3339(dt: datetime) -> str:
    """A time as the webhook and the audit write it: UTC, whole seconds, ``Z`` (``2026-11-27T05:15:00Z``)."""
    if dt.tzinfo is not None:
        dt = dt.astimezone(timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    """json.loads object_pairs_hook that refuses a key given twice (shared by every strict JSON reader)."""
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out
