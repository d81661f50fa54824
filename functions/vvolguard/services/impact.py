"""Policy impact (docs/policy-impact.md): which recorded decisions a draft policy file would change.

Read-only. The period's audit records are read through the ``by-time`` index, month by month and page by
page, oldest first (never a scan); the current policies of each VM the events name are one Query of its
partition, read when its first event is met. The replay itself is pure (vvolguard.domain.replay).
"""
from __future__ import annotations

from collections import OrderedDict
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Iterator

from vvolguard.adapters.audit import months
from vvolguard.adapters.models import AuditItem, PolicyItem
from vvolguard.domain.engine import VolumeView
from vvolguard.domain.events import Event
from vvolguard.domain.policy import PolicySpec
from vvolguard.domain.replay import REPLAY_HASH, RecordedEvent, Replay, Side, build_side, parse_apps, start_view
from vvolguard.errors import InvalidInput
from vvolguard.services.event_stores import view_of
from vvolguard.services.policies import PolicyService, vm_pk
from vvolguard.settings import Settings

MAX_PERIOD = timedelta(days=90)
MAX_EVENTS = 1_000_000
PAGE = 1000
# Records of one event are written in one transaction, milliseconds apart; an event whose first record is
# this much older than the record being read is complete (records of concurrent events may interleave).
_GROUP_WINDOW = timedelta(seconds=2)


def parse_period(text: str | None) -> timedelta:
    """``--since``: 30m, 12h, 7d (default 7d), more than 0 and at most 90 days; a one-line InvalidInput."""
    from vvolguard.services.audit_queries import parse_duration

    if text is None:
        return timedelta(days=7)
    if not isinstance(text, str) or len(text) > 20:
        raise InvalidInput("--since is a number and a unit m, h or d (30m, 12h, 7d)")
    delta = parse_duration(text)
    if delta <= timedelta(0):
        raise InvalidInput("--since must be more than 0")
    if delta > MAX_PERIOD:
        raise InvalidInput("--since is at most 90d (a replay reads at most 90 days of history)")
    return delta


