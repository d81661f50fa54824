"""/alerts (viewer+): the security alerts of docs/alerts.md, newest first, each linked to the audit records
behind it. One Query per day of the period; no script."""
from __future__ import annotations

from flask import Blueprint, render_template, request, url_for

from dashboard.auth import role_required
from vvolguard.errors import InvalidInput
from vvolguard.services.alerts import list_alerts, parse_since

bp = Blueprint("alerts", __name__)
PERIODS = ("1h", "24h", "7d", "30d", "90d")
LIMIT = 500


def _audit_link(a: dict) -> str | None:
    """The /audit page filtered to the alert's subject (its VM, else its host, else its volume)."""
    for arg, key in (("vm", "vm_id"), ("host", "host_id"), ("volume", "volume_id")):
        if a.get(key):
            return url_for("audit.audit", **{arg: a[key]})
    return None


@bp.get("/alerts")
@role_required("viewer")
def alerts():
    since = request.args.get("since", "7d")[:20]
    error = None
    try:
        period = parse_since(since)
    except InvalidInput as exc:
        error, since, period = exc.message, "7d", parse_since("7d")
    rows = [dict(a, audit_link=_audit_link(a)) for a in list_alerts(period, limit=LIMIT + 1)]
    return render_template("alerts/list.html", rows=rows[:LIMIT], truncated=len(rows) > LIMIT, since=since,
                           periods=PERIODS, error=error, limit=LIMIT), (400 if error else 200)
