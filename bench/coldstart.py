"""The event handler's cold start: what importing its path costs, as a whole fresh Python process, over
``import boto3`` (docs/benchmarks.md#cold-start).

What is measured: each figure is the CPU time (user + system, from ``getrusage(RUSAGE_CHILDREN)``) of a fresh
``python -S -c ...`` process, from spawn to exit, the median of ``--runs`` runs:

- **boto3**, the floor: ``import boto3`` (every handler that talks to AWS pays it);
- **handler**: ``import vvolguard.handlers.events`` alone, what Lambda imports when the container starts
  (the handler builds its service on the first call, not at import);
- **path**, the headline: ``import boto3`` and every module a first real event loaded, in the order it loaded
  them. The list comes, on each run, from a child that handles one (a signed vm.preboot of the demo's HMAC
  host, attaching a volume, against the local stack's emulation): vvolguard's modules and other packages'
  (PynamoDB), less the standard library and boto3's family, which come with whatever imports them (what
  botocore loads only to make a call, any boto3 program pays). An Ed25519 key host's first event also
  imports cryptography; the HMAC host's does not;
- **first call**: ``h.service()``, for reference: the path plus building the composition root and the
  EventService, mostly botocore creating the DynamoDB client (its service model and endpoint rules), which
  any boto3 program's first client costs and ``import boto3`` does not.

``cold_import_ratio`` = median *path* / median *boto3* (goal: at most 1.2). The children are laid out as the
function is in Lambda: ``functions/`` and what SAM packages from functions/requirements.txt (with those
packages' requirements) on sys.path, nothing else of the development environment; the functions'
environment from template.yaml, dummy credentials and an ``AWS_ENDPOINT_URL`` on a closed loopback port
(only the first event's child talks, to the emulation). The runs alternate (one of each case in turn, the
order reversed every other round) after one unmeasured warm-up of each (the .pyc files, the page cache), so
a burst of load on the machine lands on every case alike; CPU time rather than wall clock because on a
shared 2-core machine other processes stretch the wall clock of a 0.2 s process by more than the difference
measured (the wall-clock medians are printed and reported beside it).

    .venv/bin/python -m bench.coldstart [--runs 25] [--merge FILE] [--functions OTHER_CHECKOUT/functions]

Prints the figures and, last, one JSON line; with ``--merge FILE`` that line also holds the last JSON line
of FILE (``make bench`` chains bench/fleet.py, bench/pages.py, this and bench/exposure.py this way).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import last_json

ROOT = Path(__file__).resolve().parent.parent
FLOOR = "import boto3"
HANDLER = "import vvolguard.handlers.events"
FIRST_CALL = "import vvolguard.handlers.events as h; h.service()"


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lambda_packages(target: Path) -> list[str]:
    """Link into ``target`` what SAM packages with the functions: functions/requirements.txt and what those
    require, and nothing else of the development environment (Flask's blinker, say, which PynamoDB imports
    when it finds it, is not in the function). Returns the distributions' names."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    todo = [Requirement(line.split("#")[0].strip()).name
            for line in (ROOT / "functions" / "requirements.txt").read_text().splitlines()
            if line.split("#")[0].strip()]
    seen: dict[str, str] = {}
    while todo:
        name = todo.pop()
        if canonicalize_name(name) in seen:
            continue
        dist = metadata.distribution(name)
        seen[canonicalize_name(name)] = dist.metadata["Name"]
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
        for f in dist.files or []:
            top = f.parts[0]
            if top.endswith((".dist-info", ".pth")) or top in ("..", "__pycache__"):
                continue
            src, dst = Path(dist.locate_file(top)), target / top
            if src.exists() and not dst.exists():
                dst.symlink_to(src)
    return sorted(seen.values())


