"""How long `unknown_host` takes for a revoked host and for a name never enrolled: the two must not be told
apart by timing (docs/webhook-hardening.md).

Runs in-process: moto's mock_aws and the real POST /v1/events handler. Host `host-r` is enrolled, sends one
accepted event (so a warm container caches it) and is revoked; `never-1` was never enrolled. Requests for
the two alternate (so drift in the machine's load hits both alike), each signed with a guessed secret, in a
warm container and, with --cold, in a fresh service per request. It prints the median, the quartiles and the
ratio of the medians per case, then one JSON line. The regression test (tests/test_webhook_hardening.py)
asserts the cause instead (the same AWS calls in the same order); this shows the effect.

    .venv/bin/python -m bench.unknown_host_timing [--runs 400] [--cold]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time



def _request(host_id: str, secret: str, n: int) -> dict:
    from vvolguard.domain.secrets import sign

    body = json.dumps({"event_id": f"b-{n}", "type": "vm.booted", "vm_id": "vm-1"})
    headers = {"content-type": "application/json", "x-vvg-host": host_id,
               "x-vvg-signature": sign(secret, int(time.time()), body.encode())}
    return {"version": "2.0", "routeKey": "POST /v1/events", "rawPath": "/v1/events", "headers": headers,
            "body": body, "isBase64Encoded": False, "requestContext": {"http": {"method": "POST", "path": "/v1/events"}}}


def _figures(xs: list[float]) -> dict:
    q = statistics.quantiles(xs, n=4)
    return {"median_ms": round(statistics.median(xs) * 1000, 3), "q1_ms": round(q[0] * 1000, 3),
            "q3_ms": round(q[2] * 1000, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=400, help="requests per host and case")
    ap.add_argument("--cold", action="store_true", help="also a fresh service (cold container) per request")
    args = ap.parse_args(argv)
    from bench import emulated

    with emulated() as settings:
        from infra.bootstrap import seed_demo
        from vvolguard.handlers import events as handler_module
        from vvolguard.services.hosts import HostService

        seed_demo(settings, "admin-pass-123")
        handler_module.reset()
        secret = HostService(settings).enroll("host-r", "02:00:00:00:00:42", "SER-42")["secret"]
        ok = handler_module.handler(_request("host-r", secret, 0), None)  # warm: host-r cached as active
        assert ok["statusCode"] in (200, 403), ok
        HostService(settings).revoke("host-r")
        out: dict[str, dict] = {}
        for case in (["warm", "cold"] if args.cold else ["warm"]):
            times: dict[str, list[float]] = {"revoked": [], "never_enrolled": []}
            for i in range(10):  # warm-up, not counted
                handler_module.handler(_request("never-0", "guess", i), None)
            for i in range(args.runs):
                for label, host_id in (("revoked", "host-r"), ("never_enrolled", "never-1")) if i % 2 else \
                        (("never_enrolled", "never-1"), ("revoked", "host-r")):
                    if case == "cold":
                        handler_module.reset()
                    ev = _request(host_id, "a-guessed-secret", i)
                    t0 = time.perf_counter()
                    r = handler_module.handler(ev, None)
                    times[label].append(time.perf_counter() - t0)
                    assert r["statusCode"] == 401 and "unknown_host" in r["body"], r
            rev, nev = _figures(times["revoked"]), _figures(times["never_enrolled"])
            ratio = round(rev["median_ms"] / nev["median_ms"], 3)
            out[case] = {"revoked": rev, "never_enrolled": nev, "median_ratio": ratio}
            print(f"{case:5s} revoked        median {rev['median_ms']:8.3f} ms  (q1 {rev['q1_ms']:.3f}, q3 {rev['q3_ms']:.3f})")
            print(f"{case:5s} never enrolled median {nev['median_ms']:8.3f} ms  (q1 {nev['q1_ms']:.3f}, q3 {nev['q3_ms']:.3f})")
            print(f"{case:5s} ratio of medians (revoked / never enrolled): {ratio}")
        print(json.dumps({"runs": args.runs, **out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
