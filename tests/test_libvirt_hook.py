"""infra/host/qemu-hook: libvirt's real calls (`qemu GUEST OP SUBOP -`, domain XML on stdin) become the
signed events a host sends, signed exactly as `vvg event send` signs them."""
from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import serve_in_thread
from vvolguard.domain.secrets import sign

ROOT = Path(__file__).resolve().parent.parent
HOOK = ROOT / "infra" / "host" / "qemu-hook"
SECRET = "demo-secret-0123456789abcdefghijklmnopqrstuv"


def domain_xml(name: str = "vm-1", uuid: str = "6f1b7e52-4c1a-4b8e-9a4e-0d2b1c3a4f5e", metadata: str = "") -> str:
    """A domain XML as libvirt hands it to the hook (trimmed to what a real one always has)."""
    return f"""<domain type='kvm' id='7'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  {f'<metadata>{metadata}</metadata>' if metadata else ''}
  <memory unit='KiB'>1048576</memory>
  <vcpu placement='static'>1</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type><boot dev='hd'/></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/{name}.qcow2'/><target dev='vda' bus='virtio'/></disk>
  </devices>
</domain>
"""


class Host:
    """One hypervisor's /etc: host.conf, the secret file, the hook's state and libvirt's run directory."""

    def __init__(self, tmp: Path, url: str = "http://127.0.0.1:9", host_id: str = "host-1", secret: str = SECRET,
                 **conf: str) -> None:
        self.tmp, self.host_id, self.secret = tmp, host_id, secret
        self.run_dir = tmp / "run"
        self.run_dir.mkdir(exist_ok=True)
        self.secret_file = tmp / "host.secret"
        self.secret_file.write_text(secret + "\n")
        self.secret_file.chmod(0o600)
        self.out = tmp / "sent.jsonl"
        settings = {"url": url, "host_id": host_id, "secret_file": str(self.secret_file),
                    "state_dir": str(tmp / "state"), "libvirt_run_dir": str(self.run_dir), "booted": "delay:0",
                    "poll_seconds": "0.01", "backoff": "0.01", "timeout": "3", **conf}
        sections = {"vvolguard": settings}
        self.extra_sections: dict[str, dict[str, str]] = {}
        self.conf = tmp / "host.conf"
        self._write(sections)

    def _write(self, sections: dict[str, dict[str, str]]) -> None:
        self.sections = sections
        text = ""
        for name, values in {**sections, **self.extra_sections}.items():
            text += f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()) + "\n"
        self.conf.write_text(text)

    def section(self, name: str, **values: str) -> None:
        self.extra_sections[name] = values
        self._write(self.sections)

    def running(self, name: str, state: str = "running", reason: str = "booted") -> None:
        """libvirt's status file of a running domain (what the detached waiters read)."""
        (self.run_dir / f"{name}.xml").write_text(
            f"<!--\nWARNING: THIS IS AN AUTO-GENERATED FILE.\n-->\n<domstatus state='{state}' reason='{reason}' "
            f"pid='4242'>\n  <taint flag='high-privileges'/>\n</domstatus>\n")

    def gone(self, name: str) -> None:
        (self.run_dir / f"{name}.xml").unlink(missing_ok=True)

    def hook(self, *argv: str, xml: str | None = None, dry_run: bool = True, python: list[str] | None = None,
             env: dict[str, str] | None = None) -> "Run":
        """Run the hook as libvirt does: `qemu GUEST OP SUBOP EXTRA` with the domain XML on stdin."""
        before = self.out.read_text().splitlines() if self.out.exists() else []
        e = {k: v for k, v in os.environ.items() if not k.startswith("VVG_")}
        e.update({"VVG_HOOK_CONFIG": str(self.conf), "VVG_HOOK_FOREGROUND": "1", **(env or {})})
        if dry_run:
            e["VVG_HOOK_DRY_RUN"] = str(self.out)
        if xml is None and argv and not argv[0].startswith("--"):
            xml = domain_xml(argv[0])
        p = subprocess.run([*(python or [sys.executable]), str(HOOK), *argv], input=xml or "", capture_output=True,
                           text=True, env=e, timeout=60)
        after = self.out.read_text().splitlines() if self.out.exists() else []
        return Run(p.returncode, p.stdout, p.stderr, [json.loads(line) for line in after[len(before):]])


