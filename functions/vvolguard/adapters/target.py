"""Which AWS the CLI talks to (endpoint, region, account) and AWS failures told in one line with their cause.

Used by ``vvg`` when a call fails, so that a missing credential, an unreachable local stack or a real
account reached by mistake is named, never hidden behind a library's exception class (docs/cli.md).
"""
from __future__ import annotations

import os
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from pynamodb.exceptions import PynamoDBException

LOCAL_HINT = "for the local stack, run '. .vvg/env' (written by 'make run') first"
TABLES_HINT = "are the tables created? start the local stack ('make run') or deploy the stack (docs/deploy.md)"
# The AWS libraries' failures, for the transports that tell them without importing an AWS library
# (through services/diagnostics.py): the provider's (botocore) and, in AWS_ERRORS, the tables' too.
CLIENT_ERRORS: tuple[type[Exception], ...] = (ClientError, BotoCoreError)
AWS_ERRORS: tuple[type[Exception], ...] = (PynamoDBException, ClientError, BotoCoreError)


def region(env: dict[str, str] | None = None) -> str:
    """The region the CLI's clients use (the same rule as Settings.from_env)."""
    e = os.environ if env is None else env
    return e.get("AWS_REGION") or e.get("AWS_DEFAULT_REGION") or "us-east-1"


def endpoint(service: str = "dynamodb", env: dict[str, str] | None = None) -> str:
    """The endpoint botocore resolves for ``service``: an override from the environment, or AWS's own."""
    e = os.environ if env is None else env
    specific = e.get("AWS_ENDPOINT_URL_" + service.upper().replace("-", "_"))
    return specific or e.get("AWS_ENDPOINT_URL") or f"https://{service}.{region(e)}.amazonaws.com"


def account(timeout: float = 3.0) -> str | None:
    """The account of the caller's credentials (STS GetCallerIdentity, one quick try), or None."""
    import boto3
    from botocore.config import Config

    try:
        sts = boto3.session.Session(region_name=region()).client(
            "sts", config=Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1}))
        return str(sts.get_caller_identity()["Account"])
    except Exception:  # noqa: BLE001 - best effort: the account is context for another error
        return None


def unwrap(exc: BaseException) -> BaseException:
    """The AWS error under a PynamoDB or vvolguard wrapper (``cause``, ``__cause__``, ``__context__``)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, (ClientError, BotoCoreError)):
            return cur
        cur = getattr(cur, "cause", None) or cur.__cause__ or cur.__context__
    return exc


def _one_line(text: Any, limit: int = 200) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def describe(exc: BaseException, service: str = "dynamodb", with_account: bool = True) -> str | None:
    """One line: what failed and why, then where (endpoint, region, account); None if not an AWS error."""
    err = unwrap(exc)
    if not isinstance(err, (ClientError, BotoCoreError)):
        return None
    where = f"endpoint {endpoint(service)}, region {region()}"
    if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
        return f"no AWS credentials found ({where}): {LOCAL_HINT}; for AWS, set AWS_PROFILE or AWS_ACCESS_KEY_ID"
    if isinstance(err, NoRegionError):
        return f"no AWS region set ({where}): set AWS_REGION, or {LOCAL_HINT}"
    if isinstance(err, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError)):
        url = err.kwargs.get("endpoint_url") or endpoint(service)
        return (f"cannot reach AWS at {url} (region {region()}): is the local stack running ('make run')? "
                f"{LOCAL_HINT}")
    acct = account() if with_account else None
    where += f", account {acct}" if acct else ", account unknown"
    if isinstance(err, ClientError):
        e = err.response.get("Error", {})
        code, message = e.get("Code", "?"), _one_line(e.get("Message", ""))
        hint = ""
        if code == "ResourceNotFoundException":
            hint = f": {TABLES_HINT}"
        elif code in ("UnrecognizedClientException", "InvalidClientTokenId", "ExpiredToken",
                      "ExpiredTokenException", "InvalidSignatureException", "SignatureDoesNotMatch"):
            hint = ": the credentials were refused; check AWS_PROFILE / AWS_ACCESS_KEY_ID, or " + LOCAL_HINT
        elif code in ("AccessDenied", "AccessDeniedException"):
            hint = ": the caller lacks a permission (docs/deploy.md: the operator policy)"
        detail = f"{code}: {message}" if message else code
        return f"AWS refused {err.operation_name}: {detail} ({where}){hint}"
    return f"AWS call failed: {type(err).__name__}: {_one_line(err)} ({where})"
