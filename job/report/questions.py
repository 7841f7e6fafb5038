"""Per-question data for the HTML browser: question, each model's answer per choice and
turn, and the judge's explanation and score (FastChat's qa_browser, without a server).

Pure: questions, answers and judgment records in, plain dicts out (JSON-able).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from job.records import Answer, Question, id_sort_key
from job.records.judgments import JudgmentRow, PairRow, SingleRow
from job.report.aggregate import combined

Key = tuple[str, str, int, int]
"""(model, question id, choice, turn)"""


def _single_index(records: Iterable[JudgmentRow], sample_agg: str = "mean") -> dict[Key, dict[str, Any]]:
    """(model, qid, choice, turn) -> the judgment shown: per judge sample the last ok one,
    else the last one; an item with several samples shows their aggregate and each sample."""
    per: dict[Key, dict[int, dict[str, Any]]] = {}
    for r in records:
        if not isinstance(r, SingleRow):
            continue
        shown = per.setdefault((r.model, str(r.question_id), r.choice, r.turn), {})
        old = shown.get(r.sample_index)
        if old is not None and old["status"] == "ok" and r.status_of != "ok":
            continue
        shown[r.sample_index] = {"score": r.score, "status": r.status_of, "judgment": r.judgment,
                                 "error": r.error, "judge": list(r.judge or [])}  # fmt: skip
    return {k: _of_samples(v, sample_agg) for k, v in per.items()}


def _of_samples(samples: dict[int, dict[str, Any]], how: str) -> dict[str, Any]:
    """One sample: its judgment as it is; several: the score the report gives the item (mean
    or median of the scored samples) and every sample, in sample order."""
    if len(samples) == 1:
        return next(iter(samples.values()))
    each = [{**samples[k], "sample": k} for k in sorted(samples)]
    ok = [j["score"] for j in each if j["status"] == "ok"]
    agg = combined(ok, how) if ok else -1
    first = each[0]
    return {"score": agg, "status": "ok" if ok else first["status"], "judgment": "", "error": None if ok else first["error"],
            "judge": first["judge"], "samples": each, "sample_agg": how}  # fmt: skip


PAIR_SHOWN = ("model_1", "model_2", "turn", "choice", "g1_winner", "g2_winner", "g1_judgment", "g2_judgment",
              "status", "error")  # fmt: skip


def _pairs(records: Iterable[JudgmentRow]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if isinstance(r, PairRow):
            shown = {k: getattr(r, k) for k in PAIR_SHOWN}
            out.setdefault(str(r.question_id), []).append({**shown, "sample": r.sample_index})
    return out


def question_entries(
    questions: list[Question],
    answers: dict[str, list[Answer]],
    judgments: list[JudgmentRow],
    models: list[str],
    sample_agg: str = "mean",
) -> list[dict[str, Any]]:
    """One entry per question that any model answered or any judgment mentions."""
    single = _single_index(judgments, sample_agg)
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