class Run:
    def __init__(self, code: int, out: str, err: str, sent: list[dict]) -> None:
        self.code, self.out, self.err, self.sent = code, out, err, sent

    @property
    def bodies(self) -> list[dict]:
        return [json.loads(s["body"]) for s in self.sent]

    @property
    def types(self) -> list[str]:
        return [b["type"] for b in self.bodies]

    def __repr__(self) -> str:
        return f"Run(code={self.code}, types={self.types}, err={self.err[-400:]!r})"


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path)


def assert_signed_like_vvg_event_send(sent: dict, host_id: str = "host-1", secret: str = SECRET) -> None:
    h = sent["headers"]
    assert h["Content-Type"] == "application/json" and h["X-VVG-Host"] == host_id
    t = int(h["X-VVG-Signature"].split(",")[0][2:])
    assert h["X-VVG-Signature"] == sign(secret, t, sent["body"].encode("utf-8"))
    body = json.loads(sent["body"])
    # The same compact JSON `vvg event send` writes, plus the time of the libvirt event.
    assert sent["body"] == json.dumps(body, separators=(",", ":"))
    assert sent["url"].endswith("/v1/events")


# ---------------------------------------------------------------- libvirt's operations


def test_prepare_begin__sends_created_then_preboot_signed_like_vvg_event_send(host):
    r = host.hook("vm-1", "prepare", "begin", "-")
    assert r.code == 0 and r.out == "", r
    assert r.types == ["vm.created", "vm.preboot"]
    for sent, body in zip(r.sent, r.bodies):
        assert_signed_like_vvg_event_send(sent)
        assert set(body) == {"event_id", "type", "vm_id", "occurred_at"} and body["vm_id"] == "vm-1"
    assert r.bodies[0]["event_id"] != r.bodies[1]["event_id"]
    assert r.bodies[0]["occurred_at"] <= r.bodies[1]["occurred_at"]


def test_prepare_begin__a_later_start_sends_preboot_only(host):
    host.hook("vm-1", "prepare", "begin", "-")
    assert host.hook("vm-1", "prepare", "begin", "-").types == ["vm.preboot"]


def test_started_begin__sends_booted_once_the_guest_is_up(host):
    host.running("vm-1")
    r = host.hook("vm-1", "started", "begin", "-")
    assert r.code == 0 and r.out == "" and r.types == ["vm.booted"], r


def test_started_begin__the_waiter_is_detached_so_libvirt_does_not_wait(tmp_path):
    """Without VVG_HOOK_FOREGROUND the waiter runs in a detached grandchild that holds none of the pipes
    libvirt reads: the hook returns at once (subprocess.run would block until the pipes close)."""
    import time

    h = Host(tmp_path, booted="delay:1.5")
    h.running("vm-1")
    started = time.monotonic()
    r = h.hook("vm-1", "started", "begin", "-", env={"VVG_HOOK_FOREGROUND": "0"})
    assert r.code == 0 and r.types == [] and time.monotonic() - started < 1.4, r
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (h.out.exists() and h.out.read_text()):
        time.sleep(0.1)
    assert [json.loads(json.loads(line)["body"])["type"] for line in h.out.read_text().splitlines()] == ["vm.booted"]


def test_started_begin__a_guest_that_stopped_meanwhile_gets_no_booted(host):
    host.gone("vm-1")
    assert host.hook("vm-1", "started", "begin", "-").types == []


def test_started_begin__booted_never_leaves_it_to_the_guest(tmp_path):
    h = Host(tmp_path, booted="never")
    h.running("vm-1")
    assert h.hook("vm-1", "started", "begin", "-").types == []


def test_stopped_end__sends_shutdown_and_release_end_sends_nothing_more(host):
    r = host.hook("vm-1", "stopped", "end", "-")
    assert r.code == 0 and r.types == ["vm.shutdown"], r
    assert_signed_like_vvg_event_send(r.sent[0])
    assert host.hook("vm-1", "release", "end", "-").types == []


def test_release_end__delivers_a_shutdown_that_stopped_could_not(host):
    r = host.hook("vm-1", "stopped", "end", "-", dry_run=False)  # url is a closed port: undeliverable
    assert r.code == 0 and "vm.shutdown for vm-1 not delivered" in r.err, r
    pending = json.loads(next((host.tmp / "state" / "pending").iterdir()).read_text())["body"]
    r = host.hook("vm-1", "release", "end", "-")
    assert r.bodies == [pending]  # the same event_id and occurred_at: idempotent at the API
    assert host.hook("vm-1", "release", "end", "-").types == []


