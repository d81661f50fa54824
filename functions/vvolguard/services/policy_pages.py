"""Filtered, cursor-paged reads of the policy table for the dashboard (never a scan, never an offset):
docs/policy-pages.md.

The source of a page follows the filters: the VM's partition when a VM is given, the ``by-host`` index
when a host is, the ``by-array`` index when an array is, else the ``by-listing`` index (every policy, one
partition, in VM-then-volume order). The two listing indexes hold keys only (the event path's attachment
updates never write to them), so their page's items are then read by key, in one BatchGetItem. Other
filters are applied to the items read; a page stops after ``limit`` rows or a bounded amount of reading,
and its position is DynamoDB's own last evaluated key, which the caller hands back to continue (signed:
dashboard/audit.py's cursors).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vvolguard.adapters.models import LISTING_PART, PolicyItem
from vvolguard.domain.policy import ID_RE
from vvolguard.errors import InvalidInput

STATES = ("attached", "detached")
# Bounds on one page's reading when a filter is applied to the items read (round trips, items read).
MAX_ROUND_TRIPS = 8
FILTERED_READ = 100
_KEYS = {"vm": ("pk", "sk"), "host": ("pk", "sk", "host_id"), "array": ("pk", "sk", "storage_array", "list_key"),
         "all": ("pk", "sk", "list_part", "list_key")}


@dataclass(frozen=True)
class PolicyQuery:
    """The policy page's filters (exact ids; ``state`` attached or detached)."""

    vm_id: str | None = None
    host_id: str | None = None
    storage_array: str | None = None
    state: str | None = None

    def __post_init__(self) -> None:
        for name in ("vm_id", "host_id", "storage_array"):
            v = getattr(self, name)
            if v is not None and not ID_RE.match(v):
                raise InvalidInput(f"{name} must match [A-Za-z0-9._-]{{1,64}}")
        if self.state is not None and self.state not in STATES:
            raise InvalidInput(f"state must be one of {', '.join(STATES)}")

    @property
    def source(self) -> str:
        """Which key the policies are read by: ``vm``, ``host``, ``array`` or ``all``."""
        return "vm" if self.vm_id else "host" if self.host_id else "array" if self.storage_array else "all"

    def key(self) -> str:
        """A stable text of the filters (a cursor is only valid for the filters it was made for; the prefix
        keeps a policy cursor from ever passing for an audit one)."""
        return "policies|" + "|".join(getattr(self, k) or "" for k in ("vm_id", "host_id", "storage_array", "state"))

    @property
    def filtered(self) -> bool:
        """Whether some filter is applied to the items read (not all of them are the source's key)."""
        return any(self._rest())

    def _rest(self) -> list[tuple[str, str]]:
        rest = [(k, getattr(self, k)) for k in ("host_id", "storage_array") if getattr(self, k)]
        if self.source == "host":
            rest = [(k, v) for k, v in rest if k != "host_id"]
        elif self.source == "array":
            rest = []
        return rest + ([("state", self.state)] if self.state else [])

    def matches(self, item: PolicyItem) -> bool:
        for name, value in self._rest():
            if name == "state":
                if bool(item.attached) != (value == "attached"):
                    return False
            elif getattr(item, name) != value:
                return False
        return True


@dataclass
class PolicyPage:
    """One page of policies, where to continue (None at the end), and what reading it cost."""

    items: list[PolicyItem]
    position: dict[str, Any] | None
    round_trips: int = 0
    read: int = 0
    partial: bool = False  # stopped by the reading bound before the page was full


def _query(q: PolicyQuery, start: dict | None, page_size: int):
    kw: dict[str, Any] = dict(limit=page_size, page_size=page_size, last_evaluated_key=start)
    if q.source == "vm":
        return PolicyItem.query(f"VM#{q.vm_id}", PolicyItem.sk.startswith("POLICY#"), **kw)
    if q.source == "host":
        return PolicyItem.by_host.query(q.host_id, **kw)
    if q.source == "array":
        return PolicyItem.by_array.query(q.storage_array, **kw)
    return PolicyItem.by_listing.query(LISTING_PART, **kw)


def _items(q: PolicyQuery, raws: list[dict]) -> list[PolicyItem | None]:
    """The items of a page of the source, in its order (None: deleted since the index was read)."""
    if q.source in ("vm", "host"):  # these sources hold whole items
        return [PolicyItem.from_raw_data(r) for r in raws]
    keys = [(r["pk"]["S"], r["sk"]["S"]) for r in raws]
    got = {(i.pk, i.sk): i for i in PolicyItem.batch_get(keys)} if keys else {}
    return [got.get(k) for k in keys]


def read_page(q: PolicyQuery, position: dict[str, Any] | None = None, limit: int = 50,
              max_round_trips: int = MAX_ROUND_TRIPS) -> PolicyPage:
    """Up to ``limit`` policies from ``position`` (None: the first), in the source's order."""
    filtered = q.filtered
    rows: list[PolicyItem] = []
    start = position
    trips = read = 0
    while True:
        need = limit - len(rows)
        # Unfiltered: one more than the page, to know whether another page follows; only the page is read by key.
        size = max(need + 1, FILTERED_READ) if filtered else need + 1
        try:
            page = next(_query(q, start, size).page_iter)
        except StopIteration:
            page = {}
        trips += 1
        raws = page.get("Items", [])
        read += len(raws)
        more_here = len(raws) > need and not filtered
        if more_here:
            raws = raws[:need]
        items = _items(q, raws)
        trips += q.source in ("array", "all") and bool(raws)
        read += sum(i is not None for i in items) if q.source in ("array", "all") else 0
        for n, (raw, item) in enumerate(zip(raws, items)):
            if item is None or not q.matches(item):
                continue
            if len(rows) == limit:  # one more exists: continue after the last row returned
                return PolicyPage(rows, _key(q, raws[n - 1]) if n else start, trips, read)
            rows.append(item)
        if more_here:
            return PolicyPage(rows, _key(q, raws[-1]), trips, read)
        last = page.get("LastEvaluatedKey")
        if not last:
            return PolicyPage(rows, None, trips, read)
        start = last
        if len(rows) == limit:
            return PolicyPage(rows, start, trips, read)
        if trips >= max_round_trips:
            return PolicyPage(rows, start, trips, read, partial=True)


def _key(q: PolicyQuery, raw: dict) -> dict[str, Any]:
    """DynamoDB's key of a row of the source (where the next page starts after it)."""
    return {k: raw[k] for k in _KEYS[q.source]}


def first_vms(limit: int = 50) -> list[tuple[str, list[str]]]:
    """The VMs of the first page of policies with their hosts, for a hint list (/simulate); one page read."""
    out: dict[str, set[str]] = {}
    for item in read_page(PolicyQuery(), limit=limit).items:
        out.setdefault(item.vm_id, set()).add(item.host_id)
    return [(vm, sorted(hosts)) for vm, hosts in out.items()]
