"""Reasoning models: a turn's raw text split into its reasoning and its final answer.

The final answer (reasoning removed) is what the judge sees and what turn 2's history
holds; the raw text is kept beside it. The split is a regex matched at the start of the
turn (`--reasoning-pattern`), with this group convention:

- the whole match is removed; the rest, leading whitespace stripped, is the answer;
- group `reasoning` (else the first group, else the whole match) is the reasoning text;
- group `unterminated`, when it took part in the match, marks a block that never closed
  (cut off by the token limit): the turn is then judged as it stands, raw, and flagged.

The default takes a leading `<think>...</think>` block, or, as DeepSeek-R1 / Qwen3
templates that open the block in the prompt produce, text up to a first `</think>`.
`none` turns the split off. An API's separate reasoning field (`reasoning_content` /
`reasoning`) is reasoning too; the message content is then the answer (and the raw text).

Core: imports nothing of the job package but job.errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from job.errors import JobError
from job.records import Answer

DEFAULT_PATTERN = (
    r"\s*(?P<open><think>)?(?P<reasoning>.*?)"
    r"(?:</think>|(?(open)(?P<unterminated>\Z)|(?!)))"
)
"""`<think>` optional; without it a `</think>` must follow, with it the end of text may."""
NO_PATTERN = "none"
DEFAULT_RE = re.compile(DEFAULT_PATTERN, re.DOTALL)


@dataclass(frozen=True)
class Turn:
    """One generated turn after the split."""

    answer: str
    """judged, and turn 2's history"""
    raw: str
    """the model's text as generated (the message content for an API)"""
    reasoning: str | None = None
    unterminated: bool = False


def compile_pattern(pattern: str | None, option: str = "--reasoning-pattern") -> re.Pattern[str] | None:
    """None for `none`; the default for None; a bad regex is a one-line error naming the option."""
    if pattern is not None and pattern.strip().lower() == NO_PATTERN:
        return None
    try:
        return DEFAULT_RE if pattern is None else re.compile(pattern, re.DOTALL)
    except re.error as e:
        raise JobError(f"{option} {pattern!r}: not a regular expression ({e}); or pass 'none'") from None


def _group(m: re.Match[str], name: str) -> str | None:
    if name in m.re.groupindex:
        return m.group(name)
    return m.group(1) if m.re.groups else m.group(0)


def split_turn(raw: str, pattern: re.Pattern[str] | None, api_reasoning: str | None = None) -> Turn:
    """The answer and reasoning of one turn; no pattern and no API reasoning: the text itself."""
    m = pattern.match(raw) if pattern is not None else None
    parts = [api_reasoning] if api_reasoning else []
    if m is None:
        return Turn(raw, raw, _join(parts))
    found = _group(m, "reasoning")
    if found and found.strip():
        parts.append(found.strip())
    unterminated = "unterminated" in m.re.groupindex and m.group("unterminated") is not None
    answer = raw if unterminated else raw[m.end() :].lstrip()
    return Turn(answer, raw, _join(parts), unterminated)


def _join(parts: list[str]) -> str | None:
    return "\n\n".join(parts) if parts else None


def record_fields(turns: list[Turn]) -> dict[str, Any]:
    """The record fields of a conversation's turns (Choice / ShardItem): `turns` the answers,
    and only where they carry something, raw_turns, reasoning and reasoning_unterminated."""
    raw = [t.raw for t in turns]
    reasoning = [t.reasoning for t in turns]
    flags = [t.unterminated for t in turns]
    answers = [t.answer for t in turns]
    return {
        "turns": answers,
        "raw_turns": raw if raw != answers else None,
        "reasoning": reasoning if any(r is not None for r in reasoning) else None,
        "reasoning_unterminated": flags if any(flags) else None,
    }


def judged_view(answer: Answer, keep_reasoning: bool) -> Answer:
    """What the judge reads: the answers, or with --keep-reasoning each choice's raw text where
    kept. The judged text is part of the judgment inputs hash, so switching re-judges."""
    if not keep_reasoning or all(c.raw_turns is None for c in answer.choices):
        return answer
    choices = [
        c.model_copy(update={"turns": list(c.raw_turns)}) if c.raw_turns else c for c in answer.choices
    ]
    return answer.model_copy(update={"choices": choices})
