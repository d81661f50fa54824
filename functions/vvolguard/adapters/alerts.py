"""Where security alerts live (docs/alerts.md): items of the state table, one partition per UTC day, and the
template's SNS topic ``AlertTopic``. Only this module touches them."""
from __future__ import annotations

import json
import secrets
from datetime import datetime, timedelta
from typing import Any, Iterator

from pynamodb.exceptions import TransactWriteError

from vvolguard.adapters import aws
from vvolguard.adapters.models import AlertItem, AlertKeyItem, connection
from vvolguard.adapters.tx import Tx
from vvolguard.settings import Settings

DAY_PREFIX = "ALERTS#"
KEY_SK = "ALERTKEY"
KEEP_DAYS = 90  # DynamoDB's TTL removes an alert after this (purge_at)


def day_pk(at: str) -> str:
    """The partition of an alert raised at ``at`` (RFC 3339, UTC): one per day."""
    return DAY_PREFIX + at[:10]


class AlertStore:
    """Store (deduplicated), list and publish alerts."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def put(self, alert: dict[str, Any], dedup_key: str, now: float, quiet_seconds: int) -> AlertItem | None:
        """Store ``alert`` unless one with the same ``dedup_key`` was stored less than ``quiet_seconds`` ago:
        the key and the alert are one transaction, the key's condition is the same in every container.
        None when deduplicated."""
        at = alert["at"]
        item = AlertItem(pk=day_pk(at), sk=f"{at}#{secrets.token_hex(4)}", at=at, alert_kind=alert["kind"],
                         severity=alert["severity"], a_vm=alert["vm_id"], a_volume=alert["volume_id"],
                         a_host=alert["host_id"], detail=alert["detail"] or None, audit_ref=alert["audit_ref"],
                         published=False, purge_at=int(now) + KEEP_DAYS * 86400)
        key = AlertKeyItem(pk=f"ALERTKEY#{dedup_key}", sk=KEY_SK, until=int(now) + quiet_seconds,
                           purge_at=int(now) + quiet_seconds + 3600)
        tx = Tx(connection=connection(self.settings))
        try:
            with tx:
                tx.save(key, condition=AlertKeyItem.pk.does_not_exist() | (AlertKeyItem.until <= int(now)),
                        label="key")
                tx.save(item, condition=AlertItem.pk.does_not_exist(), label="alert")
        except TransactWriteError as exc:
            failed, _ = tx.cancellation(exc)
            if "key" in failed:
                return None
            raise
        return item

    def publish(self, alert: dict[str, Any]) -> None:
        """One SNS message: the alert as JSON, its kind and severity also as message attributes (for
        subscription filters). Raises on failure."""
        aws.client("sns", self.settings.region).publish(
            TopicArn=self.settings.alert_topic_arn, Subject=f"vvolguard alert: {alert['kind']}"[:100],
            Message=json.dumps(alert, sort_keys=True),
            MessageAttributes={"kind": {"DataType": "String", "StringValue": alert["kind"]},
                               "severity": {"DataType": "String", "StringValue": alert["severity"]}})

    @staticmethod
    def mark_published(item: AlertItem) -> None:
        item.update(actions=[AlertItem.published.set(True)], condition=AlertItem.pk.exists())

    @staticmethod
    def list(since: datetime, now: datetime, limit: int) -> Iterator[AlertItem]:
        """Alerts at or after ``since``, newest first: one Query per day partition, never a scan."""
        since_at = since.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        day = now.date()
        first = max(since.date(), (now - timedelta(days=KEEP_DAYS)).date())
        count = 0
        while day >= first:
            for item in AlertItem.query(f"{DAY_PREFIX}{day.isoformat()}", AlertItem.sk >= since_at,
                                        scan_index_forward=False, page_size=min(limit, 500)):
                if count >= limit:
                    return
                count += 1
                yield item
            day -= timedelta(days=1)

    @staticmethod
    def unpublished(days: list[str]) -> Iterator[AlertItem]:
        """Alerts of these days (``YYYY-MM-DD``) whose publish failed."""
        for day in days:
            yield from AlertItem.query(f"{DAY_PREFIX}{day}", filter_condition=AlertItem.published == False,  # noqa: E712
                                       page_size=100)
