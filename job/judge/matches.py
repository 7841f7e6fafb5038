"""Matches (pure): which (question, turn, model(s), choice) rows a judge run asks for, in
FastChat's order, and their prompts filled exactly like FastChat's common.py."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from job.backends.base import Message, SamplingParams
from job.benches.behaviour import FASTCHAT, BenchBehaviour
from job.judge.prompts import JudgePrompt
from job.records import Answer, Question, QuestionId

JUDGE_TEMPERATURE = 0.0
JUDGE_MAX_TOKENS = 2048
JUDGE_PARAMS = SamplingParams(temperature=JUDGE_TEMPERATURE, max_new_tokens=JUDGE_MAX_TOKENS)
"""FastChat's judge sampling: every request sends these, and they are part of inputs_sha256."""
MODES = ("single", "pairwise-baseline", "pairwise-all")
DONE_STATUSES = ("ok", "parse_error", "answer_error")
"""Stored with one of these, a judgment is final; api_error and judge_error ones are asked
again on re-run."""
FAILED_STATUSES = ("answer_error", "api_error", "judge_error", "parse_error")
"""A row's status is its games' first failure in this order, else ok."""


@dataclass(frozen=True, eq=False)
class Match:
    """One judged unit: a single answer (1 game) or a model pair (2 games)."""

    question: Question
    turn: int
    prompt: JudgePrompt
    choice: int
    models: tuple[str, ...]
    """(model,) in single mode; (model_1, model_2) in pairwise modes"""
    answers: tuple[list[str], ...]
    """the judged choice's turns, one list per model"""
    ref: list[str] | None = None
    """reference answer turns (choices[0]) for the bench's reference categories"""
    failed: str | None = None
    """why an answer cannot be judged (failed generation); no request is made"""
    sample: int | None = None
    """judge sample index with --judge-samples K > 1 (0..K-1); None: the one sample (0)"""

    @property
    def pairwise(self) -> bool:
        return len(self.models) == 2

    @property
    def games(self) -> tuple[int, ...]:
        return (1, 2) if self.pairwise else (0,)


def needs_ref(q: Question, behaviour: BenchBehaviour) -> bool:
    return behaviour.needs_ref(q.category)


def _choice_turns(answer: Answer, choice: int) -> tuple[list[str] | None, str | None]:
    """(turns, failure) of one choice of an answer record."""
    for ch in answer.choices:
        if ch.index == choice:
            status = getattr(ch, "status", "ok") or "ok"
            if status != "ok":
                return None, f"answer {answer.question_id}/choice {choice} failed in generation ({status})"
            return ch.turns, None
    return None, f"answer {answer.question_id} has no choice {choice}"


def _pair_choices(a1: Answer, a2: Answer) -> list[tuple[int, tuple[int, ...]]]:
    """(choice, (c1, c2)): choice c of model_1 against choice c of model_2; a side with a
    single choice (e.g. a baseline generated once) is reused against every choice of the other."""
    c1 = sorted(ch.index for ch in a1.choices)
    c2 = sorted(ch.index for ch in a2.choices)
    if len(c2) == 1:
        return [(c, (c, c2[0])) for c in c1]
    if len(c1) == 1:
        return [(c, (c1[0], c)) for c in c2]
    return [(c, (c, c)) for c in c1 if c in set(c2)]


def build_matches(
    questions: Sequence[Question],
    models: Sequence[str],
    answers: dict[str, dict[QuestionId, Answer]],
    prompts: dict[tuple[int, bool], JudgePrompt],
    refs: dict[QuestionId, Answer],
    mode: str,
    baseline: str | None = None,
    behaviour: BenchBehaviour = FASTCHAT,
) -> list[Match]:
    """FastChat order: default set turn 1, ref set turn 1, default turn 2, ref turn 2;
    within a set, questions in file order, then models (pairs) in model-list order, then choices."""
    out: list[Match] = []
    for turn in (1, 2):
        for ref_set in (False, True):
            if (turn, ref_set) not in prompts:
                continue
            jp = prompts[(turn, ref_set)]
            for q in questions:
                if needs_ref(q, behaviour) != ref_set or (turn == 2 and len(q.turns) != 2):
                    continue
                ref = refs[q.question_id].choices[0].turns if ref_set else None
                for pair in _model_tuples(models, mode, baseline):
                    out.extend(_matches_for(q, turn, jp, pair, answers, ref))
    return out


def _model_tuples(models: Sequence[str], mode: str, baseline: str | None) -> list[tuple[str, ...]]:
    if mode == "single":
        return [(m,) for m in models]
    if mode == "pairwise-baseline":
        assert baseline is not None
        return [(m, baseline) for m in models if m != baseline]
    return [(models[i], models[j]) for i in range(len(models)) for j in range(i + 1, len(models))]


def _matches_for(
    q: Question,
    turn: int,
    jp: JudgePrompt,
    models: tuple[str, ...],
    answers: dict[str, dict[QuestionId, Answer]],
    ref: list[str] | None,
) -> Iterable[Match]:
    if any(q.question_id not in answers[m] for m in models):
        return  # --allow-missing: only this model (pair) has no match for the question
    recs = [answers[m][q.question_id] for m in models]
    pairs: list[tuple[int, tuple[int, ...]]]
    if len(recs) == 1:
        pairs = [(ch.index, (ch.index,)) for ch in sorted(recs[0].choices, key=lambda c: c.index)]
    else:
        pairs = _pair_choices(recs[0], recs[1])
    for choice, cs in pairs:
        turns: list[list[str]] = []
        fails: list[str] = []
        for rec, c in zip(recs, cs, strict=True):
            t, why = _choice_turns(rec, c)
            if t is not None and len(t) < turn:
                why = f"answer {q.question_id}/choice {c} has {len(t)} turns"
                t = None
            turns.append(t or [])
            if why:
                fails.append(why)
        yield Match(q, turn, jp, choice, models, tuple(turns), ref, "; ".join(fails) or None)


def build_judge_prompt(m: Match, game: int = 0) -> str:
    """The user message, filled as FastChat's run_judge_single / run_judge_pair fill it."""
    q, tpl = m.question, m.prompt.prompt_template
    kwargs: dict[str, str] = {}
    if m.ref is not None:
        kwargs["ref_answer_1"] = m.ref[0]
        if m.turn == 2:
            kwargs["ref_answer_2"] = m.ref[1]
    if not m.pairwise:
        a = m.answers[0]
        if m.turn == 2:
            return tpl.format(
                question_1=q.turns[0], question_2=q.turns[1], answer_1=a[0], answer_2=a[1], **kwargs
            )
        return tpl.format(question=q.turns[0], answer=a[0], **kwargs)
    # game 1 shows model_1 as A; game 2 swaps the two
    a, b = m.answers if game == 1 else m.answers[::-1]
    if m.turn == 2:
        return tpl.format(
            question_1=q.turns[0], question_2=q.turns[1],
            answer_a_1=a[0], answer_b_1=b[0], answer_a_2=a[1], answer_b_2=b[1], **kwargs,
        )  # fmt: skip
    return tpl.format(question=q.turns[0], answer_a=a[0], answer_b=b[0], **kwargs)


def judge_messages(system_prompt: str, user_prompt: str) -> list[Message]:
    """FastChat's conv.to_openai_api_messages(): the system prompt (if any) as the system message."""
    msgs: list[Message] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*msgs, {"role": "user", "content": user_prompt}]
