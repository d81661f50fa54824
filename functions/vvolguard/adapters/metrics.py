"""Counts in CloudWatch's embedded metric format (EMF), the way Powertools' Metrics writes them (docs/metrics.md).

A flush writes one JSON line per set of dimension values to the Lambda's standard output; CloudWatch Logs turns
each line into metric values, so counting costs no AWS call and no IAM permission. A line looks like::

    {"_aws": {"Timestamp": 1733353200000, "CloudWatchMetrics": [{"Namespace": "vvolguard/vvg",
      "Dimensions": [["action", "outcome"]], "Metrics": [{"Name": "Decisions", "Unit": "Count"}]}]},
     "action": "attach", "outcome": "done", "Decisions": 2}

Only the names in METRICS are written, with their fixed dimension names; a dimension value is a short lowercase
word from code (an action, an outcome, an alert kind), anything else becomes ``other``: no id, no secret and no
unbounded cardinality ever reaches a dimension. Outside Lambda (the ``vvg`` CLI, tests, the local stack) the lines
go to the logger ``vvg.metrics`` at DEBUG instead, so they never mix with a command's output. Counting never
raises: the operation it counts has already happened.

Hand-written rather than ``aws-lambda-powertools``: the format is a few dozen lines, and importing Powertools'
Metrics costs 40-80 ms of every cold start (docs/metrics.md has the figures).
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections import Counter

log = logging.getLogger("vvg.metrics")

NAMESPACE = "vvolguard"  # the template sets VVG_METRICS_NAMESPACE to vvolguard/<Prefix> (one per deployment)
# metric -> its dimension names (docs/metrics.md)
METRICS: dict[str, tuple[str, ...]] = {
    "Decisions": ("action", "outcome"),
    "ReconcileProblems": (),
    "Alerts": ("kind",),
}
_WORD = re.compile(r"[a-z][a-z0-9_]{0,39}")
_lock = threading.Lock()


def _value(v: object) -> str:
    text = str(getattr(v, "value", v))
    return text if _WORD.fullmatch(text) else "other"


class Metrics:
    """Counts added during one unit of work (an event, a pass), written by one ``flush``."""

    def __init__(self, namespace: str = NAMESPACE) -> None:
        self.namespace = namespace or NAMESPACE
        self._counts: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()

    def add(self, name: str, value: int = 1, **dimensions: object) -> None:
        """Add ``value`` to metric ``name`` with these dimension values (exactly the names METRICS gives)."""
        names = METRICS[name]
        if set(dimensions) != set(names):
            raise ValueError(f"{name} takes the dimensions {names}, not {tuple(dimensions)}")
        self._counts[(name, tuple((k, _value(dimensions[k])) for k in names))] += int(value)

    def records(self, now_ms: int | None = None) -> list[dict]:
        """One EMF document per set of dimension values, in the order first added."""
        ts = int(time.time() * 1000) if now_ms is None else int(now_ms)
        docs: dict[tuple, dict] = {}
        for (name, dims), value in self._counts.items():
            doc = docs.get(dims)
            if doc is None:
                directive = {"Namespace": self.namespace, "Dimensions": [[k for k, _ in dims]], "Metrics": []}
                doc = docs[dims] = {"_aws": {"Timestamp": ts, "CloudWatchMetrics": [directive]}, **dict(dims)}
            doc["_aws"]["CloudWatchMetrics"][0]["Metrics"].append({"Name": name, "Unit": "Count"})
            doc[name] = value
        return list(docs.values())

    def flush(self) -> int:
        """Write the counts (one line per set of dimension values) and forget them; the lines written."""
        try:
            lines = [json.dumps(d, separators=(",", ":")) for d in self.records()]
            self._counts.clear()
            if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
                with _lock:  # whole lines: CloudWatch Logs must see each document as one log event
                    sys.stdout.write("".join(line + "\n" for line in lines))
                    sys.stdout.flush()
            else:
                for line in lines:
                    log.debug("%s", line)
            return len(lines)
        except Exception as exc:  # never fail what was counted
            log.error("metrics not written (%s)", type(exc).__name__)
            return 0


def count(namespace: str, name: str, value: int = 1, **dimensions: object) -> None:
    """One metric value written at once (an alert, a pass's problems). Never raises."""
    try:
        m = Metrics(namespace)
        m.add(name, value, **dimensions)
        m.flush()
    except Exception as exc:
        log.error("metric %s not written (%s)", name, type(exc).__name__)
