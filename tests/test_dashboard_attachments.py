"""/attachments: attached now (since when, lease expiry), the last day's exposure per volume as a
server-rendered SVG chart, and exposed minutes per VM, rebuilt from the audit's attach/detach records."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from tests.dashboard_support import *  # noqa: F401,F403 - fixtures


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def test_attached_now_and_chart_after_real_events(client, login, seeded_vms):
    login("viewer")
    page = client.get("/attachments").get_data(as_text=True)
    assert "No volume is attached right now" in page and "nothing to chart" in page
    for vm in ("vm-1", "vm-2"):
        assert seeded_vms.send("vm.preboot", vm)[0] == 200
    assert seeded_vms.send("vm.booted", "vm-1")[0] == 200  # vvol-1 detached again, vvol-2 stays
    page = client.get("/attachments").get_data(as_text=True)
    now_table = page.split('id="now-h"', 1)[1].split("</section>", 1)[0]
    assert "vvol-2" in now_table and "vvol-1" not in now_table
    assert "/dev/sd" in now_table and "left</span>" in now_table and "pill ok" in now_table  # lease, in words and colour
    svg = page.split("<svg", 1)[1].split("</svg>", 1)[0]
    assert "vvol-1" in svg and "vvol-2" in svg and 'class="bar open"' in svg and 'class="bar"' in svg
    assert "<script" not in svg and "style=" not in svg
    assert "Exposed minutes per VM" in page and "vm-2" in page.split('id="vm-h"', 1)[1]


def test_exposure__intervals_from_the_audit_clipped_to_the_window(seeded):
    from vvolguard.adapters.audit import AuditLog, AuditRecord
    from vvolguard.services.exposure import exposure

    now = datetime.now(timezone.utc).replace(microsecond=0)
    log = AuditLog(seeded[0])

    def rec(action, vol, vm, ago_min, outcome="done"):
        log.append([AuditRecord(actor="host:host-1", action=action, outcome=outcome, vm_id=vm, volume_id=vol,
                                at=_iso(now - timedelta(minutes=ago_min)))])

    rec("attach", "va", "vm-a", 30 * 60)   # before the window: clipped to its start
    rec("detach", "va", "vm-a", 23 * 60)   # -> 60 minutes inside the window
    rec("attach", "vb", "vm-a", 120)
    rec("detach", "vb", "vm-a", 90)        # 30 minutes
    rec("attach", "vc", "vm-c", 50, outcome="denied")  # not an attachment
    rec("attach", "vd", "vm-d", 20)
    rec("state_corrected", "vd", "vm-d", 5)            # the reconciler's correction ends it: 15 minutes
    exp = exposure(now, timedelta(hours=24), current=[])
    minutes = {v.volume_id: round(v.minutes) for v in exp.volumes}
    assert minutes == {"va": 60, "vb": 30, "vd": 15}
    assert exp.vm_minutes() == [("vm-a", 90.0, 2), ("vm-d", 15.0, 1)]


def test_exposure__a_volume_still_attached_counts_up_to_now(seeded):
    from vvolguard.adapters.audit import AuditLog, AuditRecord
    from vvolguard.adapters.models import PolicyItem
    from vvolguard.services.exposure import exposure

    now = datetime.now(timezone.utc).replace(microsecond=0)
    AuditLog(seeded[0]).append([AuditRecord(actor="host:host-1", action="attach", outcome="done", vm_id="vm-1",
                                            volume_id="vvol-1", at=_iso(now - timedelta(minutes=40)))])
    live = PolicyItem(pk="VM#vm-1", sk="POLICY#vvol-1", volume_id="vvol-1", vm_id="vm-1", attached=True,
                      attached_at=now - timedelta(minutes=40))
    exp = exposure(now, timedelta(hours=24), current=[live])
    (v,) = exp.volumes
    assert round(v.minutes) == 40 and v.intervals[-1].open
