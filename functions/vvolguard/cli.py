"""The admin CLI ``vvg`` (docs/cli.md): JSON on stdout, one-line errors on stderr."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Iterable, NoReturn, Sequence

from vvolguard.errors import VvgError
from vvolguard.services import diagnostics

MAX_STDIN_PASSWORD = 1024
DEFAULT_API_URL = "http://127.0.0.1:3000"


class CliError(Exception):
    """An error to print as one line with an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage block
        raise CliError(f"{message} (see '{self.prog} --help')", 2)


def _out(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=False, default=str) + "\n")


# ---- lists: JSON lines by default (for scripts), or a table for people (--output table)

def add_output_option(parser: argparse.ArgumentParser) -> None:
    """Give a list command ``--output json|table`` (JSON lines stay the default)."""
    parser.add_argument("--output", choices=("json", "table"), default="json",
                        help="json: one JSON object a line, for scripts (default); table: aligned columns for people")


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(_cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={_cell(v)}" for k, v in value.items()) or "-"
    # one line per row: control characters (a hostile id, a newline in a reason) never reach the terminal
    return "".join(ch if ch.isprintable() else "?" for ch in str(value))


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as aligned text columns under an upper-case header; the last column is never padded."""
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = []
    for row in [[c.upper() for c in columns]] + cells:
        lines.append("  ".join(v.ljust(widths[i]) if i < len(columns) - 1 else v for i, v in enumerate(row)).rstrip())
    return "\n".join(lines) + "\n"


def emit_rows(rows: Iterable[dict[str, Any]], output: str, columns: Sequence[str]) -> None:
    """Print a list command's rows: JSON lines, or (``output == "table"``) a table of ``columns``."""
    if output == "table":
        sys.stdout.write(format_table(list(rows), columns))
        return
    for row in rows:
        _out(row)


def _read_password(prompt_name: str) -> str:
    data = sys.stdin.read(MAX_STDIN_PASSWORD + 2)
    if data.endswith("\n"):
        data = data[:-1]
    if data.endswith("\r"):
        data = data[:-1]
    if not data:
        raise CliError(f"{prompt_name}: no password on standard input")
    if len(data) > MAX_STDIN_PASSWORD:
        raise CliError(f"{prompt_name}: password longer than {MAX_STDIN_PASSWORD} characters")
    return data


def _root():
    """The composition root of this run (docs/architecture.md), built from the environment on first use."""
    global _built_root
    if _built_root is None:
        from vvolguard.services.root import Services

        _built_root = Services.build()
    return _built_root


_built_root = None


def cmd_host(args: argparse.Namespace) -> int:
    key = _read_key_file(args.public_key, "--public-key") if getattr(args, "public_key", None) else None
    if key is not None:
        from vvolguard.services.hosts import parse_key

        parse_key(key)  # refuse a bad key before touching AWS
    hosts = _root().hosts
    if args.action == "enroll":
        _out(hosts.enroll(args.host_id, args.mac, args.serial, args.hardware or "", public_key=key))
    elif args.action == "rotate":
        _out(hosts.rotate(args.host_id, public_key=key))
    elif args.action == "list":
        if args.backfill:
            _backfilled(hosts.backfill_listing(), "host")
        emit_rows(hosts.rows(), args.output, ("host_id", "status", "auth", "last_seen"))
    else:
        _out(hosts.revoke(args.host_id))
    return 0


def _backfilled(n: int, what: str) -> None:
    """Say on stderr (stdout stays JSON lines) how many items the listing backfill added."""
    print(f"backfill: {n} {what}{'s' if n != 1 else ''} added to the listing index", file=sys.stderr)


MAX_KEY_FILE = 16 * 1024


def _read_key_file(name: str, option: str, private: bool = False) -> bytes:
    """A key file (docs/host-keys.md), bounded; a private key readable by others is refused, as ssh does."""
    import os
    import stat

    try:
        with open(name, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise CliError(f"{option}: {name} is not a regular file")
            if private and st.st_mode & 0o077:
                raise CliError(f"{option}: {name} must be readable by its owner only (chmod 600)")
            data = fh.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise CliError(f"{option}: cannot read {name}: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE:
        raise CliError(f"{option}: {name} is over {MAX_KEY_FILE} bytes; not a key file")
    return data


def cmd_vm(args: argparse.Namespace) -> int:
    """Break-glass (docs/break-glass.md): quarantine / release a VM; start / stop an EC2 VM (docs/ec2-vms.md)."""
    from vvolguard.services.quarantine import validate_reason, validate_vm

    validate_vm(args.vm_id)
    if args.action in ("start", "stop"):
        root = _root()
        _out(getattr(root.vms, args.action)(args.vm_id, actor=cli_actor(root.settings)))
        return 0
    if args.action == "quarantine":
        validate_reason(args.reason)
    root = _root()
    actor = cli_actor(root.settings)
    if args.action == "quarantine":
        _out(root.quarantine.quarantine(args.vm_id, args.reason, actor=actor))
    else:
        _out(root.quarantine.release(args.vm_id, actor=actor))
    return 0


def _one_line(errors: list[str], shown: int = 5) -> str:
    """Every problem of a refused policy file on one line (the first few, then a count)."""
    text = "; ".join(errors[:shown])
    if len(errors) > shown:
        text += f"; and {len(errors) - shown} more"
    return f"{text} — nothing was applied"


def _read_policy_file(name: str) -> bytes:
    """A policy file's bytes ("-" is standard input), read bounded: the parser refuses what is too large."""
    try:
        if name == "-":
            return sys.stdin.buffer.read(8 * 1024 * 1024)
        with open(name, "rb") as fh:
            return fh.read(8 * 1024 * 1024)
    except OSError as exc:
        raise CliError(f"cannot read {name}: {exc.strerror}") from None


def _problems(errors: list[str]) -> int:
    """validate / --dry-run (docs/policy-apply.md): one problem a line on stderr, then the total; exit 1."""
    for e in errors:
        sys.stderr.write(" ".join(e.split()) + "\n")
    sys.stderr.write(f"{len(errors)} problem{'s' if len(errors) != 1 else ''}\n")
    return 1


def cmd_policy(args: argparse.Namespace) -> int:
    from vvolguard.domain.policy import dump_policy_file, parse_policy_text
    from vvolguard.errors import PolicyValidationError

    if args.action == "impact":
        return cmd_policy_impact(args)
    if args.action in ("apply", "validate"):
        name = args.file
        data = _read_policy_file(name)
        checking = args.action == "validate" or args.dry_run
        try:
            specs = parse_policy_text(data, name)
        except PolicyValidationError as exc:
            if checking:
                return _problems(exc.errors)
            raise CliError(_one_line(exc.errors)) from None
        if args.action == "validate":
            _out({"valid": True, "volumes": len(specs)})
            return 0
        policies = _root().policies
        if args.dry_run:
            _out(policies.dry_run(specs))
        else:
            _out(policies.apply(specs, actor="cli"))
    elif args.action == "export":
        from vvolguard.domain.natural import natural_key

        specs = sorted(_root().policies.export(), key=lambda s: natural_key(s.volume_id))
        if args.output == "table":
            emit_rows([s.to_file_entry() for s in specs], "table", POLICY_COLUMNS)
        elif args.format == "yaml":
            sys.stdout.write(dump_policy_file(specs))
        else:
            _out({"volumes": [s.to_file_entry() for s in specs]})
    else:
        _out(_root().policies.delete(args.volume_id, actor="cli"))
    return 0


def cmd_policy_impact(args: argparse.Namespace) -> int:
    """`vvg policy impact FILE [--since DURATION]`: replay the period's events through the draft (docs/policy-impact.md)."""
    from vvolguard.domain.policy import parse_policy_text
    from vvolguard.errors import PolicyValidationError
    from vvolguard.services.impact import parse_period

    since = parse_period(args.since)  # a bad duration is one line, before touching AWS
    data = _read_policy_file(args.file)
    try:
        specs = parse_policy_text(data, args.file)
    except PolicyValidationError as exc:
        return _problems(exc.errors)
    _out(_root().impact.analyse(specs, since))
    return 0


def cmd_preflight(args: argparse.Namespace) -> int:
    """`vvg preflight VM_ID`: will this VM boot? Exit 0 only when every check passes (docs/preflight.md)."""
    from vvolguard.services.preflight import validate_vm_id

    validate_vm_id(args.vm_id)
    result = _root().preflight.run(args.vm_id)
    _out(result)
    return 0 if result["ready"] else 1


_actor_cache: dict[str, str] = {}


def cli_actor(settings) -> str:
    """The audit actor of this CLI run: ``cli:`` + the caller's AWS principal, else the OS user (once per process)."""
    if "actor" not in _actor_cache:
        import getpass

        who = diagnostics.caller_arn(settings.region)
        if not who:
            try:
                who = getpass.getuser()
            except (KeyError, OSError):
                who = "unknown"
        _actor_cache["actor"] = f"cli:{who}"
    return _actor_cache["actor"]


def cmd_user(args: argparse.Namespace) -> int:
    """Dashboard users (docs/dashboard.md): every change is audited and ends the user's sessions."""

    if args.action in ("add", "passwd"):
        if not args.password_stdin:
            raise CliError(f"user {args.action}: --password-stdin is required (passwords never go on the command line)", 2)
        password = _read_password(f"user {args.action}")
    root = _root()
    settings, users = root.settings, root.users
    if args.action == "list":
        if args.backfill:
            _backfilled(users.backfill_listing(), "user")
        emit_rows(users.rows(), args.output, ("user", "role", "disabled", "last_login"))
        return 0
    actor = cli_actor(settings)
    if args.action == "add":
        _out(users.add(args.name, args.role, password, actor=actor))
    elif args.action == "passwd":
        _out(users.passwd(args.name, password, actor=actor))
    elif args.action == "role":
        _out(users.set_role(args.name, args.role, actor=actor))
    elif args.action == "disable":
        _out(users.disable(args.name, actor=actor))
    else:
        _out(users.remove(args.name, actor=actor))
    return 0


AUDIT_COLUMNS = ("at", "actor", "vm_id", "volume_id", "event_type", "action", "outcome", "reason")
POLICY_COLUMNS = ("volume_id", "vm_id", "host_id", "storage_array", "size_mb", "attach_on", "detach_on", "app",
                  "os_disk_encryption")


def cmd_audit(args: argparse.Namespace) -> int:
    from vvolguard.services.audit_queries import RECORD_FIELDS

    log = _root().audit
    if args.action == "list":
        rows = []
        for rec in log.recent(vm_id=args.vm, volume_id=args.volume, limit=args.limit):
            row = {k: getattr(rec, k) for k in RECORD_FIELDS}
            row["detail"] = rec.detail.as_dict() if rec.detail is not None else {}
            row["chain"], row["seq"] = rec.chain, int(rec.seq)
            if args.output == "json":
                _out(row)  # streamed: a long history starts printing at once
            else:
                rows.append(row)
        if args.output == "table":
            emit_rows(rows, "table", AUDIT_COLUMNS)
        return 0
    if args.action == "checkpoint":
        cp = log.checkpoint()
        _out(cp)
        if cp["held_back"]:
            sys.stderr.write(f"vvg: warning: {cp['held_back']} chain(s) are behind the previous checkpoint or have a "
                             f"head that does not verify (kept at their checkpointed record): run 'vvg audit verify'\n")
        return 0
    if args.action == "export":
        return _audit_export(args)
    if args.file is not None:
        return _audit_verify_file(log, args.file, args.allow_gaps)
    if args.allow_gaps:
        raise CliError("audit verify: --allow-gaps goes with --file", 2)
    summary = log.verify()
    _out(summary)
    if not summary["ok"]:
        p = summary["first_problem"]
        _tamper_alert(log.settings, p, "vvg audit verify")
        sys.stderr.write(f"vvg: error: audit history not intact: record {p['seq']} of chain {p['chain']}: {p['problem']}\n")
        return 1
    return 0


MAX_EXPORT_FILE = 512 * 1024 * 1024


def _tamper_alert(settings, problem: dict[str, Any], what: str) -> None:
    """A tamper check that exits 1 raises tamper_check_failed (docs/alerts.md); never fails the command."""
    from vvolguard.services.tamper import problem_alert

    problem_alert(settings, problem, what)


def _audit_export(args: argparse.Namespace) -> int:
    """`vvg audit export [--vm VM] [--since DURATION] --out FILE`: a JSON array, written only when complete."""
    import os
    import tempfile
    from datetime import datetime, timezone

    from vvolguard.services.audit_queries import export_items, export_row, parse_duration

    since = None
    if args.since is not None:
        since = (datetime.now(timezone.utc) - parse_duration(args.since)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    out = os.path.abspath(args.out)
    if os.path.isdir(out):
        raise CliError(f"audit export: {args.out} is a directory")
    folder = os.path.dirname(out)
    if not os.path.isdir(folder):
        raise CliError(f"audit export: the folder of {args.out} does not exist")
    items = export_items(args.vm, since)
    rows = [export_row(i) for i in items]
    fd, tmp = tempfile.mkstemp(prefix=".vvg-export-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("[")
            for n, row in enumerate(rows):
                fh.write(("\n" if n == 0 else ",\n") + json.dumps(row, sort_keys=False))
            fh.write("\n]\n")
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise
    _out({"records": len(rows), "chains": len({r["chain"] for r in rows}), "out": args.out})
    return 0


def _audit_verify_file(log, name: str, allow_gaps: bool) -> int:
    """`vvg audit verify --file EXPORT.json`: the export's records checked offline with the audit key."""
    import os

    from vvolguard.services.audit_queries import verify_export

    try:
        with open(name, "rb") as fh:
            data = fh.read(MAX_EXPORT_FILE + 1)
    except OSError as exc:
        raise CliError(f"audit verify: cannot read {name}: {exc.strerror}") from None
    if len(data) > MAX_EXPORT_FILE:
        raise CliError(f"audit verify: {name} is larger than {MAX_EXPORT_FILE // (1024 * 1024)} MiB")
    try:
        records = json.loads(data)
    except (ValueError, RecursionError):
        raise CliError(f"audit verify: {name} is not JSON (an export is a JSON array of records)") from None
    if not isinstance(records, list):
        raise CliError(f"audit verify: {name} is not a JSON array of audit records")
    summary = verify_export(log, records, allow_gaps=allow_gaps)
    _out(summary)
    if not summary["ok"]:
        p = summary["first_problem"]
        _tamper_alert(log.settings, p, f"vvg audit verify --file {os.path.basename(name)}")
        sys.stderr.write(f"vvg: error: export not intact: entry {p['index'] + 1} (record {p['seq']} of chain "
                         f"{p['chain']}): {p['problem']}\n")
        return 1
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    """`vvg alerts list [--since DURATION]`: security alerts as JSON lines, newest first (docs/alerts.md)."""
    from vvolguard.services.alerts import list_alerts, parse_since

    since = parse_since(args.since)  # a bad duration is one line, before touching AWS
    _root()
    emit_rows(list_alerts(since), args.output, ("at", "kind", "severity", "vm_id", "volume_id", "host_id", "detail"))
    return 0


def cmd_event(args: argparse.Namespace) -> int:
    """Sign and send one event exactly as a host does (the reference host client)."""
    import time
    import urllib.error
    import urllib.request
    import uuid

    from vvolguard.domain.secrets import sign

    secret = args.secret or os.environ.get("VVG_HOST_SECRET")
    if args.key:
        from vvolguard.domain import hostkeys

        if args.secret:
            raise CliError("event send: give --key or --secret, not both", 2)
        try:
            private = hostkeys.load_private_key(_read_key_file(args.key, "--key", private=True))
        except hostkeys.HostKeyError as exc:
            raise CliError(f"event send: --key: {exc}", 2) from None
        sign = lambda _secret, t, raw: hostkeys.sign_ed25519(private, t, raw)  # noqa: E731
        secret = "(key)"
    if not secret:
        raise CliError("event send: the host secret is needed: --secret or VVG_HOST_SECRET (or --key FILE)", 2)
    body: dict[str, Any] = {"event_id": args.event_id or f"cli-{uuid.uuid4()}", "type": args.type, "vm_id": args.vm}
    for key in ("app", "volume", "destination_host", "source_host"):
        value = getattr(args, key)
        if value is not None:
            body["volume_id" if key == "volume" else key] = value
    if args.type not in _event_types():
        import difflib

        close = difflib.get_close_matches(args.type, _event_types(), n=1)
        sys.stderr.write(f"vvg: note: {args.type[:80]!r} is not an event type"
                         + (f"; did you mean {close[0]}?" if close else "") + " (see 'vvg event send --help')\n")
    if args.password_stdin:
        body["password"] = _read_password("event send")
    if args.occurred_at:
        body["occurred_at"] = args.occurred_at
    raw = json.dumps(body, separators=(",", ":")).encode("utf-8")
    base = args.url or os.environ.get("VVG_API_URL") or DEFAULT_API_URL
    url = base.rstrip("/") + "/v1/events"
    if not url.startswith(("http://", "https://")):
        raise CliError(f"event send: --url must start with http:// or https://, got {base[:80]!r}", 2)
    req = urllib.request.Request(url, data=raw, method="POST", headers={
        "Content-Type": "application/json", "X-VVG-Host": args.host,
        "X-VVG-Signature": sign(secret, int(time.time()), raw)})
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:  # noqa: S310 - the operator's URL
            status, text = resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(f"event send: cannot reach {url}: {reason}") from None
    sys.stdout.write(text.rstrip("\n") + "\n")
    if not 200 <= status < 300:
        try:
            err = json.loads(text)["error"]
            sys.stderr.write(f"vvg: error: {status} {err['code']}: {err['message']}\n")
        except (ValueError, KeyError, TypeError):
            sys.stderr.write(f"vvg: error: HTTP {status}\n")
        return 1
    try:
        decisions = json.loads(text).get("decisions")
    except (ValueError, AttributeError):
        decisions = None
    if decisions == []:
        sys.stderr.write(f"vvg: note: {_no_match_hint(args.type, args.vm)}\n")
    return 0


# What each event type acts on, in the policy file's words (docs/webhook-api.md has the whole table).
EVENT_KEYWORDS: dict[str, str] = {
    "vm.created": "creates the VM's volumes not yet at the provider (every policy of the VM)",
    "vm.preboot": "attaches volumes with attach_on: preboot",
    "vm.booted": "detaches volumes with detach_on: postboot",
    "vm.shutdown": "detaches every attached volume of the VM, whatever its detach_on",
    "app.started": "attaches volumes with attach_on: app_start and app: APP (--app)",
    "app.stopped": "detaches volumes with detach_on: app_stop and app: APP (--app)",
    "license.check": "attaches volumes with attach_on: license_check and app: APP (--app)",
    "license.verified": "detaches volumes with detach_on: license_verified and app: APP (--app)",
    "volume.attach_request": "attaches one volume with attach_on: request (--volume, --password-stdin)",
    "volume.detach_request": "detaches one volume (--volume)",
    "vm.migrate.start": "grants --destination-host every volume of the VM (vvg:hosts)",
    "vm.migrate.complete": "revokes --source-host; the sender becomes the VM's host",
    "guest.inventory": "selects security software per volume against min_key_bits",
    "vm.heartbeat": "renews the leases of attached volumes whose detach_on is not postboot",
}


def _event_types() -> list[str]:
    from vvolguard.domain.events import TYPES

    return list(TYPES)


def _event_epilog() -> str:
    types = _event_types()
    width = max(len(t) for t in types)
    lines = ["event types (TYPE) and the policies they act on:"]
    lines += [f"  {t.ljust(width)}  {EVENT_KEYWORDS.get(t, '')}".rstrip() for t in types]
    lines += ["", "The secret comes from --secret or VVG_HOST_SECRET, the URL from --url or VVG_API_URL",
              "('. .vvg/env' sets both for the local stack). See docs/cli.md and docs/webhook-api.md."]
    return "\n".join(lines)


def _no_match_hint(event_type: str, vm_id: str) -> str:
    """Why an accepted event decided nothing, in words a person can act on."""
    what = EVENT_KEYWORDS.get(event_type)
    if event_type in ("vm.created", "vm.shutdown", "vm.migrate.start", "vm.migrate.complete", "vm.heartbeat"):
        return (f"the event matched no volume: {vm_id} has no policies (or nothing to do for {event_type}); "
                f"'vvg policy export --output table' lists them")
    return (f"the event matched no volume: {vm_id} has no policies that act on {event_type}"
            + (f" ({what})" if what else "") + "; 'vvg policy export --output table' lists them")


def cmd_reconcile(args: argparse.Namespace) -> int:
    """One pass of the scheduled reconciler, now."""
    summary = _root().reconciler().run()
    _out(summary)
    if not summary["ok"]:
        sys.stderr.write(f"vvg: error: reconcile finished with {len(summary['errors'])} error(s): {summary['errors'][0]}\n")
        return 1
    return 0


def _new_secret_file(path: str) -> int:
    """A new file of mode 0600 (never an existing one: key bytes do not overwrite anything)."""
    import os

    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        raise CliError(f"{path} already exists; key bytes are written only to a new file") from None
    except OSError as exc:
        raise CliError(f"cannot create {path}: {exc.strerror}") from None


def _write_all(fd: int, data: bytes) -> None:
    import os

    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def cmd_key(args: argparse.Namespace) -> int:
    """The key volume (docs/key-volume.md): build an image, provision at the provider, describe, recover."""
    import os

    from vvolguard.domain import keyvolume as kv

    if args.action == "build":
        from datetime import datetime, timezone

        from vvolguard.domain.constants import rfc3339
        from vvolguard.services.keys import collect_entries

        cap = args.size_mb * 1024 * 1024 if args.size_mb else None
        entries = collect_entries(args.generate or (), args.file or (), cap)
        image, header = kv.build(args.vm, args.volume, entries,
                                 rfc3339(datetime.now(timezone.utc)), cap)
        fd = _new_secret_file(args.out)
        try:
            _write_all(fd, image)
        finally:
            os.close(fd)
        _out({"volume_id": args.volume, "vm_id": args.vm, "out": args.out, "size": len(image),
              "entries": kv.public_entries(header)})
        return 0
    if args.action == "recover":
        fd = _new_secret_file(args.out)
        ok = False
        try:
            data = _root().keys.recover(args.volume_id, args.name, actor="cli")
            _write_all(fd, data)
            ok = True
        finally:
            os.close(fd)
            if not ok:
                os.unlink(args.out)
        _out({"volume_id": args.volume_id, "name": args.name, "out": args.out, "size": len(data)})
        return 0
    keys = _root().keys
    if args.action == "describe":
        _out(keys.describe(args.volume_id))
    else:
        _out(keys.provision(args.volume_id, args.generate or (), args.file or (), escrow=args.escrow, actor="cli"))
    return 0


def _size_mb(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text[:20]!r}") from None
    if not 1 <= n <= 1048576:
        raise argparse.ArgumentTypeError("must be from 1 to 1048576")
    return n


def _limit(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text[:20]!r}") from None
    if not 1 <= n <= 10000:
        raise argparse.ArgumentTypeError("must be from 1 to 10000")
    return n


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("vvolguard")
    except Exception:  # noqa: BLE001 - not installed as a distribution (e.g. Lambda's layout)
        return "unknown"


_PARSER: argparse.ArgumentParser | None = None


def _parser() -> argparse.ArgumentParser:
    """The process's parser, built on first use (argparse keeps nothing of one parse for the next)."""
    global _PARSER
    if _PARSER is None:
        _PARSER = build_parser()
    return _PARSER


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree; every option says what it does (docs/cli.md is the long form)."""
    p = _Parser(prog="vvg", description="vvolguard admin CLI. It reaches AWS through the standard AWS environment "
                "(AWS_ENDPOINT_URL, AWS_REGION, credentials); for the local stack run '. .vvg/env' first. "
                "Output is JSON on stdout; errors are one line on stderr. See docs/cli.md.")
    p.add_argument("--version", action="version", version=f"vvg {_version()}", help="print the version and exit")
    sub = p.add_subparsers(dest="group", required=True, parser_class=_Parser, metavar="COMMAND")

    host = sub.add_parser("host", help="enroll, rotate or revoke hypervisor hosts",
                          description="Hypervisor hosts that may send signed events.")
    hs = host.add_subparsers(dest="action", required=True, parser_class=_Parser, metavar="ACTION")
    e = hs.add_parser("enroll", help="enroll a host; prints its secret once",
                      description="Enroll a host. Its secret is printed only here: put it on the host.")
    e.add_argument("host_id", help="the host's id, [A-Za-z0-9._-]{1,64}")
    e.add_argument("--mac", required=True, help="the host's MAC address (kept only as a salted digest)")
    e.add_argument("--serial", required=True, help="the host's hardware serial number (kept only as a salted digest)")
    e.add_argument("--hardware", default="", help="free text describing the hardware (kept only as a salted digest)")
    e.add_argument("--public-key", dest="public_key", help="an Ed25519 public key file (PEM or ssh-ed25519 line): "
                   "the host signs with its key and gets no secret (docs/host-keys.md)")
    ro = hs.add_parser("rotate", help="give a host a new secret (or a key host a new public key); the old one stops "
                       "working at once")
    ro.add_argument("host_id", help="the enrolled host's id")
    ro.add_argument("--public-key", dest="public_key", help="a key host's new Ed25519 public key file")
    hl = hs.add_parser("list", help="every host, revoked ones included")
    add_output_option(hl)
    hl.add_argument("--backfill", action="store_true", help="once, after upgrading: list hosts enrolled before the "
                    "listing index too (scans the hosts table; docs/host-user-pages.md)")
    hs.add_parser("revoke", help="refuse a host from now on; detach, untag and end the grants of what it holds"
                  ).add_argument("host_id", help="the enrolled host's id")
    host.set_defaults(func=cmd_host)

    pol = sub.add_parser("policy", help="validate, apply, export or delete volume policies",
                         description="The policy table: one entry per volume (docs/policy-file.md).")
    ps = pol.add_subparsers(dest="action", required=True, parser_class=_Parser, metavar="ACTION")
    ap = ps.add_parser("apply", help="upsert the volumes of a policy file, all or nothing")
    ap.add_argument("file", help="a YAML or JSON policy file with the key 'volumes'; '-' reads standard input")
    ap.add_argument("--dry-run", dest="dry_run", action="store_true",
                    help="show what apply would change, old -> new per field, and write nothing (docs/policy-apply.md)")
    ps.add_parser("validate", help="check a policy file only: every problem, one a line, then the total").add_argument(
        "file", help="a YAML or JSON policy file; '-' reads standard input")
    ex = ps.add_parser("export", help="print the whole policy table as a policy file",
                       description="Print the policy table as a policy file that 'vvg policy apply' accepts "
                                   "(passwords and their hashes never leave), in natural volume id order.")
    ex.add_argument("--format", choices=("json", "yaml"), default="json",
                    help="the policy file's format: json (default) or yaml")
    add_output_option(ex)
    ps.add_parser("delete", help="remove one volume's policy (detaching the volume first if attached)").add_argument(
        "volume_id", help="the volume whose policy to remove")
    im = ps.add_parser("impact", help="replay the recorded host events of a period through a draft policy file and "
                       "list the decisions it would change (reads only; docs/policy-impact.md)")
    im.add_argument("file", help="the draft: a YAML or JSON policy file, read as apply reads it; '-' reads standard input")
    im.add_argument("--since", help="how far back: 30m, 12h, 7d (default 7d, at most 90d)")
    pol.set_defaults(func=cmd_policy)

    pf = sub.add_parser("preflight", help="will this VM boot? every check with what to do; exit 0 only when ready",
                        description="Check a VM's next boot: host, quarantine, policies, instance, volumes, key "
                                    "volumes, locks (docs/preflight.md). Exit 0 when ready, 1 when not.")
    pf.add_argument("vm_id", help="the VM whose next boot to check")
    pf.set_defaults(func=cmd_preflight)

    aud = sub.add_parser("audit", help="list or verify the audit history",
                         description="The tamper-evident audit history (docs/security-model.md).")
    au = aud.add_subparsers(dest="action", required=True, parser_class=_Parser, metavar="ACTION")
    li = au.add_parser("list", help="audit records, newest first")
    li.add_argument("--vm", help="only records of this VM id")
    li.add_argument("--volume", help="only records of this volume id")
    li.add_argument("--limit", type=_limit, default=100, help="at most this many records, 1 to 10000 (default 100)")
    add_output_option(li)
    ve = au.add_parser("verify", help="check the hash chains against the latest signed checkpoint, or an export; "
                       "exit 1 naming the first bad record")
    ve.add_argument("--file", help="check this JSON export offline (with the audit key) instead of the tables")
    ve.add_argument("--allow-gaps", action="store_true",
                    help="with --file: the export was filtered by more than VM and time; missing records are not errors")
    au.add_parser("checkpoint", help="sign the head of every audit chain now")
    xp = au.add_parser("export", help="write the records as a JSON array (docs/audit-export.md)")
    xp.add_argument("--vm", help="only the records of this VM id")
    xp.add_argument("--since", help="only records newer than this: 30m, 12h, 7d")
    xp.add_argument("--out", required=True, help="the file to write (written only when complete)")
    aud.set_defaults(func=cmd_audit)

    evt = sub.add_parser("event", help="send a signed host event, as a host would")
    es = evt.add_subparsers(dest="action", required=True, parser_class=_Parser, metavar="ACTION")
    snd = es.add_parser("send", help="sign and send one event as a host would", epilog=_event_epilog(),
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Sign one event with the host's secret and POST it to the API's /v1/events; "
                                    "prints the answer, exit 0 on 2xx.")
    snd.add_argument("type", metavar="TYPE", help="the event type (listed below)")
    snd.add_argument("--vm", required=True, help="the VM id the event is about")
    snd.add_argument("--host", required=True, help="the sending host's id (must be the VM's host)")
    snd.add_argument("--secret", help="the host's secret (default: the VVG_HOST_SECRET variable)")
    snd.add_argument("--key", help="sign as a key host: its Ed25519 private key file (PKCS#8 PEM or OpenSSH, mode 0600)")
    snd.add_argument("--url", default=None,
                     help=f"the API's base URL (default: VVG_API_URL, else {DEFAULT_API_URL}); /v1/events is added")
    snd.add_argument("--app", help="the application (app.* and license.* events)")
    snd.add_argument("--volume", help="the volume id (volume.attach_request, volume.detach_request)")
    snd.add_argument("--password-stdin", action="store_true",
                     help="read the volume's password from standard input (volume.attach_request)")
    snd.add_argument("--destination-host", dest="destination_host", help="where the VM goes (vm.migrate.start)")
    snd.add_argument("--source-host", dest="source_host", help="where the VM came from (vm.migrate.complete)")
    snd.add_argument("--event-id", dest="event_id", help="the event's unique id (default: a new random one)")
    snd.add_argument("--occurred-at", dest="occurred_at", help="RFC 3339 time of the event at the host")
    snd.add_argument("--timeout", type=float, default=30.0, help=argparse.SUPPRESS)
    evt.set_defaults(func=cmd_event)

    vm = sub.add_parser("vm", help="break-glass: quarantine or release a VM; start or stop an EC2 VM")
    vs = vm.add_subparsers(dest="action", required=True, parser_class=_Parser)
    q = vs.add_parser("quarantine", help="detach every volume of the VM now and refuse its attaches")
    q.add_argument("vm_id", help="the VM to quarantine")
    q.add_argument("--reason", default="", help="why (kept in the audit history and the alert)")
    vs.add_parser("release", help="end a VM's quarantine").add_argument("vm_id", help="the quarantined VM")
    vs.add_parser("start", help="EC2 VM: attach its preboot volumes to the stopped instance, then start it "
                  "(docs/ec2-vms.md)").add_argument("vm_id", help="the EC2 VM (its policies' host is aws-ec2)")
    vs.add_parser("stop", help="EC2 VM: stop the instance, then detach its volumes (docs/ec2-vms.md)").add_argument(
        "vm_id", help="the EC2 VM (its policies' host is aws-ec2)")
    vm.set_defaults(func=cmd_vm)

    rec = sub.add_parser("reconcile", help="run one pass of the reconciler now (expired leases, grants, orphans)")
    rec.set_defaults(func=cmd_reconcile)

    key = sub.add_parser("key", help="the key volume: build, provision, describe, recover (docs/key-volume.md)")
    ks = key.add_subparsers(dest="action", required=True, parser_class=_Parser)
    kb = ks.add_parser("build", help="write a key volume image to a local file (offline)")
    kb.add_argument("--vm", required=True, help="the VM id written in the header (the guest reader checks it)")
    kb.add_argument("--volume", required=True, help="the volume id written in the header")
    kb.add_argument("--out", required=True, help="the image file to write (a new file of mode 0600)")
    kb.add_argument("--size-mb", dest="size_mb", type=_size_mb, help="refuse entries that would not fit this size")
    kp = ks.add_parser("provision", help="write a fresh key volume at the provider, without attaching it")
    kp.add_argument("volume_id", help="the policy's volume id (refused while the volume is attached)")
    kp.add_argument("--escrow", action="store_true", help="also keep each entry encrypted under the KMS key")
    for sp in (kb, kp):
        sp.add_argument("--generate", action="append", metavar="NAME[:BYTES]", help="random bytes (64 by default)")
        sp.add_argument("--file", action="append", metavar="NAME=PATH[:KIND]", help="an entry from a file")
    ks.add_parser("describe", help="what is on the volume (never key bytes)").add_argument(
        "volume_id", help="the policy's volume id")
    kr = ks.add_parser("recover", help="break-glass: an escrowed entry to a new file of mode 0600 (audited)")
    kr.add_argument("volume_id", help="the policy's volume id")
    kr.add_argument("name", help="the entry to recover (e.g. luks)")
    kr.add_argument("--out", required=True, help="a new file to write the entry's bytes to (mode 0600)")
    key.set_defaults(func=cmd_key)

    alr = sub.add_parser("alerts", help="security alerts (docs/alerts.md)")
    als = alr.add_subparsers(dest="action", required=True, parser_class=_Parser)
    al = als.add_parser("list", help="alerts as JSON lines, newest first")
    al.add_argument("--since", help="how far back: 30m, 12h, 7d (default 7d)")
    add_output_option(al)
    alr.set_defaults(func=cmd_alerts)

    usr = sub.add_parser("user", help="dashboard users")
    us = usr.add_subparsers(dest="action", required=True, parser_class=_Parser, metavar="ACTION")
    ua = us.add_parser("add", help="create a dashboard user")
    ua.add_argument("name", help="the user name to sign in with")
    ua.add_argument("--role", required=True, choices=("viewer", "editor", "admin"),
                    help="viewer reads; editor also changes policies; admin also manages hosts and users")
    ua.add_argument("--password-stdin", action="store_true",
                    help="read the password (8 to 256 characters) from standard input; required")
    ul = us.add_parser("list", help="every dashboard user, disabled ones included")
    add_output_option(ul)
    ul.add_argument("--backfill", action="store_true", help="once, after upgrading: list users added before the "
                    "listing index too (scans the users table; docs/host-user-pages.md)")
    for name, text in (("disable", "disable a user; its sessions end at once"),
                       ("remove", "remove a user; its sessions end at once")):
        us.add_parser(name, help=text).add_argument("name", help="the user name")
    upw = us.add_parser("passwd", help="set a new password (from standard input); the user's sessions end")
    upw.add_argument("name", help="the user name")
    upw.add_argument("--password-stdin", action="store_true", help="read the new password from standard input; required")
    uro = us.add_parser("role", help="change a user's role; the user's sessions end")
    uro.add_argument("name", help="the user name")
    uro.add_argument("role", choices=("viewer", "editor", "admin"), help="the new role")
    usr.set_defaults(func=cmd_user)
    return p


def _key_service(message: str) -> str:
    return "secretsmanager" if "audit key" in message else "kms"


def _aws_failure(exc: BaseException) -> str:
    """One line for an AWS failure: its cause, the endpoint, region and account (docs/cli.md)."""
    text = diagnostics.describe(exc)
    if text:
        return text
    # A PynamoDB error without an AWS error underneath (e.g. a malformed item)
    return f"DynamoDB request failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]} " \
           f"(endpoint {diagnostics.endpoint()}, region {diagnostics.region()})"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vvg``: one command, with one composition root (built when the command needs AWS)."""
    global _built_root
    _built_root = None
    try:
        args = _parser().parse_args(argv)
        return args.func(args)
    except CliError as exc:
        sys.stderr.write(f"vvg: error: {exc}\n")
        return exc.code
    except VvgError as exc:
        # A key held in KMS / Secrets Manager that could not be used: say why and where.
        cause = diagnostics.describe(exc, service=_key_service(exc.message)) if exc.code == "key_unavailable" else None
        sys.stderr.write(f"vvg: error: {exc.message}" + (f": {cause}" if cause else "") + "\n")
        return 1
    except diagnostics.AWS_ERRORS as exc:
        sys.stderr.write(f"vvg: error: {_aws_failure(exc)}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("vvg: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
