"""`job agreement` (job/report/agreement.py): hand-computed cases (kappa included), then parity
with the REAL compute_agreement.py of fschat==0.2.36 on the same generated inputs.

The fschat wheel is installed with --no-deps into a folder of its own by
.ci/setup.d/70-fschat.sh (locally: `bash .ci/setup.d/70-fschat.sh .venv/fschat-0.2.36`); its
compute_agreement.py is loaded as a file (it imports only argparse, json, os and numpy, so
nothing is stubbed). Missing: a skip here, a failure in CI (tests/ci_gate.py)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Callable
from itertools import combinations
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from ci_gate import unavailable
from click.testing import CliRunner

from job.cli import cli
from job.errors import JobError
from job.report.agreement import agreement, cohen_kappa, pick_judges, read_votes
from job.report.agreement.votes import WINNERS

# not `from conftest import`: under the whole suite that name may be a sub-folder's conftest
REPO = Path(__file__).resolve().parent.parent
RunJob = Callable[..., subprocess.CompletedProcess[str]]

FSCHAT_VERSION = "0.2.36"  # = .ci/setup.d/70-fschat.sh FSCHAT_VERSION
MODELS = ["alpaca-13b", "claude-v1", "gpt-3.5-turbo", "llama-13b"]


@pytest.fixture(scope="module")
def fastchat() -> ModuleType:
    roots = [
        os.environ.get("JOB_FSCHAT", ""),
        *map(str, sorted(REPO.glob(f".venv*/fschat-{FSCHAT_VERSION}"))),
    ]
    for root in filter(None, roots):
        path = Path(root) / "fastchat/llm_judge/compute_agreement.py"
        if path.is_file() and (Path(root) / f".installed-{FSCHAT_VERSION}").exists():
            spec = importlib.util.spec_from_file_location("fschat_compute_agreement", path)
            assert spec and spec.loader
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            return mod
    unavailable(
        f"fschat=={FSCHAT_VERSION}'s compute_agreement.py is not installed for the agreement parity test",
        "run `bash .ci/setup.d/70-fschat.sh` (.ci/run does in CI)",
    )


def write(path: Path, rows: list[dict[str, Any]], as_array: bool = False) -> str:
    text = json.dumps(rows) if as_array else "".join(json.dumps(r) + "\n" for r in rows)
    path.write_text(text, encoding="utf-8")
    return str(path)


def vote(qid: int, a: str, b: str, winner: str, judge: Any, turn: int = 1) -> dict[str, Any]:
    return {"question_id": qid, "model_a": a, "model_b": b, "winner": winner, "judge": judge, "turn": turn}


# ---- hand-computed ---------------------------------------------------------------------

GPT4 = ["gpt-4", "pair-v2"]
HAND_GPT4 = [vote(1, "m1", "m2", "model_a", GPT4), vote(2, "m1", "m2", "model_b", GPT4),
             vote(3, "m1", "m2", "tie", GPT4), vote(4, "m2", "m1", "model_b", GPT4)]  # fmt: skip
"""canonical winners (m1 < m2): q1 a, q2 b, q3 tie, q4 a (the pair swapped)"""
HAND_HUMAN = [vote(1, "m1", "m2", "model_a", "expert_0"), vote(1, "m2", "m1", "model_a", "expert_1"),
              vote(2, "m1", "m2", "model_a", "expert_0"), vote(3, "m1", "m2", "tie (bothbad)", "expert_3"),
              vote(4, "m1", "m2", "model_a", "expert_0"), vote(4, "m1", "m2", "model_b", "author_0"),
              vote(5, "m1", "m2", "model_b", "expert_2")]  # fmt: skip
"""q1: a, b (swapped pair); q2: a; q3: tie; q4: a (the author's vote is another judge);
q5: no GPT-4 vote, so never compared with it"""


def test_hand_computed_gpt4_vs_human(tmp_path: Path) -> None:
    votes = read_votes(write(tmp_path / "gpt4.json", HAND_GPT4, as_array=True))
    votes += read_votes(write(tmp_path / "human.jsonl", HAND_HUMAN))
    assert pick_judges(votes, None) == ("gpt4-pair", "human")
    got = agreement(votes, ("gpt4-pair", "human"))["1"]
    # with ties: q1 (a,a) (a,b), q2 (b,a), q3 (tie,tie), q4 (a,a): 3 of 5; labels per side
    # a 3, b 1, tie 1 each: p_e = (9 + 1 + 1) / 25 = 0.44, kappa = (0.6 - 0.44) / 0.56 = 2/7
    assert got["with_ties"] == {"total": 5, "agree": 3, "ratio": 0.6, "kappa": pytest.approx(2 / 7)}
    # without ties: q3 left out, 2 of 4; p_e = (9 + 1) / 16, kappa = (0.5 - 0.625) / 0.375 = -1/3
    assert got["without_ties"] == {"total": 4, "agree": 2, "ratio": 0.5, "kappa": pytest.approx(-1 / 3)}


def test_hand_computed_human_vs_human(tmp_path: Path) -> None:
    votes = read_votes(write(tmp_path / "human.jsonl", HAND_HUMAN))
    assert pick_judges(votes, None) == ("human", "human")  # the author's votes count only when asked
    got = agreement(votes, ("human", "human"))
    # q1 is the only key with two human votes: a vs b; kappa over both orders: p_o 0, p_e 0.5
    assert got["1"]["with_ties"] == {"total": 1, "agree": 0, "ratio": 0.0, "kappa": -1.0}
    assert got["all"] == got["1"]
    # the author (its own judge) against the humans: q4 a vs b (human), only key with both
    assert agreement(votes, ("author", "human"))["1"]["with_ties"]["agree"] == 0


def test_cohen_kappa_textbook() -> None:
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15: p_o 0.7, p_e 0.5*0.6 + 0.5*0.4 = 0.5
    pairs = [("y", "y")] * 20 + [("y", "n")] * 5 + [("n", "y")] * 10 + [("n", "n")] * 15
    assert cohen_kappa(pairs) == pytest.approx(0.4)
    assert cohen_kappa([("y", "y")] * 3) is None  # one label on both sides: undefined
    assert cohen_kappa([]) is None


def test_single_grades_become_pairwise_votes(tmp_path: Path) -> None:
    judge = ["gpt-4", "single-v1"]
    rows = [
        {"question_id": 1, "model": "m1", "score": 8, "turn": 1, "judge": judge},
        {"question_id": 1, "model": "m2", "score": 6, "turn": 1, "judge": judge},
        {"question_id": 1, "model": "m3", "score": 8, "turn": 1, "judge": judge},
        {"question_id": 1, "model": "m4", "score": -1, "turn": 1, "judge": judge},  # no rating: no vote
        {"question_id": 1, "model": "m2", "score": 9, "turn": 1, "judge": judge, "choice": 1},  # not choice 0
        {"question_id": 1, "model": "m5", "score": 3, "turn": 1, "judge": judge, "status": "api_error"},
    ]
    human = [vote(1, "m1", "m2", "model_a", "expert_0"), vote(1, "m3", "m1", "tie", "expert_0"),
             vote(1, "m3", "m2", "model_b", "expert_1"), vote(1, "m4", "m1", "model_a", "expert_0"),
             vote(1, "m5", "m1", "model_b", "expert_0")]  # fmt: skip
    votes = read_votes(write(tmp_path / "gpt-4_single.jsonl", rows)) + read_votes(
        write(tmp_path / "h.jsonl", human)
    )
    # scores m1 8, m2 6, m3 8: (m1,m2) a, (m1,m3) tie, (m2,m3) b; humans: a, tie, (m2,m3) a
    # (the pair m3/m2 swapped, winner model_b = m2); m4 and m5 have no grade
    got = agreement(votes, pick_judges(votes, None))["1"]
    assert pick_judges(votes, None) == ("gpt-4-single", "human")
    assert (got["with_ties"]["total"], got["with_ties"]["agree"]) == (3, 2)
    assert (got["without_ties"]["total"], got["without_ties"]["agree"]) == (2, 1)


def test_pair_judgments_our_rows(tmp_path: Path) -> None:
    j = ["judge-x", "pair-v2"]
    row = {"question_id": 7, "model_1": "b", "model_2": "a", "judge": j, "turn": 2, "status": "ok"}
    rows = [
        {
            **row,
            "g1_winner": "model_2",
            "g2_winner": "model_2",
            "status": "api_error",
            "g1_status": "api_error",
        },
        {**row, "g1_winner": "model_1", "g2_winner": "model_1"},  # the retry: last stored counts, b wins
        {**row, "question_id": 8, "g1_winner": "model_1", "g2_winner": "model_2"},  # inconsistent: tie
        {**row, "question_id": 9, "g1_winner": "error", "g2_winner": "model_1", "status": "parse_error"},
        {**row, "question_id": 10, "g1_winner": "model_1", "g2_winner": "model_1", "sample": 1},
    ]
    votes = read_votes("X=" + write(tmp_path / "judge-x_pair.jsonl", rows))
    assert {(v.judge, v.turn, v.question_id, v.model_a, v.model_b, v.winner) for v in votes} == {
        ("X", 2, "7", "b", "a", "model_a"),
        ("X", 2, "8", "b", "a", "tie"),
    }
    assert {v.judge for v in read_votes(str(tmp_path / "judge-x_pair.jsonl"))} == {"judge-x-pair"}
    no_judge = [{k: v for k, v in rows[1].items() if k != "judge"}]
    assert [v.judge for v in read_votes(write(tmp_path / "hand_pair.jsonl", no_judge))] == ["hand_pair"]


@pytest.mark.parametrize(
    "row, message",
    [
        ({"winner": "model_c"}, "h.jsonl:2: invalid human judgment (winner is 'model_c'"),
        ({"turn": 0}, "h.jsonl:2: invalid human judgment (turn must be an integer >= 1)"),
        ({"model_b": None}, "h.jsonl:2: invalid human judgment (model_a and model_b must be strings)"),
    ],
)
def test_bad_human_row(tmp_path: Path, row: dict[str, Any], message: str) -> None:
    path = write(tmp_path / "h.jsonl", [HAND_HUMAN[0], {**HAND_HUMAN[1], **row}])
    with pytest.raises(JobError, match=re.escape(message)):
        read_votes(path)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"[1, 2]", "f: item 1: expected a JSON object, got int"),
        (b'[{"question_id": 1', "f: malformed JSON ("),
        (b"", "f: no judgments in the file"),
        (b"PAR1 not really parquet", "f: unreadable parquet ("),
    ],
)
def test_unreadable_inputs(tmp_path: Path, data: bytes, message: str) -> None:
    (tmp_path / "f").write_bytes(data)
    with pytest.raises(JobError, match=re.escape(str(tmp_path / message))):
        read_votes(str(tmp_path / "f"))


def test_parquet_without_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # `import pyarrow.parquet` fails
    (tmp_path / "h.parquet").write_bytes(b"PAR1")
    with pytest.raises(
        JobError, match=re.escape("reading parquet needs pyarrow: pip install 'mtbench-job[agreement]'")
    ):
        read_votes(str(tmp_path / "h.parquet"))


def test_cli_bad_input_and_unknown_judge(tmp_path: Path, run_job: RunJob) -> None:
    human = write(tmp_path / "h.jsonl", HAND_HUMAN)
    r = run_job("agreement", human, "--judges", "gpt4-pair", "human")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: --judges gpt4-pair: no votes by that judge; the inputs have author, human"
    ]
    bad = write(tmp_path / "bad.jsonl", [{**HAND_HUMAN[0], "winner": "A"}])
    r = run_job("agreement", bad)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "bad.jsonl:1: invalid human judgment (winner is 'A'" in r.stderr


# ---- parity with FastChat's compute_agreement.py ----------------------------------------


def generated(seed: int = 15) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(GPT-4 pair votes: one per key, a few keys without; human votes: 0-3 per key from five
    experts and an author, either pair order, all four winner values)."""
    rng = random.Random(seed)
    gpt4, human = [], []
    for turn in (1, 2):
        for qid in range(81, 96):
            for a, b in combinations(MODELS, 2):
                if rng.random() < 0.9:
                    x, y = (a, b) if rng.random() < 0.5 else (b, a)
                    gpt4.append(vote(qid, x, y, rng.choice(["model_a", "model_b", "tie"]), GPT4, turn))
                for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
                    x, y = (a, b) if rng.random() < 0.5 else (b, a)
                    judge = rng.choice(
                        ["expert_0", "expert_1", "expert_2", "expert_3", "expert_4", "author_1"]
                    )
                    winner = rng.choice(["model_a", "model_a", "model_b", "model_b", "tie", "tie (bothbad)"])
                    human.append(vote(qid, x, y, winner, judge, turn))
    return gpt4, human


def fastchat_numbers(
    fastchat: ModuleType, votes: list[list[dict[str, Any]]], judges: tuple[str, str]
) -> dict[str, Any]:
    data = fastchat.get_mt_bench_votes_data(votes)
    out = {}
    for turn in (1, 2):
        for setting, ban in (("with_ties", []), ("without_ties", ["tie"])):
            agree, total = fastchat.get_mt_bench_agreement(data[turn - 1], *judges, ban=ban)
            out[(str(turn), setting)] = (total, agree)
    return out


def ours(result: dict[str, Any]) -> dict[Any, Any]:
    return {(t, s): (v["total"], v["agree"]) for t in ("1", "2") for s, v in result[t].items()}


def test_parity_vote_files_cli(
    fastchat: ModuleType, tmp_path: Path, run_job: RunJob, capsys: pytest.CaptureFixture[str]
) -> None:
    gpt4, human = generated()
    files = [
        write(tmp_path / "gpt4_pair.json", gpt4, as_array=True),
        write(tmp_path / "human.json", human, as_array=True),
    ]
    fastchat.run_mt_bench_agreement(["gpt4-pair", "human"], files)  # its own file reading and printout
    printed = re.findall(
        r"turn (\d) (with|without) tie\. #total: (\d+), #agree: (\d+), ratio: ([\d.]+)",
        capsys.readouterr().out,
    )
    assert len(printed) == 4
    r = run_job("agreement", *files, "--output", str(tmp_path / "a.json"))
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["judges"] == ["gpt4-pair", "human"]
    assert [f["sha256"] for f in doc["files"]] == [
        hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files
    ]
    for turn, setting, total, agree, ratio in printed:
        s = doc["turns"][turn][f"{setting}_ties"]
        assert (s["total"], s["agree"], f"{s['ratio']:.2f}") == (int(total), int(agree), ratio)
    assert f"{int(printed[0][2]):>6} {int(printed[0][3]):>6} {printed[0][4]:>6}" in r.stdout
    assert int(printed[0][2]) > 50 and 0 < int(printed[1][2]) < int(printed[0][2])  # the data is not trivial


def test_parity_human_vs_human_jsonl_and_parquet(fastchat: ModuleType, tmp_path: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        unavailable("pyarrow is not installed", "pip install -e '.[test]' (or the agreement extra)")

    _, human = generated(seed=7)
    want = fastchat_numbers(fastchat, [human], ("human", "human"))
    pq.write_table(pa.Table.from_pylist(human), tmp_path / "human.parquet")
    for path in (write(tmp_path / "human.jsonl", human), str(tmp_path / "human.parquet")):
        assert ours(agreement(read_votes(path), ("human", "human"))) == want


def pair_rows_as_votes(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """FastChat vote dicts, by show_result's rule: both orders gave a verdict (no error, our
    status ok or none), the verdict when they agree, else a tie."""
    out = []
    for r in rows:
        g1, g2 = r["g1_winner"], r["g2_winner"]
        if "error" in (g1, g2) or r.get("status", "ok") != "ok":
            continue
        w = {"model_1": "model_a", "model_2": "model_b"}[g1] if g1 == g2 and g1 != "tie" else "tie"
        out.append(vote(r["question_id"], r["model_1"], r["model_2"], w, GPT4, r["turn"]))
    return out


def single_rows_as_votes(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per question and turn, every two graded models (score not -1): the higher wins, else a
    tie; named as FastChat's GPT-4 pair judge (get_judge_name names no other machine judge)."""
    graded: dict[tuple[Any, int], dict[str, float]] = {}
    for r in rows:
        if r["score"] != -1 and r.get("status", "ok") == "ok":
            graded.setdefault((r["question_id"], r["turn"]), {})[r["model"]] = r["score"]
    out = []
    for (qid, turn), scores in graded.items():
        for a, b in combinations(sorted(scores), 2):
            w = "tie" if scores[a] == scores[b] else "model_a" if scores[a] > scores[b] else "model_b"
            out.append(vote(qid, a, b, w, GPT4, turn))
    return out


def test_parity_judgment_files(fastchat: ModuleType, tmp_path: Path) -> None:
    """FastChat-format pair and single judgment files vs the votes they mean, converted here by
    hand and given to FastChat's code."""
    rng = random.Random(3)
    _, human = generated(seed=11)
    pair_rows, single_rows = [], []
    for turn in (1, 2):
        for qid in range(81, 96):
            for a, b in combinations(MODELS, 2):
                m1, m2 = (a, b) if rng.random() < 0.5 else (b, a)
                g1, g2 = (rng.choice(["model_1", "model_2", "tie", "error"]) for _ in range(2))
                pair_rows.append({"question_id": qid, "model_1": m1, "model_2": m2, "g1_winner": g1, "g2_winner": g2,
                                  "judge": GPT4, "turn": turn, "tstamp": 0})  # fmt: skip
            single_rows += [{"question_id": qid, "model": m, "score": rng.choice([-1, 3, 5, 5, 7, 8, 10]),
                             "turn": turn, "judge": ["gpt-4", "single-v1"]} for m in MODELS]  # fmt: skip
    human_votes = read_votes(write(tmp_path / "human.jsonl", human))
    pair = read_votes(write(tmp_path / "gpt-4_pair.jsonl", pair_rows))
    got = agreement(human_votes + pair, ("gpt4-pair", "human"))
    assert ours(got) == fastchat_numbers(
        fastchat, [human, pair_rows_as_votes(pair_rows)], ("gpt4-pair", "human")
    )
    single = read_votes("gpt4-single=" + write(tmp_path / "gpt-4_single.jsonl", single_rows))
    got = agreement(human_votes + single, ("gpt4-single", "human"))
    want = fastchat_numbers(fastchat, [human, single_rows_as_votes(single_rows)], ("gpt4-pair", "human"))
    assert ours(got) == want


@pytest.fixture(scope="module")
def judged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two mock models' smoke answers judged single and pairwise by mock/judge (varied
    verdicts), through the real CLI in this process: the files our judge writes."""
    out = tmp_path_factory.mktemp("agreement") / "runs"
    steps = [["generate", "--model", "mock/echo"], ["generate", "--model", "mock/digest"], ["reduce"],
             ["judge", "--judge-model", "mock/judge"], ["judge", "--judge-model", "mock/judge", "--mode", "pairwise-all"]]  # fmt: skip
    for step in steps:
        r = CliRunner().invoke(cli, [*step, "--bench", "smoke", "--output", str(out)])
        assert r.exit_code == 0, r.output
    return out / "smoke" / "model_judgment"


def test_parity_on_our_judge_files(fastchat: ModuleType, judged: Path, tmp_path: Path) -> None:
    single_rows = [json.loads(x) for x in (judged / "judge_single.jsonl").read_text().splitlines()]
    pair_rows = [json.loads(x) for x in (judged / "judge_pair.jsonl").read_text().splitlines()]
    assert len(pair_rows) == 18 and all(r["status"] == "ok" for r in pair_rows)  # 9 questions x 2 turns
    rng = random.Random(5)
    human = [vote(r["question_id"], r["model_2"], r["model_1"], rng.choice(WINNERS), f"expert_{i}", r["turn"])
             for r in pair_rows for i in range(rng.choice([1, 2]))]  # fmt: skip
    human_file = write(tmp_path / "human.jsonl", human)
    out = tmp_path / "a.json"
    args = ["agreement", str(judged / "judge_single.jsonl"), str(judged / "judge_pair.jsonl"), human_file]
    for judges, theirs in [
        (("judge-pair", "human"), pair_rows_as_votes(pair_rows)),
        (("judge-single", "human"), single_rows_as_votes(single_rows)),
    ]:
        r = CliRunner().invoke(cli, [*args, "--judges", *judges, "--output", str(out)])
        assert r.exit_code == 0, r.output
        assert ours(json.loads(out.read_text())["turns"]) == fastchat_numbers(
            fastchat, [human, theirs], ("gpt4-pair", "human")
        )
    # the pair judge against the single one (no FastChat counterpart), the folder given
    r = CliRunner().invoke(cli, ["agreement", str(judged), "--output", str(out)])
    doc = json.loads(out.read_text())
    assert r.exit_code == 0 and doc["judges"] == ["judge-pair", "judge-single"]
    assert doc["turns"]["all"]["with_ties"]["total"] == 18  # one vote a game each: 9 questions x 2 turns