def child_env(packages: Path, functions: Path = ROOT / "functions") -> dict[str, str]:
    """The functions' environment from template.yaml, dummy credentials and an endpoint that answers
    nothing (the children must not reach AWS, nor need to), laid out as in Lambda: the functions' code and
    ``packages`` (lambda_packages) on sys.path, nothing else. The children run with -S: no site-packages,
    and so not the development install's editable-package finder either, which costs every process ~25 ms."""
    sys.path.insert(0, str(ROOT))
    from infra.template import Template

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VVG_", "PYTHON"))}
    env.update(Template().environment())
    env["PYTHONPATH"] = os.pathsep.join([str(functions), str(packages)])
    env.update({"AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_closed_port()}",
                "AWS_EC2_METADATA_DISABLED": "true"})
    return env


def run_once(code: str, env: dict[str, str]) -> tuple[float, float, str]:
    """(CPU ms, wall ms, stdout) of one fresh ``python -c code``; raises if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-S", "-c", code], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    out, err = proc.communicate()
    wall = (time.perf_counter() - t0) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the children run one at a time: the delta is this one's
    if proc.returncode != 0:
        raise RuntimeError(f"{code!r} failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu * 1000, wall, out.decode()


# Packages a first event of an HMAC host must not load (the dashboard's, the policy file's YAML, Ed25519's).
HEAVY = {"flask", "jinja2", "werkzeug", "dashboard", "yaml", "cryptography"}
# What any boto3 program loads to make a call (botocore's client, its HTTP stack): not the handler's own path.
BOTO_FAMILY = {"boto3", "botocore", "s3transfer", "urllib3", "dateutil", "jmespath", "six", "certifi"}
DISCOVER = """
import json, os, sys
import vvolguard.handlers.events as h
answer = h.handler(json.loads(os.environ["VVG_BENCH_EVENT"]), None)
print(json.dumps({"status": answer["statusCode"], "body": answer["body"][:300],
                  "modules": [m for m, mod in list(sys.modules.items()) if getattr(mod, "__file__", None)]}))
"""


def first_event_modules(env: dict[str, str]) -> list[str]:
    """The modules of the handler's path: those a fresh process has loaded after its first real event (a
    signed vm.preboot of the demo's HMAC host, attaching a volume, against the local stack's emulation),
    in the order it loaded them, less the standard library and boto3's own family (loaded with whatever
    imports them: what any boto3 program needs to make a call is the floor's side)."""
    sys.path.insert(0, str(ROOT))
    from infra.local import LocalStack
    from vvolguard.domain.secrets import sign

    with LocalStack(seed=True, gateway=False, dashboard=False, reconcile_seconds=0, quiet=True) as stack:
        body = json.dumps({"event_id": "coldstart-1", "type": "vm.preboot", "vm_id": "vm-1"}).encode()
        event = {"version": "2.0", "routeKey": "POST /v1/events", "rawPath": "/v1/events", "isBase64Encoded": False,
                 "headers": {"content-type": "application/json", "x-vvg-host": stack.host_id,
                             "x-vvg-signature": sign(stack.host_secret, int(time.time()), body)},
                 "body": body.decode(), "requestContext": {"http": {"method": "POST", "path": "/v1/events"}}}
        out = json.loads(run_once(DISCOVER, {**env, **stack.environment(), "VVG_BENCH_EVENT": json.dumps(event)})[2])
    if out["status"] != 200 or '"outcome":"done"' not in out["body"]:
        raise RuntimeError(f"the first event did not attach: {out['status']} {out['body']}")
    heavy = sorted({m.partition(".")[0] for m in out["modules"] if m.partition(".")[0] in HEAVY})
    if heavy:  # tests/test_coldstart.py guards the same without the network; this is the real first event
        print(f"[coldstart] WARNING: the first event imported {', '.join(heavy)}", flush=True)
    keep = []
    for name in out["modules"]:
        top = name.partition(".")[0]
        if top == "vvolguard" or not (top in sys.stdlib_module_names or top in BOTO_FAMILY or top.startswith("_")):
            keep.append(name)
    return keep


