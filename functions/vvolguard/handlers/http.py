"""API Gateway (HTTP API, payload 2.0) plumbing shared by the handlers: the one place errors become HTTP."""
from __future__ import annotations

import base64
import json
import logging
from typing import Any, Callable

from vvolguard.errors import VvgError

log = logging.getLogger("vvg.http")
JSON = {"content-type": "application/json", "cache-control": "no-store", "x-content-type-options": "nosniff"}


def response(status: int, body: dict[str, Any]) -> dict[str, Any]:
    """A payload 2.0 response with a JSON body."""
    return {"statusCode": status, "headers": dict(JSON), "body": json.dumps(body, separators=(",", ":"))}


def error_response(exc: BaseException) -> dict[str, Any]:
    """Any error as the contract's body; anything unexpected is a logged 500 that leaks nothing."""
    if isinstance(exc, VvgError):
        return response(exc.status_code, exc.body())
    log.error("unexpected error: %s", type(exc).__name__, exc_info=exc)
    return response(500, {"error": {"code": "internal_error", "message": "internal error"}})


def request_parts(event: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    """(lower-cased headers, raw body bytes) of an API Gateway event."""
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            raw = base64.b64decode(body, validate=False)
        except ValueError:
            raw = b""
    else:
        raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else bytes(body)
    return headers, raw


def run(fn: Callable[[], tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """Call ``fn`` and map whatever it raises."""
    try:
        status, body = fn()
        return response(status, body)
    except Exception as exc:  # the single mapping point
        return error_response(exc)
