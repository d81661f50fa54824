"""template.yaml passes a public infrastructure-as-code scanner (checkov, pinned in requirements.txt): no
failed check, and every check the template skips says why in the template itself (docs/threat-model.md).

Generic on purpose: any resource added to the template later is scanned the same way."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from infra.template import load

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"


def checkov(path: Path) -> dict[str, Any]:
    """checkov's JSON report of one CloudFormation file (offline: no download of guidelines or policies)."""
    exe = Path(sys.executable).with_name("checkov")
    p = subprocess.run([str(exe), "-f", str(path), "--framework", "cloudformation", "--skip-download",
                        "--compact", "-o", "json"], capture_output=True, text=True, timeout=300,
                       env={"PATH": str(exe.parent), "HOME": str(path.parent), "BC_SKIP_MAPPING": "TRUE",
                            "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false", "LOG_LEVEL": "ERROR"})
    assert p.returncode in (0, 1), p.stdout[-2000:] + p.stderr[-2000:]  # 1: failed checks (or none passed)
    report = json.loads(p.stdout)
    if isinstance(report, list):  # several frameworks: one report each
        (report,) = [r for r in report if r.get("check_type") == "cloudformation"]
    return report


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return checkov(TEMPLATE)


def test_checkov__no_failed_check_on_the_template(report):
    summary = report["summary"]
    failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in report["results"]["failed_checks"]]
    assert failed == [] and summary["failed"] == 0, "\n".join(failed)
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 50 and summary["resource_count"] >= len(load(TEMPLATE)["Resources"]) - 5


def _skips(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    for name, res in doc["Resources"].items():
        for skip in ((res.get("Metadata") or {}).get("checkov") or {}).get("skip", []):
            out.append((name, skip.get("id", ""), skip.get("comment", "")))
    return out


def test_checkov__every_skip_names_a_check_and_gives_a_reason(report):
    """Skips (``Metadata: checkov: skip`` or a ``checkov:skip=ID:reason`` comment) carry a reason a reviewer can
    weigh, and none is stale."""
    skipped = report["results"].get("skipped_checks", [])
    for c in skipped:
        reason = (c.get("check_result") or {}).get("suppress_comment") or ""
        assert len(reason.split()) >= 8, f"{c['check_id']} {c['resource']}: skipped without a reason ({reason!r})"
    seen = {(c["check_id"], c["resource"].split(".")[-1]) for c in skipped}
    for name, check_id, _ in _skips(load(TEMPLATE)):
        assert (check_id, name) in seen, f"{name} skips {check_id}, which no longer applies: remove the skip"


def test_checkov__a_table_with_an_aws_owned_key_fails_the_scan(tmp_path):
    """The test can fail: the same template with one table back on the AWS-owned key is reported."""
    text = TEMPLATE.read_text()
    broken = text.replace("SSESpecification: {SSEEnabled: true, SSEType: KMS, KMSMasterKeyId: !Ref DataKey}",
                          "SSESpecification: {SSEEnabled: true}", 1)
    assert broken != text
    path = tmp_path / "template.yaml"
    path.write_text(broken)
    failed = {c["check_id"] for c in checkov(path)["results"]["failed_checks"]}
    assert "CKV_AWS_119" in failed
