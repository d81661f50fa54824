"""The admin CLI ``vvg`` (contract section 2): JSON on stdout, one-line errors on stderr."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from pynamodb.exceptions import PynamoDBException

from vvolguard.errors import VvgError

MAX_STDIN_PASSWORD = 1024


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


def _services():
    from vvolguard.adapters.models import configure
    from vvolguard.settings import Settings

    settings = Settings.from_env()
    configure(settings)
    return settings


def cmd_host(args: argparse.Namespace) -> int:
    from vvolguard.services.hosts import HostService

    hosts = HostService(_services())
    if args.action == "enroll":
        _out(hosts.enroll(args.host_id, args.mac, args.serial, args.hardware or ""))
    elif args.action == "rotate":
        _out(hosts.rotate(args.host_id))
    else:
        _out(hosts.revoke(args.host_id))
    return 0


def _one_line(errors: list[str], shown: int = 5) -> str:
    """Every problem of a refused policy file on one line (the first few, then a count)."""
    text = "; ".join(errors[:shown])
    if len(errors) > shown:
        text += f"; and {len(errors) - shown} more"
    return f"{text} — nothing was applied"


def cmd_policy(args: argparse.Namespace) -> int:
    from vvolguard.domain.policy import dump_policy_file, parse_policy_text
    from vvolguard.errors import PolicyValidationError
    from vvolguard.services.policies import PolicyService

    if args.action == "apply":
        name = args.file
        try:
            if name == "-":
                data = sys.stdin.buffer.read(8 * 1024 * 1024)
            else:
                with open(name, "rb") as fh:
                    data = fh.read(8 * 1024 * 1024)
        except OSError as exc:
            raise CliError(f"cannot read {name}: {exc.strerror}") from None
        try:
            specs = parse_policy_text(data, name)
        except PolicyValidationError as exc:
            raise CliError(_one_line(exc.errors)) from None
        settings = _services()
        _out(PolicyService(settings).apply(specs, actor="cli"))
    elif args.action == "export":
        settings = _services()
        specs = PolicyService(settings).export()
        if args.format == "yaml":
            sys.stdout.write(dump_policy_file(specs))
        else:
            _out({"volumes": [s.to_file_entry() for s in specs]})
    else:
        settings = _services()
        _out(PolicyService(settings, provider=_provider(settings)).delete(args.volume_id, actor="cli"))
    return 0


def _provider(settings):
    try:
        from vvolguard.adapters.provider import EbsProvider
    except ImportError:  # pragma: no cover - the provider arrives with the webhook
        return None
    return EbsProvider(settings)


def cmd_user(args: argparse.Namespace) -> int:
    from vvolguard.services.users import UserService

    if not args.password_stdin:
        raise CliError("user add: --password-stdin is required (passwords never go on the command line)", 2)
    password = _read_password("user add")
    _out(UserService(_services()).add(args.name, args.role, password, actor="cli"))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from vvolguard.adapters.audit import AuditLog, RECORD_FIELDS

    log = AuditLog(_services())
    if args.action == "list":
        for rec in log.list(vm_id=args.vm, volume_id=args.volume, limit=args.limit):
            row = {k: getattr(rec, k) for k in RECORD_FIELDS}
            row["detail"] = rec.detail.as_dict() if rec.detail is not None else {}
            row["chain"], row["seq"] = rec.chain, int(rec.seq)
            _out(row)
        return 0
    summary = log.verify()
    _out(summary)
    if not summary["ok"]:
        p = summary["first_problem"]
        sys.stderr.write(f"vvg: error: audit history not intact: record {p['seq']} of chain {p['chain']}: {p['problem']}\n")
        return 1
    return 0


def cmd_event(args: argparse.Namespace) -> int:
    """Sign and send one event exactly as a host does (the reference host client)."""
    import os
    import time
    import urllib.error
    import urllib.request
    import uuid

    from vvolguard.domain.secrets import sign

    secret = args.secret or os.environ.get("VVG_HOST_SECRET")
    if not secret:
        raise CliError("event send: the host secret is needed: --secret or VVG_HOST_SECRET", 2)
    body: dict[str, Any] = {"event_id": args.event_id or f"cli-{uuid.uuid4()}", "type": args.type, "vm_id": args.vm}
    for key in ("app", "volume", "destination_host", "source_host"):
        value = getattr(args, key)
        if value is not None:
            body["volume_id" if key == "volume" else key] = value
    if args.password_stdin:
        body["password"] = _read_password("event send")
    if args.occurred_at:
        body["occurred_at"] = args.occurred_at
    raw = json.dumps(body, separators=(",", ":")).encode("utf-8")
    url = args.url.rstrip("/") + "/v1/events"
    if not url.startswith(("http://", "https://")):
        raise CliError(f"event send: --url must start with http:// or https://, got {args.url[:80]!r}", 2)
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
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    """One pass of the scheduled reconciler, now."""
    from vvolguard.services.reconcile import Reconciler

    summary = Reconciler(_services()).run()
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

        from vvolguard.services.keys import collect_entries

        cap = args.size_mb * 1024 * 1024 if args.size_mb else None
        entries = collect_entries(args.generate or (), args.file or (), cap)
        image, header = kv.build(args.vm, args.volume, entries,
                                 datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), cap)
        fd = _new_secret_file(args.out)
        try:
            _write_all(fd, image)
        finally:
            os.close(fd)
        _out({"volume_id": args.volume, "vm_id": args.vm, "out": args.out, "size": len(image),
              "entries": kv.public_entries(header)})
        return 0
    from vvolguard.services.keys import KeyService

    if args.action == "recover":
        fd = _new_secret_file(args.out)
        ok = False
        try:
            data = KeyService(_services()).recover(args.volume_id, args.name, actor="cli")
            _write_all(fd, data)
            ok = True
        finally:
            os.close(fd)
            if not ok:
                os.unlink(args.out)
        _out({"volume_id": args.volume_id, "name": args.name, "out": args.out, "size": len(data)})
        return 0
    keys = KeyService(_services())
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


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    p = _Parser(prog="vvg", description="vvolguard admin CLI (uses the standard AWS environment)")
    sub = p.add_subparsers(dest="group", required=True, parser_class=_Parser)

    host = sub.add_parser("host", help="enroll, rotate or revoke hosts")
    hs = host.add_subparsers(dest="action", required=True, parser_class=_Parser)
    e = hs.add_parser("enroll", help="enroll a host; prints its secret once")
    e.add_argument("host_id")
    e.add_argument("--mac", required=True)
    e.add_argument("--serial", required=True)
    e.add_argument("--hardware", default="")
    hs.add_parser("rotate", help="give a host a new secret").add_argument("host_id")
    hs.add_parser("revoke", help="refuse a host from now on").add_argument("host_id")
    host.set_defaults(func=cmd_host)

    pol = sub.add_parser("policy", help="apply, export or delete policies")
    ps = pol.add_subparsers(dest="action", required=True, parser_class=_Parser)
    ps.add_parser("apply", help="upsert a policy file, all or nothing").add_argument("file")
    ex = ps.add_parser("export", help="the policy table as a policy file")
    ex.add_argument("--format", choices=("json", "yaml"), default="json")
    ps.add_parser("delete", help="remove one volume's policy").add_argument("volume_id")
    pol.set_defaults(func=cmd_policy)

    aud = sub.add_parser("audit", help="list or verify the audit history")
    au = aud.add_subparsers(dest="action", required=True, parser_class=_Parser)
    li = au.add_parser("list", help="records as JSON lines, newest first")
    li.add_argument("--vm")
    li.add_argument("--volume")
    li.add_argument("--limit", type=_limit, default=100)
    au.add_parser("verify", help="check the hash chains")
    aud.set_defaults(func=cmd_audit)

    evt = sub.add_parser("event", help="send a signed host event")
    es = evt.add_subparsers(dest="action", required=True, parser_class=_Parser)
    snd = es.add_parser("send", help="sign and send one event as a host would")
    snd.add_argument("type")
    snd.add_argument("--vm", required=True)
    snd.add_argument("--host", required=True)
    snd.add_argument("--secret", help="the host secret (or VVG_HOST_SECRET)")
    snd.add_argument("--url", default="http://127.0.0.1:3000", help="the API's base URL")
    snd.add_argument("--app")
    snd.add_argument("--volume")
    snd.add_argument("--password-stdin", action="store_true")
    snd.add_argument("--destination-host", dest="destination_host")
    snd.add_argument("--source-host", dest="source_host")
    snd.add_argument("--event-id", dest="event_id")
    snd.add_argument("--occurred-at", dest="occurred_at", help="RFC 3339 time of the event at the host")
    snd.add_argument("--timeout", type=float, default=30.0, help=argparse.SUPPRESS)
    evt.set_defaults(func=cmd_event)

    rec = sub.add_parser("reconcile", help="run one pass of the reconciler now")
    rec.set_defaults(func=cmd_reconcile)

    key = sub.add_parser("key", help="the key volume: build, provision, describe, recover (docs/key-volume.md)")
    ks = key.add_subparsers(dest="action", required=True, parser_class=_Parser)
    kb = ks.add_parser("build", help="write a key volume image to a local file (offline)")
    kb.add_argument("--vm", required=True)
    kb.add_argument("--volume", required=True)
    kb.add_argument("--out", required=True)
    kb.add_argument("--size-mb", dest="size_mb", type=_size_mb, help="refuse entries that would not fit this size")
    kp = ks.add_parser("provision", help="write a fresh key volume at the provider, without attaching it")
    kp.add_argument("volume_id")
    kp.add_argument("--escrow", action="store_true", help="also keep each entry encrypted under the KMS key")
    for sp in (kb, kp):
        sp.add_argument("--generate", action="append", metavar="NAME[:BYTES]", help="random bytes (64 by default)")
        sp.add_argument("--file", action="append", metavar="NAME=PATH[:KIND]", help="an entry from a file")
    ks.add_parser("describe", help="what is on the volume (never key bytes)").add_argument("volume_id")
    kr = ks.add_parser("recover", help="break-glass: an escrowed entry to a new file of mode 0600 (audited)")
    kr.add_argument("volume_id")
    kr.add_argument("name")
    kr.add_argument("--out", required=True)
    key.set_defaults(func=cmd_key)

    usr = sub.add_parser("user", help="dashboard users")
    us = usr.add_subparsers(dest="action", required=True, parser_class=_Parser)
    ua = us.add_parser("add", help="create a dashboard user")
    ua.add_argument("name")
    ua.add_argument("--role", required=True, choices=("viewer", "editor", "admin"))
    ua.add_argument("--password-stdin", action="store_true")
    usr.set_defaults(func=cmd_user)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vvg``."""
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except CliError as exc:
        sys.stderr.write(f"vvg: error: {exc}\n")
        return exc.code
    except VvgError as exc:
        sys.stderr.write(f"vvg: error: {exc.message}\n")
        return 1
    except EndpointConnectionError as exc:
        sys.stderr.write(f"vvg: error: cannot reach AWS at {exc.kwargs.get('endpoint_url', '?')} (is the stack running?)\n")
        return 1
    except PynamoDBException as exc:
        cause = exc.cause if isinstance(exc.cause, ClientError) else None
        code = exc.cause_response_code or (cause.response.get("Error", {}).get("Code") if cause else None) or type(exc).__name__
        hint = " (are the tables created? run 'make run' or deploy the stack)" if code == "ResourceNotFoundException" else ""
        if isinstance(exc.cause, EndpointConnectionError):
            sys.stderr.write(f"vvg: error: cannot reach AWS at {exc.cause.kwargs.get('endpoint_url', '?')} (is the stack running?)\n")
            return 1
        sys.stderr.write(f"vvg: error: DynamoDB refused the request: {code}{hint}\n")
        return 1
    except ClientError as exc:
        err = exc.response.get("Error", {})
        hint = " (are the tables created? run 'make run' or deploy the stack)" if err.get("Code") == "ResourceNotFoundException" else ""
        sys.stderr.write(f"vvg: error: AWS refused {exc.operation_name}: {err.get('Code', '?')}{hint}\n")
        return 1
    except BotoCoreError as exc:
        sys.stderr.write(f"vvg: error: AWS: {type(exc).__name__}: {str(exc)[:200]}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("vvg: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
