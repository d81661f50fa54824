"""The scheduled reconciler (every minute): ends expired leases and grants, repairs drift."""
from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger("vvg.reconcile")


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """One pass; the summary is returned and logged."""
    from vvolguard.adapters.models import configure
    from vvolguard.services.reconcile import Reconciler
    from vvolguard.settings import Settings

    settings = Settings.from_env()
    configure(settings)
    summary = Reconciler(settings).run()
    log.info(json.dumps({"msg": "reconcile", **summary}))
    return summary
