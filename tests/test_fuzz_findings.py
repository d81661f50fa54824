"""Bugs the fuzz run and the property tests found, each pinned by a regression test through the handler.

Every bug here is fixed and its test guards the fix. A bug found and not fixed yet would be pinned by a test
marked ``xfail(strict=True)``, which turns the suite red the day the bug is fixed, so that the marker is
removed; none is pinned that way today.
"""
from __future__ import annotations

import pytest

from tests.conftest import managed_volumes
from tests.test_webhook_contract import enroll, policy_item


def test_a_volume_created_during_a_migration_follows_the_vm_to_the_destination(webhook, aws):
    secret2 = enroll(aws, "host-2")
    status, start = webhook.send("vm.migrate.start", "vm-1", destination_host="host-2")
    assert status == 200 and start["decisions"][0]["reason"] == "not_created", start
    status, boot = webhook.send("vm.preboot", "vm-1")  # the source host boots the VM before it moves
    assert status == 200 and boot["decisions"][0]["outcome"] == "done", boot
    status, done = webhook.send("vm.migrate.complete", "vm-1", host_id="host-2", secret=secret2,
                                source_host="host-1")
    assert status == 200, done
    assert [d["outcome"] for d in done["decisions"]] == ["done"], done
    assert policy_item("vvol-1").host_id == "host-2"
    assert managed_volumes()["vvol-1"]["TagMap"]["vvg:hosts"] == "host-2"
    status, _ = webhook.send("vm.shutdown", "vm-1", host_id="host-2", secret=secret2)
    assert status == 200
