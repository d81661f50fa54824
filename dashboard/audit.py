"""/audit: the audit history filtered and paged by DynamoDB cursor, CSV and JSON export of the filtered
set, and the result of the tamper check (run by the scheduled function, stored in DynamoDB: docs/audit-check.md)."""
from __future__ import annotations

import csv
import io
import json
import re
from typing import Any, Iterator

from flask import Blueprint, Response, current_app, flash, redirect, render_template, request, stream_with_context, url_for
from itsdangerous import BadSignature, URLSafeSerializer

from dashboard.auth import actor, role_required
from vvolguard.domain.events import TYPES
from vvolguard.errors import InvalidInput
from vvolguard.services.audit_queries import (OUTCOMES, REPLAY_FIELDS, AuditQuery, export_row, is_relative, iterate,
                                              parse_bound, read_page, record_dict)

bp = Blueprint("audit", __name__)
PER_PAGE, MAX_PER_PAGE = 50, 200
EXPORT_MAX = 10_000
ACTIONS = ("attach", "detach", "create", "grant", "revoke", "select", "refuse", "state_corrected",
           "policy_create", "policy_update", "policy_delete", "host_enroll", "host_rotate", "host_revoke", "user_add")
# Each record's chain position and MACs too, so that `vvg audit verify --file` can check a JSON export offline
# (docs/audit-export.md); a MAC reveals nothing and cannot be made without the audit key.
EXPORT_FIELDS = ("at", "actor", "vm_id", "volume_id", "host_id", "event_id", "event_type", "action", "outcome",
                 "reason", "policy_version", "detail", "chain", "seq", "prev", "mac")
FILTER_ARGS = ("vm", "host", "volume", "type", "outcome", "from", "to")


def _serializer() -> URLSafeSerializer:
    return URLSafeSerializer(current_app.config["SECRET_KEY"], salt="vvg-audit-cursor")


def encode_cursor(q: AuditQuery, position: dict[str, Any] | None) -> str | None:
    """An opaque, signed cursor: DynamoDB's last evaluated key (and month), bound to the filters."""
    if position is None:
        return None
    return _serializer().dumps({"f": q.key(), "p": position})


def decode_cursor(q: AuditQuery, text: str) -> dict[str, Any] | None:
    """The position in ``text``; InvalidInput when it was altered or made for other filters."""
    if not text:
        return None
    try:
        data = _serializer().loads(text[:4096])
    except BadSignature:
        raise InvalidInput("the page link is not valid (altered or from another session); start from the newest records") from None
    if not isinstance(data, dict) or data.get("f") != q.key() or not isinstance(data.get("p"), dict):
        raise InvalidInput("the page link belongs to other filters; start from the newest records")
    return data["p"]


def query_from_args(args) -> tuple[AuditQuery, dict[str, str]]:
    """The filters of the query string (as typed, for the form) and the validated query."""
    raw = {k: args.get(k, "").strip()[:64] for k in FILTER_ARGS}
    q = AuditQuery(vm_id=raw["vm"] or None, host_id=raw["host"] or None, volume_id=raw["volume"] or None,
                   type=raw["type"] or None, outcome=raw["outcome"] or None,
                   since=parse_bound(raw["from"], upper=False), until=parse_bound(raw["to"], upper=True))
    return q, raw


# ---- the tamper check: a full read of the history, run by the scheduled function, never in a request
# (docs/audit-check.md); the page reads its stored result (one GetItem)


def tamper_status() -> dict[str, Any]:
    return current_app.extensions["vvg"].tamper.state()


# ---- routes


@bp.get("/audit")
@role_required("viewer")
def audit():
    """One page of the filtered history, newest first."""
    per_page = request.args.get("per_page", "")
    per_page = min(MAX_PER_PAGE, max(1, int(per_page))) if per_page.isdigit() else PER_PAGE
    error, page, q, raw = None, None, None, {k: request.args.get(k, "")[:64] for k in FILTER_ARGS}
    status = 200
    try:
        q, raw = query_from_args(request.args)
        position = decode_cursor(q, request.args.get("cursor", ""))
        page = read_page(q, position, limit=per_page)
    except InvalidInput as exc:
        error, status = exc.message, 400
    rows = [record_dict(i) for i in page.items] if page else []
    next_cursor = encode_cursor(q, page.position) if page else None
    filters = {k: v for k, v in raw.items() if v}
    if q is not None:  # relative times ("24h") are pinned for the page links, so a cursor keeps its filters
        for key, bound in (("from", q.since), ("to", q.until)):
            if key in filters and is_relative(filters[key]) and bound:
                filters[key] = bound
    if per_page != PER_PAGE:
        filters["per_page"] = str(per_page)
    tamper = tamper_status()
    bad = _bad_records(tamper)
    for row in rows:
        row["anchor"] = record_anchor(row["chain"], row["seq"])
        row["problem"] = bad.get((row["chain"], row["seq"]))
    return render_template(
        "audit/list.html", rows=rows, raw=raw, filters=filters, error=error, page=page,
        next_cursor=next_cursor, paged=bool(request.args.get("cursor")), outcomes=OUTCOMES,
        types=list(TYPES) + list(ACTIONS), tamper=tamper, per_page=per_page, quick=QUICK_RANGES,
        first_bad_url=_first_bad_url(tamper),
    ), status


