"""Settings read once from the environment; the SAM template sets the same names."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from vvolguard.errors import SettingsError

# Whole-number settings and the range each may take (docs/webhook-hardening.md): a grant lives at most an hour.
RANGES = {"VVG_MIGRATION_GRANT_SECONDS": (1, 3600)}
RANGES["VVG_EC2_POLL_SECONDS"] = (0, 86400)  # the local stack's EC2 poller (docs/ec2-vms.md); 0 turns it off


__all__ = ["RANGES", "Settings", "SettingsError"]


def _int_setting(name: str, raw: str | None, default: int) -> int:
    """``raw`` (the environment's value of ``name``) as a whole number inside RANGES[name], or a one-line
    SettingsError naming it; ``default`` when unset."""
    if raw is None:
        return default
    lo, hi = RANGES[name]
    text = str(raw).strip()
    if not re.fullmatch(r"-?[0-9]{1,12}", text):
        raise SettingsError(f"{name}={str(raw)[:40]!r} is not a whole number; set it from {lo} to {hi}")
    value = int(text)
    if not lo <= value <= hi:
        raise SettingsError(f"{name}={value} is out of range; set it from {lo} to {hi}")
    return value


@dataclass(frozen=True)
class Settings:
    """Every knob vvolguard reads, with the local stack's defaults."""

    region: str = "us-east-1"
    state_table: str = "vvg-state"
    hosts_table: str = "vvg-hosts"
    users_table: str = "vvg-users"
    events_table: str = "vvg-events"
    audit_table: str = "vvg-audit"
    host_secrets_key_id: str = "alias/vvg-host-secrets"
    key_volumes_key_id: str = "alias/vvg-key-volumes"
    audit_key_secret_id: str = "vvg/audit-key"
    audit_checkpoint_key_id: str = "alias/vvg-audit-checkpoint"
    audit_checkpoint_bucket: str = "vvg-audit-ckpt-123456789012-us-east-1"
    migration_grant_seconds: int = 3600
    provider_role_arn: str = "arn:aws:iam::123456789012:role/vvg-provider"
    alert_topic_arn: str = "arn:aws:sns:us-east-1:123456789012:vvg-alerts"
    ec2_poll_seconds: int = 10
    metrics_namespace: str = "vvolguard/vvg"  # CloudWatch namespace of the EMF metrics (docs/metrics.md)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        """Build settings from ``env`` (default ``os.environ``); an out-of-range number is a SettingsError."""
        e = os.environ if env is None else env
        d = cls()
        return cls(
            region=e.get("AWS_REGION") or e.get("AWS_DEFAULT_REGION") or d.region,
            state_table=e.get("VVG_STATE_TABLE", d.state_table),
            hosts_table=e.get("VVG_HOSTS_TABLE", d.hosts_table),
            users_table=e.get("VVG_USERS_TABLE", d.users_table),
            events_table=e.get("VVG_EVENTS_TABLE", d.events_table),
            audit_table=e.get("VVG_AUDIT_TABLE", d.audit_table),
            host_secrets_key_id=e.get("VVG_HOST_SECRETS_KEY_ID", d.host_secrets_key_id),
            key_volumes_key_id=e.get("VVG_KEY_VOLUMES_KEY_ID", d.key_volumes_key_id),
            audit_key_secret_id=e.get("VVG_AUDIT_KEY_SECRET_ID", d.audit_key_secret_id),
            audit_checkpoint_key_id=e.get("VVG_AUDIT_CHECKPOINT_KEY_ID", d.audit_checkpoint_key_id),
            audit_checkpoint_bucket=e.get("VVG_AUDIT_CHECKPOINT_BUCKET", d.audit_checkpoint_bucket),
            migration_grant_seconds=_int_setting("VVG_MIGRATION_GRANT_SECONDS", e.get("VVG_MIGRATION_GRANT_SECONDS"),
                                                 d.migration_grant_seconds),
            provider_role_arn=e.get("VVG_PROVIDER_ROLE_ARN", d.provider_role_arn),
            alert_topic_arn=e.get("VVG_ALERT_TOPIC_ARN", d.alert_topic_arn),
            ec2_poll_seconds=_int_setting("VVG_EC2_POLL_SECONDS", e.get("VVG_EC2_POLL_SECONDS"), d.ec2_poll_seconds),
            metrics_namespace=e.get("VVG_METRICS_NAMESPACE", d.metrics_namespace),
        )
