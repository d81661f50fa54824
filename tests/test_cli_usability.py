"""The CLI day to day (docs/cli.md): help on every option, the event types with their policy keywords,
--version, --output table, natural id order, a note when an event matches no volume, and AWS failures told
in one line with their cause, endpoint, region and account."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

VVG = str(Path(sys.executable).with_name("vvg"))


def _apply(vvg, tmp_path, volumes: list[dict]) -> None:
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"volumes": volumes}))
    r = vvg("policy", "apply", str(f))
    assert r.code == 0, r


def _vol(vid: str, vm: str = "vm-1", **kw) -> dict:
    return {"volume_id": vid, "vm_id": vm, "host_id": "host-1", "storage_array": "S1", "size_mb": 10,
            "attach_on": "preboot", "detach_on": "postboot", **kw}


def _walk(parser: argparse.ArgumentParser, path=("vvg",)):
    """(command path, parser) for every parser and sub-parser."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, path + (name,))


# ---- help


def test_help__every_option_and_argument_of_every_command_has_a_sentence():
    from vvolguard.cli import build_parser

    seen = 0
    for path, parser in _walk(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help and len(choice.help) > 10, f"{' '.join(path)} {choice.dest}: no help"
                continue
            if action.help == argparse.SUPPRESS:
                assert action.dest == "timeout"  # the one hidden option (tests only)
                continue
            seen += 1
            assert action.help and len(action.help) >= 10, f"{' '.join(path)} {action.option_strings or action.dest}: no help"
    assert seen > 30


def test_help__top_level_and_each_group_answer_with_exit_0(vvg):
    from vvolguard.cli import build_parser

    for path, _ in _walk(build_parser()):
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args([*path[1:], "--help"])
        assert exc.value.code == 0


def test_event_send_help__lists_every_type_with_its_policy_keywords(capsys):
    from vvolguard.cli import build_parser
    from vvolguard.domain.events import TYPES

    with pytest.raises(SystemExit):
        build_parser().parse_args(["event", "send", "--help"])
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("  ") and ln.split() and ln.split()[0] in TYPES}
    assert set(lines) == set(TYPES)
    assert "attach_on: preboot" in lines["vm.preboot"] and "detach_on: postboot" in lines["vm.booted"]
    assert "attach_on: app_start" in lines["app.started"] and "detach_on: app_stop" in lines["app.stopped"]
    assert "license_check" in lines["license.check"] and "attach_on: request" in lines["volume.attach_request"]
    assert "VVG_HOST_SECRET" in out and "VVG_API_URL" in out


