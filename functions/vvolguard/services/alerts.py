"""Security alerts (docs/alerts.md): raised after the operation that found them is recorded, stored at most
once per kind and subject in 5 minutes, published to the template's SNS topic, listed newest first.

Raising an alert never fails the operation that raised it: a failure is logged and counted (FAILURES), and
an alert stored but not published is published again by the reconciler."""
from __future__ import annotations

import logging
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

from vvolguard.adapters.metrics import count
from vvolguard.errors import InvalidInput
from vvolguard.settings import Settings

log = logging.getLogger("vvg.alerts")

QUIET_SECONDS = 300  # at most one alert per kind and subject in this time
BAD_SIGNATURES = 3  # bad signatures naming one host within BAD_SIGNATURE_MINUTES raise an alert
BAD_SIGNATURE_MINUTES = 5

# kind -> severity
KINDS = {
    "volume_locked": "high",          # a volume locked after wrong passwords
    "foreign_host": "high",           # an attach (or any event) refused: the host is not the VM's
    "bad_signatures": "high",         # 3+ bad signatures naming one host within 5 minutes
    "tamper_check_failed": "critical",  # the scheduled checkpoint held chains back, or `vvg audit verify` failed
    "orphan_detached": "medium",      # the reconciler detached an attachment nothing records
    "lease_expired": "medium",        # the reconciler detached a volume whose lease ran out
    "quarantine": "high",
    "release": "medium",
    "host_revoked": "high",
    "key_recovered": "high",          # an escrowed key entry left the system (vvg key recover)
}

FAILURES: Counter[str] = Counter()  # "store" / "publish": alerts that could not be stored / published
_lock = threading.Lock()
MAX_DETAIL = 500


def now_rfc3339(now: datetime) -> str:
    return now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def audit_ref(item: Any) -> str | None:
    """How an alert names the audit record behind it: ``<chain>/<seq>`` (docs/alerts.md)."""
    if item is None:
        return None
    return f"{item.chain}/{int(item.seq)}"


def _count(what: str) -> None:
    with _lock:
        FAILURES[what] += 1


def raise_alert(settings: Settings, kind: str, *, vm_id: str | None = None, volume_id: str | None = None,
                host_id: str | None = None, detail: str = "", ref: str | None = None,
                now: datetime | None = None) -> dict[str, Any] | None:
    """Store and publish one alert; the alert as stored, or None when an alert of the same kind and subject
    was raised less than 5 minutes ago, or when it could not be stored. Never raises."""
    try:
        from vvolguard.adapters.alerts import AlertStore

        now = now or datetime.now(timezone.utc)
        alert = {"at": now_rfc3339(now), "kind": kind, "severity": KINDS[kind], "vm_id": vm_id or None,
                 "volume_id": volume_id or None, "host_id": host_id or None, "detail": (detail or "")[:MAX_DETAIL],
                 "audit_ref": ref}
        store = AlertStore(settings)
        subject = f"{kind}#{vm_id or ''}#{volume_id or ''}#{host_id or ''}"
        item = store.put(alert, subject, now.timestamp(), QUIET_SECONDS)
    except Exception as exc:  # the operation that raised it has already happened: it must not fail now
        _count("store")
        log.error("alert %s not stored (%s); counted in alert failures", kind, type(exc).__name__)
        return None
    if item is None:
        return None
    count(getattr(settings, "metrics_namespace", ""), "Alerts", kind=kind)  # docs/metrics.md
    log.warning("alert %s severity=%s vm=%s volume=%s host=%s", kind, alert["severity"], vm_id, volume_id, host_id)
    try:
        store.publish(alert)
        store.mark_published(item)
    except Exception as exc:
        _count("publish")
        log.error("alert %s stored but not published (%s); the reconciler retries", kind, type(exc).__name__)
    return alert


def republish(settings: Settings, now: datetime | None = None) -> int:
    """Publish again the alerts of today and yesterday whose publish failed (the reconciler's step)."""
    from vvolguard.adapters.alerts import AlertStore

    now = now or datetime.now(timezone.utc)
    store = AlertStore(settings)
    done = 0
    for item in store.unpublished([(now - timedelta(days=1)).date().isoformat(), now.date().isoformat()]):
        store.publish(as_dict(item))
        store.mark_published(item)
        done += 1
    return done


def as_dict(item: Any) -> dict[str, Any]:
    """An alert item in the shape of docs/alerts.md."""
    return {"at": item.at, "kind": item.alert_kind, "severity": item.severity, "vm_id": item.a_vm,
            "volume_id": item.a_volume, "host_id": item.a_host, "detail": item.detail or "",
            "audit_ref": item.audit_ref}


def parse_since(text: str | None) -> timedelta:
    """``30m``, ``12h``, ``7d`` (default 7d); a one-line InvalidInput otherwise."""
    from vvolguard.services.audit_queries import parse_duration

    if text is None:
        return timedelta(days=7)
    if len(text) > 20:
        raise InvalidInput("--since is a number and a unit m, h or d (30m, 12h, 7d)")
    delta = parse_duration(text)
    if delta <= timedelta(0):
        raise InvalidInput("--since must be more than 0")
    return delta


def list_alerts(since: timedelta, limit: int = 10000, now: datetime | None = None) -> Iterator[dict[str, Any]]:
    """Alerts of the last ``since``, newest first."""
    from vvolguard.adapters.alerts import AlertStore

    now = now or datetime.now(timezone.utc)
    for item in AlertStore.list(now - since, now, limit):
        yield as_dict(item)


def bad_signature_alerts(settings: Settings, now: datetime) -> int:
    """The reconciler's step: every host named by 3 or more requests that failed authentication in the last
    5 minutes (counted per minute by the webhook) raises bad_signatures. Done here, not on the webhook's
    path, so a refused request costs the same AWS calls whether the name it gives is enrolled or not
    (docs/webhook-hardening.md). One Query per index shard; returns the alerts raised."""
    from vvolguard.adapters.models import EXPIRY_SHARDS, SigFailItem, expiry_key

    first = now.replace(second=0, microsecond=0) - timedelta(minutes=BAD_SIGNATURE_MINUTES - 1)
    totals: Counter[str] = Counter()
    for shard in range(EXPIRY_SHARDS):
        for item in SigFailItem.by_expiry.query(f"S#{shard}", SigFailItem.expiry_at >= expiry_key(first), page_size=100):
            if item.expiry_at <= expiry_key(now):
                totals[item.named_host] += int(item.n or 0)
    raised = 0
    for host_id, total in sorted(totals.items()):
        if total >= BAD_SIGNATURES and raise_alert(
                settings, "bad_signatures", host_id=host_id, now=now,
                detail=f"{total} requests naming host {host_id} failed authentication within "
                       f"{BAD_SIGNATURE_MINUTES} minutes"):
            raised += 1
    return raised
