"""`make run`: the whole local stack in one foreground process tree.

moto server (a child process) emulates AWS; tables and keys come from template.yaml; the gateway serves
the template's HTTP routes by calling the Lambda handlers; the dashboard runs beside it. All on 127.0.0.1.
"""
from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
TAMPER_POLL_S = 2.0  # how soon the local stack runs a requested tamper check (docs/audit-check.md)
log = logging.getLogger("vvg.local")


def _port(name: str, default: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        port = int(raw)
    except ValueError:
        raise SystemExit(f"vvg: error: {name}={raw!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise SystemExit(f"vvg: error: {name}={port} is not a port number")
    return port


def _check_free(port: int, name: str) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            raise SystemExit(f"vvg: error: port {port} on {HOST} is in use; set {name} to another port") from None


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 - loopback only
                if r.status < 500:
                    return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def _reconcile_seconds() -> float:
    raw = os.environ.get("VVG_RECONCILE_SECONDS", "60")
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"vvg: error: VVG_RECONCILE_SECONDS={raw[:20]!r} is not a number of seconds") from None
    if not 0 <= value <= 86400 or value != value:
        raise SystemExit(f"vvg: error: VVG_RECONCILE_SECONDS={raw[:20]!r} must be from 0 (off) to 86400")
    return value


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class LocalStack:
    """Start, seed and stop the parts: `make run`, the benchmarks and the fuzzer use it as a library.

        with LocalStack(seed=True) as stack:      # ports 0: free ones are chosen
            ... stack.aws_url, stack.api_url, stack.dashboard_url, stack.host_id, stack.host_secret ...

    Entering starts the moto server (a child process), creates the template's resources, seeds the demo
    (or only the admin user), serves the gateway and the dashboard on their own threads and runs the
    reconciler every ``reconcile_seconds`` (VVG_RECONCILE_SECONDS, default 60, 0 off); leaving stops all of
    them, frees the ports, joins the threads and restores the environment variables it set. ``gateway`` and
    ``dashboard`` False start only the emulation (bench/fleet.py calls the handlers in-process)."""

    def __init__(self, aws_port: int = 0, api_port: int = 0, dashboard_port: int = 0, seed: bool = True,
                 admin_password: str | None = None, quiet: bool = False, *, gateway: bool = True,
                 dashboard: bool = True, reconcile_seconds: float | None = None,
                 environ: dict[str, str] | None = None) -> None:
        self.aws_port, self.api_port, self.dashboard_port = (p or free_port() for p in (aws_port, api_port, dashboard_port))
        self.seed = seed
        self.admin_password = admin_password or secrets.token_urlsafe(12)
        self.generated_password = admin_password is None
        self.quiet = quiet
        self.gateway, self.dashboard = gateway, dashboard
        self.extra_environ = dict(environ or {})
        self.moto: subprocess.Popen | None = None
        self.servers: list[Any] = []
        self.threads: list[threading.Thread] = []
        self.seeded: dict[str, Any] = {}
        self.settings: Any = None
        self.reconcile_seconds = _reconcile_seconds() if reconcile_seconds is None else float(reconcile_seconds)
        self._stopping = threading.Event()
        self._saved_environ: dict[str, str | None] | None = None

    def __enter__(self) -> "LocalStack":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def aws_url(self) -> str:
        return f"http://{HOST}:{self.aws_port}"

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{HOST}:{self.dashboard_port}"

    @property
    def host_id(self) -> str | None:
        return self.seeded.get("host_id")

    @property
    def host_secret(self) -> str | None:
        return self.seeded.get("host_secret")

    def _set_environ(self, values: dict[str, str], drop: tuple[str, ...] = ()) -> None:
        """Set (and remember, for :meth:`stop`) the process environment the parts read."""
        if self._saved_environ is None:
            self._saved_environ = {}
        for k in (*values, *drop):
            self._saved_environ.setdefault(k, os.environ.get(k))
        for k in drop:
            os.environ.pop(k, None)
        os.environ.update(values)

    def environment(self) -> dict[str, str]:
        """What a client (the CLI, a test) needs to reach this stack."""
        from infra.template import Template

        env = {"AWS_ENDPOINT_URL": self.aws_url, "AWS_REGION": os.environ.get("AWS_REGION", "us-east-1"),
               "AWS_DEFAULT_REGION": os.environ.get("AWS_REGION", "us-east-1"),
               "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
               "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing")}
        # The template's values, unless the operator set one (e.g. VVG_MIGRATION_GRANT_SECONDS).
        env.update({k: v for k, v in Template().environment().items() if k not in os.environ})
        return env

    def start(self) -> None:
        ports = [(self.aws_port, "VVG_AWS_PORT")]
        ports += [(self.api_port, "VVG_API_PORT")] if self.gateway else []
        ports += [(self.dashboard_port, "VVG_DASHBOARD_PORT")] if self.dashboard else []
        for port, name in ports:
            _check_free(port, name)
        # Credentials of the emulation only; a real AWS_PROFILE must never leak into the local stack.
        values = {**self.environment(), **self.extra_environ}
        if "VVG_DASHBOARD_INSECURE_COOKIES" not in os.environ:
            values["VVG_DASHBOARD_INSECURE_COOKIES"] = "1"  # plain http on loopback
        self._set_environ(values, drop=("AWS_PROFILE", "AWS_SESSION_TOKEN"))
        self.moto = subprocess.Popen(
            [sys.executable, "-m", "infra.motoserver", "-H", HOST, "-p", str(self.aws_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait_http(f"{self.aws_url}/moto-api/", 60)

        from infra.bootstrap import bootstrap, provision_demo_keys, seed_demo
        from vvolguard.adapters import aws
        from vvolguard.settings import Settings

        from vvolguard.services.root import Services

        aws.reset_clients()
        settings = self.settings = Settings.from_env()
        bootstrap(settings)
        self.root = root = Services.build(settings)
        if self.seed:
            self.seeded = seed_demo(settings, self.admin_password)
            provision_demo_keys(settings)  # Table 1's preboot volumes hold a luks key (docs/key-volume.md)
        elif self.gateway or self.dashboard:
            root.users.add("admin", "admin", self.admin_password, actor="cli")

        if self.gateway:
            from infra.gateway import Gateway

            self._serve(Gateway((HOST, self.api_port)))  # answers with its configured address, never the Host header
            _wait_http(f"http://{HOST}:{self.api_port}/v1/health", 30)
        if self.dashboard:
            from werkzeug.serving import make_server

            from dashboard import create_app
            from infra.gateway import fixed_host

            self._serve(make_server(HOST, self.dashboard_port,
                                    fixed_host(create_app(services=root), f"{HOST}:{self.dashboard_port}"), threaded=True))
            _wait_http(f"http://{HOST}:{self.dashboard_port}/healthz", 30)
        if self.reconcile_seconds:
            t = threading.Thread(target=self._reconcile_loop, args=(settings,), name="vvg-reconcile", daemon=True)
            t.start()
            self.threads.append(t)
        if self.dashboard:  # the dashboard's "Check now" reaches the scheduled function (docs/audit-check.md)
            t = threading.Thread(target=self._tamper_requests, name="vvg-tamper-check", daemon=True)
            t.start()
            self.threads.append(t)
        self.ec2_poller = start_ec2_poller(settings, self._stopping)

    def _tamper_requests(self) -> None:
        """What AWS does with the dashboard's "Check now" (an asynchronous invoke of the reconcile function):
        a requested tamper check runs within TAMPER_POLL_S (docs/audit-check.md)."""
        while not self._stopping.wait(TAMPER_POLL_S):
            try:
                self.root.tamper.run_if_due(requested_only=True)
            except Exception:  # the next poll tries again
                log.exception("tamper check failed")

    def _serve(self, srv: Any) -> None:
        # a 0.1 s poll: stop() returns promptly (the default 0.5 s, per server, was most of a stop's second)
        t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, name=type(srv).__name__,
                             daemon=True)
        t.start()
        self.servers.append(srv)
        self.threads.append(t)

    def _reconcile_loop(self, settings: Any) -> None:
        """The schedule of the template (every VVG_RECONCILE_SECONDS): a reconciler pass, which ends with the
        signed audit checkpoint (docs/threat-model.md)."""
        root = getattr(self, "root", None)
        if root is None:  # the loop alone, without start() (a test)
            from vvolguard.services.root import Services

            root = Services.build(settings)
        while not self._stopping.wait(self.reconcile_seconds):
            try:
                summary = root.reconciler().run()
                if not summary["ok"]:
                    log.warning("reconcile: %s", summary["errors"][:3])
            except Exception:  # the next pass tries again, as the schedule would
                log.exception("reconcile pass failed")

    def banner(self) -> str:
        lines = [
            "",
            "vvolguard local stack is ready",
            f"  AWS emulation (moto)  {self.aws_url}",
            f"  host webhook API      http://{HOST}:{self.api_port}   (health: /v1/health)",
            f"  dashboard             http://{HOST}:{self.dashboard_port}   (health: /healthz)",
            f"  dashboard sign-in     admin / {self.admin_password}"
            + ("   (generated; set VVG_ADMIN_PASSWORD to choose)" if self.generated_password else ""),
        ]
        if self.seeded:
            lines += [
                f"  demo host             {self.seeded['host_id']}   secret: {self.seeded['host_secret']}",
                "  demo policies         Table 1: vvol-1..vvol-5 on vm-1..vm-5 (array S1)",
                "  demo key volumes      vvol-1..vvol-3 (preboot) provisioned with a luks key (vvg key describe)",
            ]
        else:
            lines.append("  demo data             none (VVG_SEED=0)")
        env_file = getattr(self, "env_file", None)
        if env_file is not None:
            shown = os.path.relpath(env_file) if not os.path.relpath(env_file).startswith("..") else str(env_file)
            lines += ["", f"  CLI (another terminal):  . {shown}    then:  vvg policy export --output table"]
        lines += ["", "Ctrl-C stops everything."]
        return "\n".join(lines)

    def env_file_text(self) -> str:
        """A shell file that points a second terminal at this stack: `. .vvg/env` (docs/cli.md)."""
        import shlex

        values = dict(self.environment())
        values.update(VVG_API_URL=f"http://{HOST}:{self.api_port}",
                      VVG_DASHBOARD_URL=f"http://{HOST}:{self.dashboard_port}")
        if self.seeded:
            values.update(VVG_HOST_ID=self.seeded["host_id"], VVG_HOST_SECRET=self.seeded["host_secret"])
        lines = [
            "# Written by `make run` (infra/local.py) for the local stack it started; removed when it stops.",
            "# In another terminal:  . .vvg/env   then   vvg audit list --output table",
            "# It holds the emulation's dummy credentials and the demo host's secret: local use only.",
            # a real profile or session token in the shell must not leak into calls to the emulation
            "unset AWS_PROFILE AWS_SESSION_TOKEN AWS_SECURITY_TOKEN AWS_DEFAULT_PROFILE",
        ]
        lines += [f"export {k}={shlex.quote(str(v))}" for k, v in sorted(values.items())]
        lines.append(f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:\"$PATH\"")
        return "\n".join(lines) + "\n"

    def write_env_file(self, path: str) -> Path:
        """Write :meth:`env_file_text` to ``path`` (mode 0600, replaced atomically)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.env_file_text())
        os.replace(tmp, target)
        self.env_file = target
        return target

    def remove_env_file(self) -> None:
        """Remove the env file if it is still the one this stack wrote (a newer stack may have replaced it)."""
        target = getattr(self, "env_file", None)
        if target is None:
            return
        try:
            if target.read_text() == self.env_file_text():
                target.unlink()
        except OSError:
            pass

    def stop(self) -> None:
        """Stop every part (idempotent): servers shut down and their ports closed, threads joined, the
        moto server ended, the environment variables :meth:`start` set restored."""
        self._stopping.set()
        stop_ec2_poller(getattr(self, "ec2_poller", None))
        self.remove_env_file()
        for srv in self.servers:
            try:
                srv.shutdown()
                srv.server_close()
            except Exception:  # already closed
                pass
        self.servers = []
        for t in self.threads:
            if t is not threading.current_thread():
                t.join(10)
        self.threads = []
        if self.moto and self.moto.poll() is None:
            self.moto.terminate()
            try:
                self.moto.wait(10)
            except subprocess.TimeoutExpired:
                self.moto.kill()
                self.moto.wait()
        if self._saved_environ is not None:
            for k, v in self._saved_environ.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            self._saved_environ = None
            from vvolguard.adapters import aws

            aws.reset_clients()  # the clients pointed at this stack's emulation


def start_ec2_poller(settings: Any, stopping: threading.Event) -> threading.Thread | None:
    """The EC2 VMs' lifecycle in the local stack (docs/ec2-vms.md): every VVG_EC2_POLL_SECONDS (default 10,
    0 off; independent of the reconciler) read the emulation's instance states and feed each change, as an
    "EC2 Instance State-change Notification", to the same handler the EventBridge rule invokes in AWS."""
    if not settings.ec2_poll_seconds:
        return None

    def loop() -> None:
        from vvolguard.handlers.ec2_lifecycle import process
        from vvolguard.services.vms import Ec2Lifecycle, Ec2Poller

        lifecycle = Ec2Lifecycle(settings)
        poller = Ec2Poller(settings, feed=lambda event: process(event, lifecycle))
        while not stopping.wait(settings.ec2_poll_seconds):
            try:
                poller.poll()
            except Exception:  # the next poll tries again, as EventBridge would retry
                log.exception("EC2 poll failed")

    t = threading.Thread(target=loop, name="vvg-ec2-poller", daemon=True)
    t.stopping = stopping  # type: ignore[attr-defined]
    t.start()
    return t


def stop_ec2_poller(thread: threading.Thread | None) -> None:
    """Stop the poller (its event is set by the stack's stop) and wait for a poll under way."""
    if thread is not None:
        thread.stopping.set()  # type: ignore[attr-defined]
        thread.join(10)


def main() -> int:
    """Run until SIGINT or SIGTERM, then stop every part."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    stack = LocalStack(
        _port("VVG_AWS_PORT", 5000), _port("VVG_API_PORT", 3000), _port("VVG_DASHBOARD_PORT", 8080),
        seed=os.environ.get("VVG_SEED", "1") != "0",
        admin_password=os.environ.get("VVG_ADMIN_PASSWORD") or None,
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
    except SystemExit:
        stack.stop()
        raise
    except Exception as exc:
        stack.stop()
        print(f"vvg: error: the local stack did not start: {exc}", file=sys.stderr)
        return 1
    try:
        stack.write_env_file(os.environ.get("VVG_ENV_FILE") or ".vvg/env")
    except OSError as exc:
        print(f"vvg: warning: cannot write the CLI's env file: {exc}", file=sys.stderr)
    print(stack.banner(), flush=True)
    while not stop.wait(0.5):
        if stack.moto and stack.moto.poll() is not None:
            print("vvg: error: the AWS emulation exited; stopping", file=sys.stderr)
            stack.stop()
            return 1
    print("\nstopping...", flush=True)
    stack.stop()
    print("stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
