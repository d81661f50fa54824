"""The policy table: list with filters; create, edit and delete one volume's policy through forms whose
fields are the policy file's keys, checked by the policy file's own validator (one validator, two callers)."""
from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from werkzeug.datastructures import MultiDict

from dashboard.audit import decode_cursor, encode_cursor
from dashboard.auth import actor, can, role_required
from vvolguard.domain.natural import natural_key
from vvolguard.domain.policy_diff import is_move
from vvolguard.domain.policy import (ATTACH_ON, ATTACH_TO, DETACH_ON, ID_RE, KEYS, MAX_PASSWORD_LEN, REQUIRED,
                                     validate_entry)
from vvolguard.errors import ConcurrentModification, Conflict, InvalidInput, NotFound, VvgError
from vvolguard.services.audit_queries import policy_history
from vvolguard.services.keys import key_states
from vvolguard.services.policies import PolicyService
from vvolguard.services.policy_pages import STATES, PolicyQuery, read_page

bp = Blueprint("policies", __name__)
FILTERS = ("vm_id", "host_id", "storage_array")
# ?sort=COLUMN (ascending) or ?sort=-COLUMN (descending); ids compare naturally (vvol-2 before vvol-11)
SORTS: dict[str, Any] = {
    "volume_id": lambda p: natural_key(p.volume_id),
    "size_mb": lambda p: (int(p.size_mb or 0), natural_key(p.volume_id)),
    "storage_array": lambda p: (natural_key(p.storage_array), natural_key(p.volume_id)),
    "vm_id": lambda p: (natural_key(p.vm_id), natural_key(p.volume_id)),
    "host_id": lambda p: (natural_key(p.host_id), natural_key(p.volume_id)),
    "attach_on": lambda p: (p.attach_on or "", natural_key(p.volume_id)),
    "detach_on": lambda p: (p.detach_on or "", natural_key(p.volume_id)),
    "app": lambda p: (natural_key(p.app or ""), natural_key(p.volume_id)),
    "os_disk_encryption": lambda p: (not p.os_disk_encryption, natural_key(p.volume_id)),
    "state": lambda p: (not p.attached, natural_key(p.volume_id)),
}
DEFAULT_SORT = "vm_id"


def parse_sort(text: str) -> tuple[str, bool]:
    """(column, descending) from ``?sort=``; anything unknown is the default order."""
    text = (text or "")[:40]
    desc = text.startswith("-")
    column = text[1:] if desc else text
    return (column, desc) if column in SORTS else (DEFAULT_SORT, False)
PER_PAGE, MAX_PER_PAGE = 50, 200
INT_KEYS = ("size_mb", "max_attach_seconds", "min_key_bits")
# Form fields that are not policy keys: the CSRF token, the version the editor read, and two controls.
META = ("csrf_token", "policy_version", "remove_password", "confirm")
_INT_RE = re.compile(r"^-?\d{1,12}\Z")
_FIELD_ERR = re.compile(r"^form(?: \([^)]*\))?: ([^:]{1,80}): (.*)\Z", re.S)


def _service() -> PolicyService:
    # The root's, with the provider: used only to detach a volume whose policy is deleted while attached.
    return current_app.extensions["vvg"].policies


def index():
    """The landing page is the policy table."""
    return redirect(url_for("policies.list_policies"))


@bp.get("/policies")
@role_required("viewer")
def list_policies():
    """Table 1's columns, filterable by VM, host, array and state, one page at a time: each page is read by a
    query on the filter's key and continues by a signed cursor, so it costs the same with 100 or 100,000
    policies (docs/policy-pages.md). A column's sort orders the page shown."""
    filters = {k: request.args.get(k, "").strip()[:64] for k in FILTERS}
    state = request.args.get("state", "")
    state = state if state in STATES else ""
    keep = {k: v for k, v in filters.items() if v}
    if state:
        keep["state"] = state
    active = bool(keep)
    default = current_app.config.get("VVG_POLICIES_PER_PAGE", PER_PAGE)
    per_page = request.args.get("per_page", "")
    per_page = min(MAX_PER_PAGE, max(1, int(per_page))) if per_page.isdigit() and len(per_page) < 5 else default
    if per_page != default:
        keep["per_page"] = str(per_page)
    sort, desc = parse_sort(request.args.get("sort", ""))
    rows: list = []
    page, next_cursor, error, status = None, None, None, 200
    paged = bool(request.args.get("cursor"))
    try:
        q = PolicyQuery(**{k: v or None for k, v in filters.items()}, state=state or None)
    except InvalidInput:
        q = None  # an id no policy can have: nothing matches, and nothing is read
    if q is not None:
        try:
            position = decode_cursor(q, request.args.get("cursor", ""))
        except InvalidInput:
            error, status = "The page link is not valid (altered, or made for other filters); this is the first page.", 400
            position, paged = None, False
        page = read_page(q, position, limit=per_page)
        rows = page.items
        next_cursor = encode_cursor(q, page.position)
    rows.sort(key=SORTS[sort], reverse=desc)
    nav = dict(keep, sort=("-" if desc else "") + sort) if sort != DEFAULT_SORT or desc else keep
    return render_template("policies/list.html", rows=rows, filters=filters, state=state, states=STATES,
                           active=active, sort=sort, desc=desc, keep=keep, nav=nav, page=page, next_cursor=next_cursor,
                           paged=paged, error=error,
                           keyvols=key_states(p.volume_id for p in rows)), status


