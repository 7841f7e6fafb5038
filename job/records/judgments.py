"""Judgment records: one line of model_judgment/<judge>_single.jsonl or _pair.jsonl.

FastChat's fields plus ours (choice, status, error, inputs_sha256; g1/g2 status on pairwise
rows). Fields are declared in the order they are written, so a dumped record is the line
FastChat's tools read. FastChat's own rows have no status: the status rule (judged_status)
gives them one, here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from job.records import Qid, _Record


def judged_status(status: str | None, judged: bool) -> str:
    """A row's (or game's) status: ours carry one; FastChat's are ok when the judge gave a
    score (single, not -1) or a verdict (pairwise, not "error"), else parse_error."""
    return status or ("ok" if judged else "parse_error")


def single_status(rec: Mapping[str, Any]) -> str:
    """The status of a stored single judgment (dict as read from the file)."""
    return judged_status(rec.get("status"), rec.get("score", -1) != -1)


def game_status(rec: Mapping[str, Any], game: int) -> str:
    """The status of game 1 or 2 of a stored pairwise judgment."""
    return judged_status(rec.get(f"g{game}_status"), rec.get(f"g{game}_winner", "error") != "error")


class SingleJudgment(_Record):
    """A single-answer grading: the judge's [[rating]] of one model's turn (-1: none)."""

    question_id: Qid
    model: str
    judge: list[str]
    """[judge name, prompt name]"""
    user_prompt: str
    judgment: str
    score: int | float
    turn: int
    tstamp: int | float
    choice: int = 0
    status: str | None = None
    """ok | parse_error | answer_error | api_error | judge_error; FastChat rows: none"""
    error: str | None = None
    inputs_sha256: str | None = None


class PairJudgment(_Record):
    """A pairwise comparison: game 1 (model_1 as A) and game 2 (the order swapped)."""

    question_id: Qid
    model_1: str
    model_2: str
    g1_winner: str
    """model_1 | model_2 | tie | error"""
    g2_winner: str
    judge: list[str]
    g1_user_prompt: str
    g1_judgment: str
    g2_user_prompt: str
    g2_judgment: str
    turn: int
    tstamp: int | float
    choice: int = 0
    status: str | None = None
    """the first failure of its games (judge.results), else ok; FastChat rows: none"""
    error: str | None = None
    inputs_sha256: str | None = None
    g1_status: str | None = None
    g2_status: str | None = None


def judgment_line(rec: SingleJudgment | PairJudgment) -> dict[str, Any]:
    """The record as the dict written (python values, declared order)."""
    return rec.model_dump()
