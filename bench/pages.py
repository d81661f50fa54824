"""The dashboard's /policies and /simulate at 100 and at 100,000 policies: a first page must not grow with the
policy table (queries on the filter's key and signed cursors, never a scan: docs/policy-pages.md).

Runs in-process: moto's mock_aws, the Flask test client signed in as a viewer. For each size it times the
first page of /policies (unfiltered, and filtered by VM, by host and by array) and of /simulate, and splits
each page's time into the part spent inside DynamoDB calls and the rest (the dashboard's own work), with
botocore hooks (bench/audit_page.py's Counter). The ratios compare the dashboard's own CPU time (the
request thread's, outside DynamoDB calls, median of the runs): on a shared machine other processes stretch
the wall clock of both sizes unevenly, and the wall-clock figures are printed beside it. moto's Query walks the whole table where DynamoDB reads only
the page, so the wall clock in moto grows with the table whatever the dashboard does; what must stay flat
is the dashboard's own time, and the DynamoDB calls and items read per page, which are counted.

    .venv/bin/python -m bench.pages [--big 100000] [--small 100] [--runs 10] [--merge FILE]

Prints the figures and, last, one JSON line; with ``--merge FILE`` that line also holds the last JSON line
of FILE (``make bench`` merges bench/fleet.py's figures this way).
"""
from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import sys
import time

from bench import emulated, last_json
from bench.audit_page import Counter as _AuditCounter

HOT = 60  # policies of bench-vm-0 / bench-host-0 / bench-arr-0: each filtered page is full at every size
VIEWS = {
    "policies": "/policies",
    "policies_vm": "/policies?vm_id=bench-vm-0",
    "policies_host": "/policies?host_id=bench-host-0",
    "policies_array": "/policies?storage_array=bench-arr-0",
    "simulate": "/simulate",
}


class Counter(_AuditCounter):
    """bench/audit_page.py's counter, also counting the items a BatchGetItem or a GetItem returns, and which
    operations were called (a Scan on an interactive page is a defect)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.cpu = 0.0
        self._c = 0.0

    def reset(self) -> None:
        super().reset()
        self.ops = []
        self.cpu = 0.0

    def before(self, model=None, **kw):
        if model is not None:
            self.ops.append(model.name)
        super().before(**kw)
        self._c = time.thread_time()

    def after(self, parsed=None, **kw):
        self.cpu += time.thread_time() - self._c
        super().after(parsed=parsed, **kw)
        if isinstance(parsed, dict):
            if "Responses" in parsed:
                self.scanned += sum(len(v) for v in parsed["Responses"].values())
            elif "Item" in parsed:
                self.scanned += 1


def spec_of(n: int, hot: int = HOT) -> tuple[str, str, str, str]:
    """(volume, VM, host, array) of the n-th bench policy: the first ``hot`` share one VM, host and array."""
    if n < hot:
        return f"bench-vol-{n}", "bench-vm-0", "bench-host-0", "bench-arr-0"
    return f"bench-vol-{n}", f"bench-vm-{n // 4}", f"bench-host-{1 + n % 16}", f"bench-arr-{1 + n % 8}"


def fill(start: int, stop: int, hot: int = HOT) -> None:
    """Policies ``start``..``stop``-1 as PolicyService writes them (with the listing attributes), by batch writes."""
    from datetime import datetime, timezone

    from vvolguard.adapters.models import PolicyItem, listing_fields
    from vvolguard.services.policies import policy_sk, vm_pk

    now = datetime.now(timezone.utc)
    with PolicyItem.batch_write() as batch:
        for n in range(start, stop):
            vol, vm, host, array = spec_of(n, hot)
            batch.save(PolicyItem(pk=vm_pk(vm), sk=policy_sk(vol), volume_id=vol, vm_id=vm, host_id=host,
                                  storage_array=array, size_mb=10, attach_on="preboot", detach_on="shutdown",
                                  policy_version=1, updated_at=now, updated_by="bench", **listing_fields(vm, vol)))


def sign_in(settings, role: str = "viewer"):
    """A test client of the dashboard signed in as a new user with ``role``."""
    from dashboard import create_app
    from vvolguard.services.users import UserService

    name = f"bench-{role}"
    UserService(settings).add(name, role, "bench-password-1", actor="cli")
    app = create_app({"TESTING": True, "SECRET_KEY": "bench", "SESSION_COOKIE_SECURE": False,
                      "VVG_TAMPER_TTL": 10 ** 9, "VVG_TAMPER_SYNC": True, "VVG_LOGIN_FAIL_DELAY": 0})
    client = app.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").get_data(as_text=True)).group(1)
    r = client.post("/login", data={"username": name, "password": "bench-password-1", "csrf_token": token})
    assert r.status_code == 302, r.status_code
    return client


def measure(client, runs: int, counter: Counter) -> dict[str, float]:
    """Per view: the page's median time, inside and outside DynamoDB calls, DynamoDB calls and items read."""
    out: dict[str, float] = {}
    for name, url in VIEWS.items():
        totals, inside, outside, own_cpu = [], [], [], []
        for i in range(runs + 1):
            counter.reset()
            t, c = time.perf_counter(), time.thread_time()
            r = client.get(url)
            total, cpu = time.perf_counter() - t, time.thread_time() - c
            text = r.get_data(as_text=True)
            assert r.status_code == 200, (url, r.status_code, text[:300])
            assert name == "simulate" or "Next page" in text, (url, text[:300])
            assert "Scan" not in counter.ops, (url, counter.ops)
            if i == 0:  # warm-up; its counts stand for every run
                out[f"{name}_ddb_calls"] = counter.calls
                out[f"{name}_items_read"] = counter.scanned
                continue
            totals.append(total * 1000)
            inside.append(counter.seconds * 1000)
            outside.append((total - counter.seconds) * 1000)
            own_cpu.append((cpu - counter.cpu) * 1000)
        out[f"{name}_page_ms"] = statistics.median(totals)
        out[f"{name}_ddb_ms"] = statistics.median(inside)
        out[f"{name}_own_ms"] = statistics.median(outside)
        out[f"{name}_own_min_ms"] = min(outside)  # the least disturbed run (medians are printed too)
        # The dashboard's own CPU time (this thread's, outside DynamoDB calls): what other processes on the
        # machine do cannot inflate it, as they inflate the wall clock.
        out[f"{name}_own_cpu_ms"] = statistics.median(own_cpu)
    return out


