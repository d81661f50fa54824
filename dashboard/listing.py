"""The paging of /hosts and /users (docs/host-user-pages.md): ``?per_page`` and a signed ``?cursor`` (the same
cursors as /audit and /policies: dashboard/audit.py), read by the service's by-listing index, never a scan."""
from __future__ import annotations

from typing import Any, Callable

from flask import current_app, request

from dashboard.audit import decode_cursor, encode_cursor
from vvolguard.errors import InvalidInput
from vvolguard.services.listing_pages import MAX_LISTING_PAGE, Listing, ListingPage

PER_PAGE = 50
BAD_CURSOR = "The page link is not valid (altered, or made for another page); this is the first page."


def listing_page(name: str, read: Callable[[dict | None, int], ListingPage]) -> dict[str, Any]:
    """What a listing template needs of the page the request asks for: ``page``, ``next_cursor``, ``paged``
    (not the first page), ``keep`` (the query arguments the page links carry) and ``page_error`` (an altered or
    foreign cursor: the first page is shown instead, and the answer is 400)."""
    listing = Listing(name)
    default = current_app.config.get("VVG_LISTING_PER_PAGE", PER_PAGE)
    text = request.args.get("per_page", "")
    per_page = min(MAX_LISTING_PAGE, max(1, int(text))) if text.isdigit() and len(text) < 5 else default
    keep = {"per_page": str(per_page)} if per_page != default else {}
    page_error = None
    try:
        position = decode_cursor(listing, request.args.get("cursor", ""))
    except InvalidInput:
        page_error, position = BAD_CURSOR, None
    page = read(position, per_page)
    return {"page": page, "next_cursor": encode_cursor(listing, page.position), "keep": keep,
            "paged": position is not None, "page_error": page_error}
