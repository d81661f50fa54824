"""What is attached now, and each volume's exposure (attached time) over a recent window.

Current state comes from the sparse lease index (shards ``L#0..``: only attached volumes are in it).
Past intervals are rebuilt from the audit history's attach and detach records of the window, read by
the ``by-time`` index for the window's months only (bounded), and closed by the current state.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from vvolguard.adapters.audit import months
from vvolguard.adapters.models import EXPIRY_SHARDS, AuditItem, PolicyItem
from vvolguard.domain.events import parse_time
from vvolguard.domain.natural import natural_key

# Records that end an attachment (the reconciler's correction included).
END_ACTIONS = ("detach", "state_corrected")
MAX_RECORDS = 50_000


@dataclass
class Interval:
    """One attached stretch of a volume, clipped to the window; ``open`` while still attached."""

    start: datetime
    end: datetime
    open: bool = False
    lease_end: datetime | None = None  # when its lease ran out (the attach's, or the last renewal's)

    @property
    def seconds(self) -> float:
        return max(0.0, (self.end - self.start).total_seconds())

    @property
    def overrun_seconds(self) -> float:
        """How long it stayed attached past its lease (0 when within it, or when the lease is unknown)."""
        if self.lease_end is None:
            return 0.0
        return max(0.0, (self.end - max(self.lease_end, self.start)).total_seconds())


@dataclass
class VolumeExposure:
    """A volume's attached intervals in the window."""

    volume_id: str
    vm_id: str
    intervals: list[Interval] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(i.seconds for i in self.intervals)

    @property
    def minutes(self) -> float:
        return self.seconds / 60.0


@dataclass
class Exposure:
    """The window, per-volume exposure, per-VM totals, and whether the record bound cut the read short."""

    start: datetime
    end: datetime
    volumes: list[VolumeExposure]
    truncated: bool = False
    records: int = 0

    def vm_minutes(self) -> list[tuple[str, float, int]]:
        """(vm_id, exposed minutes, volumes) per VM, most exposed first."""
        tot: dict[str, list[float]] = {}
        for v in self.volumes:
            t = tot.setdefault(v.vm_id, [0.0, 0])
            t[0] += v.minutes
            t[1] += 1
        return sorted(((vm, m, int(n)) for vm, (m, n) in tot.items()), key=lambda r: (-r[1], natural_key(r[0])))


def attached_now() -> list[PolicyItem]:
    """Every volume recorded as attached, from the sparse lease index (no scan of the table)."""
    out: list[PolicyItem] = []
    for shard in range(EXPIRY_SHARDS):
        for hit in PolicyItem.by_expiry.query(f"L#{shard}", page_size=500):
            if isinstance(hit, PolicyItem) and hit.attached:
                out.append(hit)
    return sorted(out, key=lambda p: (natural_key(p.vm_id), natural_key(p.volume_id)))


def _months(start: datetime, end: datetime) -> list[str]:
    """The by-time partitions of [start, end], newest first."""
    return months(end, start)


def _at(text: str) -> datetime:
    return parse_time(text)


def _lease_of(rec: AuditItem) -> datetime | None:
    """The lease end an attach (or renewal) record carries in its detail, if any."""
    detail = rec.detail.as_dict() if rec.detail is not None else {}
    value = detail.get("lease_expires_at")
    try:
        return parse_time(value) if isinstance(value, str) and value else None
    except Exception:  # noqa: BLE001 - a malformed detail only loses the overrun mark
        return None


def _aware(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def exposure(now: datetime | None = None, window: timedelta = timedelta(hours=24),
             current: list[PolicyItem] | None = None, max_records: int = MAX_RECORDS) -> Exposure:
    """Attached intervals per volume over ``window`` up to ``now``."""
    now = now or datetime.now(timezone.utc)
    start = now - window
    lo = start.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    cond = (AuditItem.action.is_in("attach", "renew", *END_ACTIONS)) & (AuditItem.outcome == "done")
    events: dict[str, list[tuple[datetime, str, datetime | None]]] = {}
    vm_of: dict[str, str] = {}
    n = 0
    truncated = False
    for month in _months(start, now):
        for rec in AuditItem.by_time.query(month, AuditItem.at_key >= lo, filter_condition=cond,
                                           scan_index_forward=True, page_size=1000):
            if not rec.volume_id:
                continue
            n += 1
            if n > max_records:
                truncated = True
                break
            events.setdefault(rec.volume_id, []).append((_at(rec.at), rec.action, _lease_of(rec)))
            if rec.vm_id:
                vm_of[rec.volume_id] = rec.vm_id
        if truncated:
            break
    current = attached_now() if current is None else current
    live = {p.volume_id: p for p in current}
    for p in current:
        vm_of[p.volume_id] = p.vm_id
    volumes: list[VolumeExposure] = []
    for vid in sorted(set(events) | set(live), key=natural_key):
        evs = sorted(events.get(vid, []), key=lambda e: e[0])
        ve = VolumeExposure(vid, vm_of.get(vid, ""))
        opened: datetime | None = None
        lease: datetime | None = None
        if evs and evs[0][1] in END_ACTIONS:
            opened = start  # attached before the window opened
        for at, action, lease_at in evs:
            if action == "attach":
                if opened is None:
                    opened, lease = max(at, start), lease_at
            elif action == "renew":
                lease = lease_at or lease
            elif opened is not None:
                ve.intervals.append(Interval(opened, min(max(at, start), now), lease_end=lease))
                opened, lease = None, None
        p = live.get(vid)
        if p is not None:
            since = _aware(p.attached_at) or opened or start
            if opened is None:
                opened = max(since, start)
            ve.intervals.append(Interval(opened, now, open=True, lease_end=_aware(p.lease_expires_at) or lease))
        elif opened is not None:
            # The records say attached but the state says not: end it at the last record we saw.
            ve.intervals.append(Interval(opened, max(evs[-1][0], opened), lease_end=lease))
        ve.intervals = [i for i in ve.intervals if i.end > i.start or i.open]
        if ve.intervals:
            volumes.append(ve)
    return Exposure(start, now, volumes, truncated, min(n, max_records))
