"""Per-model statistics of the answer files a report reads: Japanese character share,
turns cut at max_new_tokens, and reasoning (thinking) turns. Pure: answers in, dicts out
(None where the files do not say: FastChat's answers have no finish_reasons or reasoning)."""

from __future__ import annotations

import logging
from typing import Any

from job.records import TRUNCATED_WARN, Answer, Choice, truncation
from job.report.jachars import count_chars, share

log = logging.getLogger(__name__)


def _ok_choices(recs: list[Answer]) -> list[Choice]:
    return [c for a in recs for c in a.choices if (c.status or "ok") == "ok"]


def japanese_share(
    answers: dict[str, list[Answer]], categories: dict[str, str]
) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for model, recs in answers.items():
        per: dict[str, list[tuple[int, int]]] = {}
        for a in recs:
            cat = categories.get(str(a.question_id), "unknown")
            for ch in _ok_choices([a]):
                pairs = [count_chars(t) for t in ch.turns]
                per.setdefault(cat, []).extend(pairs)
                per.setdefault("all", []).extend(pairs)
        out[model] = {c: share(v) for c, v in sorted(per.items())}
    return out


def truncation_shares(answers: dict[str, list[Answer]], models: list[str]) -> dict[str, dict[str, Any]]:
    """Per model: answer turns that stopped at max_new_tokens, of those with a known finish
    reason (share None = unknown: no answer file, or a FastChat one without finish_reasons)."""
    out = {}
    for m in models:
        cut, known = truncation(answers.get(m, []))
        warn = bool(known) and cut / known > TRUNCATED_WARN
        out[m] = {
            "turns_truncated": cut,
            "turns_known": known,
            "share": cut / known if known else None,
            "warn": warn,
        }
        if warn:
            log.warning(
                "%s: %d of %d answer turns (%.0f%%) stopped at max_new_tokens: cut-off answers are scored "
                "as they are; check --max-new-tokens and the model's end-of-turn token", m, cut, known, 100 * cut / known,
            )  # fmt: skip
    return out


def _per_turn(c: Choice, name: str) -> list[Any]:
    """A per-turn list field of the choice (C's reasoning fields), padded to its turns."""
    v = getattr(c, name, None) or []
    return [v[i] if i < len(v) else None for i in range(len(c.turns))]


def _mean(xs: list[int]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def reasoning_stats(answers: dict[str, list[Answer]], models: list[str]) -> dict[str, dict[str, Any]]:
    """Per model, over the turns of its ok choices: share with reasoning (a non-empty
    `reasoning` entry), mean reasoning length (characters, over those turns), mean answer
    length (the judged `turns`), share whose reasoning never closed, share cut at max tokens
    (of the turns with a known finish reason). Empty dict for a model without answers."""
    out: dict[str, dict[str, Any]] = {}
    for m in models:
        choices = _ok_choices(answers.get(m, []))
        turns = [t for c in choices for t in c.turns]
        if not turns:
            continue
        reasoning = [r for c in choices for r in _per_turn(c, "reasoning")]
        unterminated = [bool(u) for c in choices for u in _per_turn(c, "reasoning_unterminated")]
        with_r = [len(r) for r in reasoning if r]
        cut, known = truncation(answers.get(m, []))
        out[m] = {
            "turns": len(turns),
            "share_reasoning": len(with_r) / len(turns),
            "mean_reasoning_chars": _mean(with_r),
            "mean_answer_chars": _mean([len(t) for t in turns]),
            "share_unterminated": sum(unterminated) / len(turns),
            "share_truncated": cut / known if known else None,
        }
    return out