@bp.app_template_global("key_volume")
def key_volume(volume_id: str) -> dict[str, Any] | None:
    """A volume's key volume state for its page (docs/key-volume.md): entries' names, kinds, sizes and
    digests, never their bytes; None when it was never provisioned."""
    return key_states([volume_id]).get(volume_id) if ID_RE.match(volume_id or "") else None


def form_entry(form: MultiDict) -> tuple[dict[str, Any], int | None]:
    """The policy-file entry a form describes, and the version the editor read (None: missing).

    Strings are passed on as typed (the validator refuses what does not fit and names the field);
    numbers become integers only when they are whole numbers; unknown fields are passed on so the
    validator refuses them by name. An empty password keeps the stored one."""
    entry: dict[str, Any] = {}
    for key in form.keys():
        if key in META:
            continue
        raw = form.get(key, "")
        if key not in KEYS:
            entry[key[:80]] = raw[:80]
            continue
        if key == "password":
            if raw != "":
                entry["password"] = raw[: MAX_PASSWORD_LEN + 1]
            continue
        value = raw.strip()
        if key == "os_disk_encryption":
            entry[key] = True if value in ("true", "on") else False if value in ("", "false") else value[:80]
        elif key == "authorized_apps":
            entry[key] = [a[:80] for a in re.split(r"[,\s]+", value) if a][:100]
        elif value == "":
            if key in REQUIRED:
                entry[key] = None
        elif key in INT_KEYS:
            entry[key] = int(value) if _INT_RE.match(value) else value[:80]
        else:
            entry[key] = value[:200]
    if "os_disk_encryption" not in form:  # an unchecked checkbox sends nothing
        entry["os_disk_encryption"] = False
    if form.get("remove_password") and "password" not in entry:
        entry["password"] = None
    version_text = form.get("policy_version", "")
    version = int(version_text) if _INT_RE.match(version_text) and int(version_text) >= 0 else None
    return entry, version


