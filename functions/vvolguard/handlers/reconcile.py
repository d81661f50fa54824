"""The scheduled reconciler (every minute): ends expired leases and grants, repairs drift, runs the tamper check
when due. Invoked with {"vvg": "tamper_check"} (the dashboard's "Check now"), it runs only a requested tamper
check (docs/audit-check.md)."""
from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger("vvg.reconcile")
_root = None


def root():
    """The composition root of this (warm) container: built on first use, never at import."""
    global _root
    if _root is None:
        from vvolguard.services.root import Services

        _root = Services.build()
    return _root


def reset() -> None:
    """Forget the warm root (tests switch environments)."""
    global _root
    _root = None


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """One pass (or, asked by the dashboard, one tamper check); the summary is returned and logged."""
    from vvolguard.services.tamper import INVOKE_PAYLOAD

    reconciler = root().reconciler()
    if isinstance(event, dict) and event == INVOKE_PAYLOAD:
        summary = reconciler.run_tamper_check()
    else:
        summary = reconciler.run()
    log.info(json.dumps({"msg": "reconcile", **summary}, default=str))
    return summary
