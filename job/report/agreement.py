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

import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from job.errors import JobError
from job.records.jsonl import iter_jsonl
from job.records.judgments import PairRow, SingleRow, judged_status, read_judgment

WINNERS = ("model_a", "model_b", "tie", "tie (bothbad)")
Key = tuple[str, str, str]
"""(question id as text, model_a, model_b) with model_a < model_b"""
ByKey = dict[Key, dict[str, list[str]]]
"""per key: judge -> its winners (canonical pair order)"""


@dataclass(frozen=True)
class Vote:
    judge: str
    turn: int
    question_id: str
    model_a: str
    model_b: str
    winner: str


def judge_name(judge: Any) -> str:
    """FastChat's get_judge_name, extended: ["gpt-4", "pair*"] -> gpt4-pair, expert* -> human,
    author* -> author; other [model, prompt] -> model-pair or model-single; other text as is."""
    if isinstance(judge, list):
        kind = "pair" if str(judge[1]).startswith("pair") else "single"
        return "gpt4-pair" if judge[0] == "gpt-4" and kind == "pair" else f"{judge[0]}-{kind}"
    for prefix, name in (("expert", "human"), ("author", "author")):
        if judge.startswith(prefix):
            return name
    return str(judge)


def _flip(winner: str) -> str:
    return {"model_a": "model_b", "model_b": "model_a"}.get(winner, winner)


def canonical(vote: Vote) -> tuple[Key, str]:
    """The vote's key (model pair sorted) and its winner in that order (FastChat's revert)."""
    if vote.model_a < vote.model_b:
        return (vote.question_id, vote.model_a, vote.model_b), vote.winner
    return (vote.question_id, vote.model_b, vote.model_a), _flip(vote.winner)


# ---- reading ---------------------------------------------------------------------------


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line or position, object): parquet, a JSON array (FastChat's vote files), or JSONL."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise JobError(f"{path}: {e.strerror}") from None
    if data.startswith(b"PAR1"):
        yield from enumerate(_parquet(path), start=1)
    elif data.lstrip().startswith(b"["):
        try:
            rows = json.loads(data)
        except ValueError as e:
            raise JobError(f"{path}: malformed JSON ({e}); fix the file") from None
        for i, row in enumerate(rows, start=1):
            if not isinstance(row, dict):
                raise JobError(f"{path}: item {i}: expected a JSON object, got {type(row).__name__}")
            yield i, row
    else:
        yield from iter_jsonl(data, str(path))


def _parquet(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise JobError(
            f"{path}: reading parquet needs pyarrow: pip install 'mtbench-job[agreement]'"
        ) from None
    try:
        rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow's errors: ArrowInvalid, OSError, ...
        raise JobError(f"{path}: unreadable parquet ({type(e).__name__}: {e}); re-export it") from None
    return rows


def _human_problem(row: dict[str, Any]) -> str | None:
    qid, turn, judge = row.get("question_id"), row.get("turn"), row.get("judge")
    if isinstance(qid, bool) or not isinstance(qid, int | str):
        return "question_id must be an integer or a string"
    if not all(isinstance(row.get(k), str) for k in ("model_a", "model_b")):
        return "model_a and model_b must be strings"
    if row.get("winner") not in WINNERS:
        return f"winner is {row.get('winner')!r}, not one of {', '.join(WINNERS)}"
    if isinstance(turn, bool) or not isinstance(turn, int) or turn < 1:
        return "turn must be an integer >= 1"
    if not (isinstance(judge, str) or (isinstance(judge, list) and len(judge) >= 2)):
        return "judge must be a name or [judge name, prompt name]"
    return None


def _human_votes(rows: Iterable[tuple[int, dict[str, Any]]], where: str, name: str | None) -> list[Vote]:
    out = []
    for i, row in rows:
        problem = _human_problem(row)
        if problem:
            raise JobError(f"{where}:{i}: invalid human judgment ({problem}); fix the row")
        judge = name or judge_name(row["judge"])
        out.append(
            Vote(judge, row["turn"], str(row["question_id"]), row["model_a"], row["model_b"], row["winner"])
        )
    return out


def _last_per_game(rows: list[Any], key: Any) -> list[Any]:
    """Choice 0, sample 0; of repeated rows of a game the last stored."""
    games = {key(r): r for r in rows if r.choice == 0 and r.sample_index == 0}
    return list(games.values())


def _pair_votes(rows: list[PairRow], name: str | None) -> list[Vote]:
    out = []
    for r in _last_per_game(rows, lambda r: (str(r.question_id), r.turn, r.model_1, r.model_2)):
        games = ((r.g1_status, r.g1_winner), (r.g2_status, r.g2_winner))
        if any(judged_status(status, winner != "error") != "ok" for status, winner in games):
            continue
        winner = r.g1_winner if r.g1_winner == r.g2_winner else "tie"  # inconsistent: tie
        winner = {"model_1": "model_a", "model_2": "model_b"}.get(winner, "tie")
        judge = name or judge_name(r.judge or ["", "pair"])
        out.append(Vote(judge, r.turn, str(r.question_id), r.model_1, r.model_2, winner))
    return out


def _single_votes(rows: list[SingleRow], name: str | None) -> list[Vote]:
    graded: dict[tuple[str, str, int], dict[str, float]] = {}
    for r in _last_per_game(rows, lambda r: (str(r.question_id), r.turn, r.model)):
        if r.status_of == "ok":
            judge = name or judge_name(r.judge or ["", "single"])
            graded.setdefault((judge, str(r.question_id), r.turn), {})[r.model] = float(r.score)
    out = []
    for (judge, qid, turn), scores in graded.items():
        for a, b in combinations(sorted(scores), 2):
            sa, sb = scores[a], scores[b]
            winner = "model_a" if sa > sb else "model_b" if sa < sb else "tie"
            out.append(Vote(judge, turn, qid, a, b, winner))
    return out


def read_votes(spec: str) -> list[Vote]:
    """The votes of one input, `PATH` or `NAME=PATH` (NAME: the judge name for all its votes)."""
    name, _, path_text = spec.partition("=") if "=" in spec and not Path(spec).exists() else ("", "", spec)
    path = Path(path_text)
    rows = list(_rows(path))
    if not rows:
        raise JobError(f"{path}: no judgments in the file")
    first = rows[0][1]
    if "winner" in first:
        return _human_votes(rows, str(path), name or None)
    pairwise = "model_1" in first
    typed = [t for i, r in rows for t in read_judgment(r, f"{path}:{i}", pairwise=pairwise)]
    return _pair_votes(typed, name or None) if pairwise else _single_votes(typed, name or None)


# ---- agreement -------------------------------------------------------------------------


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
    out: dict[str, Any] = {}
    for label, keys in [
        *((str(t), [data.get(t, {})]) for t in want),
        ("all", [data.get(t, {}) for t in want]),
    ]:
        out[label] = {
            "with_ties" if t else "without_ties": stats(
                [p for d in keys for p in comparisons(d, j1, j2, ties=t)], same_judge=j1 == j2
            )
            for t in ties
        }
    return out


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
