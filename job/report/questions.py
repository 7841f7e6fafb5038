"""Per-question data for the HTML browser: question, each model's answer per choice and
turn, and the judge's explanation and score (FastChat's qa_browser, without a server).

Pure: questions, answers and judgment records in, plain dicts out (JSON-able).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from job.records import Answer, Question, id_sort_key
from job.records.judgments import JudgmentRow, PairRow, SingleRow


def _single_index(records: Iterable[JudgmentRow]) -> dict[tuple[str, str, int, int], dict[str, Any]]:
    """(model, qid, choice, turn) -> the judgment shown: the last ok one, else the last one."""
    out: dict[tuple[str, str, int, int], dict[str, Any]] = {}
    for r in records:
        if not isinstance(r, SingleRow):
            continue
        k = (r.model, str(r.question_id), r.choice, r.turn)
        if k in out and out[k]["status"] == "ok" and r.status_of != "ok":
            continue
        out[k] = {"score": r.score, "status": r.status_of, "judgment": r.judgment, "error": r.error,
                  "judge": list(r.judge or [])}  # fmt: skip
    return out


PAIR_SHOWN = ("model_1", "model_2", "turn", "choice", "g1_winner", "g2_winner", "g1_judgment", "g2_judgment",
              "status", "error")  # fmt: skip


def _pairs(records: Iterable[JudgmentRow]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if isinstance(r, PairRow):
            out.setdefault(str(r.question_id), []).append({k: getattr(r, k) for k in PAIR_SHOWN})
    return out


def question_entries(
    questions: list[Question],
    answers: dict[str, list[Answer]],
    judgments: list[JudgmentRow],
    models: list[str],
) -> list[dict[str, Any]]:
    """One entry per question that any model answered or any judgment mentions."""
    single = _single_index(judgments)
    pairs = _pairs(judgments)
    by_model = {m: {str(a.question_id): a for a in answers.get(m, [])} for m in models}
    judged = {k[1] for k in single} | set(pairs)
    out = []
    for q in sorted(questions, key=lambda q: id_sort_key(q.question_id)):
        qid = str(q.question_id)
        if qid not in judged and not any(qid in by_model[m] for m in models):
            continue
        per_model: dict[str, list[dict[str, Any]]] = {}
        for m in models:
            a = by_model[m].get(qid)
            idx = sorted({k[2] for k in single if k[0] == m and k[1] == qid})
            choices = {c.index: c for c in a.choices} if a else {}
            rows = []
            for ci in sorted(set(choices) | set(idx)):
                c = choices.get(ci)
                rows.append({
                    "index": ci, "turns": list(c.turns) if c else [],
                    "status": (c.status or "ok") if c else "missing", "error": c.error if c else None,
                    "judgments": {t: single[(m, qid, ci, t)] for t in (1, 2) if (m, qid, ci, t) in single},
                })  # fmt: skip
            if rows:
                per_model[m] = rows
        out.append({
            "question_id": qid, "category": q.category, "turns": list(q.turns),
            "models": per_model, "pairs": pairs.get(qid, []),
        })  # fmt: skip
    return out
