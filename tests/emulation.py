"""One moto emulation per test process, reset between tests instead of rebuilt (docs/test-speed.md).

The `aws` fixture used to start `mock_aws`, create every client again and run the whole bootstrap (tables,
keys, roles, secret, bucket, topic) for each of its ~400 tests. Now the first test of a worker builds it
once; every later test gets it back in its just-bootstrapped state:

- DynamoDB: every item of every table is removed (tables a test created are dropped);
- KMS keys, their aliases and the IAM roles are kept (the code only uses them), unless a test changed them;
- every other service (EC2, S3, SNS, SQS, STS, Secrets Manager, ...) is reset to empty and what the
  template declares there is created again (the audit key's secret, with a new key; the checkpoint bucket;
  the alert topic);
- the cached audit key and host secrets are forgotten; the clients are kept, unless one of them points
  somewhere else than AWS's own endpoints (a test that set AWS_ENDPOINT_URL), then all are rebuilt.

Whenever that state cannot be trusted (another `mock_aws` reset the backends, a test changed a key, a role,
or a table's definition, other settings), the emulation is rebuilt from scratch, as before. Inside another
fixture's active `mock_aws` (dashboard_support.shared_aws), the test shares that emulation, as before.
"""
from __future__ import annotations

from typing import Any

KEPT = ("dynamodb", "kms", "iam")  # built by bootstrap, only read by the code: kept when unchanged
# What using a role changes in moto (every AssumeRole stamps it): not a change of the role itself.
ROLE_USE = ("last_used", "last_used_region")


def _backends(service: str) -> Any:
    import importlib

    return getattr(importlib.import_module(f"moto.{service}.models"), f"{service}_backends")


def _region_backend(service: str, region: str) -> Any:
    from moto.core import DEFAULT_ACCOUNT_ID

    acct = _backends(service).get(DEFAULT_ACCOUNT_ID)
    if acct is None:
        return None
    key = "aws" if service == "iam" else region
    return dict.get(acct, key)


def _shape(obj: Any, *skip: str) -> str:
    return repr(sorted((k, repr(v)) for k, v in vars(obj).items() if k not in skip))


class Emulation:
    """The worker's emulation: what was built, and how to tell it is still intact."""

    def __init__(self) -> None:
        self.settings: Any = None
        self.marks: dict[str, Any] = {}

    # ---- fingerprints of what is kept
    def _marks(self, region: str) -> dict[str, Any]:
        ddb, kms, iam = (_region_backend(s, region) for s in KEPT)
        if ddb is None or kms is None or iam is None:
            return {}
        return {
            "objects": (id(ddb), id(kms), id(iam)),
            "tables": {name: (id(t), _shape(t, "items", "stream_shard")) for name, t in ddb.tables.items()},
            "keys": {kid: _shape(k) for kid, k in kms.keys.items()},
            "roles": {rid: _shape(r, *ROLE_USE) for rid, r in iam.roles.items()},
            "policies": len(iam.managed_policies),
        }

    def intact(self, settings: Any) -> bool:
        return self.settings == settings and bool(self.marks) and self._marks(settings.region) == self.marks

    # ---- build and reset
    def build(self, settings: Any) -> None:
        """Everything from scratch: moto's backends reset, every client rebuilt, the whole bootstrap."""
        from moto.core.base_backend import BackendDict

        from infra.bootstrap import bootstrap
        from vvolguard.adapters import aws as aws_adapter

        BackendDict.reset()
        aws_adapter.reset_clients()
        bootstrap(settings)
        self.settings = settings
        self.marks = self._marks(settings.region)

    def reset(self, settings: Any) -> None:
        """Back to the just-bootstrapped state, keeping what `intact` vouched for."""
        from moto.core.base_backend import BackendDict

        from infra.bootstrap import create_buckets, create_secrets, create_topics
        from infra.template import Template
        from vvolguard.adapters import aws as aws_adapter
        from vvolguard.services.root import Services

        ddb = _region_backend("dynamodb", settings.region)
        for table in ddb.tables.values():
            table.items.clear()
            if table.stream_shard is not None:
                table.stream_shard.items = []
        kept = {id(_backends(s)) for s in KEPT}
        for backend in list(BackendDict._instances):
            if id(backend) not in kept:
                for account in backend.values():
                    account.reset()
                backend.clear()
        if not _clients_on_aws_endpoints():
            aws_adapter.reset_clients()
        aws_adapter.forget_keys()
        Services.build(settings)  # the models bound to this emulation's tables (the one place that binds)
        template = Template()
        create_secrets(settings)
        create_buckets(template, settings)
        create_topics(template, settings)

    def fresh(self, settings: Any) -> Any:
        if self.intact(settings):
            self.reset(settings)
        else:
            self.build(settings)
        return settings


def _clients_on_aws_endpoints() -> bool:
    """Whether every cached vvolguard client talks to AWS's own endpoint (which mock_aws intercepts)."""
    from vvolguard.adapters import aws as aws_adapter

    for client in list(aws_adapter._tracked):
        url = getattr(client.meta, "endpoint_url", "") or ""
        if not url.startswith("https://") or not url.split("/")[2].endswith(".amazonaws.com"):
            return False
    return True


EMULATION = Emulation()
