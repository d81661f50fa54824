"""/users (admin): add a user, change a role, reset a password, disable, remove (docs/dashboard.md).
Each change is audited as the signed-in admin and ends every session of the user it changes."""
from __future__ import annotations

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for

from dashboard.auth import actor, role_required
from dashboard.listing import listing_page
from vvolguard.errors import VvgError
from vvolguard.services.users import ROLES, USERNAME_RE, UserService

bp = Blueprint("users", __name__)


def _service() -> UserService:
    return current_app.extensions["vvg"].users


def _page(form=None, error=None, status=200):
    """One page of users (a Query and a BatchGetItem of the by-listing index: docs/host-user-pages.md); the
    sign-in limit counters in the same table are never read."""
    listing = listing_page("users", _service().page)
    if listing["page_error"] and status == 200:
        status = 400
    return render_template("users/list.html", users=listing["page"].items, roles=ROLES, form=form or {},
                           error=error, **listing), status


def _name(username: str) -> str:
    if not USERNAME_RE.match(username):
        abort(404)
    return username


def _done(message: str):
    flash(message, "ok")
    return redirect(url_for("users.list_users"))


def _refused(what: str, exc: VvgError):
    flash(f"{what}: {exc.message}", "error")
    return redirect(url_for("users.list_users"))


@bp.get("/users")
@role_required("admin")
def list_users():
    """Every user (role, disabled, last sign-in) and the add form."""
    return _page()


@bp.post("/users")
@role_required("admin")
def add():
    """Form fields ``username``, ``role``, ``password``."""
    form = {k: request.form.get(k, "")[:300] for k in ("username", "role")}
    password = request.form.get("password", "")[:1024]
    try:
        _service().add(form["username"].strip(), form["role"], password, actor=actor())
    except VvgError as exc:
        return _page(form=form, error=exc.message, status=exc.status_code)
    return _done(f"Added {form['username'].strip()} as {form['role']}.")


@bp.post("/users/<username>/role")
@role_required("admin")
def change_role(username: str):
    name = _name(username)
    try:
        out = _service().set_role(name, request.form.get("role", "")[:20], actor=actor())
    except VvgError as exc:
        return _refused(f"Role of {name} not changed", exc)
    return _done(f"{name} is now {out['role']}; their sessions have ended.")


@bp.post("/users/<username>/password")
@role_required("admin")
def reset_password(username: str):
    name = _name(username)
    try:
        _service().passwd(name, request.form.get("password", "")[:1024], actor=actor())
    except VvgError as exc:
        return _refused(f"Password of {name} not reset", exc)
    return _done(f"New password set for {name}; their sessions have ended.")


def _confirmed(username: str, verb: str, change, done: str):
    """Disable or remove: only with the confirm box ticked; ``change(name, actor=...)`` is the service call."""
    name = _name(username)
    past = "disabled" if verb == "disable" else "removed"
    if not request.form.get("confirm"):
        flash(f"Not {past}: tick the box next to {verb.capitalize()} to confirm {verb[:-1]}ing {name}.", "error")
        return redirect(url_for("users.list_users"))
    try:
        change(name, actor=actor())
    except VvgError as exc:
        return _refused(f"{name} not {past}", exc)
    return _done(done.format(name=name))


@bp.post("/users/<username>/disable")
@role_required("admin")
def disable(username: str):
    return _confirmed(username, "disable", _service().disable,
                      "Disabled {name}: they cannot sign in and their sessions have ended.")


@bp.post("/users/<username>/remove")
@role_required("admin")
def remove(username: str):
    return _confirmed(username, "remove", _service().remove, "Removed {name}; their sessions have ended.")