def _rfc(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _months(start: datetime, end: datetime) -> list[str]:
    """The by-time partitions of [start, end], oldest first."""
    return list(reversed(months(end, start)))


def read_period(since: datetime, until: datetime) -> Iterator[AuditItem]:
    """Every audit record of [since, until], oldest first: paged Queries of the by-time index, one month each."""
    lo = _rfc(since)
    for month in _months(since, until):
        yield from AuditItem.by_time.query(month, AuditItem.at_key >= lo, scan_index_forward=True, page_size=PAGE)


def spec_view(spec: PolicySpec, stored: PolicyItem | None) -> VolumeView:
    """The engine's view of a draft entry, read as apply reads it: an absent password keeps the stored one."""
    if spec.password_given:
        has_password = spec.password is not None
    else:
        has_password = bool(stored is not None and stored.password_hash)
    return VolumeView(volume_id=spec.volume_id, vm_id=spec.vm_id, host_id=spec.host_id, attach_on=spec.attach_on,
                      detach_on=spec.detach_on, size_mb=spec.size_mb, app=spec.app,
                      authorized_apps=tuple(spec.authorized_apps),
                      password_hash=REPLAY_HASH if has_password else None,
                      max_attach_seconds=spec.max_attach_seconds, min_key_bits=spec.min_key_bits,
                      exists=bool(stored is not None and stored.provider_volume_id))


def _is_host_event(item: AuditItem) -> bool:
    return bool(item.actor.startswith("host:") and item.event_id and item.vm_id and item.action != "refuse")


def _recorded(item: AuditItem) -> RecordedEvent | None:
    """The event behind a host decision record, or None when it predates the replay fields."""
    if item.password_verdict is None or not item.event_type:
        return None
    occurred = _time(item.occurred_at) if item.occurred_at else None
    ev = Event(event_id=item.event_id, type=item.event_type, vm_id=item.vm_id, occurred_at=occurred, app=item.app,
               volume_id=item.volume_id if item.event_type.startswith("volume.") else None,
               destination_host=item.destination_host, source_host=item.source_host, apps=parse_apps(item.apps))
    return RecordedEvent(host_id=item.actor[len("host:"):], event=ev, at=_time(item.at), verdict=item.password_verdict)


class ImpactService:
    """``vvg policy impact`` and /policies/impact."""

    def __init__(self, settings: Settings, policies: PolicyService | None = None) -> None:
        self.settings = settings
        self.policies = policies or PolicyService(settings)

    def analyse(self, specs: list[PolicySpec], since: timedelta, now: datetime | None = None,
                records: Iterable[AuditItem] | None = None, max_events: int = MAX_EVENTS) -> dict[str, Any]:
        """The contract's answer: ``{"events_replayed", "not_replayable", "changed"}`` (docs/policy-impact.md).

        ``records`` (oldest first) replaces the read of the audit table (the benchmark's in-memory mode)."""
        now = now or datetime.now(timezone.utc)
        if since > MAX_PERIOD:
            raise InvalidInput("--since is at most 90d")
        start = now - since
        draft_ids = {s.volume_id for s in specs}
        stored = self._stored(specs)
        replay = Replay(now=Side(), draft=build_side(spec_view(s, stored[s.volume_id]) for s in specs))
        loaded: set[str] = set()

        def load(vm_id: str) -> None:  # the VM's current policies: one Query, at its first event
            if vm_id in loaded:
                return
            loaded.add(vm_id)
            for item in PolicyItem.query(vm_pk(vm_id), PolicyItem.sk.startswith("POLICY#")):
                v = start_view(view_of(item))
                replay.now.by_vm.setdefault(v.vm_id, {})[v.volume_id] = v
                if v.volume_id not in draft_ids:
                    replay.draft.by_vm.setdefault(v.vm_id, {})[v.volume_id] = v

        open_: OrderedDict[tuple, tuple[datetime, list[AuditItem]]] = OrderedDict()
        events = 0

        def flush(key: tuple, group: list[AuditItem]) -> None:
            first = group[0]
            if key[0] == "outside":
                replay.outside(first.action, first.vm_id, first.volume_id)
                return
            rec = _recorded(first)
            if rec is None:
                replay.not_replayable += 1
                return
            load(rec.event.vm_id)
            replay.event(rec, first.event_id)

        source = records if records is not None else read_period(start, now)
        for item in source:
            if item.at < _rfc(start) or item.at > _rfc(now):
                continue
            at = _time(item.at)
            while open_:
                key0, (first_at, group) = next(iter(open_.items()))
                if first_at >= at - _GROUP_WINDOW:
                    break
                open_.popitem(last=False)
                flush(key0, group)
            if _is_host_event(item):
                key = (item.actor, item.vm_id, item.event_id)
                if key not in open_:
                    events += 1
                    if events > max_events:
                        raise InvalidInput(f"the period holds more than {max_events:,} events: choose a shorter "
                                           "--since (docs/policy-impact.md)")
                    open_[key] = (at, [])
                open_[key][1].append(item)
            elif item.action in ("vm_quarantine", "vm_release") or (item.action == "detach" and item.outcome == "done"):
                open_[("outside", item.chain, int(item.seq))] = (at, [item])
        while open_:
            key0, (_, group) = open_.popitem(last=False)
            flush(key0, group)
        return replay.result()

    def _stored(self, specs: list[PolicySpec]) -> dict[str, PolicyItem | None]:
        """The stored item of each draft volume: one BatchGet per 100 where it stays on its VM, the volume
        index for the rest (new or moved volumes), as apply finds them."""
        out: dict[str, PolicyItem | None] = {}
        keys = [(vm_pk(s.vm_id), f"POLICY#{s.volume_id}") for s in specs]
        for i in range(0, len(keys), 100):
            for item in PolicyItem.batch_get(keys[i:i + 100]):
                out[item.volume_id] = item
        for s in specs:
            if s.volume_id not in out:
                out[s.volume_id] = self.policies.find(s.volume_id)
        return out

    def diff(self, specs: list[PolicySpec]) -> dict[str, Any]:
        """The draft against the table, as ``apply --dry-run`` shows it (docs/policy-apply.md)."""
        return self.policies.dry_run(specs)