def test_version__prints_the_installed_version(vvg):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exc:
        from vvolguard.cli import build_parser

        build_parser().parse_args(["--version"])
    assert exc.value.code == 0
    p = subprocess.run([VVG, "--version"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == f"vvg {version('vvolguard')}"


# ---- tables and natural order


def test_natural_key__digits_compare_as_numbers():
    from vvolguard.domain.natural import natural_key

    ids = ["vvol-11", "vvol-2", "vvol-1", "VVOL-3", "vm-10", "vm-9", "vm-10a", "a", "", "x-002", "x-2"]
    assert sorted(ids, key=natural_key) == ["", "a", "vm-9", "vm-10", "vm-10a", "vvol-1", "vvol-2", "VVOL-3",
                                            "vvol-11", "x-002", "x-2"]


def test_policy_export__natural_order_in_json_yaml_and_table(aws, vvg, tmp_path):
    _apply(vvg, tmp_path, [_vol("vvol-11"), _vol("vvol-2"), _vol("vvol-1", vm="vm-10")])
    assert [v["volume_id"] for v in vvg("policy", "export").json()["volumes"]] == ["vvol-1", "vvol-2", "vvol-11"]
    yaml_out = vvg("policy", "export", "--format", "yaml").out
    assert yaml_out.index("vvol-2") < yaml_out.index("vvol-11")
    t = vvg("policy", "export", "--output", "table")
    assert t.code == 0, t
    lines = t.out.splitlines()
    assert lines[0].split() == ["VOLUME_ID", "VM_ID", "HOST_ID", "STORAGE_ARRAY", "SIZE_MB", "ATTACH_ON", "DETACH_ON",
                                "APP", "OS_DISK_ENCRYPTION"]
    assert [ln.split()[0] for ln in lines[1:]] == ["vvol-1", "vvol-2", "vvol-11"]
    assert lines[1].split()[-2:] == ["-", "no"]  # no app; encryption off


def test_audit_list__table_one_line_per_record_even_for_hostile_text(aws, vvg, tmp_path):
    from vvolguard.adapters.audit import AuditLog, AuditRecord

    _apply(vvg, tmp_path, [_vol("vvol-1")])
    AuditLog(aws).append([AuditRecord(actor="host:host-1", action="attach", outcome="denied", vm_id="vm-1",
                                      volume_id="vvol-1", reason="bad\nline\x1b[31mred", event_type="vm.preboot")])
    r = vvg("audit", "list", "--vm", "vm-1", "--output", "table")
    assert r.code == 0, r
    lines = r.out.splitlines()
    assert lines[0].split() == ["AT", "ACTOR", "VM_ID", "VOLUME_ID", "EVENT_TYPE", "ACTION", "OUTCOME", "REASON"]
    assert len(lines) == 3 and "\x1b" not in r.out
    assert lines[1].split()[1:] == ["host:host-1", "vm-1", "vvol-1", "vm.preboot", "attach", "denied", "bad?line?[31mred"]
    assert lines[2].split()[1:5] == ["cli", "vm-1", "vvol-1", "-"]
    # JSON lines stay the default, for scripts
    rows = [json.loads(x) for x in vvg("audit", "list", "--vm", "vm-1").out.splitlines()]
    assert rows[0]["reason"] == "bad\nline\x1b[31mred" and len(rows) == 2


@pytest.mark.parametrize("argv", [["audit", "list", "--output", "csv"], ["policy", "export", "--output", "x" * 5000],
                                  ["audit", "list", "--output"]])
def test_output__an_unknown_format_is_a_usage_error_and_reads_nothing(vvg, argv):
    r = vvg(*argv)  # no aws fixture: any AWS call would fail differently
    assert r.code == 2 and r.out == "" and r.err.count("\n") == 1 and "--output" in r.err


def test_format_table__aligns_and_never_pads_the_last_column():
    from vvolguard.cli import format_table

    text = format_table([{"a": "x", "b": None}, {"a": "longer", "b": [1, 2]}, {"a": True, "b": {"k": "v"}}], ("a", "b"))
    assert text == "A       B\nx       -\nlonger  1,2\nyes     k=v\n"


# ---- the AWS environment: failures say why and where


def _clean_env(**extra: str) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": "/nonexistent/config", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
           "AWS_MAX_ATTEMPTS": "1"}
    env.update(extra)
    return env


def test_no_credentials__says_so_with_the_endpoint_never_a_library_class_name():
    p = subprocess.run([VVG, "audit", "list", "--vm", "vm-1"], capture_output=True, text=True, timeout=120,
                       env=_clean_env())
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("vvg: error: no AWS credentials found (endpoint https://dynamodb.us-east-1.amazonaws.com, "
                               "region us-east-1): "), p.stderr
    assert ". .vvg/env" in p.stderr and "QueryError" not in p.stderr


def test_endpoint_override__named_when_unreachable():
    port = free_port()
    p = subprocess.run([VVG, "policy", "export"], capture_output=True, text=True, timeout=120,
                       env=_clean_env(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="x",
                                      AWS_SECRET_ACCESS_KEY="y", AWS_REGION="eu-west-1"))
    assert p.returncode == 1 and p.stderr.count("\n") == 1
    assert f"cannot reach AWS at http://127.0.0.1:{port}" in p.stderr and "region eu-west-1" in p.stderr


def test_missing_tables__name_the_account_the_credentials_belong_to(vvg):
    """The caller's shell points at an account without vvolguard's tables (moto's account 123456789012)."""
    from moto import mock_aws

    from vvolguard.adapters import aws as aws_adapter

    with mock_aws():
        aws_adapter.reset_clients()
        r = vvg("audit", "list")
        aws_adapter.reset_clients()
    assert r.code == 1 and r.err.count("\n") == 1, r
    assert r.err.startswith("vvg: error: AWS refused Query: ResourceNotFoundException"), r.err
    assert "(endpoint https://dynamodb.us-east-1.amazonaws.com, region us-east-1, account 123456789012)" in r.err
    assert "are the tables created?" in r.err


def test_describe__refused_credentials_and_unknown_errors_in_one_line(monkeypatch):
    from botocore.exceptions import ClientError, NoRegionError

    from vvolguard.adapters import target

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    err = ClientError({"Error": {"Code": "UnrecognizedClientException", "Message": "The security token\nis invalid"}},
                      "Query")
    text = target.describe(err, with_account=False)
    assert text == ("AWS refused Query: UnrecognizedClientException: The security token is invalid (endpoint "
                    "http://127.0.0.1:5000, region us-east-1, account unknown): the credentials were refused; check "
                    "AWS_PROFILE / AWS_ACCESS_KEY_ID, or " + target.LOCAL_HINT)
    assert "no AWS region set" in target.describe(NoRegionError())
    assert target.describe(ValueError("not AWS")) is None
    wrapped = RuntimeError("outer")
    wrapped.__context__ = err
    assert target.describe(wrapped, with_account=False).startswith("AWS refused Query")


def test_key_unavailable__names_the_cause_and_where(vvg, monkeypatch, aws):
    """The audit key (Secrets Manager) cannot be read: the message says which key, why, and where."""
    from vvolguard.adapters import aws as aws_adapter

    aws_adapter.reset_clients()
    monkeypatch.setenv("VVG_AUDIT_KEY_SECRET_ID", "vvg/no-such-key")
    r = vvg("audit", "verify")
    assert r.code == 1 and r.err.count("\n") == 1, r
    assert "cannot read the audit key vvg/no-such-key" in r.err and "ResourceNotFoundException" in r.err
    assert "endpoint https://secretsmanager.us-east-1.amazonaws.com" in r.err


# ---- event send against the running stack


@pytest.mark.e2e
def test_event_send__no_matching_volume_is_a_note_not_an_error(stack):
    r = stack.vvg("event", "send", "vm.preboot", "--vm", "vm-9", "--host", stack.host_id, "--secret",
                  stack.host_secret, "--url", stack.api_url)
    assert r.code == 0 and json.loads(r.out)["decisions"] == []
    assert r.err == ("vvg: note: the event matched no volume: vm-9 has no policies that act on vm.preboot "
                     "(attaches volumes with attach_on: preboot); 'vvg policy export --output table' lists them\n")


@pytest.mark.e2e
def test_event_send__a_mistyped_type_gets_a_suggestion_and_the_api_refusal(stack):
    r = stack.vvg("event", "send", "app.start", "--vm", "vm-4", "--host", stack.host_id, "--app", "A1",
                  "--secret", stack.host_secret, "--url", stack.api_url)
    assert r.code == 1
    assert "'app.start' is not an event type; did you mean app.started?" in r.err
    assert "400 invalid_event" in r.err


@pytest.mark.e2e
def test_event_send__url_and_secret_from_the_environment(stack):
    env = stack.env()
    env.update(VVG_API_URL=stack.api_url, VVG_HOST_SECRET=stack.host_secret)
    p = subprocess.run([VVG, "event", "send", "vm.created", "--vm", "vm-1", "--host", stack.host_id],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "decisions" in json.loads(p.stdout)
