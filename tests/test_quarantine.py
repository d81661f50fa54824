"""Break-glass (docs/break-glass.md): `vvg vm quarantine` detaches every volume of the VM in one call and
refuses its attaches (`denied`, `quarantined`) until `vvg vm release`; detaches still happen; audited."""
from __future__ import annotations

from tests.conftest import attached_volume_ids
from tests.statecheck import snapshot


def _audit(settings, vm_id: str):
    from vvolguard.adapters.audit import AuditLog

    return list(AuditLog(settings).recent(vm_id=vm_id, limit=100))


def test_quarantine__detaches_now_refuses_attaches_until_release(webhook, vvg):
    status, body = webhook.send("vm.preboot", "vm-2")
    assert status == 200 and body["decisions"][0]["outcome"] == "done"
    assert "vvol-2" in attached_volume_ids()
    r = vvg("vm", "quarantine", "vm-2", "--reason", "ransomware suspected")
    assert r.code == 0, r
    assert r.json() == {"vm_id": "vm-2", "quarantined": True, "changed": True, "detached": 1}
    assert "vvol-2" not in attached_volume_ids()
    recs = _audit(webhook.settings, "vm-2")
    assert [(x.action, x.reason) for x in recs[:2]] == [("detach", "quarantined"),
                                                         ("vm_quarantine", "ransomware suspected")]
    assert recs[0].actor == "cli:arn:aws:sts::123456789012:user/moto"  # the caller's AWS principal (docs/cli.md)
    # the next preboot is refused, and writes no attachment
    before = snapshot()
    status, body = webhook.send("vm.preboot", "vm-2")
    assert status == 200
    assert [(d["action"], d["outcome"], d["reason"]) for d in body["decisions"]] == [("attach", "denied", "quarantined")]
    after = snapshot()
    assert after["provider"] == before["provider"] and after["policies"]["vvol-2"]["attached"] is False
    # detaches still happen (nothing is attached: a skip, never a refusal)
    status, body = webhook.send("vm.shutdown", "vm-2")
    assert status == 200 and body["decisions"] == []
    # quarantine again: idempotent, nothing to detach
    r = vvg("vm", "quarantine", "vm-2")
    assert r.code == 0 and r.json()["changed"] is False and r.json()["detached"] == 0
    r = vvg("vm", "release", "vm-2")
    assert r.code == 0 and r.json() == {"vm_id": "vm-2", "quarantined": False, "changed": True}
    assert _audit(webhook.settings, "vm-2")[0].action == "vm_release"
    status, body = webhook.send("vm.preboot", "vm-2")
    assert body["decisions"][0]["outcome"] == "done" and "vvol-2" in attached_volume_ids()


def test_quarantine__app_and_request_attaches_denied_without_counting_passwords(webhook, vvg):
    assert vvg("vm", "quarantine", "vm-4").code == 0
    status, body = webhook.send("app.started", "vm-4", app="A1")
    assert [(d["outcome"], d["reason"]) for d in body["decisions"]] == [("denied", "quarantined")], body
    assert "vvol-4" not in attached_volume_ids()
    status, body = webhook.send("vm.preboot", "vm-1")  # another VM is not affected
    assert body["decisions"][0]["outcome"] == "done"


REFUSALS = [
    (("vm", "quarantine", "vm 2"), "VM id must match"),
    (("vm", "quarantine", "vm-404"), "no policy names VM vm-404"),
    (("vm", "quarantine", "vm-2", "--reason", "x" * 300), "at most 256"),
    (("vm", "quarantine", "vm-2", "--reason", "bad\x1b[31mansi"), "printable"),
    (("vm", "release", "vm-2"), "not quarantined"),
    (("vm", "release", "../etc"), "VM id must match"),
    (("vm", "explode", "vm-2"), "invalid choice"),
]


def test_quarantine__refusals_write_nothing(webhook, vvg):
    from vvolguard.adapters.models import QuarantineItem

    webhook.send("vm.preboot", "vm-2")
    before, audit_before = snapshot(), len(_audit(webhook.settings, "vm-2"))
    for argv, message in REFUSALS:
        r = vvg(*argv)
        assert r.code != 0 and message in r.err and r.out == "", (argv, r)
    assert snapshot() == before and len(_audit(webhook.settings, "vm-2")) == audit_before
    assert list(QuarantineItem.scan()) == []


def test_quarantine_written_after_an_event_read_its_partition_makes_the_claim_lose(webhook, vvg, monkeypatch):
    """The claim's condition on the quarantine item: an attach decided before the quarantine landed is not made."""
    from vvolguard.services import events as events_mod
    from vvolguard.services.quarantine import QuarantineService

    real = events_mod.EventService.read_partition
    calls = {"n": 0}

    def read_then_quarantine(self, vm_id):
        part = real(self, vm_id)
        calls["n"] += 1
        if calls["n"] == 1:
            QuarantineService(webhook.settings).quarantine("vm-2", "race", actor="cli")
        return part

    monkeypatch.setattr(events_mod.EventService, "read_partition", read_then_quarantine)
    status, body = webhook.send("vm.preboot", "vm-2")
    assert status == 200 and calls["n"] == 2, (calls, body)
    assert [(d["outcome"], d["reason"]) for d in body["decisions"]] == [("denied", "quarantined")]
    assert "vvol-2" not in attached_volume_ids()


def test_refuse_attaches__pure():
    from vvolguard.domain.engine import Decision, refuse_attaches

    ds = [Decision("a", "attach", "pending", "attach_on=preboot", 1, device="/dev/sdf"),
          Decision("b", "detach", "pending", "vm.shutdown", 1), Decision("c", "select", "done", "x", 1, software=["l"])]
    out = refuse_attaches(ds)
    assert [(d.action, d.outcome, d.reason, d.device) for d in out] == [
        ("attach", "denied", "quarantined", None), ("detach", "pending", "vm.shutdown", None),
        ("select", "done", "x", None)]
