"""`job agreement`: judge-vs-judge and judge-vs-human agreement, as FastChat's
llm_judge/compute_agreement.py computes it, plus Cohen's kappa.

Every input becomes pairwise votes (turn, question, model_a, model_b, winner, judge):
- human vote files in the `mt_bench_human_judgments` format (JSON array, JSONL or parquet);
  judge names normalised as FastChat does (expert_* -> human, author_* -> author);
- pairwise judgment files (ours or FastChat's): one vote per game whose two orders both gave a
  verdict: that verdict when they agree, else tie (FastChat's show_result rule);
- single judgment files: scores compared per question and turn, for every pair of models
  both graded (higher wins; equal: tie), as the MT-bench paper converts single grades.
Only choice 0 and judge sample 0 count (FastChat judges choice 0, once); a failed judgment
(any status but ok) is no vote. Of repeated rows of one game the last stored counts (resume
re-asks failures; a rerun appends).

Votes are keyed per turn by (question, sorted model pair), the winner flipped with the pair.
Two judges: every vote of one against every vote of the other on a shared key (FastChat: the
GPT-4 judge has one vote a key). A judge against itself: every pair of its votes on a key
(FastChat's human vs human). Any two ties agree ("tie" = "tie (bothbad)"); without ties, a
comparison involving a tie is left out.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import combinations
from typing import Any

from job.errors import JobError
from job.report.agreement.votes import ByKey, Vote, canonical, input_files, read_votes

__all__ = ["Vote", "agreement", "cohen_kappa", "pick_judges", "read_votes", "input_files", "render_table"]


def by_turn(votes: Iterable[Vote]) -> dict[int, ByKey]:
    """FastChat's get_mt_bench_votes_data: turn -> key -> judge -> winners."""
    data: dict[int, ByKey] = {}
    for v in votes:
        key, winner = canonical(v)
        data.setdefault(v.turn, {}).setdefault(key, {}).setdefault(v.judge, []).append(winner)
    return data


def _label(winner: str) -> str:
    return "tie" if "tie" in winner else winner


def comparisons(data: ByKey, judge1: str, judge2: str, ties: bool) -> list[tuple[str, str]]:
    """The compared (label, label) pairs, ties as "tie"; without ties, none involving one."""
    out = []
    for votes in data.values():
        if judge1 not in votes or judge2 not in votes:
            continue
        if judge1 == judge2:
            pairs = list(combinations(votes[judge1], 2))
        else:
            pairs = [(a, b) for a in votes[judge1] for b in votes[judge2]]
        out += [(_label(a), _label(b)) for a, b in pairs]
    return [p for p in out if ties or "tie" not in p]


def cohen_kappa(pairs: Sequence[tuple[str, str]]) -> float | None:
    """(p_o - p_e) / (1 - p_e), p_e from each side's label shares; None when undefined
    (no pairs, or both sides always the same one label)."""
    n = len(pairs)
    if not n:
        return None
    left, right = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    p_o = sum(a == b for a, b in pairs) / n
    p_e = sum(left[c] * right[c] for c in left) / (n * n)
    return None if math.isclose(p_e, 1.0) else (p_o - p_e) / (1 - p_e)


def stats(pairs: Sequence[tuple[str, str]], same_judge: bool) -> dict[str, Any]:
    """total, agree, ratio and kappa. A judge against itself: kappa over both orders of each
    pair, so it does not depend on the order the votes were read in."""
    agree = sum(a == b for a, b in pairs)
    both = [*pairs, *((b, a) for a, b in pairs)] if same_judge else pairs
    return {
        "total": len(pairs),
        "agree": agree,
        "ratio": agree / len(pairs) if pairs else None,
        "kappa": cohen_kappa(both),
    }


def agreement(
    votes: Sequence[Vote],
    judges: Sequence[str],
    turns: Sequence[int] | None = None,
    ties: Sequence[bool] = (True, False),
) -> dict[str, Any]:
    """Per turn (and "all" turns together) and per tie setting: total, agree, ratio, kappa."""
    j1, j2 = judges
    data = by_turn(votes)
    want = sorted(data) if turns is None else list(turns)
    groups = {str(t): [data.get(t, {})] for t in want}
    groups["all"] = [data.get(t, {}) for t in want]
    return {
        label: {
            "with_ties" if t else "without_ties": stats(
                [p for d in keys for p in comparisons(d, j1, j2, ties=t)], same_judge=j1 == j2
            )
            for t in ties
        }
        for label, keys in groups.items()
    }


def pick_judges(votes: Sequence[Vote], asked: Sequence[str] | None) -> tuple[str, str]:
    """--judges as given (each must have votes), else the two judges found (human second),
    else one judge against itself. FastChat's author votes count only when asked."""
    found = sorted({v.judge for v in votes})
    if asked:
        missing = [j for j in asked if j not in found]
        if missing:
            raise JobError(
                f"--judges {' '.join(missing)}: no votes by that judge; the inputs have {', '.join(found)}"
            )
        return asked[0], asked[1]
    names = sorted((j for j in found if j != "author"), key=lambda j: j == "human")
    if len(names) == 1:
        return names[0], names[0]
    if len(names) == 2:
        return names[0], names[1]
    raise JobError(f"the inputs have votes by {', '.join(found) or 'no judge'}; pick two with --judges A B")


def render_table(judges: Sequence[str], result: dict[str, Any]) -> str:
    lines = [
        f"agreement: {judges[0]} vs {judges[1]}",
        f"{'turn':<5} {'ties':<8} {'total':>6} {'agree':>6} {'ratio':>6} {'kappa':>6}",
    ]
    for turn, settings in result.items():
        for setting, s in settings.items():
            ratio = "-" if s["ratio"] is None else f"{s['ratio']:.2f}"
            kappa = "-" if s["kappa"] is None else f"{s['kappa']:.2f}"
            tie = "with" if setting == "with_ties" else "without"
            lines.append(f"{turn:<5} {tie:<8} {s['total']:>6} {s['agree']:>6} {ratio:>6} {kappa:>6}")
    return "\n".join(lines)
