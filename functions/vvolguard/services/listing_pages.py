"""Pages of the host registry and the dashboard users, read by their ``by-listing`` index, never by a scan
(docs/host-user-pages.md).

Each table's index holds one partition (``HOSTS`` / ``USERS``) of keys only, sorted by id, and only the
items that are hosts or users carry its key: the users table's sign-in limit counters, however many a
stream of failed sign-ins leaves, are not in it. A page is one Query of ``limit + 1`` keys (the extra one
says whether a next page exists) and one consistent BatchGetItem of the page's items, so it costs the same
with 5 or 5,000 hosts or users. Its position is DynamoDB's own key of the last row shown, which the
dashboard signs into its page links (dashboard/audit.py's cursors) and the CLI hands straight back.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pynamodb.models import Model

from vvolguard.errors import InvalidInput

# A page's rows are read in one BatchGetItem, which takes at most 100 keys.
MAX_LISTING_PAGE = 100


@dataclass(frozen=True)
class Listing:
    """Which listing a page (and its cursor) belongs to: ``hosts`` or ``users``."""

    name: str

    def key(self) -> str:
        """The text a signed cursor is bound to: a host page's cursor never passes for a user or policy one."""
        return f"listing|{self.name}"


@dataclass
class ListingPage:
    """One page of items in id order, where the next one starts (None: the last page), and what it cost."""

    items: list
    position: dict[str, Any] | None
    round_trips: int = 0
    read: int = 0


def _id_attr(model: type[Model]) -> str:
    return model._hash_keyname  # type: ignore[attr-defined]


def read_listing(model: type[Model], part: str, position: dict[str, Any] | None = None, limit: int = 50,
                 attributes: Sequence[str] | None = None) -> ListingPage:
    """Up to ``limit`` items of ``model`` from ``position`` (None: the first), read by its by-listing index:
    one Query and (when the page is not empty) one BatchGetItem. ``attributes``: only those are read."""
    if not isinstance(limit, int) or not 1 <= limit <= MAX_LISTING_PAGE:
        raise InvalidInput(f"a page holds 1 to {MAX_LISTING_PAGE} rows")
    if position is not None and (not isinstance(position, dict) or position.get("list_part") != {"S": part}):
        raise InvalidInput("the page position belongs to another listing")
    id_attr = _id_attr(model)
    query = model.by_listing.query(part, limit=limit + 1, page_size=limit + 1,  # type: ignore[attr-defined]
                                   last_evaluated_key=position)
    try:
        page = next(query.page_iter)
    except StopIteration:
        page = {}
    raws = page.get("Items", [])
    more = len(raws) > limit
    raws = raws[:limit]
    ids = [r[id_attr]["S"] for r in raws]
    got: dict[str, Any] = {}
    if ids:
        attrs = list(dict.fromkeys([id_attr, *attributes])) if attributes else None
        got = {getattr(i, id_attr): i for i in model.batch_get(ids, consistent_read=True, attributes_to_get=attrs)}
    items = [got[i] for i in ids if i in got]  # an id missing: removed since the index was read
    if more:
        nxt: dict[str, Any] | None = {k: raws[-1][k] for k in ("list_part", id_attr)}
    else:
        nxt = page.get("LastEvaluatedKey") or None
    return ListingPage(items, nxt, 1 + bool(ids), len(raws) + len(got))


def read_all(model: type[Model], part: str, attributes: Sequence[str] | None = None) -> Iterator[Any]:
    """Every item of the listing, in id order, page by page (``vvg host list``, ``vvg user list``)."""
    position = None
    while True:
        page = read_listing(model, part, position, limit=MAX_LISTING_PAGE, attributes=attributes)
        yield from page.items
        if page.position is None:
            return
        position = page.position


def backfill(model: type[Model], part: str, condition: Any = None) -> int:
    """The upgrade to the listing indexes (docs/host-user-pages.md): give every item of ``model``'s table
    that lacks ``list_part`` (and meets ``condition``) its listing key; how many were given one. It scans
    the table, once: run by ``vvg host list --backfill`` / ``vvg user list --backfill``, never by a page.
    An item removed meanwhile stays removed (the write needs it to exist)."""
    from pynamodb.exceptions import UpdateError

    id_attr = _id_attr(model)
    missing = model.list_part.does_not_exist()  # type: ignore[attr-defined]
    done = 0
    for item in model.scan(missing & condition if condition is not None else missing, page_size=500):
        try:
            item.update(actions=[model.list_part.set(part)],  # type: ignore[attr-defined]
                        condition=getattr(model, id_attr).exists())
            done += 1
        except UpdateError as exc:
            if exc.cause_response_code != "ConditionalCheckFailedException":
                raise
    return done
