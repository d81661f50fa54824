"""The dashboard's audit page at 100 and at 100,000 audit records: its first page must not grow with the
history (cursor paging on an index, never an offset or a scan).

Runs in-process: moto's mock_aws, the Flask test client signed in as a viewer. For each size it times
GET /audit (unfiltered: the by-time index) and GET /audit?vm=... (a VM's chain), and splits each page's
time into the part spent inside DynamoDB calls and the rest (the dashboard's own work), with botocore
hooks. moto's Query walks and sorts the whole table where DynamoDB reads only the page, so the wall clock
in moto grows with the table whatever the dashboard does; what must stay flat is the dashboard's own
time, and the DynamoDB calls and items read per page, which are counted (and are what DynamoDB bills
and takes time for).

    .venv/bin/python -m bench.audit_page [--big 100000] [--small 100] [--runs 25]

Prints the figures and, last, one JSON line.
"""
from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import sys
import time

CHAINS = 500  # the history is spread over this many VM chains


class Counter:
    """DynamoDB calls made by vvolguard's clients (botocore hooks): how many, the items they evaluated,
    and the time spent inside them (in moto, that is the emulated DynamoDB's own work)."""

    def __init__(self) -> None:
        self.calls = 0
        self.scanned = 0
        self.seconds = 0.0
        self._t = 0.0

    def reset(self) -> None:
        self.calls, self.scanned, self.seconds = 0, 0, 0.0

    def before(self, **_):
        self.calls += 1
        self._t = time.perf_counter()

    def after(self, parsed=None, **_):
        self.seconds += time.perf_counter() - self._t
        if isinstance(parsed, dict):
            self.scanned += int(parsed.get("ScannedCount", 0) or 0)


def fill(settings, start: int, total: int, chains: int = CHAINS) -> None:
    """Append records ``start``..``total``-1 as valid chains (MACs and heads), with batch writes; with
    ``chains=1`` all go to the chain of bench-vm-7 (the VM view's page is full at every size)."""
    from vvolguard.adapters.audit import AuditLog, AuditRecord
    from vvolguard.adapters.models import AuditItem, ChainHead

    log = AuditLog(settings)
    per_chain: dict[int, list[AuditRecord]] = {}
    for n in range(start, total):
        c = 7 if chains == 1 else n % chains
        per_chain.setdefault(c, []).append(AuditRecord(
            actor="host:bench-host", action="attach" if n % 2 == 0 else "detach", outcome="done",
            reason="bench", vm_id=f"bench-vm-{c}", volume_id=f"bench-vol-{c}", host_id="bench-host",
            event_id=f"bench-{n}", event_type="vm.preboot" if n % 2 == 0 else "vm.booted"))
    with AuditItem.batch_write() as items_batch, ChainHead.batch_write() as heads_batch:
        for c, recs in per_chain.items():
            chain = f"VM#bench-vm-{c}"
            items, head = log.build(chain, log.head(chain), recs)
            for it in items:
                items_batch.save(it)
            heads_batch.save(head)


def measure(client, runs: int, counter: Counter) -> dict[str, float]:
    """Per view: the page's median time, the part of it spent inside DynamoDB calls and the part outside
    them (the dashboard's own work), DynamoDB calls and items read per page."""
    out: dict[str, float] = {}
    views = {"all": "/audit", "vm": "/audit?vm=bench-vm-7"}
    for name, url in views.items():
        totals, inside, outside = [], [], []
        for i in range(runs + 1):
            counter.reset()
            t = time.perf_counter()
            r = client.get(url)
            total = time.perf_counter() - t
            text = r.get_data(as_text=True)
            assert r.status_code == 200 and "Older records" in text, (r.status_code, text[:300])
            if i == 0:  # warm-up; its counts stand for every run
                out[f"{name}_ddb_calls"] = counter.calls
                out[f"{name}_items_read"] = counter.scanned
                continue
            totals.append(total * 1000)
            inside.append(counter.seconds * 1000)
            outside.append((total - counter.seconds) * 1000)
        out[f"{name}_page_ms"] = statistics.median(totals)
        out[f"{name}_ddb_ms"] = statistics.median(inside)
        out[f"{name}_own_ms"] = statistics.median(outside)
        # the fastest run: the page's own cost with the least interference from whatever else the
        # machine is doing (the medians are printed too)
        out[f"{name}_own_min_ms"] = min(outside)
    return out


