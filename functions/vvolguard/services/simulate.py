"""Dry runs of host events for the dashboard: the webhook's own schema, authorization and engine, with
one read of the VM's partition, no provider call and no write."""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from vvolguard.adapters.models import HostItem
from vvolguard.domain.engine import Decision
from vvolguard.domain.events import parse_event
from vvolguard.domain.constants import ID_RE
from vvolguard.errors import InvalidInput, VvgError
from vvolguard.services.auth import AuthenticatedHost
from vvolguard.services.events import EventService
from vvolguard.settings import Settings


class _NoProvider:
    """Stands in for the storage provider: a dry run must never reach it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a simulation called the storage provider ({name})")


@dataclass
class Simulation:
    """What the webhook would answer: a refusal (status, code, message) or decisions."""

    vm_id: str
    host_id: str
    event_type: str
    status: int = 200
    code: str | None = None
    message: str | None = None
    decisions: list[Decision] = field(default_factory=list)
    volumes: int = 0

    @property
    def refused(self) -> bool:
        return self.status != 200


class Simulator:
    """Builds the event the way a host would send it, then decides as the webhook does."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.events = EventService(settings, provider=_NoProvider())  # type: ignore[arg-type]

    def run(self, vm_id: str, host_id: str, fields: dict[str, Any], now: datetime | None = None) -> Simulation:
        """``fields`` are the event body's fields beyond ``event_id`` and ``vm_id`` (``type`` included)."""
        now = now or datetime.now(timezone.utc)
        if not isinstance(host_id, str) or not ID_RE.match(host_id):
            raise InvalidInput("host_id must match [A-Za-z0-9._-]{1,64}")
        body = {"event_id": f"simulate-{secrets.token_hex(6)}", "vm_id": vm_id,
                **{k: v for k, v in fields.items() if v is not None}}
        event = parse_event(json.dumps(body).encode("utf-8"))  # the webhook's schema: refusals read the same
        sim = Simulation(vm_id=event.vm_id, host_id=host_id, event_type=event.type)
        try:
            host = HostItem.get(host_id, consistent_read=True)
        except HostItem.DoesNotExist:
            host = None
        if host is None or host.status != "active":
            sim.status, sim.code = 401, "unknown_host"
            sim.message = f"host {host_id} is not enrolled or was revoked: its events are refused before any decision"
            return sim
        part = self.events.read_partition(event.vm_id)
        sim.volumes = len(part.policies)
        who = AuthenticatedHost(host.host_id, int(host.secret_version), host.cred_hash)
        try:
            sim.decisions = self.events.decisions(who, event, part, now)  # the webhook's own rule and engine
        except VvgError as exc:
            sim.status, sim.code, sim.message = exc.status_code, exc.code, exc.message
        return sim
