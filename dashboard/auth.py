"""Sign-in and sign-out for dashboard users; the login_required / role_required decorators.

Sessions are kept on the server (docs/dashboard.md): the cookie names the user and a random session id,
and every request checks that id against the user's item, so a session ended anywhere (sign-out, a
password or role change, disabling or removing the user) is refused everywhere from the next request."""
from __future__ import annotations

import functools
import time
from urllib.parse import urlsplit

from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, request, session, url_for

from vvolguard.services.limits import LoginLimiter, Refused
from vvolguard.errors import VvgError
from vvolguard.services.users import ROLES, SESSION_LIFETIME_S, UserService

bp = Blueprint("auth", __name__)
FAIL_DELAY_S = 0.5
MAX_NEXT = 2000


def init_limits(app) -> None:
    """The sign-in limiter of the app, built once from its config (the counters live in DynamoDB)."""
    cfg = app.config
    app.extensions["vvg_login_limiter"] = LoginLimiter(
        app.extensions["vvg"].settings, free_pair=cfg.get("VVG_LOGIN_FREE_FAILURES", 5),
        free_addr=cfg.get("VVG_LOGIN_FREE_FAILURES_IP", 20), base_s=cfg.get("VVG_LOGIN_BACKOFF_S", 2.0),
        name_ceiling=cfg.get("VVG_LOGIN_NAME_CEILING", 100))


def _limiter() -> LoginLimiter:
    return current_app.extensions["vvg_login_limiter"]


def _users() -> UserService:
    return current_app.extensions["vvg"].users


@bp.before_app_request
def load_user() -> None:
    """g.user from the session: one consistent read of the user, which also says whether this session
    still holds (a removed or disabled user, or an ended session, is out at once)."""
    g.user = None
    name, sid = session.get("user"), session.get("sid")
    if name:
        user = _users().session_user(name, sid) if isinstance(sid, str) else None
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


def safe_next(raw: str | None) -> str | None:
    """``raw`` if a browser would read it as a path on this origin, else None. Browsers drop tabs and
    newlines anywhere in a URL, strip leading spaces and control characters, and read a backslash as a
    slash, so ``/%09/evil.example``, ``/%5Cevil.example`` and ``%20//evil.example`` (as sent) all leave the
    origin. A value holding a control character is refused (400) before this is called; here anything
    but a plain ``/path`` (not ``//``, no backslash, no space, no scheme or host once parsed) is refused."""
    if not raw or len(raw) > MAX_NEXT:
        return None
    if not raw.startswith("/") or raw[1:2] in ("/", "\\") or "\\" in raw:
        return None
    if any(c.isspace() or not c.isprintable() for c in raw):
        return None
    parts = urlsplit(raw)
    if parts.scheme or parts.netloc or not parts.path.startswith("/") or parts.path.startswith("//"):
        return None
    return raw


def _next_param() -> str | None:
    raw = request.args.get("next")
    if raw is not None and any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in raw):
        abort(400)  # CR, LF, tab or any other control character: never a path a link of ours would hold
    return raw


def _fail_delay() -> None:
    time.sleep(current_app.config.get("VVG_LOGIN_FAIL_DELAY", FAIL_DELAY_S))


@bp.route("/login", methods=("GET", "POST"))
def login():
    """Form fields ``username`` and ``password``; a failure never says which part was wrong. Each attempt
    is counted against the shared limits before the password is checked (docs/dashboard.md)."""
    nxt = _next_param()
    if request.method == "POST":
        username = request.form.get("username", "")[:128]
        password = request.form.get("password", "")[:1024]
        addr = request.remote_addr or "-"
        reserved = _limiter().reserve(username, addr)
        if isinstance(reserved, Refused):
            _fail_delay()
            wait = reserved.retry_after
            flash(f"Too many failed sign-ins. Wait {wait} seconds, then try again.", "error")
            resp = current_app.make_response((render_template("auth/login.html", username=username), 429))
            resp.headers["Retry-After"] = str(wait)
            return resp
        users = _users()
        user = users.authenticate(username, password)
        sid = None
        if user is not None:
            try:
                sid = users.start_session(user, SESSION_LIFETIME_S)
            except VvgError:
                sid = None  # the user changed (password, disabled, removed) while signing in
        if sid is None:
            _fail_delay()
            flash("Sign-in failed: the user name or password is not right.", "error")
            return render_template("auth/login.html", username=username), 401
        _limiter().succeeded(reserved)
        session.clear()  # a new session id at every sign-in (and a new CSRF token)
        session["user"] = user.username
        session["sid"] = sid
        session.permanent = True
        return redirect(safe_next(nxt) or url_for("policies.list_policies"))
    return render_template("auth/login.html", username="")


@bp.post("/logout")
def logout():
    """Sign out (POST, with the CSRF token): this session ends on the server, not only in this browser."""
    name, sid = session.get("user"), session.get("sid")
    if isinstance(name, str) and isinstance(sid, str):
        _users().end_session(name, sid)
    session.clear()
    return redirect(url_for("auth.login"))


@bp.get("/logout")
def logout_page():
    """A GET shows the sign-out button rather than signing out (no CSRF-able GET)."""
    if g.user is None:
        return redirect(url_for("auth.login"))
    return render_template("auth/logout.html")


def actor() -> str:
    """The audit actor of the signed-in user."""
    return f"user:{g.user.username}"


def can(role: str) -> bool:
    """The signed-in user has at least ``role`` (for showing or hiding controls; routes check again)."""
    return g.get("user") is not None and g.user.role in ROLES and ROLES.index(g.user.role) >= ROLES.index(role)