def _line(label: str, m: dict[str, float]) -> str:
    return (f"{label} first page {m['all_page_ms']:.1f} ms ({m['all_own_ms']:.1f} ms outside DynamoDB, fastest "
            f"{m['all_own_min_ms']:.1f}), VM page {m['vm_page_ms']:.1f} ms ({m['vm_own_ms']:.1f} ms outside, fastest "
            f"{m['vm_own_min_ms']:.1f}); "
            f"{m['all_ddb_calls']} / {m['vm_ddb_calls']} DynamoDB calls, {m['all_items_read']} / {m['vm_items_read']} items read")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=100)
    ap.add_argument("--big", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args(argv)
    from bench import emulated
    from vvolguard.adapters import aws

    t0 = time.perf_counter()
    with emulated() as settings:
        from vvolguard.services.users import UserService

        UserService(settings).add("bench", "viewer", "bench-password-1", actor="cli")
        from dashboard import create_app

        # The tamper check reads the whole history; the scheduled function runs it and stores its result, which
        # the page reads (one GetItem: docs/audit-check.md). It is run once at 100 records and its result kept
        # for the run (in moto, a check of 100,000 records takes minutes: moto's Scan re-walks the table
        # for every page).
        app = create_app({"TESTING": True, "SECRET_KEY": "bench", "SESSION_COOKIE_SECURE": False})
        client = app.test_client()
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").get_data(as_text=True)).group(1)
        assert client.post("/login", data={"username": "bench", "password": "bench-password-1",
                                           "csrf_token": token}).status_code == 302
        counter = Counter()
        aws.add_hook("before-call.dynamodb", counter.before)
        aws.add_hook("after-call.dynamodb", counter.after)

        fill(settings, 0, args.small, chains=1)
        app.extensions["vvg"].tamper.run()  # the tamper check, once (the scheduled function's part)
        small = measure(client, args.runs, counter)
        print(_line(f"[{args.small} records]   ", small), flush=True)

        t_fill = time.perf_counter()
        fill(settings, args.small, args.big)
        fill_s = time.perf_counter() - t_fill
        # moto keeps the whole table in this process's heap, which a dashboard never does (its DynamoDB is
        # elsewhere); without this, Python's collector walking those 100,000 items would be charged to
        # the dashboard's own time.
        gc.collect()
        gc.freeze()
        big = measure(client, args.runs, counter)
        print(_line(f"[{args.big} records]", big) + f" (filled in {fill_s:.0f} s)", flush=True)

    res: dict[str, float] = {"small_records": args.small, "big_records": args.big, "runs": args.runs}
    for view in ("all", "vm"):
        raw = big[f"{view}_page_ms"] / small[f"{view}_page_ms"]
        own = big[f"{view}_own_min_ms"] / small[f"{view}_own_min_ms"]
        own_median = big[f"{view}_own_ms"] / small[f"{view}_own_ms"]
        for k in ("page_ms", "ddb_ms", "own_ms", "own_min_ms", "ddb_calls", "items_read"):
            res[f"{view}_{k}_small"] = round(small[f"{view}_{k}"], 2)
            res[f"{view}_{k}_big"] = round(big[f"{view}_{k}"], 2)
        res[f"{view}_raw_ratio"] = round(raw, 3)
        res[f"{view}_own_ratio"] = round(own, 3)
        res[f"{view}_own_median_ratio"] = round(own_median, 3)
        print(f"[{view:>3} view]      outside DynamoDB x{own:.2f} (fastest runs; medians x{own_median:.2f}); DynamoDB calls {small[f'{view}_ddb_calls']} -> "
              f"{big[f'{view}_ddb_calls']}, items read {small[f'{view}_items_read']} -> {big[f'{view}_items_read']}; "
              f"wall clock x{raw:.2f} (moto's Query walks and sorts the whole table; DynamoDB reads only the page)",
              flush=True)
    res["within_20_percent"] = all(res[f"{v}_own_ratio"] <= 1.2 and res[f"{v}_ddb_calls_small"] == res[f"{v}_ddb_calls_big"]
                                   and res[f"{v}_items_read_small"] == res[f"{v}_items_read_big"] for v in ("all", "vm"))
    print(f"[total]         {time.perf_counter() - t0:.0f} s", flush=True)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
