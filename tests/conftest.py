"""Shared fixtures: moto in-process for unit and functional tests, the local stack for end-to-end ones."""
from __future__ import annotations

import io
import json
import os
import socket
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Never reach a real account from a test: fake credentials, no endpoint override, no profile.
for _var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB"):
    os.environ.pop(_var, None)
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1",
                  AWS_DEFAULT_REGION="us-east-1")


@pytest.fixture
def aws():
    """moto's mock_aws with the template's tables and keys created; yields the Settings."""
    from moto import mock_aws

    from infra.bootstrap import bootstrap
    from vvolguard.adapters import aws as aws_adapter
    from vvolguard.settings import Settings

    with mock_aws():
        aws_adapter.reset_clients()
        settings = Settings.from_env()
        bootstrap(settings)
        yield settings
        aws_adapter.reset_clients()


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
        with redirect_stdout(out), redirect_stderr(err):
            code = main(list(argv))
        return CliResult(code, out.getvalue(), err.getvalue())

    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def stack():
    """The whole local stack (moto server, gateway, dashboard) on free ports, seeded with Table 1."""
    from infra.local import LocalStack

    saved = dict(os.environ)
    s = LocalStack(free_port(), free_port(), free_port(), seed=True, admin_password="admin-pass-123")
    try:
        s.start()
        yield s
    finally:
        s.stop()
        os.environ.clear()
        os.environ.update(saved)
        from vvolguard.adapters import aws as aws_adapter

        aws_adapter.reset_clients()
