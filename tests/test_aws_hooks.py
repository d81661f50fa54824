"""The botocore hooks vvolguard's clients carry (vvolguard.adapters.aws.add_hook / remove_hook), and the model
binding that keeps PynamoDB's clients while the settings stay the same (docs/test-speed.md)."""
from __future__ import annotations


class Calls:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def before(self, model=None, **_):
        self.seen.append(model.name)


def test_remove_hook__unregisters_a_bound_method_from_the_clients_it_was_added_to(aws):
    from vvolguard.adapters import aws as aws_adapter
    from vvolguard.adapters.models import HostItem

    calls = Calls()
    aws_adapter.add_hook("before-call.dynamodb", calls.before)  # a new bound-method object ...
    try:
        list(HostItem.scan(limit=1))
        assert calls.seen == ["Scan"]
    finally:
        aws_adapter.remove_hook("before-call.dynamodb", calls.before)  # ... and another one here
    list(HostItem.scan(limit=1))
    aws_adapter.client("dynamodb", aws.region).list_tables()
    assert calls.seen == ["Scan"]  # before the fix the hook stayed registered on every client


def test_binding_the_same_settings_again_keeps_the_models_connection_and_client(aws):
    from vvolguard.adapters import models
    from vvolguard.services.root import Services

    def before_send_hooks(client) -> int:
        client.list_tables()  # fills the emitter's lookup cache for this event
        found = client.meta.events._emitter._lookup_cache.get("before-send.dynamodb.ListTables", [])
        return sum(getattr(h, "__name__", "") == "_before_send" for h in found)

    list(models.HostItem.scan(limit=1))
    conn = models.HostItem._get_connection()
    client = conn.connection.client
    hooks = before_send_hooks(client)
    for _ in range(3):  # what each test's reset of the emulation does
        Services.build(aws)
        list(models.HostItem.scan(limit=1))
        list(models.PolicyItem.scan(limit=1))
    assert models.HostItem._get_connection() is conn and conn.connection.client is client
    # PynamoDB registers a hook on its client per new connection: with a rebuild per binding they piled up.
    assert before_send_hooks(client) == hooks
