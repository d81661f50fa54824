"""Shared fixtures: moto in-process for unit and functional tests, the local stack for end-to-end ones."""
from __future__ import annotations

import gc
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

from infra.moto_patches import install as _install_moto_patches  # noqa: E402

_install_moto_patches()  # the same emulation fixes the local stack runs with

from infra.moto_speed import install as _install_moto_speed  # noqa: E402

# A quicker path through moto's response serializer, same bytes (infra/moto_speed.py): here, and in the moto
# server of every local stack a test starts (the variable is inherited).
_install_moto_speed()
os.environ["VVG_MOTO_SHORTCUTS"] = "1"

# Password hashes made in the test processes use a tiny scrypt cost (checking reads the cost a hash names, so
# every path is the same, only ~1000x cheaper); the local stacks the end-to-end tests start hash at the
# production cost, and tests/test_hash_cost.py pins that cost (docs/test-speed.md).
from vvolguard.domain import secrets as _secrets  # noqa: E402

TEST_HASH_COST = (16, 1, 1)
_secrets.set_hash_cost(TEST_HASH_COST)

# The cyclic garbage collector, tuned for a test process (docs/test-speed.md): what is imported by now lives
# as long as the process, so it is moved out of the collector's way, and a young-generation collection runs
# every 50,000 allocations instead of 700 (with moto's object graphs a test process collected ~4,000 times
# in a minute, ~12% of its CPU). Nothing of vvolguard's own processes changes.
gc.freeze()
gc.set_threshold(50_000, 20, 100)


@pytest.fixture
def production_hash_cost():
    """New hashes at the production scrypt cost for one test (e.g. to check what is stored)."""
    previous = _secrets.set_hash_cost(_secrets.PRODUCTION_COST)
    yield _secrets.PRODUCTION_COST
    _secrets.set_hash_cost(previous)

# Never reach a real account from a test: fake credentials, no endpoint override, no profile.
for _var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB"):
    os.environ.pop(_var, None)
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1",
                  AWS_DEFAULT_REGION="us-east-1")


@pytest.fixture
def aws():
    """moto's mock_aws with the template's tables and keys created; yields the Settings. The worker's one
    emulation, back in its just-bootstrapped state (tests/emulation.py)."""
    from moto import mock_aws
    from moto.core.models import MockAWS

    from infra.bootstrap import bootstrap
    from tests.emulation import EMULATION
    from vvolguard.adapters import aws as aws_adapter
    from vvolguard.settings import Settings

    settings = Settings.from_env()
    if MockAWS._nested_count:  # inside another fixture's emulation (dashboard_support.shared_aws): share it
        with mock_aws():
            bootstrap(settings)
            yield settings
        return
    mock = mock_aws()
    mock.start(reset=False)
    try:
        yield EMULATION.fresh(settings)
    finally:
        mock.stop(remove_data=False)
        aws_adapter.forget_keys()


