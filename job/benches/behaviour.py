"""What a bench does differently: generation temperatures, the categories judged with a
reference, the judge prompt names, the rating tag and pattern, and the turns judged.

FastChat's values are the defaults. A registered bench sets its own in the registry
entry's "behaviour" object, a custom bench folder in its bench.json; each field given
replaces FastChat's (prompt_names: per slot), so a fork's table is data, not code.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
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


def _temperature_table(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and _number(t) for k, t in v.items())


def _turns(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and set(v) <= {1, 2} and len(set(v)) == len(v)


def _slots(v: Any) -> bool:
    names_ok = isinstance(v, dict) and all(isinstance(n, str) and n for n in v.values())
    return names_ok and set(v) <= set(FASTCHAT_PROMPT_NAMES)


# field -> (valid?, what it must be, conversion to BenchBehaviour's type)
FIELDS: dict[str, tuple[Callable[[Any], bool], str, Callable[[Any], Any]]] = {
    "temperatures": (_temperature_table, "must map category names to numbers >= 0",
                     lambda v: {k: float(t) for k, t in v.items()}),
    "default_temperature": (_number, "must be a number >= 0", float),
    "reference_categories": (_strings, "must be a list of category names", tuple),
    "judged_turns": (_turns, "must be [1], [2] or [1, 2]", lambda v: tuple(sorted(v))),
    "prompt_names": (_slots, f"must map slots ({', '.join(FASTCHAT_PROMPT_NAMES)}) to prompt names",
                     lambda v: {**FASTCHAT_PROMPT_NAMES, **v}),
    "rating_format": (lambda v: isinstance(v, str) and bool(v),
                      "must be the output_format string of the single prompts, e.g. [[rating]]", str),
    "rating_patterns": (lambda v: _strings(v) and bool(v), "must be a non-empty list of regexes", tuple),
}  # fmt: skip


def _check(where: str, key: str, v: Any) -> Any:
    """The field's value in BenchBehaviour's type, or a one-line error naming it."""
    if key not in FIELDS:
        raise _fail(where, key, f"is unknown; known fields: {', '.join([*FIELDS, 'note'])}")
    valid, must, convert = FIELDS[key]
    if not valid(v):
        raise _fail(where, key, must)
    problem = next(filter(None, map(_pattern_problem, v)), None) if key == "rating_patterns" else None
    if problem:
        raise _fail(where, key, problem)
    return convert(v)


def load_behaviour(doc: dict[str, Any], where: str) -> BenchBehaviour:
    """A registry entry's "behaviour" object or a bench.json; absent fields keep FastChat's."""
    fields = {k: _check(where, k, v) for k, v in doc.items() if k != "note"}  # note: for people
    return BenchBehaviour(**fields) if fields else FASTCHAT
