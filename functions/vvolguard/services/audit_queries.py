"""Filtered, cursor-paged reads of the audit history for the dashboard (never an offset, never a scan).

The source of a page follows the filters: a VM's chain (``VM#<vm>``, newest first) when a VM is given,
the ``by-volume`` index when a volume is, else the ``by-time`` index month by month. Other filters are
DynamoDB filter expressions on that query. A page stops after ``limit`` rows or a bounded amount of
reading, and its position is DynamoDB's own last evaluated key (plus the month), which the caller
hands back to continue.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

from vvolguard.adapters.audit import REPLAY_FIELDS, RECORD_FIELDS, AuditLog, export_row, months  # noqa: F401
from vvolguard.adapters.audit import verify_export as _verify_export
from vvolguard.adapters.models import AuditItem
from vvolguard.domain.policy import ID_RE
from vvolguard.errors import InvalidInput

OUTCOMES = ("done", "skipped", "denied", "failed", "pending")
TYPE_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}\Z")
MONTHS_BACK = 36
# Bounds on one page's reading: round trips and items evaluated by DynamoDB.
MAX_ROUND_TRIPS = 48
MAX_EVALUATED = 2000
FILTERED_PAGE = 200

_DATE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})\Z")
_MINUTE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})\Z")


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


_RELATIVE_RE = re.compile(r"^(?:last\s+)?(\d{1,5})\s*(m|min|mins|minutes?|h|hours?|d|days?)(?:\s+ago)?\Z", re.I)
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400}
TIME_FORMS = ("a time must be a date (2026-11-27), a minute (2026-11-27T05:00), an RFC 3339 time, "
              "or a time back from now (30m, 24h, 7d, last 24 h)")


def is_relative(text: str) -> bool:
    """Whether a time filter counts back from now (``24h``, ``last 7 d``, ``30 min ago``)."""
    return bool(_RELATIVE_RE.match((text or "").strip()))


def parse_bound(text: str, upper: bool, now: datetime | None = None) -> str | None:
    """A time filter as the stored ``at`` format. Dates and minutes (``datetime-local``) cover their
    whole day or minute when they are the upper bound; RFC 3339 times are taken as they are; ``24h``,
    ``7d``, ``last 30 min`` count back from now. UTC."""
    text = (text or "").strip()
    if not text:
        return None
    if len(text) > 40:
        raise InvalidInput(TIME_FORMS)
    if m := _RELATIVE_RE.match(text):
        n, unit = int(m[1]), m[2][0].lower()
        if n * _UNIT_SECONDS[unit] > 400 * 86400:
            raise InvalidInput("a time back from now must be at most 400 days")
        return _iso((now or datetime.now(timezone.utc)) - timedelta(seconds=n * _UNIT_SECONDS[unit]))
    try:
        if m := _DATE_RE.match(text):
            dt = datetime(int(m[1]), int(m[2]), int(m[3]), tzinfo=timezone.utc)
            step = timedelta(days=1)
        elif m := _MINUTE_RE.match(text):
            dt = datetime(int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), tzinfo=timezone.utc)
            step = timedelta(minutes=1)
        else:
            from vvolguard.domain.events import parse_time

            dt, step = parse_time(text), timedelta(0)
    except (ValueError, InvalidInput):
        raise InvalidInput(TIME_FORMS) from None
    return _iso(dt + step) if upper else _iso(dt)


@dataclass(frozen=True)
class AuditQuery:
    """The audit page's filters; ``since`` inclusive and ``until`` exclusive, in the stored ``at`` format."""

    vm_id: str | None = None
    host_id: str | None = None
    volume_id: str | None = None
    type: str | None = None
    outcome: str | None = None
    since: str | None = None
    until: str | None = None

    def __post_init__(self) -> None:
        for name in ("vm_id", "host_id", "volume_id"):
            v = getattr(self, name)
            if v is not None and not ID_RE.match(v):
                raise InvalidInput(f"{name} must match [A-Za-z0-9._-]{{1,64}}")
        if self.type is not None and not TYPE_RE.match(self.type):
            raise InvalidInput("type must be an event type or an action, e.g. vm.preboot or attach")
        if self.outcome is not None and self.outcome not in OUTCOMES:
            raise InvalidInput(f"outcome must be one of {', '.join(OUTCOMES)}")
        if self.since and self.until and self.since >= self.until:
            raise InvalidInput("the time range is empty: 'from' must be before 'to'")

    @property
    def source(self) -> str:
        """Which key the records are read by: ``chain``, ``volume`` or ``time``."""
        return "chain" if self.vm_id else "volume" if self.volume_id else "time"

    def key(self) -> str:
        """A stable text of the filters (a cursor is only valid for the filters it was made for)."""
        return "|".join(str(getattr(self, k) or "") for k in
                        ("vm_id", "host_id", "volume_id", "type", "outcome", "since", "until"))

    def _filter(self):
        conds = []
        if self.vm_id and self.volume_id:
            conds.append(AuditItem.volume_id == self.volume_id)
        if self.volume_id and not self.vm_id:
            pass  # the index's key
        if self.host_id:
            conds.append(AuditItem.host_id == self.host_id)
        if self.type:
            conds.append((AuditItem.event_type == self.type) | (AuditItem.action == self.type))
        if self.outcome:
            conds.append(AuditItem.outcome == self.outcome)
        if self.source == "chain":  # the chain's key is its sequence number: time is a filter there
            if self.since:
                conds.append(AuditItem.at >= self.since)
            if self.until:
                conds.append(AuditItem.at < self.until)
        out = None
        for c in conds:
            out = c if out is None else out & c
        return out

    def _range(self):
        """The index range condition on ``at_key`` (records at exactly ``until`` sort after it)."""
        if self.source == "chain" or not (self.since or self.until):
            return None
        lo = self.since or "0000"
        hi = self.until or "9999"
        return AuditItem.at_key.between(lo, hi)

    def months(self, now: datetime | None = None) -> list[str]:
        """The ``by-time`` partitions to read, newest first."""
        now = now or datetime.now(timezone.utc)
        top = self.until or _iso(now + timedelta(days=1))
        y, m = int(top[:4]), int(top[5:7])
        if self.until and top[8:] == "01T00:00:00.000Z":  # an exclusive bound at a month's very start
            y, m = (y, m - 1) if m > 1 else (y - 1, 12)
        low = datetime(int(self.since[:4]), int(self.since[5:7]), 1) if self.since else None
        return months(datetime(y, m, 1), low, limit=MONTHS_BACK)


