"""Benchmarks (docs/benchmarks.md). Each prints its figures and, last, one JSON line; ``--merge FILE`` merges
the last JSON line of an earlier one (make bench chains them), through ``last_json``."""
from __future__ import annotations

import json
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
