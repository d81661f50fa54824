"""Natural order for ids: vvol-2 before vvol-11 (digits compare as numbers), used by every list."""
from __future__ import annotations

import re
from typing import Any

_DIGITS = re.compile(r"(\d+)")


def natural_key(value: Any) -> tuple:
    """A sort key: text parts case-folded, digit runs as integers, the raw text last as the tie-break.

    ``re.split`` with a capturing group alternates text (even positions) and digits (odd positions),
    so two keys always compare like with like."""
    s = "" if value is None else str(value)
    parts = _DIGITS.split(s)
    return tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts)) + (s,)
