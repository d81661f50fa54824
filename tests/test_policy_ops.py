"""PolicyService's typed write ops (services/policies.py ``Op``): an apply split over several transactions is
undone, inverse by inverse, when a later transaction fails (docs/policy-apply.md)."""
from __future__ import annotations

import pytest

from tests.conftest import all_audit_records


def _specs(n: int):
    from vvolguard.domain.policy import parse_policy_text

    rows = "\n".join(f"  - {{volume_id: vvol-op-{i:03d}, vm_id: vm-op-{i:03d}, host_id: host-1, storage_array: S1, "
                     f"size_mb: 10, attach_on: preboot, detach_on: postboot}}" for i in range(n))
    return parse_policy_text(f"volumes:\n{rows}\n".encode(), "ops.yaml")


def test_an_apply_whose_second_transaction_fails_undoes_the_first_and_audits_the_undo(aws):
    from vvolguard.adapters import aws as aws_adapter
    from vvolguard.adapters.models import PolicyItem
    from vvolguard.services.policies import PolicyService

    writes = []

    def second_fails(**_):
        writes.append(1)
        if len(writes) == 2:
            raise RuntimeError("DynamoDB went away")

    svc = PolicyService(aws)
    aws_adapter.add_hook("before-call.dynamodb.TransactWriteItems", second_fails)
    try:
        with pytest.raises(RuntimeError):
            svc.apply(_specs(60))  # more than one transaction's worth (services/policies.py _TX_BUDGET)
    finally:
        aws_adapter.remove_hook("before-call.dynamodb.TransactWriteItems", second_fails)
    assert len(writes) >= 3  # the first chunk, the failed second, then the undo
    assert [i.volume_id for i in PolicyItem.scan(PolicyItem.volume_id.startswith("vvol-op-"))] == []
    recs = [r for r in all_audit_records() if (r.volume_id or "").startswith("vvol-op-")]
    created = {r.volume_id for r in recs if r.action == "policy_create"}
    undone = {r.volume_id for r in recs if r.action == "policy_undo_create"}
    assert created and created == undone


def test_a_planned_update_carries_its_inverse_as_a_typed_op(aws):
    from vvolguard.domain.policy import parse_policy_text
    from vvolguard.services.policies import Op, PolicyService

    svc = PolicyService(aws)
    [spec] = _specs(1)
    svc.apply([spec])
    [edited] = parse_policy_text(b"volumes:\n  - {volume_id: vvol-op-000, vm_id: vm-op-000, host_id: host-1, "
                                 b"storage_array: S1, size_mb: 20, attach_on: preboot, detach_on: postboot}\n", "e.yaml")
    outcome, ops, _ = svc._plan(edited, "cli", svc.find("vvol-op-000"))
    assert outcome == "updated" and [op.kind for op in ops] == ["update"]
    assert isinstance(ops[0].inverse, Op) and ops[0].inverse.kind == "update" and ops[0].inverse.inverse is None
