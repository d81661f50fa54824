"""The tamper check of the audit history, run by the scheduled function (docs/audit-check.md).

A check is a full read of the history (``AuditLog.verify``), so it never runs inside a web request: the
reconciler runs it when the stored result is older than ``INTERVAL_S`` or someone asked for a run, and stores
the result in the state table (``TamperCheckItem``) for the dashboard's /audit page to read. "Check now" on
that page only records a request (and, in AWS, invokes the reconcile function asynchronously); the local
stack picks a request up within a few seconds. A failed check raises the ``tamper_check_failed`` alert.
"""
from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from pynamodb.exceptions import UpdateError

from vvolguard.domain.constants import rfc3339
from vvolguard.adapters.audit import AuditLog
from vvolguard.adapters.models import TAMPER_PK, TamperCheckItem
from vvolguard.settings import Settings

log = logging.getLogger("vvg.tamper")
INTERVAL_S = 300  # a scheduled check at most this often; a request runs at the next pass or poll
REQUEST_GAP_S = 10  # "Check now" asks at most this often
MAX_PROBLEMS = 20
INVOKE_PAYLOAD = {"vvg": "tamper_check"}  # what the dashboard sends the reconcile function


def problem_alert(settings: Settings, problem: dict[str, Any], what: str, now: datetime | None = None) -> None:
    """A failed tamper check raises tamper_check_failed for the chain's VM or host (docs/alerts.md); never fails
    the caller."""
    from vvolguard.services.alerts import raise_alert

    chain = str(problem.get("chain") or "")
    raise_alert(settings, "tamper_check_failed", vm_id=chain[3:] if chain.startswith("VM#") else None,
                host_id=chain[5:] if chain.startswith("HOST#") else None,
                ref=f"{chain}/{problem.get('seq')}" if chain else None, now=now,
                detail=f"{what}: record {problem.get('seq')} of chain {chain}: {problem.get('problem')}"[:300])


