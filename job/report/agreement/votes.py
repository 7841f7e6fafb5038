"""Every input of `job agreement` as pairwise votes (turn, question, model_a, model_b, winner,
judge): human vote files in the `mt_bench_human_judgments` format (a JSON array as FastChat's
vote files, JSONL or parquet), and judgment files, ours or FastChat's, read through
job.records (pairwise: a game's verdict; single: scores compared)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
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
        first = (str(e).splitlines() or [""])[0]  # the message stays one line
        raise JobError(f"{path}: unreadable parquet ({type(e).__name__}: {first}); re-export it") from None
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


@dataclass(frozen=True)
class _Namer:
    given: str | None
    fallback: str

    def __call__(self, judge: list[str] | None) -> str:
        # a row without a judge reads as None or ["", ""]
        return self.given or (judge_name(judge) if judge and judge[0] else self.fallback)


def _last_per_game(rows: list[Any], key: Any) -> list[Any]:
    """Choice 0, sample 0; of repeated rows of a game the last stored."""
    games = {key(r): r for r in rows if r.choice == 0 and r.sample_index == 0}
    return list(games.values())


def _pair_votes(rows: list[PairRow], name: _Namer) -> list[Vote]:
    out = []
    for r in _last_per_game(rows, lambda r: (str(r.question_id), r.turn, r.model_1, r.model_2)):
        games = ((r.g1_status, r.g1_winner), (r.g2_status, r.g2_winner))
        if any(judged_status(status, winner != "error") != "ok" for status, winner in games):
            continue
        winner = r.g1_winner if r.g1_winner == r.g2_winner else "tie"  # inconsistent: tie
        winner = {"model_1": "model_a", "model_2": "model_b"}.get(winner, "tie")
        out.append(Vote(name(r.judge), r.turn, str(r.question_id), r.model_1, r.model_2, winner))
    return out


def _single_votes(rows: list[SingleRow], name: _Namer) -> list[Vote]:
    graded: dict[tuple[str, str, int], dict[str, float]] = {}
    for r in _last_per_game(rows, lambda r: (str(r.question_id), r.turn, r.model)):
        if r.status_of == "ok":
            graded.setdefault((name(r.judge), str(r.question_id), r.turn), {})[r.model] = float(r.score)
    out = []
    for (judge, qid, turn), scores in graded.items():
        for a, b in combinations(sorted(scores), 2):
            sa, sb = scores[a], scores[b]
            winner = "model_a" if sa > sb else "model_b" if sa < sb else "tie"
            out.append(Vote(judge, turn, qid, a, b, winner))
    return out


def split_spec(spec: str) -> tuple[str | None, Path]:
    """`NAME=PATH` -> (NAME, PATH); a plain PATH (one that exists, even with a "=") -> (None, PATH)."""
    if "=" in spec and not Path(spec).exists():
        name, _, path = spec.partition("=")
        return name or None, Path(path)
    return None, Path(spec)


def input_files(spec: str) -> tuple[str | None, list[Path]]:
    """(NAME, the files) of `[NAME=]PATH`; a folder (a run's <bench>/model_judgment/): every
    *_single.jsonl and *_pair.jsonl in it."""
    name, path = split_spec(spec)
    if not path.is_dir():
        return name, [path]
    files = sorted(path.glob("*_single.jsonl")) + sorted(path.glob("*_pair.jsonl"))
    if not files:
        raise JobError(f"{path}: no *_single.jsonl or *_pair.jsonl judgment files in the folder")
    return name, files


def read_votes(spec: str) -> list[Vote]:
    """The votes of one input, `[NAME=]PATH` (NAME: the judge of all its votes; a judgment row
    without a judge: the file name, e.g. gpt-4_pair)."""
    name, files = input_files(spec)
    return [v for f in files for v in _file_votes(f, name)]


def _file_votes(path: Path, name: str | None) -> list[Vote]:
    rows = list(_rows(path))
    if not rows:
        raise JobError(f"{path}: no judgments in the file")
    if "winner" in rows[0][1]:
        return _human_votes(rows, str(path), name)
    pairwise = "model_1" in rows[0][1]
    typed = [t for i, r in rows for t in read_judgment(r, f"{path}:{i}", pairwise=pairwise)]
    named = _Namer(name, path.name.removesuffix(".jsonl"))
    return _pair_votes(typed, named) if pairwise else _single_votes(typed, named)