QUICK_RANGES = (("1h", "last hour"), ("24h", "last 24 h"), ("7d", "last 7 days"))


def record_anchor(chain: str, seq: int) -> str:
    """The HTML id of a record's row: ``rec-VM_vm-3-2`` for record 2 of chain ``VM#vm-3``."""
    return "rec-" + re.sub(r"[^A-Za-z0-9_-]", "_", chain)[:140] + f"-{int(seq)}"


def _bad_records(tamper: dict[str, Any]) -> dict[tuple[str, int], str]:
    result = tamper.get("result") or {}
    if result.get("ok", True):
        return {}
    return {(p["chain"], int(p["seq"])): p["problem"] for p in result.get("problems") or []}


def _first_bad_url(tamper: dict[str, Any]) -> str | None:
    """Where the first bad record is shown: its chain's page (a VM's or a host's), at its row."""
    result = tamper.get("result") or {}
    first = None if result.get("ok", True) else result.get("first_problem")
    if not first:
        return None
    chain = str(first["chain"])
    kind, _, name = chain.partition("#")
    args = {"vm": name} if kind == "VM" else {"host": name} if kind == "HOST" else {}
    return url_for("audit.audit", **args) + "#" + record_anchor(chain, first["seq"])


@bp.post("/audit/verify")
@role_required("viewer")
def verify_now():
    """Ask the scheduled function for a tamper check (at most once per 10 s), then show the page again; the
    check itself never runs in this request."""
    if current_app.extensions["vvg"].tamper.request(actor=actor(),
                                                       function=current_app.config.get("VVG_RECONCILE_FUNCTION")):
        flash("Tamper check asked for: it runs in a few seconds; reload the page for its result.", "ok")
    else:
        flash("A tamper check was asked for less than 10 seconds ago; reload the page for its result.", "ok")
    return redirect(url_for("audit.audit"))


def _csv_cell(value: Any) -> str:
    text = "" if value is None else json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)
    # A spreadsheet must not run a cell as a formula.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _rows(q: AuditQuery, replay: bool = False) -> Iterator[dict[str, Any]]:
    for item in iterate(q, EXPORT_MAX):
        row = export_row(item)
        out = {k: row.get(k) for k in EXPORT_FIELDS}
        if replay:  # a format-3 record's replay fields, so `vvg audit verify --file` checks it (docs/policy-impact.md)
            out.update((k, row[k]) for k in REPLAY_FIELDS if k in row)
        yield out


@bp.get("/audit/export.<fmt>")
@role_required("viewer")
def export(fmt: str):
    """The filtered set (newest first, at most EXPORT_MAX records), streamed as CSV or JSON."""
    if fmt not in ("csv", "json"):
        return Response("unknown export format: use export.csv or export.json\n", 404, mimetype="text/plain")
    try:
        q, _raw = query_from_args(request.args)
    except InvalidInput as exc:
        return Response(exc.message + "\n", 400, mimetype="text/plain")

    def gen_csv() -> Iterator[str]:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(EXPORT_FIELDS)
        for row in _rows(q):
            w.writerow([_csv_cell(row[k]) for k in EXPORT_FIELDS])
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
        yield buf.getvalue()

    def gen_json() -> Iterator[str]:
        yield "["
        first = True
        for row in _rows(q, replay=True):
            yield ("\n" if first else ",\n") + json.dumps(row, sort_keys=False, default=str)
            first = False
        yield "\n]\n"

    mimetype = "text/csv" if fmt == "csv" else "application/json"
    resp = Response(stream_with_context(gen_csv() if fmt == "csv" else gen_json()), mimetype=mimetype)
    resp.headers["Content-Disposition"] = f'attachment; filename="vvolguard-audit.{fmt}"'
    return resp