@pytest.mark.parametrize("op,sub", [("start", "begin"), ("reconnect", "begin"), ("attach", "begin"),
                                    ("restore", "begin"), ("stopped", "begin"), ("define", "begin")])
def test_other_operations__exit_0_print_nothing_send_nothing(host, op, sub):
    r = host.hook("vm-1", op, sub, "-")
    assert (r.code, r.out, r.types) == (0, "", [])


# ---------------------------------------------------------------- VM ids


def test_vm_id__from_the_domain_metadata_element(host):
    meta = '<vvg:vm xmlns:vvg="urn:vvolguard:vm:1" id="vm-3"/>'
    r = host.hook("web-01", "prepare", "begin", "-", xml=domain_xml("web-01", metadata=meta))
    assert [b["vm_id"] for b in r.bodies] == ["vm-3", "vm-3"]


def test_vm_id__from_the_vms_map(host):
    host.section("vms", **{"Web.Front-01": "vm-4"})
    r = host.hook("Web.Front-01", "stopped", "end", "-")
    assert [b["vm_id"] for b in r.bodies] == ["vm-4"]


def test_vm_id__managed_only_skips_guests_without_metadata_or_map(tmp_path):
    h = Host(tmp_path, managed_only="true")
    assert h.hook("scratch-vm", "prepare", "begin", "-").types == []
    meta = '<vvg:vm xmlns:vvg="urn:vvolguard:vm:1" id="vm-5"/>'
    assert h.hook("other", "prepare", "begin", "-", xml=domain_xml("other", metadata=meta)).types == [
        "vm.created", "vm.preboot"]


def test_vm_id__a_name_outside_the_id_pattern_is_not_reported(host):
    assert host.hook("my vm", "prepare", "begin", "-", xml=domain_xml("my vm")).types == []


# ---------------------------------------------------------------- live migration


def test_migration__source_grants_then_stop_after_migration_sends_no_shutdown(host):
    r = host.hook("--migrate-start", "vm-1", "--to", "host-2", "--vm-id", "vm-1", xml="")
    assert r.code == 0 and r.bodies == [{**r.bodies[0], "type": "vm.migrate.start", "vm_id": "vm-1",
                                        "destination_host": "host-2"}], r
    assert_signed_like_vvg_event_send(r.sent[0])
    # libvirt on the source, once the guest runs on the destination:
    assert host.hook("vm-1", "stopped", "end", "-").types == []
    assert host.hook("vm-1", "release", "end", "-").types == []
    # the next stop of a guest of that name is a real shutdown again
    assert host.hook("vm-1", "stopped", "end", "-").types == ["vm.shutdown"]


def test_migration__destination_sends_complete_only_once_the_guest_runs_here(tmp_path):
    dest = Host(tmp_path, host_id="host-2")
    meta = '<vvgm:migration xmlns:vvgm="urn:vvolguard:migration:1" source="host-1" destination="host-2"/>'
    xml = domain_xml("vm-1", metadata=meta)
    r = dest.hook("vm-1", "migrate", "begin", "-", xml=xml)
    assert (r.code, r.out, r.types) == (0, "", []), r  # empty output: libvirt keeps the XML unchanged
    assert dest.hook("vm-1", "prepare", "begin", "-", xml=xml).types == []  # no preboot: it is running already
    assert dest.hook("vm-1", "start", "begin", "-", xml=xml).types == []
    dest.running("vm-1", "paused", "migration")  # the incoming QEMU waits for the migration stream ...

    done = threading.Event()
    result: list[Run] = []
    t = threading.Thread(target=lambda: (result.append(dest.hook("vm-1", "started", "begin", "-", xml=xml)), done.set()))
    t.start()
    assert not done.wait(0.5), "vm.migrate.complete must wait for the migration to finish"
    dest.running("vm-1", "running", "migrated")  # ... and then runs here
    t.join(30)
    assert result[0].types == ["vm.migrate.complete"], result[0]
    body = result[0].bodies[0]
    assert body["source_host"] == "host-1" and body["vm_id"] == "vm-1"
    assert_signed_like_vvg_event_send(result[0].sent[0], host_id="host-2")
    # later, a plain stop of the guest here is a shutdown
    assert dest.hook("vm-1", "stopped", "end", "-", xml=xml).types == ["vm.shutdown"]


