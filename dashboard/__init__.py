"""The security team's dashboard (Flask + Jinja2): server-rendered, no script, strict CSP."""
from __future__ import annotations

import os
import re
import secrets
from datetime import datetime, timezone
from typing import Any

from flask import Flask, render_template
from flask_wtf.csrf import CSRFError, CSRFProtect
from markupsafe import Markup, escape

from vvolguard.services.root import Services
from vvolguard.settings import Settings

csrf = CSRFProtect()

CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")


def create_app(test_config: dict[str, Any] | None = None, services: Services | None = None) -> Flask:
    """The app factory: settings from the environment, one blueprint per area; ``services``: a composition
    root already built for these settings (the local stack shares its own)."""
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=os.environ.get("VVG_DASHBOARD_SECRET_KEY") or secrets.token_hex(32),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=os.environ.get("VVG_DASHBOARD_INSECURE_COOKIES") != "1",
        SESSION_COOKIE_NAME="vvg_session",
        PERMANENT_SESSION_LIFETIME=8 * 3600,
        MAX_CONTENT_LENGTH=256 * 1024,
        WTF_CSRF_TIME_LIMIT=8 * 3600,
        VVG_SETTINGS=Settings.from_env(),
        # In AWS, "Check now" on /audit invokes this function for a tamper check (docs/audit-check.md).
        VVG_RECONCILE_FUNCTION=os.environ.get("VVG_RECONCILE_FUNCTION") or None,
    )
    if test_config:
        app.config.update(test_config)
    # The composition root, built once per app (as flaskr keeps what it needs in app.extensions): every page
    # uses its services and adapters; none is constructed per request.
    app.extensions["vvg"] = services or Services.build(app.config["VVG_SETTINGS"])
    csrf.init_app(app)
    # Werkzeug answers "//x" with an absolute redirect built from the Host header; refuse it instead.
    app.url_map.merge_slashes = False

    from dashboard import alerts, attachments, audit, auth, health, hosts, impact, policies, simulate, users, vms

    auth.init_limits(app)
    simulate.init_limits(app)

    for area in (health, auth, impact, policies, simulate, attachments, audit, alerts, hosts, users, vms):
        app.register_blueprint(area.bp)
    app.add_url_rule("/", endpoint="index", view_func=policies.index)
    app.context_processor(lambda: {"can": auth.can})
    app.add_template_filter(_when, "when")
    app.add_template_filter(_duration, "duration")
    app.add_template_filter(_keep_ids, "keep_ids")

    @app.errorhandler(CSRFError)
    def csrf_error(exc):
        return render_template("error.html", code=400, title="Form refused",
                               message="The form was missing its security token or it had expired, so nothing was "
                                       "changed. Go back, reload the page and submit it again."), 400

    for code, title, message in (
        (403, "Not allowed", "Your role does not allow this page or action. Ask an admin if you need it."),
        (404, "Not found", "There is nothing at this address. Use the menu above to find your way."),
        (405, "Not allowed", "This address does not take that kind of request."),
        (413, "Too large", "The form sent was too large; nothing was changed."),
    ):
        app.register_error_handler(code, _error_page(code, title, message))

    @app.after_request
    def security_headers(resp):
        resp.headers.setdefault("Content-Security-Policy", CSP)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        # same-origin, not no-referrer: over HTTPS Flask-WTF refuses a form post without a same-origin Referer.
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    return app


def services() -> Services:
    """The app's composition root (built in create_app)."""
    from flask import current_app

    return current_app.extensions["vvg"]


def _error_page(code: int, title: str, message: str):
    def handler(_exc):
        return render_template("error.html", code=code, title=title, message=message), code
    return handler


def _when(dt: datetime | str | None) -> str:
    """A stored time as ``2026-11-27 05:15:00 UTC`` (RFC 3339 strings too)."""
    if dt is None or dt == "":
        return "—"
    if isinstance(dt, str):
        return dt.replace("T", " ").replace("Z", " UTC")[:27]
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float | None) -> str:
    """``1 h 05 min``, ``4 min``, ``35 s``."""
    if seconds is None:
        return "—"
    s = int(abs(seconds))
    if s < 120:
        out = f"{s} s"
    elif s < 3600:
        out = f"{s // 60} min"
    else:
        out = f"{s // 3600} h {s % 3600 // 60:02d} min"
    return out if seconds >= 0 else "-" + out


_ID_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*-[A-Za-z0-9._:/-]*[A-Za-z0-9]")


def _keep_ids(text: object) -> Markup:
    """A sentence whose identifiers (``vol-0abc``, ``us-east-1a``, ``i-0123``) never break at their hyphens on a
    narrow screen: each is kept whole in an ``id`` span (one too long for the screen scrolls inside itself);
    the rest of the sentence wraps as usual, and everything is escaped."""
    escaped = str(escape("" if text is None else text))
    return Markup(_ID_TOKEN.sub(lambda m: f'<span class="id">{m.group(0)}</span>', escaped))
