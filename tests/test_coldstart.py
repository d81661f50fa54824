"""The event handler's cold start imports what its first call needs, no more (docs/benchmarks.md#cold-start).

Checked through ``sys.modules``, never by timing (bench/coldstart.py measures the time, in ``make bench``):
a fresh interpreter builds the handler's service as its first call does (``Services.build()`` and the
EventService; no AWS call, the endpoint is a closed port) and answers one unsigned request, refused before
any read; and, in-process under moto, an HMAC host's events run with the other commands' modules made
unimportable (what the first call imports lazily).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from infra.template import Template

ROOT = Path(__file__).resolve().parent.parent

# Packages the event path must never load: the dashboard's (Flask, Jinja, Werkzeug, WTForms), the policy
# file's YAML, cryptography (Ed25519 is for key hosts only, imported when one signs), the test tools.
HEAVY_PACKAGES = ("flask", "flask_wtf", "wtforms", "jinja2", "werkzeug", "dashboard", "yaml", "cryptography",
                  "aws_lambda_powertools", "jsonschema", "moto", "infra")
# vvolguard modules other commands need, which an HMAC host's event does not.
OFF_PATH = ("vvolguard.cli", "vvolguard.domain.policy", "vvolguard.domain.policy_yaml", "vvolguard.domain.policy_diff",
            "vvolguard.domain.replay", "vvolguard.domain.hostkeys", "vvolguard.domain.keyvolume",
            "vvolguard.domain.natural", "vvolguard.services.policies", "vvolguard.services.hosts",
            "vvolguard.services.users", "vvolguard.services.impact", "vvolguard.services.simulate",
            "vvolguard.services.reconcile", "vvolguard.services.tamper", "vvolguard.services.keys",
            "vvolguard.services.audit_queries", "vvolguard.services.policy_pages", "vvolguard.adapters.checkpoints",
            "vvolguard.adapters.limits", "vvolguard.adapters.alerts")

CHILD = """
import json, sys
import vvolguard.handlers.events as h
h.service()
answer = h.handler({"version": "2.0", "headers": {"content-type": "application/json"}, "body": "{}",
                    "isBase64Encoded": False}, None)
print(json.dumps({"status": answer["statusCode"], "body": answer["body"], "modules": sorted(sys.modules)}))
"""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_call_modules() -> tuple[dict, set[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VVG_"))}
    env.update(Template().environment())
    env.update({"AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_closed_port()}", "AWS_EC2_METADATA_DISABLED": "true"})
    p = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT / "functions", env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    return out, set(out["modules"])


def test_the_event_handlers_first_call__loads_no_heavy_package_and_no_other_commands_module():
    out, modules = first_call_modules()
    assert out["status"] == 401 and "missing_signature" in out["body"], out  # refused before any AWS call
    assert "vvolguard.services.events" in modules and "pynamodb.models" in modules  # the path itself was loaded
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY_PACKAGES)
    assert heavy == [], f"the event path imports {heavy[:10]}: import them where they are used"
    off = sorted(m for m in OFF_PATH if m in modules)
    assert off == [], f"the event path imports {off}: import them where they are used"


def test_an_hmac_hosts_events__run_with_the_other_commands_modules_unimportable(webhook, monkeypatch):
    """The first call's lazy imports too (the test above sees only what is imported before a signature is
    checked): with every module of OFF_PATH made unimportable, an HMAC host's vm.preboot and vm.booted still
    attach and detach. The Ed25519 check (vvolguard.domain.hostkeys, which imports cryptography) is among
    them: a shared-secret host never loads it."""
    import importlib

    from vvolguard.handlers import events as handler_module

    handler_module.reset()  # a cold container: the service is built inside the blocked imports
    for name in OFF_PATH:
        parent, _, leaf = name.rpartition(".")
        monkeypatch.delattr(importlib.import_module(parent), leaf, raising=False)  # `from parent import leaf`
        monkeypatch.setitem(sys.modules, name, None)  # any import of it raises ImportError
    code, body = webhook.send("vm.preboot", "vm-1")
    assert code == 200 and [(d["action"], d["outcome"]) for d in body["decisions"]] == [("attach", "done")], body
    code, body = webhook.send("vm.booted", "vm-1")
    assert code == 200 and [(d["action"], d["outcome"]) for d in body["decisions"]] == [("detach", "done")], body
