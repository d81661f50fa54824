"""The webhook's host cache (services/auth.py, docs/webhook-hardening.md): a warm container keeps a host's record
for CACHE_S since it was last proven current, and a claim that commits proves it (its HostGuard condition covers
every attribute the event path takes from the record). So a host that keeps sending never pays a host read
again, while a revocation, a rotation or any change of those attributes is refused at the next claim.

The cache's clock is replaced by a fake one (``clock``): no test sleeps.
"""
from __future__ import annotations

import time
from collections import Counter
from types import SimpleNamespace

import pytest

from tests.statecheck import snapshot
from tests.test_webhook_contract import assert_error


@pytest.fixture
def clock(monkeypatch):
    """The host cache's monotonic clock, moved by the test (the wall clock stays real)."""
    from vvolguard.services import auth

    now = [1000.0]
    monkeypatch.setattr(auth, "time", SimpleNamespace(monotonic=lambda: now[0], time=time.time))
    return now


def _calls(fn) -> Counter:
    """(service, operation) -> how many calls vvolguard's clients made during ``fn()``."""
    from vvolguard.adapters import aws

    seen: Counter = Counter()

    def count(model, **_):
        seen[(model.service_model.service_name, model.name)] += 1

    aws.add_hook("before-call", count)
    try:
        fn()
    finally:
        aws.remove_hook("before-call", count)
    return seen


def _cycle(webhook) -> None:
    """A warm preboot (attach) then its booted (detach) of vm-1: both claim."""
    for type_ in ("vm.preboot", "vm.booted"):
        code, body = webhook.send(type_, "vm-1")
        assert code == 200 and body["decisions"][0]["outcome"] == "done", body


def _cached(host_id: str):
    from vvolguard.handlers import events as handler_module

    return handler_module.service().auth._cache.get(host_id)


def test_claims_keep_the_cached_host_current__an_event_past_the_lifetime_reads_no_host(webhook, clock):
    """Old code: the entry aged from the read that filled it, so every CACHE_S a busy host paid a GetItem
    (the 4th DynamoDB call per warm event that `make bench` saw on a slow run)."""
    from vvolguard.services.auth import CACHE_S

    _cycle(webhook)  # cold: reads the host and caches it at 1000
    clock[0] += CACHE_S * 0.7
    _cycle(webhook)  # cached; each claim proves the record current again
    clock[0] += CACHE_S * 0.7  # 1.4 lifetimes since the read, 0.7 since the last claim
    seen = _calls(lambda: webhook.send("vm.preboot", "vm-1"))
    ddb = {op: n for (svc, op), n in seen.items() if svc == "dynamodb"}
    assert ddb == {"Query": 1, "TransactWriteItems": 2}, seen
    assert not [op for svc, op in seen if svc == "kms"]


def test_an_idle_host_past_the_lifetime_is_read_again(webhook, clock):
    from vvolguard.services.auth import CACHE_S

    _cycle(webhook)
    clock[0] += CACHE_S + 1  # no claim in between: nothing proved it current
    seen = _calls(lambda: webhook.send("vm.preboot", "vm-1"))
    assert seen[("dynamodb", "GetItem")] == 1, seen


def test_a_revoked_host_is_refused_at_the_next_event_however_recently_claims_revalidated_it(webhook, aws, clock):
    from vvolguard.services.hosts import HostService

    _cycle(webhook)
    clock[0] += 200
    _cycle(webhook)
    HostService(aws).revoke("host-1")
    before = snapshot()
    assert_error(webhook.send("vm.preboot", "vm-1"), 401, "unknown_host")
    assert snapshot() == before
    assert _cached("host-1") is None


def test_a_rotated_secret_is_refused_at_the_next_event_and_the_new_one_works(webhook, aws, clock):
    from vvolguard.services.hosts import HostService

    _cycle(webhook)
    clock[0] += 200
    _cycle(webhook)
    old = webhook.secret
    new = HostService(aws).rotate("host-1")["secret"]
    before = snapshot()
    assert_error(webhook.send("vm.preboot", "vm-1", secret=old), 401, "bad_signature")
    assert snapshot() == before
    code, body = webhook.send("vm.preboot", "vm-1", secret=new)
    assert code == 200 and body["decisions"][0]["outcome"] == "done", body


def test_the_claim_condition_covers_the_credential_digest(webhook, aws, clock):
    """The provider identity comes from the cached record's credential digest: a record whose digest changed
    under the cache is refused at the claim (old code: the claim held and the stale identity acted), then
    read afresh. No command changes a digest; the table is written directly here."""
    from vvolguard.adapters.models import HostItem

    _cycle(webhook)
    HostItem(host_id="host-1").update(actions=[HostItem.cred_hash.set("ab" * 32)])
    before = snapshot()
    assert_error(webhook.send("vm.preboot", "vm-1"), 401, "unknown_host")
    assert snapshot() == before
    assert _cached("host-1")[0].cred_hash == "ab" * 32  # the fresh read replaced the stale entry
    code, body = webhook.send("vm.preboot", "vm-1")
    assert code == 200 and body["decisions"][0]["outcome"] == "done", body


def test_confirm_refreshes_only_an_entry_of_the_same_credential_and_never_creates_one(clock):
    from vvolguard.adapters.models import HostItem
    from vvolguard.services.auth import AuthenticatedHost, HostAuthenticator, authenticated

    auth = HostAuthenticator(SimpleNamespace())
    item = HostItem(host_id="h-1", cred_salt="s", cred_hash="cd" * 32, secret_version=2, status="active")
    auth._cache["h-1"] = (item, "secret", 1000.0)
    now = time.time()
    clock[0] = 1100.0
    auth.confirm(AuthenticatedHost("h-1", 1, "cd" * 32), now)  # a claim made with the rotated-away version
    auth.confirm(AuthenticatedHost("h-1", 2, "ef" * 32), now)  # another digest
    auth.confirm(AuthenticatedHost("h-1", 2, "cd" * 32, fingerprint="SHA256:x"), now)  # another scheme
    assert auth._cache["h-1"][2] == 1000.0
    auth.confirm(AuthenticatedHost("h-2", 1, "cd" * 32), now)
    assert "h-2" not in auth._cache
    auth.confirm(authenticated(item), now)
    assert auth._cache["h-1"][2] == pytest.approx(1100.0, abs=1.0)
    auth.confirm(authenticated(item), time.time() - 50)  # an older proof
    assert auth._cache["h-1"][2] == pytest.approx(1100.0, abs=1.0)