def cases(env: dict[str, str]) -> dict[str, str]:
    """The four children's code; the path imports boto3 first: the floor is part of it by construction."""
    return {"boto3": FLOOR, "handler": HANDLER, "path": "import " + ", ".join(["boto3", *first_event_modules(env)]),
            "first_call": FIRST_CALL}


def measure(codes: dict[str, str], runs: int, env: dict[str, str]) -> dict[str, dict[str, list[float]]]:
    """``runs`` alternating rounds of every case, after one warm-up each."""
    for code in codes.values():
        run_once(code, env)
    out: dict[str, dict[str, list[float]]] = {name: {"cpu": [], "wall": []} for name in codes}
    for i in range(runs):
        for name in (list(codes) if i % 2 == 0 else list(reversed(codes))):
            cpu, wall, _ = run_once(codes[name], env)
            out[name]["cpu"].append(cpu)
            out[name]["wall"].append(wall)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=25)
    ap.add_argument("--merge", help="a file whose last JSON line is merged into this one's (make bench)")
    ap.add_argument("--functions", type=Path, default=ROOT / "functions",
                    help="another checkout's functions/ to measure (a before/after comparison; default: this one's)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vvg-coldstart-") as packages:
        shipped = lambda_packages(Path(packages))
        env = child_env(Path(packages), args.functions.resolve())
        codes = cases(env)
        print(f"[coldstart] the children see the functions' code and what SAM packages with them: {', '.join(shipped)}",
              flush=True)
        print(f"[coldstart] the path, from a first real event: {codes['path'][len('import '):]}", flush=True)
        samples = measure(codes, args.runs, env)
    med = {name: {k: statistics.median(v) for k, v in s.items()} for name, s in samples.items()}
    for name, code in codes.items():
        q = statistics.quantiles(samples[name]["cpu"], n=4) if args.runs > 1 else [med[name]["cpu"]] * 3
        shown = code if len(code) < 90 else f"{code[:70]} ... ({code.count(',') + 1} modules)"
        print(f"[{name:>10}] CPU median {med[name]['cpu']:6.1f} ms (quartiles {q[0]:.1f}-{q[2]:.1f}), "
              f"wall median {med[name]['wall']:6.1f} ms: python -c {shown!r}", flush=True)
    ratio = med["path"]["cpu"] / med["boto3"]["cpu"]
    res = {
        "cold_import_ratio": round(ratio, 3),
        "cold_path_cpu_ms": round(med["path"]["cpu"], 1),
        "cold_boto3_cpu_ms": round(med["boto3"]["cpu"], 1),
        "cold_handler_cpu_ms": round(med["handler"]["cpu"], 1),
        "cold_first_call_cpu_ms": round(med["first_call"]["cpu"], 1),
        "cold_handler_ratio": round(med["handler"]["cpu"] / med["boto3"]["cpu"], 3),
        "cold_first_call_ratio": round(med["first_call"]["cpu"] / med["boto3"]["cpu"], 3),
        "cold_import_wall_ratio": round(med["path"]["wall"] / med["boto3"]["wall"], 3),
        "cold_path_wall_ms": round(med["path"]["wall"], 1),
        "cold_boto3_wall_ms": round(med["boto3"]["wall"], 1),
        "cold_path_modules": codes["path"].count(",") + 1,
        "cold_runs": args.runs,
    }
    print(f"[coldstart] the handler's import path / import boto3: x{ratio:.3f} CPU time (goal <= 1.2), "
          f"x{res['cold_import_wall_ratio']:.3f} wall clock; the handler module alone x{res['cold_handler_ratio']:.3f}, "
          f"the first call's set-up x{res['cold_first_call_ratio']:.3f}; {time.perf_counter() - t0:.0f} s", flush=True)
    merged = {**(last_json(args.merge) if args.merge else {}), **res}
    print(json.dumps(merged))
    return 0


if __name__ == "__main__":
    sys.exit(main())
