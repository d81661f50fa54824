"""A small local stand-in for API Gateway (HTTP API, payload 2.0): routes from template.yaml, handlers called in-process."""
from __future__ import annotations

import base64
import importlib
import json
import logging
import re
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

from infra.template import ROOT, Route, Template

log = logging.getLogger("vvg.gateway")
MAX_BODY = 10 * 1024 * 1024  # API Gateway's own payload limit


@dataclass
class LambdaContext:
    """The parts of Lambda's context object handlers may read."""

    function_name: str
    aws_request_id: str
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = ""
    deadline_ms: float = 0.0

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int(self.deadline_ms - time.time() * 1000))


@dataclass
class BoundRoute:
    route: Route
    pattern: re.Pattern[str]
    func: Callable[[dict, Any], Any]


def _compile(path: str) -> re.Pattern[str]:
    out = ""
    for part in re.split(r"(\{[^}]+\})", path):
        if part.startswith("{") and part.endswith("+}"):
            out += f"(?P<{part[1:-2]}>.+)"
        elif part.startswith("{"):
            out += f"(?P<{part[1:-1]}>[^/]+)"
        else:
            out += re.escape(part)
    return re.compile(f"^{out}$")


def load_routes(template: Template) -> list[BoundRoute]:
    """Import the handler of every HttpApi route of the template (CodeUri decides the import root)."""
    code_root = str(ROOT / "functions")
    if code_root not in sys.path:
        sys.path.insert(0, code_root)
    bound = []
    for r in template.routes():
        module, _, attr = r.handler.rpartition(".")
        bound.append(BoundRoute(r, _compile(r.path), getattr(importlib.import_module(module), attr)))
    return bound


def build_event(method: str, raw_path: str, headers: list[tuple[str, str]], body: bytes,
                route: Route, path_params: dict[str, str], source_ip: str, host: str | None = None) -> dict[str, Any]:
    """The API Gateway HTTP API payload 2.0 event for one request. ``host`` is the API's own address: it
    replaces the client's Host header, as API Gateway answers only for its own domain name, so nothing a
    handler builds from the host (an absolute redirect) can point elsewhere."""
    split = urlsplit(raw_path)
    hdrs: dict[str, str] = {}
    cookies: list[str] = []
    for k, v in headers:
        k = k.lower()
        if k == "cookie":
            cookies += [c.strip() for c in v.split(";") if c.strip()]
            continue
        if k in ("host", "x-forwarded-host") and host is not None:
            continue
        hdrs[k] = f"{hdrs[k]},{v}" if k in hdrs else v
    if host is not None:
        hdrs["host"] = host
    qs: dict[str, str] = {}
    for k, v in parse_qsl(split.query, keep_blank_values=True):
        qs[k] = f"{qs[k]},{v}" if k in qs else v
    now = time.time()
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": f"{route.method} {route.path}",
        "rawPath": split.path,
        "rawQueryString": split.query,
        "headers": hdrs,
        "requestContext": {
            "accountId": "123456789012", "apiId": "local", "domainName": hdrs.get("host", "127.0.0.1"),
            "domainPrefix": "local",
            "http": {"method": method, "path": split.path, "protocol": "HTTP/1.1", "sourceIp": source_ip,
                     "userAgent": hdrs.get("user-agent", "")},
            "requestId": str(uuid.uuid4()), "routeKey": f"{route.method} {route.path}", "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)), "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": False,
    }
    if cookies:
        event["cookies"] = cookies
    if qs:
        event["queryStringParameters"] = qs
    if path_params:
        event["pathParameters"] = path_params
    if body:
        try:
            event["body"] = body.decode("utf-8")
        except UnicodeDecodeError:
            event["body"] = base64.b64encode(body).decode("ascii")
            event["isBase64Encoded"] = True
    return event


