"""The local gateway builds the same API Gateway HTTP API (payload 2.0) events AWS would."""
from __future__ import annotations

import base64
import json

from infra.gateway import build_event, to_http, _compile
from infra.template import Route

ROUTE = Route("POST", "/v1/events", "EventsFunction", "vvolguard.handlers.events.handler")


def test_build_event__has_the_payload_2_0_shape():
    ev = build_event("POST", "/v1/events?a=1&a=2&b=", [("Host", "127.0.0.1:3000"), ("X-VVG-Host", "h1"),
                     ("X-Multi", "x"), ("x-multi", "y"), ("Cookie", "a=1; b=2")], b'{"k": 1}', ROUTE, {}, "127.0.0.1")
    assert ev["version"] == "2.0" and ev["routeKey"] == "POST /v1/events"
    assert ev["rawPath"] == "/v1/events" and ev["rawQueryString"] == "a=1&a=2&b="
    assert ev["headers"]["x-vvg-host"] == "h1" and ev["headers"]["x-multi"] == "x,y"
    assert "cookie" not in ev["headers"] and ev["cookies"] == ["a=1", "b=2"]
    assert ev["queryStringParameters"] == {"a": "1,2", "b": ""}
    assert ev["requestContext"]["http"]["method"] == "POST"
    assert ev["requestContext"]["http"]["sourceIp"] == "127.0.0.1"
    assert ev["body"] == '{"k": 1}' and ev["isBase64Encoded"] is False


def test_build_event__binary_body_is_base64():
    raw = b"\xff\xfe\x00bad"
    ev = build_event("POST", "/v1/events", [], raw, ROUTE, {}, "127.0.0.1")
    assert ev["isBase64Encoded"] is True and base64.b64decode(ev["body"]) == raw


def test_build_event__no_body_no_body_key():
    ev = build_event("GET", "/v1/health", [], b"", Route("GET", "/v1/health", "F", "m.h"), {}, "127.0.0.1")
    assert "body" not in ev and "queryStringParameters" not in ev


def test_to_http__structured_and_inferred_responses():
    assert to_http({"statusCode": 201, "headers": {"X-A": "1"}, "body": "hi"}) == (201, {"x-a": "1"}, [], b"hi")
    status, headers, _, body = to_http({"ok": True})
    assert status == 200 and json.loads(body) == {"ok": True}
    assert to_http({"statusCode": 200, "body": base64.b64encode(b"\x00").decode(), "isBase64Encoded": True})[3] == b"\x00"


def test_path_patterns__match_parameters_and_greedy_proxies():
    assert _compile("/v1/volumes/{volume_id}").match("/v1/volumes/vvol-1").groupdict() == {"volume_id": "vvol-1"}
    assert _compile("/v1/volumes/{volume_id}").match("/v1/volumes/a/b") is None
    assert _compile("/{proxy+}").match("/a/b/c").groupdict() == {"proxy": "a/b/c"}


def test_build_event__the_configured_address_replaces_the_clients_host():
    ev = build_event("GET", "/policies", [("Host", "evil.example"), ("X-Forwarded-Host", "evil.example")], b"",
                     ROUTE, {}, "127.0.0.1", host="127.0.0.1:3000")
    assert ev["headers"]["host"] == "127.0.0.1:3000" and "x-forwarded-host" not in ev["headers"]
    assert ev["requestContext"]["domainName"] == "127.0.0.1:3000"


def test_gateway__a_redirect_never_points_at_the_host_header(aws, monkeypatch):
    """A request with a hostile Host header gets redirects to the gateway's own address, over real HTTP."""
    import http.client

    from dashboard import lambda_handler
    from infra.gateway import Gateway
    from tests.conftest import serve_in_thread

    monkeypatch.setenv("VVG_DASHBOARD_SECRET_KEY", "k" * 32)
    lambda_handler.reset()
    gw = Gateway(("127.0.0.1", 0))
    port = gw.server_address[1]
    seen: list[str] = []
    for b in gw.routes:  # what every handler is told about the host
        b.func = (lambda f: lambda ev, ctx: (seen.append(ev["headers"].get("host", "")), f(ev, ctx))[1])(b.func)
    serve_in_thread(gw)
    try:
        for path in ("/static//style.css", "/policies", "/v1/health"):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", path, headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"})
            r = conn.getresponse()
            r.read()
            location = r.getheader("Location") or ""
            assert r.status in (200, 302, 308, 404) and "evil.example" not in location, (path, r.status, location)
            if location.startswith("http"):
                assert location.startswith(f"http://127.0.0.1:{port}/"), location
            conn.close()
        assert seen and set(seen) == {f"127.0.0.1:{port}"}, seen
    finally:
        gw.shutdown()
        gw.server_close()
        lambda_handler.reset()


def test_local_dashboard_server__redirects_use_the_configured_address_not_the_host_header(aws):
    """`make run`'s dashboard server: a hostile Host header never reaches a Location."""
    from flask import Flask, redirect, url_for

    from infra.gateway import fixed_host

    app = Flask("t")

    @app.get("/where")
    def where():
        return redirect(url_for("where", _external=True))  # what any absolute redirect would build

    from werkzeug.test import Client

    for wsgi, want in ((app, "http://evil.example/where"), (fixed_host(app, "127.0.0.1:8000"), "http://127.0.0.1:8000/where")):
        r = Client(wsgi).get("/where", headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"})
        assert r.headers["Location"] == want
    from dashboard import create_app

    dash = Client(fixed_host(create_app({"TESTING": True, "SECRET_KEY": "k"}), "127.0.0.1:8000"))
    for path in ("/static//style.css", "//policies", "/policies"):
        r = dash.get(path, headers={"Host": "evil.example"})
        assert "evil.example" not in r.headers.get("Location", ""), path
