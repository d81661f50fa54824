"""EventBridge "EC2 Instance State-change Notification" -> the events of that instance's EC2 VM
(docs/ec2-vms.md). Transport only: the work is vvolguard.services.vms.Ec2Lifecycle.

A malformed or foreign notification is logged and dropped (a retry could not fix it); a provider or table
failure raises, so that Lambda retries the asynchronous invocation and, in the end, the notification lands
in the dead-letter queue."""
from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timedelta, timezone
from typing import Any

log = logging.getLogger("vvg.ec2")
for _noisy in ("botocore", "boto3", "pynamodb", "urllib3"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)
DETAIL_TYPE = "EC2 Instance State-change Notification"
INSTANCE_RE = re.compile(r"^i-[0-9a-f]{8,17}\Z")
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z\Z")
STATES = ("pending", "running", "stopping", "stopped", "shutting-down", "terminated")
MAX_AHEAD_S = 300
_lifecycle = None


def lifecycle():
    """The Ec2Lifecycle of this (warm) container: built on first use, never at import."""
    global _lifecycle
    if _lifecycle is None:
        from vvolguard.services.root import Services

        _lifecycle = Services.build().ec2_lifecycle
    return _lifecycle


def reset() -> None:
    """Forget the warm service (tests switch environments)."""
    global _lifecycle
    _lifecycle = None


def parse(event: Any, now: datetime | None = None) -> tuple[str, str, datetime] | str:
    """(instance id, state, time) of a well-formed notification, else why it is dropped."""
    now = now or datetime.now(timezone.utc)
    if not isinstance(event, dict) or event.get("source") != "aws.ec2" or event.get("detail-type") != DETAIL_TYPE:
        return "not_an_ec2_state_change"
    detail = event.get("detail")
    if not isinstance(detail, dict):
        return "no_detail"
    iid, state, when = detail.get("instance-id"), detail.get("state"), event.get("time")
    if not isinstance(iid, str) or not INSTANCE_RE.match(iid):
        return "bad_instance_id"
    if state not in STATES:
        return "bad_state"
    if not isinstance(when, str) or not TIME_RE.match(when):
        return "bad_time"
    at = datetime.fromisoformat(when[:19]).replace(tzinfo=timezone.utc)
    if at > now + timedelta(seconds=MAX_AHEAD_S):
        return "time_ahead"
    return iid, state, at


def process(event: Any, service: Any) -> dict[str, Any]:
    """One notification through ``service`` (an Ec2Lifecycle); the summary of what it sent."""
    parsed = parse(event)
    if isinstance(parsed, str):
        log.warning(json.dumps({"msg": "ec2_state_change_dropped", "why": parsed}))
        return {"ignored": parsed}
    iid, state, at = parsed
    out = service.on_state(iid, at)
    out["notified_state"] = state
    return out


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """EventBridge target: act on the instance's state; a failure raises (retried, then dead-lettered)."""
    out = process(event, lifecycle())
    # Ids, states and outcomes only.
    log.info(json.dumps({"msg": "ec2_lifecycle", "instance": out.get("instance_id"), "vm": out.get("vm_id"),
                         "state": out.get("state"), "ignored": out.get("ignored"),
                         "sent": [s["type"] for s in out.get("sent", [])]}))
    return out
