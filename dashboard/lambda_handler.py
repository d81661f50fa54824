"""The dashboard as a Lambda function behind the HTTP API: the Flask app wrapped by apig-wsgi.

The app (and with it the AWS clients) is built on the first request, not at import time. In AWS set
VVG_DASHBOARD_SECRET_KEY (shared by every container, or sessions and CSRF tokens break between them).
"""
from __future__ import annotations

import threading
from typing import Any, Callable

_lock = threading.Lock()
_handler: Callable[[dict, Any], dict] | None = None


def _build() -> Callable[[dict, Any], dict]:
    from apig_wsgi import make_lambda_handler

    from dashboard import create_app

    # binary_support: the stylesheet and exports pass through API Gateway unchanged.
    return make_lambda_handler(create_app(), binary_support=True)


def handler(event: dict, context: Any) -> dict:
    """Lambda entry point: ``dashboard.lambda_handler.handler``."""
    global _handler
    if _handler is None:
        with _lock:
            if _handler is None:
                _handler = _build()
    return _handler(event, context)


def reset() -> None:
    """Forget the built app (tests)."""
    global _handler
    _handler = None