def _field_errors(errors: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in errors:
        m = _FIELD_ERR.match(e)
        if m:
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


def _values_of(item) -> dict[str, Any]:
    """The form's values for a stored policy (never the password)."""
    return {
        "volume_id": item.volume_id, "vm_id": item.vm_id, "host_id": item.host_id,
        "storage_array": item.storage_array, "size_mb": int(item.size_mb), "attach_on": item.attach_on,
        "detach_on": item.detach_on, "app": item.app or "", "authorized_apps": ", ".join(item.authorized_apps or []),
        "os_disk_encryption": bool(item.os_disk_encryption), "max_attach_seconds": int(item.max_attach_seconds),
        "min_key_bits": int(item.min_key_bits) if item.min_key_bits is not None else "",
        "attach_to": item.attach_to or "vm",
    }


def _values_of_form(form: MultiDict) -> dict[str, Any]:
    """What the user typed, to show again after a refusal (never the password)."""
    vals = {k: form.get(k, "")[:300] for k in KEYS if k != "password"}
    vals["os_disk_encryption"] = form.get("os_disk_encryption", "") in ("true", "on")
    return vals


def _render_form(item=None, values=None, errors=(), status=200, version=0, message=None, history=None,
                 preview=None, confirm_token=None, password_typed=False):
    return render_template(
        "policies/form.html", item=item, values=values or {}, errors=list(errors),
        field_errors=_field_errors(list(errors)), version=version, attach_on=ATTACH_ON, detach_on=DETACH_ON,
        attach_to=ATTACH_TO,
        message=message, history=history if history is not None else [], editable=can("editor"),
        max_password=MAX_PASSWORD_LEN, preview=preview, confirm_token=confirm_token, password_typed=password_typed,
    ), status


def confirm_token(volume_id: str, entry: dict[str, Any], version: int) -> str:
    """What a move confirmation confirms: the entry (the password only as kept / set / removed, never its
    value), the volume and the version the editor read, keyed with the app's secret. A confirmation of
    anything else (values edited after the diff was shown) shows the diff again instead of saving."""
    shown = {k: v for k, v in entry.items() if k != "password"}
    shown["password"] = "keep" if "password" not in entry else "remove" if entry["password"] is None else "set"
    text = json.dumps([volume_id, version, shown], sort_keys=True, default=str)
    key = str(current_app.secret_key or "").encode()
    return hmac.new(key, b"policy-move\0" + text.encode(), hashlib.sha256).hexdigest()[:32]


@bp.route("/policies/new", methods=("GET", "POST"))
@role_required("editor")
def new_policy():
    """Create one volume's policy."""
    if request.method == "GET":
        return _render_form(values={"os_disk_encryption": False, "max_attach_seconds": 900})
    entry, version = form_entry(request.form)
    if version != 0:
        return _render_form(values=_values_of_form(request.form), errors=["The form is incomplete: reload the page and try again."], status=400)
    spec, errors = validate_entry(entry, "form")
    if errors:
        return _render_form(values=_values_of_form(request.form), errors=errors, status=400)
    try:
        _service().save_one(spec, actor(), 0)
    except ConcurrentModification as exc:
        return _render_form(values=_values_of_form(request.form), errors=[exc.message], status=409)
    except VvgError as exc:
        return _render_form(values=_values_of_form(request.form), errors=[exc.message], status=exc.status_code)
    flash(f"Created the policy of {spec.volume_id}.", "ok")
    return redirect(url_for("policies.edit_policy", volume_id=spec.volume_id))


def _load(volume_id: str):
    if not ID_RE.match(volume_id):
        abort(404)
    try:
        return _service().get(volume_id)
    except NotFound:
        return None


@bp.route("/policies/<volume_id>", methods=("GET", "POST"))
@role_required("viewer")
def edit_policy(volume_id: str):
    """One volume's policy (viewers read it), its change history, and for editors the edit form."""
    if request.method == "POST" and not can("editor"):
        abort(403)
    item = _load(volume_id)
    history = policy_history(volume_id) if ID_RE.match(volume_id) else []
    if item is None:
        if request.method == "POST":
            return _render_form(values=_values_of_form(request.form), status=409, history=history,
                                errors=[f"The policy of {volume_id} was deleted by someone else; nothing was saved."])
        return render_template("policies/missing.html", volume_id=volume_id, history=history), 404
    if request.method == "GET":
        return _render_form(item=item, values=_values_of(item), version=int(item.policy_version), history=history)
    entry, version = form_entry(request.form)
    again = dict(item=item, values=_values_of_form(request.form), history=history,
                 version=version if version is not None else int(item.policy_version))
    if version is None or version == 0:
        return _render_form(errors=["The form is incomplete: reload the page and try again."], status=400, **again)
    if entry.get("volume_id") != volume_id:
        return _render_form(errors=[f"form: volume_id: cannot be changed here (it is {volume_id}); "
                                    "create a new policy instead"], status=400, **again)
    spec, errors = validate_entry(entry, "form")
    if errors:
        return _render_form(errors=errors, status=400, **again)
    if version == int(item.policy_version):
        # A move to another VM or host is saved only once the editor has seen its diff and confirmed
        # exactly that change (docs/policy-apply.md); a stale version falls through to save_one's refusal.
        preview = _service().preview(spec, item)
        if any(is_move(u["changes"]) for u in preview["updated"]):
            token = confirm_token(volume_id, entry, version)
            if not hmac.compare_digest(request.form.get("confirm", ""), token):
                return _render_form(preview=preview, confirm_token=token, password_typed="password" in entry
                                    and entry["password"] is not None, **again)
    try:
        outcome = _service().save_one(spec, actor(), version)
    except ConcurrentModification:
        current = _service().find(volume_id)
        now_v = int(current.policy_version) if current else None
        return _render_form(status=409, **again, errors=[
            f"Not saved: someone else changed {volume_id} while you were editing it (you edited version {version}, "
            f"it is now version {now_v}). Your changes are below; reload the page to see theirs, then apply yours again."])
    except Conflict as exc:
        return _render_form(errors=[exc.message], status=409, **again)
    except VvgError as exc:
        return _render_form(errors=[exc.message], status=exc.status_code, **again)
    flash(f"Saved {volume_id}." if outcome == "updated" else f"Nothing to save: {volume_id} already had these values.",
          "ok")
    return redirect(url_for("policies.edit_policy", volume_id=volume_id))


@bp.post("/policies/<volume_id>/delete")
@role_required("editor")
def delete_policy(volume_id: str):
    """Delete one volume's policy (an attached volume is detached first); needs the version read."""
    item = _load(volume_id)
    if item is None:
        flash(f"{volume_id} has no policy (already deleted?).", "error")
        return redirect(url_for("policies.list_policies"))
    _entry, version = form_entry(request.form)
    if not request.form.get("confirm"):
        flash("Not deleted: tick the box to confirm the deletion.", "error")
        return redirect(url_for("policies.edit_policy", volume_id=volume_id))
    if not version:
        flash("The form is incomplete: reload the page and try again.", "error")
        return redirect(url_for("policies.edit_policy", volume_id=volume_id))
    try:
        out = _service().delete(volume_id, actor(), version)
    except ConcurrentModification:
        flash(f"Not deleted: someone else changed {volume_id} since you opened it. Check its new values, then delete again.",
              "error")
        return redirect(url_for("policies.edit_policy", volume_id=volume_id))
    except VvgError as exc:
        flash(f"Not deleted: {exc.message}", "error")
        return redirect(url_for("policies.edit_policy", volume_id=volume_id))
    flash(f"Deleted the policy of {volume_id}" + (" (it was attached and has been detached)." if out["detached"] else "."),
          "ok")
    return redirect(url_for("policies.list_policies"))
