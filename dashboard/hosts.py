"""/hosts (admin): enroll a host (its secret is shown once, on that response only) or a key host by its
pasted Ed25519 public key (docs/host-keys.md), rotate, revoke; when each host was last seen, and for a key
host its fingerprint and the hardware it was enrolled with."""
from __future__ import annotations

from datetime import datetime, timezone

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for

from dashboard.auth import actor, role_required
from dashboard.listing import listing_page
from vvolguard.domain.policy import ID_RE
from vvolguard.errors import VvgError
from vvolguard.services.hosts import HostService, auth_of

MAX_PASTED_KEY = 16 * 1024

bp = Blueprint("hosts", __name__)


def _service() -> HostService:
    return current_app.extensions["vvg"].hosts


def _page(form=None, error=None, status=200):
    """One page of hosts (a Query and a BatchGetItem of the by-listing index: docs/host-user-pages.md)."""
    now = datetime.now(timezone.utc)
    listing = listing_page("hosts", _service().page)
    if listing["page_error"] and status == 200:
        status = 400
    return render_template("hosts/list.html", hosts=listing["page"].items, form=form or {}, error=error, now=now,
                           auth_of=auth_of, **listing), status


def _pasted_key(text: str) -> str | None:
    """The pasted public key, or None when the field was left empty (a secret host)."""
    text = (text or "").strip()
    return text or None


@bp.get("/hosts")
@role_required("admin")
def list_hosts():
    """The host registry and the enroll form."""
    return _page()


@bp.post("/hosts")
@role_required("admin")
def enroll():
    """Enroll; the answer page shows the secret this once (never stored in clear, never flashed)."""
    form = {k: request.form.get(k, "")[:300] for k in ("host_id", "mac", "serial", "hardware")}
    key = _pasted_key(request.form.get("public_key", "")[:MAX_PASTED_KEY + 1])
    try:
        out = _service().enroll(form["host_id"].strip(), form["mac"].strip(), form["serial"].strip(),
                                form["hardware"].strip(), actor=actor(), public_key=key)
    except VvgError as exc:
        form["public_key"] = key if key and "PRIVATE" not in key and len(key) <= 2048 else ""
        return _page(form=form, error=exc.message.replace("--", ""), status=exc.status_code)
    if key is not None:
        return render_template("hosts/key.html", host_id=out["host_id"], fingerprint=out["fingerprint"],
                               what="enrolled")
    return render_template("hosts/secret.html", host_id=out["host_id"], secret=out["secret"], what="enrolled")


@bp.post("/hosts/<host_id>/rotate")
@role_required("admin")
def rotate(host_id: str):
    """A new secret, shown once; the old one stops working at once."""
    if not ID_RE.match(host_id):
        abort(404)
    key = _pasted_key(request.form.get("public_key", "")[:MAX_PASTED_KEY + 1])
    try:
        out = _service().rotate(host_id, actor=actor(), public_key=key)
    except VvgError as exc:
        flash(f"Not rotated: {exc.message.replace('--public-key FILE', 'a new public key').replace('--', '')}", "error")
        return redirect(url_for("hosts.list_hosts"))
    if key is not None:
        return render_template("hosts/key.html", host_id=host_id, fingerprint=out["fingerprint"], what="rotated")
    return render_template("hosts/secret.html", host_id=host_id, secret=out["secret"], what="rotated")


@bp.post("/hosts/<host_id>/revoke")
@role_required("admin")
def revoke(host_id: str):
    """Refuse the host's requests from now on, detach and untag what it held (needs the confirmation box);
    the message says what it detached."""
    if not ID_RE.match(host_id):
        abort(404)
    if not request.form.get("confirm"):
        flash(f"Not revoked: tick the box next to Revoke to confirm revoking {host_id}.", "error")
        return redirect(url_for("hosts.list_hosts"))
    try:
        out = _service().revoke(host_id, actor=actor())
    except VvgError as exc:
        flash(f"Not revoked: {exc.message}", "error")
        return redirect(url_for("hosts.list_hosts"))
    flash(f"Revoked {host_id}: its requests are refused from now on; detached {out['detached']} "
          f"volume{'s' if out['detached'] != 1 else ''} attached for its VMs and removed it from "
          f"{out['untagged']} volume{'s' if out['untagged'] != 1 else ''}' vvg:hosts; its migration grants ended.",
          "ok")
    return redirect(url_for("hosts.list_hosts"))
