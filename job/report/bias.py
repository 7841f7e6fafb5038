"""Judge bias diagnostics, pure: typed judgment rows (or the score frame) and answers in,
JSON-able dicts out.

- Pairwise (`pair_bias`, over every pair of games whose two verdicts are not errors):
  position consistency = share of pairs whose two orders (game 1: model_1 shown first,
  game 2: swapped) give the same verdict; inconsistent pairs are counted (FastChat scores them
  as ties, unchanged); first-position win rate = share of decisive games (not tie) won by the
  answer shown first; longer-answer win rate = share of decisive games between answers of
  different lengths (characters of the judged turn) won by the longer one.
- Single (`single_bias`): per model, Spearman's rank correlation of score with answer length
  (characters of the judged turn; tied values get their average rank).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from job.records import Answer
from job.records.judgments import PairRow

AnswerLengths = dict[tuple[str, str, int, int], int]
"""(model, question id, choice, turn) -> characters of that answer turn"""


def answer_lengths(answers: dict[str, list[Answer]]) -> AnswerLengths:
    return {
        (m, str(a.question_id), c.index, t): len(text)
        for m, recs in answers.items()
        for a in recs
        for c in a.choices
        for t, text in enumerate(c.turns, 1)
    }


def _rate(k: int, n: int) -> float | None:
    return k / n if n else None


def pair_bias(rows: list[PairRow], lengths: AnswerLengths) -> dict[str, Any]:
    valid = [r for r in rows if "error" not in (r.g1_winner, r.g2_winner)]
    consistent = sum(r.g1_winner == r.g2_winner for r in valid)
    # (row, the model shown first, the winner's model or None for a tie)
    games = [(r, first, {"model_1": r.model_1, "model_2": r.model_2}.get(w))
             for r in valid for first, w in ((r.model_1, r.g1_winner), (r.model_2, r.g2_winner))]  # fmt: skip
    decisive = [(r, first, w) for r, first, w in games if w is not None]
    first_wins = sum(w == first for _, first, w in decisive)
    longer_wins = n_length = 0
    for r, _, w in decisive:
        qid = str(r.question_id)
        n1, n2 = (lengths.get((m, qid, r.choice, r.turn)) for m in (r.model_1, r.model_2))
        if n1 is None or n2 is None or n1 == n2:
            continue
        n_length += 1
        longer_wins += w == (r.model_1 if n1 > n2 else r.model_2)
    return {
        "pairs": len(valid), "consistent": consistent, "inconsistent": len(valid) - consistent,
        "position_consistency": _rate(consistent, len(valid)),
        "decisive_games": len(decisive), "first_position_wins": first_wins,
        "first_position_win_rate": _rate(first_wins, len(decisive)),
        "length_games": n_length, "longer_answer_wins": longer_wins,
        "longer_answer_win_rate": _rate(longer_wins, n_length),
    }  # fmt: skip


def spearman(x: list[float], y: list[float]) -> float | None:
    """Pearson's r of the average ranks; None with fewer than 2 points or a constant side."""
    if len(x) < 2:
        return None
    rx, ry = (pd.Series(v, dtype=float).rank(method="average").to_numpy() for v in (x, y))
    if rx.std() == 0 or ry.std() == 0:
        return None
    r = float(np.corrcoef(rx, ry)[0, 1])
    return None if math.isnan(r) else r


def single_bias(df: pd.DataFrame, lengths: AnswerLengths, models: list[str]) -> dict[str, dict[str, Any]]:
    """df: the score frame (one row per scored item, judge samples collapsed)."""
    out: dict[str, dict[str, Any]] = {}
    ok = df[df["ok"]]
    for m in models:
        d = ok[ok["model"] == m]
        found = zip(d["score"], d["question_id"], d["choice"], d["turn"], strict=True)
        pts = [(float(s), n) for s, q, c, t in found if (n := lengths.get((m, q, c, t))) is not None]
        out[m] = {"n": len(pts), "spearman": spearman([float(n) for _, n in pts], [s for s, _ in pts])}
    return out