@dataclass
class AuditPage:
    """One page of records, where to continue (None at the end), and what reading it cost."""

    items: list[AuditItem]
    position: dict[str, Any] | None
    evaluated: int = 0
    partial: bool = False  # stopped by the reading bound before the page was full
    months: list[str] = field(default_factory=list)


_KEYS = {"chain": ("chain", "seq"), "volume": ("chain", "seq", "volume_id", "at_key"),
         "time": ("chain", "seq", "month", "at_key")}


def _query(q: AuditQuery, month: str | None, start: dict | None, page_size: int):
    kw: dict[str, Any] = dict(scan_index_forward=False, page_size=page_size, last_evaluated_key=start,
                              filter_condition=q._filter())
    if q.source == "chain":
        return AuditItem.query(f"VM#{q.vm_id}", **kw)
    rng = q._range()
    if q.source == "volume":
        return AuditItem.by_volume.query(q.volume_id, rng, **kw)
    return AuditItem.by_time.query(month, rng, **kw)


def read_page(q: AuditQuery, position: dict[str, Any] | None = None, limit: int = 50,
              max_round_trips: int = MAX_ROUND_TRIPS, max_evaluated: int = MAX_EVALUATED,
              now: datetime | None = None) -> AuditPage:
    """Up to ``limit`` records newest first from ``position`` (None: the newest)."""
    filtered = q._filter() is not None
    page_size = max(limit + 1, FILTERED_PAGE) if filtered else limit + 1
    months = q.months(now) if q.source == "time" else [None]
    month = (position or {}).get("m")
    start = (position or {}).get("k")
    if q.source == "time":
        if month not in months:
            month, start = months[0] if months else None, None
        months = months[months.index(month):] if month else []
    rows: list[AuditItem] = []
    last_key: dict[str, Any] | None = None
    trips = evaluated = 0
    for i, mo in enumerate(months):
        if i > 0:
            start = None
        while True:
            it = _query(q, mo, start, page_size)
            pages = it.page_iter
            try:
                page = next(pages)
            except StopIteration:
                page = {}
            trips += 1
            evaluated += int(page.get("ScannedCount", 0))
            raw_items = page.get("Items", [])
            for raw in raw_items:
                if len(rows) == limit:
                    # One more exists: continue after the last row returned (DynamoDB's key of that row).
                    return AuditPage(rows, last_key, evaluated)
                rows.append(AuditItem.from_raw_data(raw))
                last_key = {"m": mo, "k": {k: raw[k] for k in _KEYS[q.source]}}
            start = page.get("LastEvaluatedKey")
            if not start:
                break  # this partition is done
            if trips >= max_round_trips or evaluated >= max_evaluated:
                return AuditPage(rows, {"m": mo, "k": start}, evaluated, partial=len(rows) < limit)
        if trips >= max_round_trips and i + 1 < len(months):
            return AuditPage(rows, {"m": months[i + 1], "k": None}, evaluated, partial=len(rows) < limit)
    return AuditPage(rows, None, evaluated)


