"""Which AWS this process talks to, who it is there, and AWS failures told in one line (docs/cli.md).

The CLI and the dashboard are transports: they reach AWS only through services (tests/test_layers.py), so
what they need to catch and describe an AWS failure comes from here, never from an AWS library or an adapter.
"""
from __future__ import annotations

from vvolguard.adapters.target import AWS_ERRORS, CLIENT_ERRORS, describe, endpoint, region

__all__ = ["AWS_ERRORS", "CLIENT_ERRORS", "caller_arn", "describe", "endpoint", "region"]


def caller_arn(region_name: str) -> str | None:
    """The AWS principal these credentials act as (one STS call), or None when there is none."""
    from vvolguard.adapters.aws import caller_arn as arn  # boto3's clients only when the actor is needed

    return arn(region_name)