def fixed_host(app: Callable[..., Any], host: str) -> Callable[..., Any]:
    """Wrap a WSGI app (the local dashboard server) so it sees ``host``, the configured address, never the
    client's Host or X-Forwarded-Host header: nothing it builds from the host (an absolute redirect) can
    point elsewhere, as behind API Gateway, which answers only for its own domain name."""
    name, _, port = host.rpartition(":")

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        environ["HTTP_HOST"] = host
        environ.pop("HTTP_X_FORWARDED_HOST", None)
        environ["SERVER_NAME"], environ["SERVER_PORT"] = name or host, port or environ.get("SERVER_PORT", "80")
        return app(environ, start_response)

    return wrapped


def to_http(result: Any) -> tuple[int, dict[str, str], list[str], bytes]:
    """A handler's return value as API Gateway would send it (payload 2.0 response rules)."""
    if not (isinstance(result, dict) and "statusCode" in result):
        return 200, {"content-type": "application/json"}, [], json.dumps(result).encode()
    body = result.get("body") or ""
    raw = base64.b64decode(body) if result.get("isBase64Encoded") else str(body).encode("utf-8")
    headers = {str(k).lower(): str(v) for k, v in (result.get("headers") or {}).items()}
    for k, vs in (result.get("multiValueHeaders") or {}).items():
        headers[str(k).lower()] = ",".join(map(str, vs))
    return int(result["statusCode"]), headers, list(result.get("cookies") or []), raw


class Gateway(ThreadingHTTPServer):
    """The HTTP server; one thread per request, each a fresh handler invocation."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], template: Template | None = None, public_host: str | None = None) -> None:
        self.routes = load_routes(template or Template())
        super().__init__(addr, _Handler)
        # the configured address, never the client's Host header (docs/dashboard.md)
        self.public_host = public_host or f"{addr[0]}:{self.server_address[1]}"

    def match(self, method: str, path: str) -> tuple[BoundRoute | None, dict[str, str], bool]:
        path_seen = False
        for b in self.routes:
            m = b.pattern.match(path)
            if m:
                path_seen = True
                if b.route.method in (method, "ANY"):
                    return b, m.groupdict(), True
        return None, {}, path_seen


class _Handler(BaseHTTPRequestHandler):
    server: Gateway
    protocol_version = "HTTP/1.1"
    server_version = "vvg-local-gateway"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without this, Nagle's algorithm and delayed ACKs
        # stall every reused connection by ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet; the stack logs what matters
        log.debug("%s " + fmt, self.client_address[0], *args)

    def _send(self, status: int, headers: dict[str, str], body: bytes, cookies: list[str] = ()) -> None:
        self.send_response(status)
        for k, v in headers.items():
            if k not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(k, v)
        for c in cookies:
            self.send_header("set-cookie", c)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"content-type": "application/json"}, json.dumps({"message": message}).encode())

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        length = self.headers.get("content-length")
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            self.close_connection = True
            return self._error(411, "Length Required")
        try:
            n = int(length) if length else 0
        except ValueError:
            self.close_connection = True
            return self._error(400, "Bad Request")
        if n < 0:
            self.close_connection = True
            return self._error(400, "Bad Request")
        if n > MAX_BODY:
            self.close_connection = True
            return self._error(413, "Request Entity Too Large")
        body = self.rfile.read(n) if n else b""
        bound, params, _path_seen = self.server.match(self.command, path)  # 404 either way, as HTTP APIs answer
        if bound is None:
            return self._error(404, "Not Found")
        event = build_event(self.command, self.path, list(self.headers.items()), body, bound.route, params,
                            self.client_address[0], host=self.server.public_host)
        ctx = LambdaContext(function_name=bound.route.function, aws_request_id=event["requestContext"]["requestId"],
                            deadline_ms=time.time() * 1000 + 20000)
        try:
            result = bound.func(event, ctx)
        except Exception:  # what API Gateway answers when a function fails
            log.exception("function %s failed", bound.route.function)
            return self._error(500, "Internal Server Error")
        status, headers, cookies, raw = to_http(result)
        self._send(status, headers, raw, cookies)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch
