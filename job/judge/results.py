"""Judge results (pure): resume keys, inputs_sha256 (what decides a judgment), a reply turned
into a game result, and the FastChat records written and read back."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from job.backends.base import SamplingParams
from job.judge.matches import DONE_STATUSES, FAILED_STATUSES, Match, build_judge_prompt
from job.judge.parse import parse_rating, parse_verdict
from job.records.judgments import (
    PairJudgment,
    SingleJudgment,
    game_status,
    judgment_line,
    row_sample,
    single_status,
)

RowKey = tuple[str, str, str, int, tuple[str, ...], int, int]
GameKey = tuple[str, str, str, int, tuple[str, ...], int, int, int]
Usage = dict[str, int]
"""{"prompt_tokens": int, "completion_tokens": int}"""


def row_key(judge: str, m: Match) -> RowKey:
    """(judge name, prompt name, question, turn, model(s), choice, sample): one stored row."""
    return (judge, m.prompt.name, str(m.question.question_id), m.turn, m.models, m.choice, m.sample or 0)


def stored_row_key(rec: dict[str, Any]) -> RowKey:
    models = (rec["model"],) if "model" in rec else (rec["model_1"], rec["model_2"])
    judge, qid = rec["judge"], str(rec["question_id"])
    # choice null reads as 0, as read_judgment reads it
    return (judge[0], judge[1], qid, int(rec["turn"]), models, int(rec.get("choice") or 0), row_sample(rec))


def game_key(judge: str, m: Match, game: int) -> GameKey:
    """Row key + game: the resume key, valid only together with the match's inputs_sha256."""
    return (*row_key(judge, m), game)


def inputs_sha256(
    judge_model: str, params: SamplingParams, m: Match, judge_fingerprint: dict[str, Any] | None = None
) -> str:
    """Hash of everything that decides a judgment: the judge spec and every sampling param
    sent, the weights behind a local judge's spec (job.backends.fingerprint: an overwritten
    checkpoint is another judge), the row's key, the prompt (system, filled user prompt of
    each game: question, answer turns of both sides, reference), the rating format, or the
    generation failure that replaces them. A stored row is reused only while this is unchanged."""
    body: dict[str, Any] = {
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
    if m.sample:  # sample 0 hashes as before: a larger --judge-samples reuses the stored rows
        body["sample"] = m.sample
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
    usage: Usage | None = None
    """the API's token counts, summed over this game's attempts"""
    attempts: list[dict[str, Any]] | None = None
    """earlier attempts ({status, judgment, usage}) when --parse-retries asked again"""


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


def sum_usage(usages: Iterable[Usage | None]) -> Usage | None:
    """Token counts added up; None when none of them was reported."""
    known = [u for u in usages if u is not None]
    if not known:
        return None
    return {k: sum(int(u.get(k, 0)) for u in known) for k in ("prompt_tokens", "completion_tokens")}


def retried(earlier: GameResult, latest: GameResult) -> GameResult:
    """`latest` (the answer to asking again) carrying every earlier attempt and their usage."""
    attempt = {"status": earlier.status, "judgment": earlier.judgment, "usage": earlier.usage}
    latest.attempts = [*(earlier.attempts or []), attempt]
    latest.usage = sum_usage([earlier.usage, latest.usage])
    return latest


def _attempts(results: dict[int, GameResult], pairwise: bool) -> list[dict[str, Any]] | None:
    out = [{**a, "game": g} if pairwise else a for g, r in results.items() for a in r.attempts or []]
    return out or None


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
    extras: dict[str, Any] = {
        "sample": m.sample,
        "usage": sum_usage(r.usage for r in results.values()),
        "attempts": _attempts(results, m.pairwise),
    }
    if not m.pairwise:
        r = results[0]
        return judgment_line(SingleJudgment(
            question_id=m.question.question_id, model=m.models[0], judge=judge_field,
            user_prompt=r.user_prompt, judgment=r.judgment, score=r.verdict, turn=m.turn, tstamp=ts,
            choice=m.choice, status=status, error=error, inputs_sha256=inputs, **extras,
        ))  # fmt: skip
    g1, g2 = results[1], results[2]
    maps = {1: {"A": "model_1", "B": "model_2"}, 2: {"A": "model_2", "B": "model_1"}}
    return judgment_line(PairJudgment(
        question_id=m.question.question_id, model_1=m.models[0], model_2=m.models[1],
        g1_winner=maps[1].get(g1.verdict, g1.verdict), g2_winner=maps[2].get(g2.verdict, g2.verdict),
        judge=judge_field, g1_user_prompt=g1.user_prompt, g1_judgment=g1.judgment,
        g2_user_prompt=g2.user_prompt, g2_judgment=g2.judgment, turn=m.turn, tstamp=ts,
        choice=m.choice, status=status, error=error, inputs_sha256=inputs, g1_status=g1.status, g2_status=g2.status,
        **extras,
    ))  # fmt: skip


def stored_games(rec: dict[str, Any]) -> Iterable[tuple[GameKey, GameResult]]:
    """The final game results a stored record holds (api_error games are not final)."""
    key = stored_row_key(rec)
    if "model" in rec:
        status = single_status(rec)
        if status in DONE_STATUSES:
            r = GameResult(
                rec.get("user_prompt", ""), rec.get("judgment", ""), status, rec.get("error"), rec["score"]
            )
            yield (*key, 0), r
        return
    unmap = {1: {"model_1": "A", "model_2": "B"}, 2: {"model_2": "A", "model_1": "B"}}
    final = [g for g in (1, 2) if game_status(rec, g) in DONE_STATUSES]
    for g in final:
        winner = rec.get(f"g{g}_winner", "error")
        verdict = unmap[g].get(winner, winner)
        r = GameResult(
            rec.get(f"g{g}_user_prompt", ""),
            rec.get(f"g{g}_judgment", ""),
            game_status(rec, g),
            None,
            verdict,
        )
        if len(final) == 1:  # its row is written again with the other game: keep what this one cost
            # the row's usage: this game's, plus what the failed game's billed replies cost
            r.usage = rec.get("usage")
            kept = [
                {k: v for k, v in a.items() if k != "game"}
                for a in rec.get("attempts") or []
                if a.get("game") == g
            ]
            r.attempts = kept or None
        yield (*key, g), r
