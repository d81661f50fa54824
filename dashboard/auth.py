"""Sign-in and sign-out for dashboard users; the login_required / role_required decorators."""
from __future__ import annotations

import functools
import threading
import time

from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, request, session, url_for

from vvolguard.services.users import ROLES, UserService

bp = Blueprint("auth", __name__)
FAIL_DELAY_S = 0.5


class FailureBackoff:
    """Failed sign-ins per user name and per client address, in memory: after ``free`` failures in a
    row, further attempts are refused unchecked for a wait that doubles with each failure (capped).
    The same for a name that exists and one that does not, so it says nothing about either."""

    def __init__(self, free: int = 5, base_s: float = 2.0, cap_s: float = 900.0, max_keys: int = 10000) -> None:
        self.free, self.base_s, self.cap_s, self.max_keys = free, base_s, cap_s, max_keys
        self._fails: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def _wait(self, count: int) -> float:
        over = count - self.free
        return 0.0 if over < 0 else min(self.cap_s, self.base_s * (2 ** over))

    def retry_after(self, keys: list[str], now: float | None = None) -> float:
        """Seconds until any of ``keys`` may try again (0: now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            waits = [last + self._wait(n) - now for n, last in (self._fails.get(k, (0, 0.0)) for k in keys)]
        return max([0.0] + [w for w in waits if w > 0])

    def failed(self, keys: list[str], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            if len(self._fails) >= self.max_keys:  # forget the oldest half rather than grow without bound
                for k, _ in sorted(self._fails.items(), key=lambda kv: kv[1][1])[: self.max_keys // 2]:
                    del self._fails[k]
            for k in keys:
                n, _ = self._fails.get(k, (0, 0.0))
                self._fails[k] = (n + 1, now)

    def succeeded(self, keys: list[str]) -> None:
        with self._lock:
            for k in keys:
                self._fails.pop(k, None)


def _backoff() -> tuple[FailureBackoff, FailureBackoff]:
    ext = current_app.extensions
    if "vvg_login_backoff" not in ext:
        cfg = current_app.config
        ext["vvg_login_backoff"] = (
            FailureBackoff(free=cfg.get("VVG_LOGIN_FREE_FAILURES", 5), base_s=cfg.get("VVG_LOGIN_BACKOFF_S", 2.0)),
            # one address may mistype for many users (a shared NAT): a larger allowance
            FailureBackoff(free=cfg.get("VVG_LOGIN_FREE_FAILURES_IP", 20), base_s=cfg.get("VVG_LOGIN_BACKOFF_S", 2.0)),
        )
    return ext["vvg_login_backoff"]


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
        by_user, by_ip = _backoff()
        ukey, ikey = [f"u:{username.lower()}"], [f"ip:{request.remote_addr or '-'}"]
        wait = max(by_user.retry_after(ukey), by_ip.retry_after(ikey))
        if wait > 0:
            time.sleep(current_app.config.get("VVG_LOGIN_FAIL_DELAY", FAIL_DELAY_S))
            flash(f"Too many failed sign-ins. Wait {int(wait) + 1} seconds, then try again.", "error")
            resp = current_app.make_response((render_template("auth/login.html", username=username), 429))
            resp.headers["Retry-After"] = str(int(wait) + 1)
            return resp
        user = _users().authenticate(username, password)
        if user is None:
            by_user.failed(ukey)
            by_ip.failed(ikey)
            time.sleep(current_app.config.get("VVG_LOGIN_FAIL_DELAY", FAIL_DELAY_S))
            flash("Sign-in failed: the user name or password is not right.", "error")
            return render_template("auth/login.html", username=username), 401
        by_user.succeeded(ukey)
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


def actor() -> str:
    """The audit actor of the signed-in user."""
    return f"user:{g.user.username}"


def can(role: str) -> bool:
    """The signed-in user has at least ``role`` (for showing or hiding controls; routes check again)."""
    return g.get("user") is not None and g.user.role in ROLES and ROLES.index(g.user.role) >= ROLES.index(role)
