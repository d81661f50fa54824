"""The policy table: read-only list here; create/edit/delete arrive with the dashboard issue."""
from __future__ import annotations

from flask import Blueprint, current_app, redirect, render_template, request, url_for

from dashboard.auth import role_required
from vvolguard.services.policies import PolicyService

bp = Blueprint("policies", __name__)
FILTERS = ("vm_id", "host_id", "storage_array")


def index():
    """The landing page is the policy table."""
    return redirect(url_for("policies.list_policies"))


@bp.get("/policies")
@role_required("viewer")
def list_policies():
    """Table 1's columns, filterable by VM, host and array."""
    filters = {k: request.args.get(k, "").strip()[:64] for k in FILTERS}
    rows = [p for p in PolicyService(current_app.config["VVG_SETTINGS"]).all()
            if all(not v or getattr(p, k) == v for k, v in filters.items())]
    rows.sort(key=lambda p: (p.vm_id, p.volume_id))
    return render_template("policies/list.html", rows=rows, filters=filters)