def _line(label: str, m: dict[str, float]) -> str:
    return label + "; ".join(
        f"{v} {m[f'{v}_page_ms']:.1f} ms ({m[f'{v}_own_cpu_ms']:.1f} ms CPU outside DynamoDB), "
        f"{m[f'{v}_ddb_calls']} calls / {m[f'{v}_items_read']} items" for v in VIEWS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=100)
    ap.add_argument("--big", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--merge", help="a file whose last JSON line is merged into this one's (make bench)")
    args = ap.parse_args(argv)
    from vvolguard.adapters import aws

    t0 = time.perf_counter()
    with emulated() as settings:
        client = sign_in(settings)
        counter = Counter()
        aws.add_hook("before-call.dynamodb", counter.before)
        aws.add_hook("after-call.dynamodb", counter.after)

        fill(0, args.small)
        small = measure(client, args.runs, counter)
        print(_line(f"[{args.small} policies]    ", small), flush=True)

        t_fill = time.perf_counter()
        fill(args.small, args.big)
        fill_s = time.perf_counter() - t_fill
        # moto keeps the whole table in this process's heap, which a dashboard never does; without this,
        # Python's collector walking those items would be charged to the dashboard's own time.
        gc.collect()
        gc.freeze()
        big = measure(client, args.runs, counter)
        print(_line(f"[{args.big} policies] ", big) + f" (filled in {fill_s:.0f} s)", flush=True)
        aws.remove_hook("before-call.dynamodb", counter.before)
        aws.remove_hook("after-call.dynamodb", counter.after)

    res: dict[str, float | bool | int] = {"pages_small_policies": args.small, "pages_big_policies": args.big,
                                          "pages_runs": args.runs}
    same = True
    for view in VIEWS:
        own = big[f"{view}_own_cpu_ms"] / small[f"{view}_own_cpu_ms"]
        own_wall = big[f"{view}_own_min_ms"] / small[f"{view}_own_min_ms"]
        own_median = big[f"{view}_own_ms"] / small[f"{view}_own_ms"]
        for k in ("page_ms", "own_ms", "own_min_ms", "own_cpu_ms", "ddb_calls", "items_read"):
            res[f"{view}_{k}_small"] = round(small[f"{view}_{k}"], 2)
            res[f"{view}_{k}_big"] = round(big[f"{view}_{k}"], 2)
        res[f"{view}_own_ratio"] = round(own, 3)
        res[f"{view}_own_wall_ratio"] = round(own_wall, 3)
        res[f"{view}_own_median_ratio"] = round(own_median, 3)
        same = same and small[f"{view}_ddb_calls"] == big[f"{view}_ddb_calls"] \
            and small[f"{view}_items_read"] == big[f"{view}_items_read"]
        print(f"[{view:>15}] own CPU time outside DynamoDB x{own:.2f} (wall clock outside DynamoDB: fastest runs "
              f"x{own_wall:.2f}, medians x{own_median:.2f}); DynamoDB calls "
              f"{small[f'{view}_ddb_calls']} -> {big[f'{view}_ddb_calls']}, items read {small[f'{view}_items_read']} -> "
              f"{big[f'{view}_items_read']}; wall clock x{big[f'{view}_page_ms'] / small[f'{view}_page_ms']:.2f} "
              "(moto's Query walks the whole table; DynamoDB reads only the page)", flush=True)
    # The issue's two figures: the worst of /policies' views, and /simulate.
    res["policies_page_ratio"] = max(res[f"{v}_own_ratio"] for v in VIEWS if v.startswith("policies"))
    res["simulate_page_ratio"] = res["simulate_own_ratio"]
    res["pages_same_reads"] = same
    res["pages_within_20_percent"] = same and res["policies_page_ratio"] <= 1.2 and res["simulate_page_ratio"] <= 1.2
    print(f"[pages total]    {time.perf_counter() - t0:.0f} s", flush=True)
    merged = {**(last_json(args.merge) if args.merge else {}), **res}
    print(json.dumps(merged))
    return 0


if __name__ == "__main__":
    sys.exit(main())
