"""Sign-in and sign-out for dashboard users; the login_required / role_required decorators."""
from __future__ import annotations

import functools
import time

from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, request, session, url_for

from vvolguard.services.users import ROLES, UserService

bp = Blueprint("auth", __name__)
FAIL_DELAY_S = 0.5


def _users() -> UserService:
    return UserService(current_app.config["VVG_SETTINGS"])


@bp.before_app_request
def load_user() -> None:
    """g.user from the session (re-read each request, so a removed user is out at once)."""
    g.user = None
    name = session.get("user")
    if name:
        user = _users().get(name)
        if user is None:
            session.clear()
        else:
            g.user = user


def role_required(role: str):
    """Sign-in needed (302 to /login), then at least ``role`` (else 403)."""
    def deco(view):
        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            if g.user is None:
                return redirect(url_for("auth.login", next=request.path))
            if ROLES.index(g.user.role) < ROLES.index(role):
                abort(403)
            return view(*args, **kwargs)
        return wrapped
    return deco


@bp.route("/login", methods=("GET", "POST"))
def login():
    """Form fields ``username`` and ``password``; a failure never says which part was wrong."""
    if request.method == "POST":
        username = request.form.get("username", "")[:128]
        password = request.form.get("password", "")[:1024]
        user = _users().authenticate(username, password)
        if user is None:
            time.sleep(current_app.config.get("VVG_LOGIN_FAIL_DELAY", FAIL_DELAY_S))
            flash("Sign-in failed: the user name or password is not right.", "error")
            return render_template("auth/login.html", username=username), 401
        session.clear()
        session["user"] = user.username
        session.permanent = True
        target = request.args.get("next", "")
        if not (target.startswith("/") and not target.startswith("//") and "\\" not in target):
            target = url_for("index")
        return redirect(target)
    return render_template("auth/login.html", username="")


@bp.post("/logout")
def logout():
    """Sign out (POST, with the CSRF token)."""
    session.clear()
    return redirect(url_for("auth.login"))


@bp.get("/logout")
def logout_page():
    """A GET shows the sign-out button rather than signing out (no CSRF-able GET)."""
    if g.user is None:
        return redirect(url_for("auth.login"))
    return render_template("auth/logout.html")
