"""What the webhook writes about the events it refuses (docs/webhook-hardening.md, docs/alerts.md).

A refusal of an authenticated host is one audit record (and a ``foreign_host`` alert for a host acting on
another host's VM); refusals of requests that did not authenticate are only counted, per named host and
minute, in one transaction that holds only if the host is enrolled, so a name never enrolled writes nothing.
"""
from __future__ import annotations

import logging
import random
import time
from datetime import datetime, timedelta

from pynamodb.exceptions import TransactWriteError

from vvolguard.adapters.audit import AuditLog, AuditRecord
from vvolguard.adapters.models import HostItem, RefusalItem, SigFailItem, expiry_key, expiry_shard
from vvolguard.domain.events import Event
from vvolguard.errors import Forbidden, NotFound, VvgError
from vvolguard.services.alerts import audit_ref, raise_alert
from vvolguard.services.event_stores import new_tx
from vvolguard.settings import Settings

log = logging.getLogger("vvg.events")
REFUSAL_WINDOW_S = 60  # unauthenticated refusals naming one host are counted per minute


def backoff(attempt: int) -> None:
    """Jittered exponential pause before retrying a transaction lost to a concurrent writer."""
    time.sleep(random.uniform(0, min(0.2, 0.005 * (2 ** attempt))))


class Refusals:
    def __init__(self, settings: Settings, audit: AuditLog) -> None:
        self.settings = settings
        self.audit = audit

    def audit_refusal(self, host_id: str, event: Event | None, exc: VvgError) -> None:
        """One record for a refusal of an authenticated host."""
        items = None
        try:
            items = self.audit.append([AuditRecord(
                actor=f"host:{host_id}", action="refuse", outcome="denied", reason=exc.code, host_id=host_id,
                vm_id=event.vm_id if event and isinstance(exc, (Forbidden, NotFound)) else None,
                volume_id=event.volume_id if event else None, event_id=event.event_id if event else None,
                event_type=event.type if event else None)])
        except Exception:  # the refusal itself must still be answered
            log.exception("could not audit a refusal")
        if isinstance(exc, Forbidden) and event is not None:
            raise_alert(self.settings, "foreign_host", vm_id=event.vm_id, volume_id=event.volume_id, host_id=host_id,
                        ref=audit_ref(items[0]) if items else None,
                        detail=f"{event.type} refused: {exc.message}"[:300])

    def count_unauthenticated(self, host_id: str, exc: VvgError, now: datetime) -> None:
        """Add one to the named host's refusal count of this minute. The sender did not prove it is the host,
        so nothing here speaks as ``host:ID``."""
        start = now.replace(second=0, microsecond=0)
        end = start + timedelta(seconds=REFUSAL_WINDOW_S)
        window = start.strftime("%Y-%m-%dT%H:%MZ")
        item = RefusalItem(pk=f"HOST#{host_id}", sk=f"REFUSED#{window}")
        sig = SigFailItem(pk=f"HOST#{host_id}", sk=f"SIGFAIL#{window}")
        sig_actions = [SigFailItem.kind.set(SigFailItem), SigFailItem.named_host.set(host_id), SigFailItem.n.add(1),
                       SigFailItem.expiry_shard.set(expiry_shard("S", host_id)),
                       SigFailItem.expiry_at.set(expiry_key(start)), SigFailItem.purge_at.set(int(end.timestamp()) + 3600)]
        actions = [RefusalItem.kind.set(RefusalItem), RefusalItem.named_host.set(host_id),
                   RefusalItem.window.set(window), RefusalItem.refusals.add(1), RefusalItem.codes.add({exc.code}),
                   RefusalItem.expiry_shard.set(expiry_shard("R", host_id)), RefusalItem.expiry_at.set(expiry_key(end))]
        for attempt in range(3):
            tx = new_tx(self.settings)
            try:
                with tx:
                    tx.condition_check(HostItem, host_id, condition=HostItem.host_id.exists(), label="host")
                    tx.update(item, actions=actions, label="count")
                    tx.update(sig, actions=sig_actions, label="count")  # read by the reconciler (docs/alerts.md)
                return
            except TransactWriteError as exc_tx:
                why = tx.cancellation(exc_tx)
                if "host" in why.failed or not why.conflict:
                    return  # never enrolled: nothing to count, nothing written
                backoff(attempt + 1)
            except Exception:  # the refusal itself must still be answered
                log.exception("could not count a refusal")
                return
