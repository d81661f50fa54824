"""Benchmarks (docs/benchmarks.md). Each prints its figures and, last, one JSON line; ``--merge FILE`` merges
the last JSON line of an earlier one (make bench chains them), through ``last_json``."""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path


def last_json(path: str) -> dict:
    """The last line of ``path`` that is a JSON object ({} if none)."""
    for line in reversed(Path(path).read_text(errors="replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict):
                return data
    return {}


@contextmanager
def emulated():
    """moto in this process (``mock_aws``, with infra.moto_patches) with the template's tables, keys and
    buckets made, fake credentials and no endpoint override; yields the Settings. The in-process benchmarks
    (pages, audit page, exposure, impact, unknown-host timing) all start here."""
    import os
    import sys

    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB"):
        os.environ.pop(var, None)
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1",
                      AWS_DEFAULT_REGION="us-east-1")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from infra.moto_patches import install

    install()
    from moto import mock_aws

    from infra.bootstrap import bootstrap
    from vvolguard.adapters import aws
    from vvolguard.settings import Settings

    with mock_aws():
        aws.reset_clients()
        settings = Settings.from_env()
        bootstrap(settings)
        yield settings
