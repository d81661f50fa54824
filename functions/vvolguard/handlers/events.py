"""POST /v1/events: a signed host lifecycle event (docs/webhook-api.md). Transport only."""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

from vvolguard.handlers.http import request_parts, run

log = logging.getLogger("vvg.events")
# botocore's and PynamoDB's DEBUG output carries request bodies (password hashes, ciphertexts): never on.
for _noisy in ("botocore", "boto3", "pynamodb", "urllib3"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)
_service = None
_building = threading.Lock()


def service():
    """The EventService of this (warm) container, from its composition root: built on first use, never at
    import; once, also when concurrent first requests (the local gateway's threads) ask at the same time."""
    global _service
    if _service is None:
        with _building:
            if _service is None:
                from vvolguard.services.root import Services

                _service = Services.build().events
    return _service


def reset() -> None:
    """Forget the warm service (tests switch environments)."""
    global _service
    _service = None


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Verify, decide, act, record; answer the decisions or the contract's error."""
    started = time.perf_counter()
    headers, body = request_parts(event)
    result = run(lambda: (200, service().handle(headers, body)))
    if os.environ.get("VVG_LOG_EVENTS", "1") != "0":
        # Ids and outcome only: never the body (it may carry a password) nor the signature.
        log.info(json.dumps({"msg": "event", "host": headers.get("x-vvg-host", "")[:64], "status": result["statusCode"],
                             "ms": round((time.perf_counter() - started) * 1000, 1)}))
    return result
