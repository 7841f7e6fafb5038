"""Judging, pure core: matches in FastChat's order, prompts filled exactly like FastChat's
common.py, rating/verdict parsing, resume keys and the records written.

Nothing here does I/O; job.judge_run drives it (load, send, append, resume).
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from job.backends.base import Message, SamplingParams
from job.bench_behaviour import FASTCHAT, BenchBehaviour
from job.judge_prompts import JudgePrompt
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


RowKey = tuple[str, str, str, int, tuple[str, ...], int]
GameKey = tuple[str, str, str, int, tuple[str, ...], int, int]


def row_key(judge: str, m: Match) -> RowKey:
    """(judge name, prompt name, question, turn, model(s), choice): one stored row."""
    return (judge, m.prompt.name, str(m.question.question_id), m.turn, m.models, m.choice)


def stored_row_key(rec: dict[str, Any]) -> RowKey:
    models = (rec["model"],) if "model" in rec else (rec["model_1"], rec["model_2"])
    judge, qid = rec["judge"], str(rec["question_id"])
    return (judge[0], judge[1], qid, int(rec["turn"]), models, int(rec.get("choice", 0)))


def game_key(judge: str, m: Match, game: int) -> GameKey:
    """Row key + game: the resume key, valid only together with the match's inputs_sha256."""
    return (*row_key(judge, m), game)


def inputs_sha256(
    judge_model: str, params: SamplingParams, m: Match, judge_fingerprint: dict[str, Any] | None = None
) -> str:
    """Hash of everything that decides a judgment: the judge spec and every sampling param
    sent, the weights behind a local judge's spec (job.model_fingerprint: an overwritten
    checkpoint is another judge), the row's key, the prompt (system, filled user prompt of
    each game: question, answer turns of both sides, reference), the rating format, or the
    generation failure that replaces them. A stored row is reused only while this is unchanged."""
    body = {
        "judge_model": judge_model,
        # unset params (None) left out: a new optional param does not invalidate stored rows
        "sampling": {k: v for k, v in params.to_dict().items() if v is not None},
        "key": [m.prompt.name, str(m.question.question_id), m.turn, list(m.models), m.choice],
        "system_prompt": m.prompt.system_prompt, "output_format": m.prompt.output_format,
        "rating_res": [p.pattern for p in m.prompt.rating_res], "ref": m.ref, "failed": m.failed,
        "user_prompts": None if m.failed else [build_judge_prompt(m, g) for g in m.games],
    }  # fmt: skip
    if judge_fingerprint is not None:  # API judges have none: their stored rows' hashes stay as they were
        body["judge_fingerprint"] = judge_fingerprint
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass
class GameResult:
    user_prompt: str
    judgment: str
    status: str
    """ok | parse_error | api_error | judge_error | answer_error"""
    error: str | None = None
    verdict: Any = None
    """score (single; -1 when none) or A | B | tie | error (pairwise)"""


def game_result(m: Match, user_prompt: str, text: str, status: str, error: str | None) -> GameResult:
    """Turn a judge reply (or its failure) into a result; failures never become a score.
    A failed API call is api_error; any other backend failure (hf/vllm: a template that
    rejects the system role, a prompt over the context, OOM on one row) is judge_error."""
    if status != "ok":
        failed = "api_error" if status == "api_error" else "judge_error"
        return GameResult(user_prompt, "", failed, error or status, "error" if m.pairwise else -1)
    if m.pairwise:
        v = parse_verdict(text)
        if v == "error":
            return GameResult(user_prompt, text, "parse_error", "no [[A]]/[[B]]/[[C]] verdict", v)
        return GameResult(user_prompt, text, "ok", None, v)
    score = parse_rating(text, m.prompt.rating_res)
    if score is None:
        return GameResult(user_prompt, text, "parse_error", "no [[rating]] in judgment", -1)
    return GameResult(user_prompt, text, "ok", None, score)


def _row_status(results: Sequence[GameResult]) -> tuple[str, str | None]:
    for s in FAILED_STATUSES:
        bad = [r for r in results if r.status == s]
        if bad:
            return s, "; ".join(dict.fromkeys(r.error or s for r in bad))
    odd = [r for r in results if r.status != "ok"]  # never read an unknown failure as ok
    return ("judge_error", "; ".join(r.error or r.status for r in odd)) if odd else ("ok", None)


def make_record(
    judge: str, m: Match, results: dict[int, GameResult], inputs: str, tstamp: float | None = None
) -> dict[str, Any]:
    """FastChat's single or pairwise record plus choice, status, error and inputs_sha256."""
    ts = time.time() if tstamp is None else tstamp
    status, error = _row_status(list(results.values()))
    judge_field = [judge, m.prompt.name]
    extra = {"choice": m.choice, "status": status, "error": error, "inputs_sha256": inputs}
    if not m.pairwise:
        r = results[0]
        return {
            "question_id": m.question.question_id, "model": m.models[0], "judge": judge_field,
            "user_prompt": r.user_prompt, "judgment": r.judgment, "score": r.verdict, "turn": m.turn,
            "tstamp": ts, **extra,
        }  # fmt: skip
    g1, g2 = results[1], results[2]
    maps = {1: {"A": "model_1", "B": "model_2"}, 2: {"A": "model_2", "B": "model_1"}}
    return {
        "question_id": m.question.question_id, "model_1": m.models[0], "model_2": m.models[1],
        "g1_winner": maps[1].get(g1.verdict, g1.verdict), "g2_winner": maps[2].get(g2.verdict, g2.verdict),
        "judge": judge_field, "g1_user_prompt": g1.user_prompt, "g1_judgment": g1.judgment,
        "g2_user_prompt": g2.user_prompt, "g2_judgment": g2.judgment, "turn": m.turn, "tstamp": ts,
        **extra, "g1_status": g1.status, "g2_status": g2.status,
    }  # fmt: skip


def stored_games(rec: dict[str, Any]) -> Iterable[tuple[GameKey, GameResult]]:
    """The final game results a stored record holds (api_error games are not final)."""
    key = stored_row_key(rec)
    if "model" in rec:
        status = rec.get("status") or ("ok" if rec.get("score", -1) != -1 else "parse_error")
        if status in DONE_STATUSES:
            r = GameResult(
                rec.get("user_prompt", ""), rec.get("judgment", ""), status, rec.get("error"), rec["score"]
            )
            yield (*key, 0), r
        return
    unmap = {1: {"model_1": "A", "model_2": "B"}, 2: {"model_2": "A", "model_1": "B"}}
    for g in (1, 2):
        winner = rec.get(f"g{g}_winner", "error")
        status = rec.get(f"g{g}_status") or ("ok" if winner != "error" else "parse_error")
        if status in DONE_STATUSES:
            verdict = unmap[g].get(winner, winner)
            r = GameResult(
                rec.get(f"g{g}_user_prompt", ""), rec.get(f"g{g}_judgment", ""), status, None, verdict
            )
            yield (*key, g), r
