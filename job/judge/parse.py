"""Rating and verdict parsing (pure): FastChat's [[rating]] patterns (or the bench's) and
[[A]]/[[B]]/[[C]] verdicts."""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Sequence

from job.benches.behaviour import FASTCHAT


def parse_rating(text: str, patterns: Sequence[re.Pattern[str]] = FASTCHAT.rating_res) -> int | float | None:
    """FastChat: first `[[x]]`, else first `[x]` (or the bench's patterns, in order), read as
    a Python literal; None = no rating."""
    m = next(filter(None, (p.search(text) for p in patterns)), None)
    if not m:
        return None
    try:
        value = ast.literal_eval(m.group(1))
        finite = isinstance(value, int | float) and math.isfinite(value)
    except (ValueError, SyntaxError, OverflowError):  # > 4300 digits; an int too big for a float
        return None
    # FastChat would crash or store Infinity here: a nonsense number is no rating
    return value if finite else None


def parse_verdict(text: str) -> str:
    """FastChat: substring presence checked in the order [[A]], [[B]], [[C]] -> A | B | tie | error."""
    for tag, verdict in (("[[A]]", "A"), ("[[B]]", "B"), ("[[C]]", "tie")):
        if tag in text:
            return verdict
    return "error"