def test_migration__destination_uses_the_configured_peer_when_the_xml_names_no_source(tmp_path):
    dest = Host(tmp_path, host_id="host-2")
    dest.section("migration", peer="host-1")
    dest.hook("vm-1", "migrate", "begin", "-")
    dest.running("vm-1")
    r = dest.hook("vm-1", "started", "begin", "-")
    assert [(b["type"], b["source_host"]) for b in r.bodies] == [("vm.migrate.complete", "host-1")]


def test_migration__a_failed_incoming_migration_sends_nothing(tmp_path):
    dest = Host(tmp_path, host_id="host-2")
    dest.section("migration", peer="host-1")
    dest.hook("vm-1", "migrate", "begin", "-")
    dest.gone("vm-1")  # the destination's QEMU went away: the guest still runs on the source
    assert dest.hook("vm-1", "started", "begin", "-").types == []
    assert dest.hook("vm-1", "stopped", "end", "-").types == []
    assert dest.hook("vm-1", "release", "end", "-").types == []


def test_migration__abort_forgets_the_outgoing_migration(host):
    host.hook("--migrate-start", "vm-1", "--to", "host-2", "--vm-id", "vm-1", xml="")
    assert host.hook("--migrate-abort", "vm-1", xml="").code == 0
    assert host.hook("vm-1", "stopped", "end", "-").types == ["vm.shutdown"]


def test_migration__start_refuses_this_host_as_destination(host):
    r = host.hook("--migrate-start", "vm-1", "--to", "host-1", "--vm-id", "vm-1", xml="")
    assert r.code == 1 and r.types == [] and "another host" in r.err


# ---------------------------------------------------------------- configuration and errors


def test_config__a_world_readable_secret_is_refused(host):
    host.secret_file.chmod(0o644)
    r = host.hook("vm-1", "prepare", "begin", "-")
    assert r.code == 0 and r.types == [] and "chmod 600" in r.err


def test_config__unreadable_config_never_blocks_a_guest(tmp_path):
    h = Host(tmp_path)
    h.conf.write_text("not an ini file")
    r = h.hook("vm-1", "prepare", "begin", "-")
    assert r.code == 0 and r.types == [] and "vvolguard-hook:" in r.err


# ---------------------------------------------------------------- over HTTP


class Api:
    """A local HTTP server standing in for the API: answers from ``respond(body, headers)``, records requests."""

    def __init__(self, respond) -> None:
        self.requests: list[tuple[dict, bytes]] = []
        api = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                api.requests.append((headers, raw))
                status, answer = respond(raw, headers)
                data = json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the hook gave up waiting (max_wait) and hung up: what the slow-API test wants

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        serve_in_thread(self.server)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_http__the_webhook_accepts_the_hooks_events_and_attaches_table_1(webhook, tmp_path):
    """The hook against the real events handler (Table 1 seeded under moto): prepare attaches vm-1's
    preboot volume, stop detaches it; every request passes the API's own signature check."""
    api = Api(lambda raw, headers: webhook.raw(raw, headers))
    try:
        h = Host(tmp_path, url=api.url, host_id=webhook.host_id, secret=webhook.secret)
        assert h.hook("vm-1", "prepare", "begin", "-", dry_run=False).code == 0
        assert h.hook("vm-1", "stopped", "end", "-", dry_run=False).code == 0
    finally:
        api.close()
    answers = [webhook.raw(raw, headers) for headers, raw in api.requests]  # replays: stored answers
    assert [status for status, _ in answers] == [200, 200, 200]
    assert [a["duplicate"] for _, a in answers] == [True, True, True]
    created, preboot, shutdown = (a["decisions"] for _, a in answers)
    assert [(d["volume_id"], d["action"], d["outcome"]) for d in preboot] == [("vvol-1", "attach", "done")]
    assert [(d["volume_id"], d["action"], d["outcome"]) for d in shutdown] == [("vvol-1", "detach", "done")]
    assert all(d["outcome"] in ("done", "skipped") for d in created)


