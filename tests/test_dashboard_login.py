"""Sign-in: hashes only, a failure never says which part was wrong, repeated failures are slowed per
user name and per address; the dashboard behind API Gateway through the Lambda handler."""
from __future__ import annotations

import base64
import json
import re

from tests.dashboard_support import *  # noqa: F401,F403 - fixtures
from tests.dashboard_support import PASSWORD, csrf_token


def _try(client, username, password, addr="10.0.0.1"):
    token = csrf_token(client)
    return client.post("/login", data={"username": username, "password": password, "csrf_token": token},
                       environ_base={"REMOTE_ADDR": addr})


def test_failure_says_nothing_about_which_part_was_wrong(client, seeded):
    a = _try(client, "admin", "wrong-password")
    b = _try(client, "nobody", "wrong-password")
    assert a.status_code == b.status_code == 401
    def strip(r):
        text = re.sub(r'name="csrf_token" value="[^"]+"', "", r.get_data(as_text=True))
        return text.replace("admin", "X").replace("nobody", "X")

    assert strip(a) == strip(b)


def test_repeated_failures_are_slowed_per_user_then_the_right_password_waits_too(app, client, seeded):
    for _ in range(5):
        assert _try(client, "vera", "nope").status_code == 401
    r = _try(client, "vera", PASSWORD)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert "Too many failed sign-ins" in r.get_data(as_text=True)
    assert _try(client, "eddie", PASSWORD, addr="10.0.0.2").status_code == 302  # another user is not held up
    rewind_limits(3600)  # the wait has passed
    assert _try(client, "vera", PASSWORD).status_code == 302


def rewind_limits(seconds: float) -> None:
    """Move every stored sign-in failure ``seconds`` into the past (as if that time had passed)."""
    from vvolguard.adapters.models import LimitItem

    for item in LimitItem.scan(LimitItem.key.startswith("#login-pair") | LimitItem.key.startswith("#login-addr")):
        item.update(actions=[LimitItem.last_at.set(float(item.last_at) - seconds)])


def test_repeated_failures_from_one_address_are_slowed_across_names(client, seeded):
    for i in range(20):
        assert _try(client, f"guess-{i}", "nope", addr="10.9.9.9").status_code == 401
    assert _try(client, "admin", PASSWORD, addr="10.9.9.9").status_code == 429
    assert _try(client, "admin", PASSWORD, addr="10.9.9.8").status_code == 302


def test_next_parameter_cannot_send_the_user_elsewhere(client, seeded):
    token = csrf_token(client)
    r = client.post("/login?next=//evil.example/x", data={"username": "admin", "password": PASSWORD, "csrf_token": token})
    assert r.status_code == 302 and r.headers["Location"] == "/policies"


def test_logout_needs_post_with_csrf(client, login, seeded):
    login("viewer")
    assert client.get("/logout").status_code == 200  # a page with the button, not a sign-out
    assert client.get("/policies").status_code == 200
    assert client.post("/logout").status_code == 400
    r = client.post("/logout", data={"csrf_token": csrf_token(client, "/policies")})
    assert r.status_code == 302 and client.get("/policies").status_code == 302


def _apigw(path: str, method: str = "GET", body: str = "", headers: dict | None = None, cookies=None) -> dict:
    return {"version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
            "headers": {"host": "example.execute-api.us-east-1.amazonaws.com", **(headers or {})},
            "cookies": cookies or [],
            "requestContext": {"http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "10.1.1.1"},
                               "domainName": "example.execute-api.us-east-1.amazonaws.com", "stage": "$default"},
            "body": base64.b64encode(body.encode()).decode(), "isBase64Encoded": True}


def test_lambda_handler__serves_the_app_behind_api_gateway(seeded, monkeypatch):
    from dashboard import lambda_handler

    monkeypatch.setenv("VVG_DASHBOARD_SECRET_KEY", "k" * 32)
    lambda_handler.reset()
    try:
        r = lambda_handler.handler(_apigw("/healthz"), None)
        assert r["statusCode"] == 200 and json.loads(r["body"]) == {"status": "ok"}
        r = lambda_handler.handler(_apigw("/policies"), None)
        assert r["statusCode"] == 302 and r["headers"]["location"].startswith("/login")
        r = lambda_handler.handler(_apigw("/login"), None)
        assert r["statusCode"] == 200 and "default-src 'none'" in r["headers"]["content-security-policy"]
        # over HTTPS Flask-WTF wants a same-origin Referer on every form post: browsers must send it
        assert r["headers"]["referrer-policy"] == "same-origin"
        cookie = [c for c in r.get("cookies", []) if c.startswith("vvg_session=")]
        assert cookie and "Secure" in cookie[0] and "HttpOnly" in cookie[0]
        token = r["body"].split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        form = f"username=admin&password={PASSWORD}&csrf_token={token}"
        r = lambda_handler.handler(_apigw("/login", "POST", form, {"content-type": "application/x-www-form-urlencoded",
                                                                 "referer": "https://example.execute-api.us-east-1.amazonaws.com/login",
                                                                 "x-forwarded-proto": "https"},
                                          cookies=[cookie[0].split(";", 1)[0]]), None)
        assert r["statusCode"] == 302 and r["headers"]["location"] == "/policies", r
        session = [c.split(";", 1)[0] for c in r["cookies"] if c.startswith("vvg_session=")]
        r = lambda_handler.handler(_apigw("/policies", cookies=session), None)
        assert r["statusCode"] == 200 and "vvol-1" in r["body"]
    finally:
        lambda_handler.reset()