class CliResult:
    """What one `vvg` invocation did."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def json(self):
        return json.loads(self.out)

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, out={self.out[:300]!r}, err={self.err[:300]!r})"


@pytest.fixture
def vvg(monkeypatch):
    """Run the CLI in-process: vvg("policy", "apply", path, stdin="...") -> CliResult."""
    from vvolguard.cli import main

    def run(*argv: str, stdin: str = "") -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode("utf-8"))))
        me = threading.current_thread()
        with redirect_stdout(_ThisThread(out, sys.stdout, me)), redirect_stderr(_ThisThread(err, sys.stderr, me)):
            code = main(list(argv))
        return CliResult(code, out.getvalue(), err.getvalue())

    return run


def serve_in_thread(server):
    """Serve ``server`` (a socketserver) on a daemon thread; its ``shutdown()`` returns within 50 ms
    (socketserver's default poll of 0.5 s cost each test that closed a local HTTP receiver half a second)."""
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def all_audit_records() -> list:
    """Every audit record, newest first (the order of ``AuditLog.recent``), read with one Scan: a test's view
    of the whole history. ``AuditLog.recent`` without a filter walks 36 monthly partitions of its index to find
    where a young history ends (36 Queries per call, the cost of `vvg audit list`)."""
    from vvolguard.adapters.models import AuditItem

    return sorted(AuditItem.scan(consistent_read=True), key=lambda r: r.at_key, reverse=True)


class _ThisThread(io.TextIOBase):
    """What the CLI's own thread writes goes to ``mine``; another thread's (a local stack's server thread
    logging a dropped connection, say) to where it went before, not into the CLI's captured output."""

    def __init__(self, mine: io.StringIO, other, thread: threading.Thread) -> None:
        self.mine, self.other, self.thread = mine, other, thread

    def write(self, text: str) -> int:
        return (self.mine if threading.current_thread() is self.thread else self.other).write(text)

    def flush(self) -> None:
        self.other.flush()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """A running `python -m infra.local` (what `make run` starts), on free ports."""

    def __init__(self, proc, aws_port: int, api_port: int, dashboard_port: int, banner: str) -> None:
        self.proc, self.banner = proc, banner
        self.aws_url = f"http://127.0.0.1:{aws_port}"
        self.api_url = f"http://127.0.0.1:{api_port}"
        self.dashboard_url = f"http://127.0.0.1:{dashboard_port}"
        m = re.search(r"demo host\s+(\S+)\s+secret: (\S+)", banner)
        self.host_id, self.host_secret = (m.group(1), m.group(2)) if m else (None, None)

    def env(self) -> dict[str, str]:
        """The environment a CLI run against this stack needs (the standard AWS variables only)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VVG_"))}
        env.update(AWS_ENDPOINT_URL=self.aws_url, AWS_REGION="us-east-1", AWS_ACCESS_KEY_ID="testing",
                   AWS_SECRET_ACCESS_KEY="testing")
        return env

    def vvg(self, *argv: str, stdin: str = "", timeout: float = 60) -> CliResult:
        """Run .venv's `vvg` as a user would, against this stack."""
        exe = str(Path(sys.executable).with_name("vvg"))
        p = subprocess.run([exe, *argv], input=stdin, capture_output=True, text=True, env=self.env(), timeout=timeout)
        return CliResult(p.returncode, p.stdout, p.stderr)


def start_stack(extra_env: dict[str, str] | None = None, timeout: float = 120) -> Stack:
    """Start the local stack as `make run` does and wait for its banner."""
    ports = [free_port() for _ in range(3)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(VVG_AWS_PORT=str(ports[0]), VVG_API_PORT=str(ports[1]), VVG_DASHBOARD_PORT=str(ports[2]),
               VVG_ADMIN_PASSWORD="admin-pass-123", PYTHONUNBUFFERED="1",
               # No background reconciler passes racing the tests' own `vvg reconcile` (its loop has its own
               # test, tests/test_audit_tamper.py); a test that wants it passes VVG_RECONCILE_SECONDS.
               VVG_RECONCILE_SECONDS="0",
               # never the checkout's .vvg/env: a developer's own `make run` may be using it
               VVG_ENV_FILE=os.path.join(tempfile.mkdtemp(prefix="vvg-env-"), ".vvg", "env"))
    env.update(extra_env or {})
    proc = subprocess.Popen([sys.executable, "-m", "infra.local"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    done = threading.Event()

    def reader() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                done.set()
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    if not done.wait(timeout) or proc.poll() is not None:
        proc.kill()
        raise RuntimeError("local stack did not start:\n" + "".join(lines))
    stack = Stack(proc, *ports, banner="".join(lines))
    stack.output = lines
    return stack


def stop_stack(stack: Stack, sig: int = signal.SIGTERM) -> int:
    """Signal the stack and wait for it; returns its exit code."""
    stack.proc.send_signal(sig)
    try:
        return stack.proc.wait(30)
    except subprocess.TimeoutExpired:
        stack.proc.kill()
        stack.proc.wait()
        return -9


@pytest.fixture(scope="session")
def stack():
    """The local stack, seeded with Table 1, shared by the end-to-end tests of one session."""
    s = start_stack()
    yield s
    stop_stack(s)


class Webhook:
    """Calls the real POST /v1/events handler with API Gateway payload 2.0 events, signed like a host."""

    def __init__(self, settings, host_id: str, secret: str) -> None:
        self.settings, self.host_id, self.secret = settings, host_id, secret
        self._n = 0

    def event_id(self) -> str:
        self._n += 1
        return f"t-{self._n}"

    def raw(self, body: bytes, headers: dict[str, str] | None = None, b64: bool = False) -> tuple[int, dict]:
        import base64

        from vvolguard.handlers import events as handler_module

        ev = {"version": "2.0", "routeKey": "POST /v1/events", "rawPath": "/v1/events", "headers": headers or {},
              "body": base64.b64encode(body).decode() if b64 else body.decode("utf-8", "surrogateescape"),
              "isBase64Encoded": b64, "requestContext": {"http": {"method": "POST", "path": "/v1/events"}}}
        r = handler_module.handler(ev, None)
        return r["statusCode"], json.loads(r["body"])

    def signed_headers(self, body: bytes, host_id: str | None = None, secret: str | None = None,
                       t: int | None = None) -> dict[str, str]:
        import time

        from vvolguard.domain.secrets import sign

        return {"content-type": "application/json", "x-vvg-host": host_id or self.host_id,
                "x-vvg-signature": sign(secret or self.secret, int(time.time()) if t is None else t, body)}

    def send(self, type_: str, vm_id: str, host_id: str | None = None, secret: str | None = None,
             **fields) -> tuple[int, dict]:
        body = {"event_id": fields.pop("event_id", None) or self.event_id(), "type": type_, "vm_id": vm_id, **fields}
        raw = json.dumps(body).encode()
        return self.raw(raw, self.signed_headers(raw, host_id, secret))


@pytest.fixture
def webhook(aws):
    """Table 1 seeded under mock_aws, and a signed client of the events handler for the demo host."""
    from infra.bootstrap import seed_demo
    from vvolguard.handlers import events as handler_module

    handler_module.reset()
    seeded = seed_demo(aws, "admin-pass-123")
    yield Webhook(aws, seeded["host_id"], seeded["host_secret"])
    handler_module.reset()


_ec2 = None


def ec2_client():
    """An EC2 client of the emulation (under mock_aws), built once per process: the tests' own, outside
    vvolguard's hooks (a test's fault injection or call count never sees the test's own checks)."""
    global _ec2
    if _ec2 is None:
        from vvolguard.adapters import aws as aws_adapter

        _ec2 = aws_adapter.session("us-east-1").client("ec2")
    return _ec2


def managed_volumes(ec2=None) -> dict[str, dict]:
    """vvg:volume-id -> the EBS volume, for every managed volume at the provider."""
    ec2 = ec2 or ec2_client()
    out = {}
    for v in ec2.describe_volumes(Filters=[{"Name": "tag-key", "Values": ["vvg:volume-id"]}])["Volumes"]:
        tags = {t["Key"]: t["Value"] for t in v.get("Tags", [])}
        v["TagMap"] = tags
        out[tags["vvg:volume-id"]] = v
    return out


def attached_volume_ids(ec2=None) -> set[str]:
    """The managed volumes attached at the provider right now."""
    return {vid for vid, v in managed_volumes(ec2).items()
            if any(a["State"] in ("attaching", "attached") for a in v.get("Attachments", []))}


# The longest files first (`make test` runs `--dist loadfile` on two workers: a long file started last would run
# alone at the end). Measured wall times under load, longest first; the rest keep their order (docs/test-speed.md).
LONGEST_FIRST = ("test_exposure.py", "test_crash_safety.py", "test_soak.py", "test_browser.py", "test_fuzz.py",
                 "test_readme.py", "test_local_stack.py", "test_e2e_migration.py", "test_deploy_template.py",
                 "test_checkov.py", "test_e2e_ec2_vms.py", "test_libvirt_hook.py", "test_audit_tamper.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: same order on every worker