def iterate(q: AuditQuery, max_rows: int, max_evaluated: int = 200_000) -> Iterator[AuditItem]:
    """Records matching ``q``, newest first: at most ``max_rows``, found among at most ``max_evaluated``
    records read (for exports; a filter that matches little cannot make one read the whole history)."""
    position: dict[str, Any] | None = None
    sent = evaluated = 0
    while sent < max_rows and evaluated < max_evaluated:
        page = read_page(q, position, limit=min(500, max_rows - sent))
        for item in page.items:
            yield item
        sent += len(page.items)
        evaluated += page.evaluated
        if page.position is None:
            return
        position = page.position


def record_dict(item: AuditItem) -> dict[str, Any]:
    """A record as ``vvg audit list`` prints it (docs/security-model.md#the-audit-history): no MAC, nothing secret."""
    row: dict[str, Any] = {k: getattr(item, k) for k in RECORD_FIELDS}
    if row.get("policy_version") is not None:
        row["policy_version"] = int(row["policy_version"])
    row["detail"] = item.detail.as_dict() if item.detail is not None else {}
    row["chain"], row["seq"] = item.chain, int(item.seq)
    return row


def policy_history(volume_id: str, limit: int = 50) -> list[AuditItem]:
    """The volume's policy changes (``policy_*`` records), newest first, read by the volume index."""
    q_filter = AuditItem.action.startswith("policy_")
    out: list[AuditItem] = []
    start = None
    for _ in range(10):  # bounded: at most 10 round trips
        it = AuditItem.by_volume.query(volume_id, scan_index_forward=False, page_size=500,
                                       filter_condition=q_filter, last_evaluated_key=start)
        try:
            page = next(it.page_iter)
        except StopIteration:
            break
        out.extend(AuditItem.from_raw_data(r) for r in page.get("Items", []))
        start = page.get("LastEvaluatedKey")
        if len(out) >= limit or not start:
            break
    return out[:limit]


_DURATION_RE = re.compile(r"^(\d{1,6})([mhd])\Z")


def parse_duration(text: str) -> timedelta:
    """``30m``, ``12h``, ``7d`` (at most 3660 days)."""
    m = _DURATION_RE.match(text or "")
    if not m:
        raise InvalidInput(f"a duration is a number and a unit m, h or d (30m, 12h, 7d), got {text[:20]!r}")
    delta = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}[m[2]] * int(m[1])
    if delta > timedelta(days=3660):
        raise InvalidInput("a duration is at most 3660d")
    return delta


def export_items(vm_id: str | None = None, since: str | None = None) -> list[AuditItem]:
    """The records of an export (docs/audit-export.md), chain by chain, each chain in sequence order.

    Each chain's records form one unbroken run that ends at the chain's newest record: with ``since``,
    from its first record at or after ``since``. So a missing record inside a run is always a removal."""
    if vm_id is not None and not ID_RE.match(vm_id):
        raise InvalidInput("vm_id must match [A-Za-z0-9._-]{1,64}")
    if vm_id:
        chains = [f"VM#{vm_id}"]
        starts: dict[str, int] = {}
    elif since:
        starts = {}
        for month in AuditQuery(since=since).months():
            for item in AuditItem.by_time.query(month, AuditItem.at_key >= since):
                s = int(item.seq)
                starts[item.chain] = min(starts.get(item.chain, s), s)
        chains = sorted(starts)
    else:

        chains = sorted({i.chain for i in AuditItem.scan(attributes_to_get=["chain", "seq"])})
        starts = {}
    out: list[AuditItem] = []
    for chain in chains:
        rng = AuditItem.seq >= starts[chain] if chain in starts else None
        run = list(AuditItem.query(chain, rng, consistent_read=True, scan_index_forward=True))
        if since and vm_id:
            first = next((n for n, i in enumerate(run) if i.at >= since), len(run))
            run = run[first:]
        out.extend(run)
    return out


def verify_export(log: AuditLog, records: list[Any], allow_gaps: bool = False) -> dict[str, Any]:
    """An export's records (``vvg audit export``'s JSON array) checked offline against the audit key
    (docs/audit-export.md); the key stays inside this call. REPLAY_FIELDS and export_row are the export's
    columns, for the CLI and the dashboard."""
    return _verify_export(log._key(), records, allow_gaps=allow_gaps)
