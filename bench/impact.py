"""`vvg policy impact` over 100,000 recorded events: events replayed per second (docs/policy-impact.md).

Two figures, both against the AWS emulation of `make bench`:
- ``impact_events_per_s``: ImpactService.analyse over ``--events`` recorded host events (format-3 audit
  records, as the webhook writes them, handed over oldest first), through the current policies (one Query
  per VM, read from the table) and a draft that changes one volume in ten: the replay itself, both sides.
- ``impact_read_records_per_s``: the same service reading ``--stored`` records of the table through the
  ``by-time`` index (paged Queries, no scan), end to end. The emulation's response serializer dominates this
  one (about 2 ms per returned item in moto), hence the small default.
Prints a line of figures; ``measure()`` is also called by `make bench` (bench/fleet.py).

    python -m bench.impact [--events 100000] [--stored 2000] [--vms 100]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

HOST = "impact-host"


def _specs(vms: int, draft: bool = False) -> list[Any]:
    from vvolguard.domain.policy import validate_document

    return validate_document({"volumes": [
        {"volume_id": f"imp-vol-{i}", "vm_id": f"imp-vm-{i}", "host_id": HOST, "storage_array": "S1", "size_mb": 1,
         "attach_on": "preboot", "detach_on": "shutdown" if draft and i % 10 == 0 else "postboot"}
        for i in range(vms)]})


def _records(n: int, vms: int, start: datetime) -> list[Any]:
    """``n`` recorded host events, oldest first: each VM boots (preboot, booted) again and again."""
    from vvolguard.adapters.audit import MAC_VERSION, at_key_of, month_of
    from vvolguard.adapters.models import AuditItem

    out = []
    seq: dict[int, int] = {}
    for k in range(n):
        vm = k % vms
        booted = (k // vms) % 2 == 1
        s = seq[vm] = seq.get(vm, 0) + 1
        at = (start + timedelta(milliseconds=10 * k)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        chain = f"VM#imp-vm-{vm}"
        out.append(AuditItem(
            chain=chain, seq=s, month=month_of(at), at_key=at_key_of(at, chain, s), at=at, actor=f"host:{HOST}",
            vm_id=f"imp-vm-{vm}", volume_id=f"imp-vol-{vm}", host_id=HOST, event_id=f"e-{k}",
            event_type="vm.booted" if booted else "vm.preboot", action="detach" if booted else "attach",
            outcome="done", reason="detach_on=postboot" if booted else "attach_on=preboot", prev="", mac="0" * 64,
            v=MAC_VERSION, occurred_at="", password_verdict="none"))
    return out


def measure(settings: Any, events: int = 100_000, stored: int = 2_000, vms: int = 100) -> dict[str, Any]:
    """The figures as a dict (see the module's docstring)."""
    from vvolguard.adapters.models import AuditItem
    from vvolguard.services.impact import ImpactService
    from vvolguard.services.policies import PolicyService

    PolicyService(settings).apply(_specs(vms), actor="cli")
    draft = _specs(vms, draft=True)
    service = ImpactService(settings)
    now = datetime.now(timezone.utc)
    recs = _records(events, vms, now - timedelta(days=6))
    t0 = time.perf_counter()
    out = service.analyse(draft, timedelta(days=7), now=now, records=recs)
    replay_s = time.perf_counter() - t0
    assert out["events_replayed"] == events, out["events_replayed"]
    # stored records, read back through the by-time index
    start = now - timedelta(hours=1)
    rows = _records(stored, vms, start)
    with AuditItem.batch_write() as batch:
        for r in rows:
            batch.save(r)
    t0 = time.perf_counter()
    back = service.analyse(draft, timedelta(hours=2), now=now + timedelta(minutes=1))
    read_s = time.perf_counter() - t0
    return {"impact_events_per_s": round(events / replay_s, 1), "impact_events": events,
            "impact_changed": len(out["changed"]), "impact_read_records_per_s": round(back["events_replayed"] / read_s, 1),
            "impact_read_records": back["events_replayed"]}


def line(figures: dict[str, Any]) -> str:
    """The human line `make bench` prints."""
    return (f"[policy impact]  {figures['impact_events']} recorded events replayed through the draft and the current "
            f"policy: {figures['impact_events_per_s']:.0f} events/s ({figures['impact_changed']} decisions changed); "
            f"read through the by-time index: {figures['impact_read_records_per_s']:.0f} records/s "
            f"({figures['impact_read_records']} records)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--stored", type=int, default=2_000)
    ap.add_argument("--vms", type=int, default=100)
    ap.add_argument("--in-process", dest="in_process", action="store_true",
                    help="moto in this process (mock_aws) instead of a moto server")
    args = ap.parse_args()
    if args.in_process:
        from bench import emulated

        with emulated() as settings:
            figures = measure(settings, args.events, args.stored, args.vms)
    else:
        from bench.fleet import Fleet

        fleet = Fleet(argparse.Namespace(hosts=1))
        try:
            fleet.start()
            figures = measure(fleet.settings, args.events, args.stored, args.vms)
        finally:
            fleet.stop()
    print(line(figures), flush=True)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