def test_http__retries_a_503_with_the_same_event_and_a_fresh_signature(tmp_path):
    calls = []

    def respond(raw, headers):
        calls.append(raw)
        if len(calls) == 1:
            return 503, {"error": {"code": "provider_unavailable", "message": "retry"}}
        return 200, {"event_id": json.loads(raw)["event_id"], "duplicate": False, "decisions": []}

    api = Api(respond)
    try:
        r = Host(tmp_path, url=api.url).hook("vm-1", "stopped", "end", "-", dry_run=False)
    finally:
        api.close()
    assert r.code == 0 and len(api.requests) == 2
    (h1, b1), (h2, b2) = api.requests
    assert b1 == b2  # same event_id, same body: the API answers the retry idempotently
    for h, b in api.requests:
        t = int(h["x-vvg-signature"].split(",")[0][2:])
        assert h["x-vvg-signature"] == sign(SECRET, t, b)


def test_http__a_refused_preboot_aborts_the_start_only_when_configured(tmp_path):
    api = Api(lambda raw, headers: (401, {"error": {"code": "unknown_host", "message": "the host is not enrolled"}}))
    strict, lenient = tmp_path / "strict", tmp_path / "lenient"
    strict.mkdir()
    lenient.mkdir()
    try:
        r = Host(strict, url=api.url, on_error="abort").hook("vm-1", "prepare", "begin", "-", dry_run=False)
        assert r.code == 1 and "unknown_host" in r.err and "refusing to start vm-1" in r.err
        assert len(api.requests) == 2  # created and preboot, each tried once: a 401 is not retried
        r = Host(lenient, url=api.url).hook("vm-1", "prepare", "begin", "-", dry_run=False)
        assert r.code == 0  # on_error = continue (the default): the guest starts without its preboot volumes
    finally:
        api.close()


def test_http__a_hanging_api_holds_a_guest_start_at_most_max_wait(tmp_path):
    import time

    def slow(raw, headers):
        time.sleep(4)
        return 503, {"error": {"code": "provider_unavailable", "message": "slow"}}

    api = Api(slow)
    try:
        started = time.monotonic()
        r = Host(tmp_path, url=api.url, timeout="5", max_wait="1.5").hook("vm-1", "prepare", "begin", "-", dry_run=False)
        took = time.monotonic() - started
    finally:
        api.close()
    assert r.code == 0 and took < 3.5, (took, r)  # created and preboot share the 1.5 s budget


# ---------------------------------------------------------------- signing code and portability


def _load_hook_module():
    loader = importlib.machinery.SourceFileLoader("vvg_qemu_hook", str(HOOK))
    spec = importlib.util.spec_from_loader("vvg_qemu_hook", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_signing__uses_vvolguards_sign_when_installed_and_the_fallback_is_byte_identical():
    mod = _load_hook_module()
    assert mod.sign is sign  # vvolguard is installed here: the very function `vvg event send` uses
    cases = [(SECRET, 1764220500, b'{"event_id":"e-1","type":"vm.preboot","vm_id":"vm-1"}'),
             ("s\u00e9cr\u00eat-\u2603", 0, b""), ("x", 99999999999, bytes(range(256)) * 300),
             ("a" * 300, 1, "\u00e9\u6f22".encode("utf-8"))]
    for secret, t, body in cases:
        assert mod._sign_fallback(secret, t, body) == sign(secret, t, body)


def test_signing__without_vvolguard_the_hook_signs_with_its_fallback(host):
    """`python -I -S`: no site-packages, so vvolguard cannot be imported (as on a bare hypervisor)."""
    probe = subprocess.run([sys.executable, "-I", "-S", "-c", "import vvolguard"], capture_output=True)
    assert probe.returncode != 0
    r = host.hook("vm-1", "stopped", "end", "-", python=[sys.executable, "-I", "-S"])
    assert r.code == 0 and r.types == ["vm.shutdown"], r
    assert_signed_like_vvg_event_send(r.sent[0])


def test_portability__stdlib_only_and_python_3_6_syntax():
    source = HOOK.read_text()
    tree = ast.parse(source, feature_version=(3, 6))
    stdlib = set(sys.stdlib_module_names)
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    # vvolguard: optional, inside try/except ImportError; cryptography: only for a key host's key_file
    assert imported - stdlib == {"vvolguard", "cryptography"}
    assert os.access(HOOK, os.X_OK) and source.startswith("#!/usr/bin/env python3\n")