class TamperCheck:
    """Run, store and read the tamper check's result; record and pick up requests for a run."""

    def __init__(self, settings: Settings, audit: AuditLog | None = None) -> None:
        self.settings = settings
        self.audit = audit or AuditLog(settings)

    @staticmethod
    def _item() -> TamperCheckItem | None:
        try:
            return TamperCheckItem.get(TAMPER_PK, TAMPER_PK, consistent_read=True)
        except TamperCheckItem.DoesNotExist:
            return None

    # ---- the page's read

    def state(self, now: datetime | None = None) -> dict[str, Any]:
        """The stored result as the /audit page shows it: ``result`` (verify's summary, or None), ``error``
        (the check could not run), ``age_s``, ``at``, and ``running`` (a request not yet run)."""
        now = now or datetime.now(timezone.utc)
        item = self._item()
        if item is None:
            return {"result": None, "error": None, "age_s": None, "at": None, "running": False}
        result = None
        if item.ok is not None:
            problems = json.loads(item.problems_json or "[]")
            result = {"ok": bool(item.ok), "records": int(item.records or 0), "chains": int(item.chains or 0),
                      "problems": problems, "first_problem": problems[0] if problems else None,
                      "checkpoint": {"at": item.checkpoint_at, "chains": int(item.checkpoint_chains or 0)}
                      if item.checkpoint_at else None}
        age = (now - item.checked_at).total_seconds() if item.checked_at else None
        return {"result": result, "error": item.error, "age_s": age, "at": item.checked_at, "running": self.pending(item)}

    # ---- "Check now"

    def request(self, actor: str, function: str | None = None, now: datetime | None = None) -> bool:
        """Ask for a run; False when one was asked for less than REQUEST_GAP_S ago (nothing is written).
        ``function``: in AWS, the reconcile function (the dashboard's VVG_RECONCILE_FUNCTION), invoked
        asynchronously; locally None, and the local stack's poll runs the request."""
        now = now or datetime.now(timezone.utc)
        recent = now - timedelta(seconds=REQUEST_GAP_S)
        item = TamperCheckItem(TAMPER_PK, TAMPER_PK)
        try:
            item.update(actions=[TamperCheckItem.kind.set(TamperCheckItem), TamperCheckItem.requested_at.set(now),
                                 TamperCheckItem.requested_by.set(actor[:64])],
                        condition=TamperCheckItem.requested_at.does_not_exist() | (TamperCheckItem.requested_at < recent))
        except UpdateError as exc:
            if exc.cause_response_code == "ConditionalCheckFailedException":
                return False  # asked just now: that request runs
            raise
        if function:
            self._invoke(function)
        return True

    def _invoke(self, function: str) -> None:
        from vvolguard.adapters import aws

        try:
            aws.client("lambda", self.settings.region).invoke(
                FunctionName=function, InvocationType="Event",
                Payload=json.dumps(INVOKE_PAYLOAD).encode())
        except Exception:  # noqa: BLE001 - the request is stored: the next scheduled pass runs it
            log.warning("could not invoke the reconcile function; the next scheduled pass runs the check")

    # ---- the scheduled side

    @staticmethod
    def pending(item: TamperCheckItem | None) -> bool:
        """A request made after the last check started."""
        return item is not None and item.requested_at is not None and (
            item.checked_at is None or item.requested_at > item.checked_at)

    def due(self, now: datetime, item: TamperCheckItem | None = None) -> bool:
        """A request not yet run, or a result older than INTERVAL_S (or none)."""
        if item is None or item.checked_at is None or self.pending(item):
            return True
        return (now - item.checked_at).total_seconds() >= INTERVAL_S

    def run_if_due(self, now: datetime | None = None, requested_only: bool = False) -> dict[str, Any] | None:
        """Run when due (``requested_only``: only for a pending request, as the local stack polls);
        the stored summary, or None when nothing ran."""
        now = now or datetime.now(timezone.utc)
        item = self._item()
        if not (self.pending(item) if requested_only else self.due(now, item)):
            return None
        return self.run(now, source="request" if self.pending(item) else "schedule")

    def run(self, now: datetime | None = None, source: str = "schedule") -> dict[str, Any]:
        """Verify the whole history now, store the result, alert when it fails. Returns the stored summary."""
        now = now or datetime.now(timezone.utc)
        started = time.perf_counter()
        try:
            summary, error = self.audit.verify(), None
        except Exception as exc:  # stored and shown; the next pass tries again
            log.exception("tamper check could not run")
            summary, error = None, type(exc).__name__
        took = round((time.perf_counter() - started) * 1000)
        problems = (summary or {}).get("problems") or []
        problems = [{"chain": str(p.get("chain")), "seq": int(p.get("seq") or 0), "problem": str(p.get("problem"))[:200]}
                    for p in problems[:MAX_PROBLEMS]]
        actions = [TamperCheckItem.kind.set(TamperCheckItem), TamperCheckItem.checked_at.set(now), TamperCheckItem.took_ms.set(took),
                   TamperCheckItem.source.set(source)]
        if summary is None:
            actions += [TamperCheckItem.error.set(error), TamperCheckItem.ok.remove(), TamperCheckItem.records.remove(),
                        TamperCheckItem.chains.remove(), TamperCheckItem.problems_json.remove(),
                        TamperCheckItem.checkpoint_at.remove(), TamperCheckItem.checkpoint_chains.remove()]
        else:
            actions += [TamperCheckItem.ok.set(bool(summary["ok"])), TamperCheckItem.records.set(int(summary["records"])),
                        TamperCheckItem.chains.set(int(summary["chains"])),
                        TamperCheckItem.problems_json.set(json.dumps(problems, separators=(",", ":"))),
                        TamperCheckItem.error.remove()]
            cp = summary.get("checkpoint")
            actions += ([TamperCheckItem.checkpoint_at.set(str(cp["at"])),
                         TamperCheckItem.checkpoint_chains.set(int(cp["chains"]))] if cp else
                        [TamperCheckItem.checkpoint_at.remove(), TamperCheckItem.checkpoint_chains.remove()])
        TamperCheckItem(TAMPER_PK, TAMPER_PK).update(actions=actions)
        if summary is not None and not summary["ok"] and problems:
            problem_alert(self.settings, problems[0], "the scheduled tamper check", now=now)
        return {"at": rfc3339(now), "ok": summary["ok"] if summary else None,
                "error": error, "took_ms": took, "source": source,
                "first_problem": problems[0] if problems else None}
