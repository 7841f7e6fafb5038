"""What a bench does differently: generation temperatures, the categories judged with a
reference, the judge prompt names, the rating tag and pattern, and the turns judged.

FastChat's values are the defaults. A registered bench sets its own in the registry
entry's "behaviour" object, a custom bench folder in its bench.json; each field given
replaces FastChat's (prompt_names: per slot), so a fork's table is data, not code.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

from job.errors import JobError

MODES = ("single", "pairwise")
# FastChat gen_judgment.make_judge_single / make_judge_pairwise
FASTCHAT_PROMPT_NAMES = {
    "single/turn1": "single-v1",
    "single/turn1/ref": "single-math-v1",
    "single/turn2": "single-v1-multi-turn",
    "single/turn2/ref": "single-math-v1-multi-turn",
    "pairwise/turn1": "pair-v2",
    "pairwise/turn1/ref": "pair-math-v1",
    "pairwise/turn2": "pair-v2-multi-turn",
    "pairwise/turn2/ref": "pair-math-v1-multi-turn",
}
# FastChat common.py temperature_config; categories not listed get default_temperature
FASTCHAT_TEMPERATURES = {
    "writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
    "reasoning": 0.0, "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0,
}  # fmt: skip


@dataclass(frozen=True)
class BenchBehaviour:
    temperatures: dict[str, float] = field(default_factory=lambda: dict(FASTCHAT_TEMPERATURES))
    default_temperature: float = 0.7
    reference_categories: tuple[str, ...] = ("math", "reasoning", "coding", "arena-hard-200")
    """FastChat NEED_REF_CATS: judged with the reference answer shown to the judge."""
    judged_turns: tuple[int, ...] = (1, 2)
    prompt_names: dict[str, str] = field(default_factory=lambda: dict(FASTCHAT_PROMPT_NAMES))
    rating_format: str = "[[rating]]"
    """output_format a single-answer prompt must declare (Stability's Japanese prompts: [[評価]])."""
    rating_patterns: tuple[str, ...] = (r"\[\[(\d+\.?\d*)\]\]", r"\[(\d+\.?\d*)\]")
    """Tried in order on the judge's reply; group 1 is the rating (FastChat: [[x]] then [x])."""

    def temperature(self, category: str) -> float:
        return self.temperatures.get(category, self.default_temperature)

    def needs_ref(self, category: str) -> bool:
        return category in self.reference_categories

    def prompt_name(self, mode: str, turn: int, ref: bool) -> str:
        return self.prompt_names[f"{mode}/turn{turn}{'/ref' if ref else ''}"]

    def output_format(self, mode: str) -> str:
        return self.rating_format if mode == "single" else "[[A]]"

    @cached_property
    def rating_res(self) -> tuple[re.Pattern[str], ...]:
        return tuple(re.compile(p) for p in self.rating_patterns)

    def as_dict(self) -> dict[str, Any]:
        """JSON form (provenance)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


FASTCHAT = BenchBehaviour()


def _fail(where: str, key: str, why: str) -> JobError:
    return JobError(f"{where}: bench behaviour field {key!r} {why}")


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _strings(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) and x for x in v)


def _pattern_problem(p: str) -> str | None:
    try:
        groups = re.compile(p).groups
    except re.error as e:
        return f"{p!r} is not a valid regex ({e})"
    return None if groups == 1 else f"{p!r} must have exactly one (group) for the number"


def _check(where: str, key: str, v: Any) -> Any:
    """The field's value in BenchBehaviour's type, or a one-line error naming it."""
    if key == "temperatures":
        if not isinstance(v, dict) or not all(isinstance(k, str) and _number(t) for k, t in v.items()):
            raise _fail(where, key, "must map category names to numbers >= 0")
        return {k: float(t) for k, t in v.items()}
    if key == "default_temperature":
        if not _number(v):
            raise _fail(where, key, "must be a number >= 0")
        return float(v)
    if key == "reference_categories":
        if not _strings(v):
            raise _fail(where, key, "must be a list of category names")
        return tuple(v)
    if key == "judged_turns":
        if not (isinstance(v, list) and v and set(v) <= {1, 2} and len(set(v)) == len(v)):
            raise _fail(where, key, "must be [1], [2] or [1, 2]")
        return tuple(sorted(v))
    if key == "prompt_names":
        bad = [k for k in v if k not in FASTCHAT_PROMPT_NAMES] if isinstance(v, dict) else ["(not an object)"]
        if bad or not all(isinstance(n, str) and n for n in v.values()):
            raise _fail(where, key, f"has unknown slots {bad}; slots: {', '.join(FASTCHAT_PROMPT_NAMES)}")
        return {**FASTCHAT_PROMPT_NAMES, **v}
    if key == "rating_format":
        if not isinstance(v, str) or not v:
            raise _fail(where, key, "must be the output_format string of the single prompts, e.g. [[rating]]")
        return v
    if key == "rating_patterns":
        problem = "must be a non-empty list of regexes" if not (_strings(v) and v) else None
        problem = problem or next(filter(None, map(_pattern_problem, v)), None)
        if problem:
            raise _fail(where, key, problem)
        return tuple(v)
    known = ", ".join([*BenchBehaviour.__dataclass_fields__, "note"])
    raise _fail(where, key, f"is unknown; known fields: {known}")


def load_behaviour(doc: dict[str, Any], where: str) -> BenchBehaviour:
    """A registry entry's "behaviour" object or a bench.json; absent fields keep FastChat's."""
    fields = {k: _check(where, k, v) for k, v in doc.items() if k != "note"}  # note: for people
    return BenchBehaviour(**fields) if fields else FASTCHAT
