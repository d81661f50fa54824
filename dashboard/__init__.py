"""The security team's dashboard (Flask + Jinja2): server-rendered, no script, strict CSP."""
from __future__ import annotations

import os
import secrets
from typing import Any

from flask import Flask
from flask_wtf.csrf import CSRFProtect

from vvolguard.adapters.models import configure
from vvolguard.settings import Settings

csrf = CSRFProtect()

CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """The app factory: settings from the environment, one blueprint per area."""
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
    )
    if test_config:
        app.config.update(test_config)
    configure(app.config["VVG_SETTINGS"])
    csrf.init_app(app)

    from dashboard import auth, health, policies

    app.register_blueprint(health.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(policies.bp)
    app.add_url_rule("/", endpoint="index", view_func=policies.index)

    @app.after_request
    def security_headers(resp):
        resp.headers.setdefault("Content-Security-Policy", CSP)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    return app
