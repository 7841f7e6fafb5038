"""Judge noise, retries and cost (issue 15, items 2 judge side, 5, 6): K judge samples per game
stored as rows with a sample index and resumed per sample; --parse-retries asking again for a
reply with no rating, every attempt recorded and the totals reconciled; the API's token usage
per row and in the manifest; --dry-run's token and cost estimate."""

from __future__ import annotations

import json
import math
import re
import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from servers.openai_server import OpenAIServer, last_user
from test_judge_cli import API_ENV, MakeServer, _answer_dir, _jsonl
from test_judge_reuse import _pair_match

from job.backends.base import SamplingParams
from job.judge import JUDGE_PARAMS, inputs_sha256
from job.judge.results import GameResult, make_record

QUESTIONS = 9
"""smoke bench: 9 questions of 2 turns, one choice of model m (_answer_dir): 18 rows"""
ROWS = 2 * QUESTIONS
FASTCHAT_SINGLE = ["question_id", "model", "judge", "user_prompt", "judgment", "score", "turn", "tstamp"]
OURS = ["choice", "status", "error", "inputs_sha256"]


def _judge(run_job: Any, answers: Path, out: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    cmd = [
        "judge",
        "--bench",
        "smoke",
        "--answers-dir",
        str(answers),
        "--output",
        str(out),
        "--judge-name",
        "j",
    ]
    return run_job(*cmd, *args, env=env)


def _rows(out: Path) -> list[dict[str, Any]]:
    return _jsonl(out / "smoke" / "model_judgment" / "j_single.jsonl")


def _manifest(out: Path) -> dict[str, Any]:
    return dict(json.loads((out / "smoke" / "model_judgment" / "j_single.manifest.json").read_text()))


def _new(stdout: str) -> str:
    m = re.search(r"judged \S+ with \S+: (.*?); (\d+) games were already stored", stdout)
    assert m, stdout
    return f"{m.group(1)}; {m.group(2)} stored"


def test_judge_samples_rows_and_resume_per_sample(run_job: Any, tmp_path: Path) -> None:
    """K=1 writes today's rows (no sample field); K=3 asks only samples 1 and 2; a run that
    lost rows (killed) asks only those; K=2 afterwards counts samples 0 and 1 only."""
    answers, out = _answer_dir(tmp_path), tmp_path / "runs"
    judge = ["--judge-model", "mock/fixed:[[5]]"]
    r = _judge(run_job, answers, out, *judge)
    assert r.returncode == 0 and _new(r.stdout) == f"{ROWS} ok; 0 stored", r.stderr
    one = _rows(out)
    assert [list(x) for x in one] == [FASTCHAT_SINGLE + OURS] * ROWS
    r = _judge(run_job, answers, out, *judge, "--judge-samples", "3")
    assert r.returncode == 0 and _new(r.stdout) == f"{2 * ROWS} ok; {ROWS} stored", r.stderr
    rows = _rows(out)
    assert rows[:ROWS] == one  # sample 0 reused as it was
    assert Counter(x.get("sample", 0) for x in rows) == {0: ROWS, 1: ROWS, 2: ROWS}
    assert all(list(x) == FASTCHAT_SINGLE + OURS + ["sample"] for x in rows[ROWS:])
    path = out / "smoke" / "model_judgment" / "j_single.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-5]))  # a run killed before its last 5 rows
    r = _judge(run_job, answers, out, *judge, "--judge-samples", "3")
    assert r.returncode == 0 and _new(r.stdout) == f"5 ok; {3 * ROWS - 5} stored", r.stderr
    man = _manifest(out)
    assert man["judge_samples"] == 3 and len(man["rows"]) == 3 * ROWS
    r = _judge(run_job, answers, out, *judge, "--judge-samples", "2")
    assert r.returncode == 0 and _new(r.stdout) == f"nothing new; {2 * ROWS} stored", r.stderr
    current = set(_manifest(out)["rows"])
    assert Counter(x.get("sample", 0) for x in _rows(out) if x["inputs_sha256"] in current) == {
        0: ROWS,
        1: ROWS,
    }


def test_sample_zero_hashes_as_before_and_other_samples_differ() -> None:
    m, _ = _pair_match("b")
    base = inputs_sha256("openai/gpt-4", JUDGE_PARAMS, m)
    assert inputs_sha256("openai/gpt-4", JUDGE_PARAMS, replace(m, sample=0)) == base
    s1 = inputs_sha256("openai/gpt-4", JUDGE_PARAMS, replace(m, sample=1))
    hot = inputs_sha256("openai/gpt-4", SamplingParams(temperature=0.7, max_new_tokens=2048), m)
    assert len({base, s1, hot}) == 3
    games = {g: GameResult("u", "[[A]]", "ok", None, "A") for g in (1, 2)}
    rec = make_record("j", m, games, base, tstamp=1.0)
    assert list(rec)[-2:] == ["g1_status", "g2_status"]  # no sample, usage or attempts: today's row
    games[2].usage, games[1].usage = (
        {"prompt_tokens": 3, "completion_tokens": 4},
        {"prompt_tokens": 10, "completion_tokens": 1},
    )
    rec = make_record("j", replace(m, sample=1), games, s1, tstamp=1.0)
    assert rec["sample"] == 1 and rec["usage"] == {"prompt_tokens": 13, "completion_tokens": 5}


class Judge:
    """A judge that answers each distinct prompt with no rating first, then "[[k]]" (k from
    the prompt length; pairwise prompts: "[[A]]"); prompts naming `never` never get a rating; those naming `fail` get a 400."""

    def __init__(self, never: str = "lighthouse keeper", fail: str = "museum guide"):
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.never, self.fail = never, fail

    def reply(self, body: dict[str, Any]) -> str:
        user = last_user(body)
        with self.lock:
            self.seen[user] += 1
            first = self.seen[user] == 1
        if self.never in user.split("[The Start of Assistant's Answer]")[0] or first:
            return "I would rather not say."
        return "Fine. [[A]]" if "Assistant B" in user else f"Fine. Rating: [[{len(user) % 9 + 1}]]"

    def fault(self, body: dict[str, Any], n: int) -> str | None:
        return "400" if self.fail in last_user(body) else None


def _server(make: MakeServer, j: Judge) -> OpenAIServer:
    return make(reply=j.reply, faults=j.fault)


def _api(srv: OpenAIServer) -> list[str]:
    return ["--judge-model", "openai/test-model", "--judge-base-url", srv.url, "--concurrency", "4"]


def _words(text: str) -> int:
    return len(text.split())


def _usage_of(srv: OpenAIServer, user: str) -> dict[str, int]:
    """What the server charged for the calls with this user prompt (its rule: whitespace
    words of every message in, of the reply out)."""
    calls = [r for r in srv.chat_requests if r.last_user == user and r.reply is not None]
    prompt = sum(_words(m["content"]) for r in calls for m in r.messages)
    return {"prompt_tokens": prompt, "completion_tokens": sum(_words(r.reply or "") for r in calls)}


@pytest.mark.timeout(120)
def test_parse_retries_record_every_attempt_and_totals_reconcile(
    run_job: Any, tmp_path: Path, make_openai_server: MakeServer
) -> None:
    """2 retries: a reply without a rating is asked again; q1's two turns never get one (3
    calls each, parse_error), q2's two turns fail with a 400 (api_error: one call, no retry),
    the other 14 rows are ok on their second call. requested 18 = 14 + 2 + 2; calls 14*2 +
    2*3 + 2 = 36, of which 14 + 2*2 = 18 parse retries."""
    srv = _server(make_openai_server, Judge())
    answers, out = _answer_dir(tmp_path), tmp_path / "runs"
    r = _judge(run_job, answers, out, *_api(srv), "--parse-retries", "2", env=API_ENV)
    assert r.returncode == 0, r.stderr
    assert "requested 18 = 14 ok + 2 parse_error + 2 api_error; 36 calls (18 parse retries)" in r.stdout
    rows = _rows(out)
    by_status = Counter(x["status"] for x in rows)
    assert by_status == {"ok": 14, "parse_error": 2, "api_error": 2}
    for never in (x for x in rows if x["status"] == "parse_error"):
        assert never["question_id"] == 1 and never["score"] == -1
        assert [a["status"] for a in never["attempts"]] == ["parse_error", "parse_error"]
    assert {x["question_id"] for x in rows if x["status"] == "api_error"} == {2}
    for x in rows:
        if x["status"] == "ok":
            assert [a["judgment"] for a in x["attempts"]] == ["I would rather not say."]
            assert x["score"] == len(x["user_prompt"]) % 9 + 1
        if x["status"] != "api_error":
            assert x["usage"] == _usage_of(srv, x["user_prompt"])
        else:
            assert "usage" not in x and "attempts" not in x
    man = _manifest(out)
    assert man["totals"] == {"requested": 18, "ok": 14, "parse_error": 2, "api_error": 2, "judge_error": 0,
                             "answer_error": 0, "calls": 36, "parse_retries": 18}  # fmt: skip
    charged = [_usage_of(srv, x["user_prompt"]) for x in rows if x["status"] != "api_error"]
    total = {k: sum(u[k] for u in charged) for k in ("prompt_tokens", "completion_tokens")}
    assert man["usage_total"] == man["usage_run"] == total


@pytest.mark.timeout(120)
def test_no_parse_retries_is_fastchats_behaviour(
    run_job: Any, tmp_path: Path, make_openai_server: MakeServer
) -> None:
    """Default 0: every first reply (no rating) is stored as parse_error, asked once each."""
    srv = _server(make_openai_server, Judge(fail="no such text"))
    answers, out = _answer_dir(tmp_path), tmp_path / "runs"
    r = _judge(run_job, answers, out, *_api(srv), env=API_ENV)
    assert r.returncode != 0 and "all 18 judgments of this run failed (18 parse_error)" in r.stderr
    assert "requested 18 = 0 ok + 18 parse_error + 0 api_error; 18 calls (0 parse retries)" in r.stdout
    assert _manifest(out)["totals"]["parse_error"] == 18  # a failed run's totals are kept too
    rows = _rows(out)
    assert len(srv.chat_requests) == ROWS and all("attempts" not in x for x in rows)
    assert all(x["status"] == "parse_error" and x["score"] == -1 for x in rows)


def test_parse_retries_on_a_batching_judge(run_job: Any, tmp_path: Path) -> None:
    """mock/script (batches, like hf/vllm): the 18 first replies alternate no rating / [[7]],
    the 9 calls asked again get [[7]]; every row ends ok, the 9 retried ones carrying the first
    reply as an attempt."""
    script = tmp_path / "replies.json"
    script.write_text(json.dumps(["no rating", "Rating: [[7]]"] * 9 + ["Rating: [[7]]"] * 9))
    answers, out = _answer_dir(tmp_path), tmp_path / "runs"
    r = _judge(run_job, answers, out, "--judge-model", f"mock/script:{script}", "--parse-retries", "1")
    assert r.returncode == 0, r.stderr
    assert "requested 18 = 18 ok + 0 parse_error + 0 api_error; 27 calls (9 parse retries)" in r.stdout
    rows = _rows(out)
    assert {x["score"] for x in rows} == {7}
    assert sorted(len(x.get("attempts") or []) for x in rows) == [0] * 9 + [1] * 9
    assert "usage_total" in _manifest(out) and _manifest(out)["usage_total"] is None  # mock reports none


def _two_models(tmp_path: Path) -> Path:
    """_answer_dir's model m (turns "a", "b") and model n (turns "c", "d")."""
    answers = _answer_dir(tmp_path)
    rows = [json.loads(x) for x in (answers / "m.jsonl").read_text().splitlines()]
    (answers / "n.jsonl").write_text(
        "".join(json.dumps({**x, "choices": [{"index": 0, "turns": ["c", "d"]}]}) + "\n" for x in rows)
    )
    return answers


@pytest.mark.timeout(120)
def test_pairwise_retries_name_the_game(run_job: Any, tmp_path: Path, make_openai_server: MakeServer) -> None:
    srv = _server(make_openai_server, Judge(never="no such text", fail="no such text"))
    answers, out = _two_models(tmp_path), tmp_path / "runs"
    r = _judge(
        run_job, answers, out, *_api(srv), "--mode", "pairwise-all", "--parse-retries", "1", env=API_ENV
    )
    assert r.returncode == 0, r.stderr
    pair = _jsonl(out / "smoke" / "model_judgment" / "j_pair.jsonl")
    # each game's first reply has no verdict, its second is [[A]]: game 1 model_1, game 2 model_2
    assert len(pair) == ROWS and {(x["status"], x["g1_winner"], x["g2_winner"]) for x in pair} == {
        ("ok", "model_1", "model_2")
    }
    assert all(
        [(a["game"], a["status"]) for a in x["attempts"]] == [(1, "parse_error"), (2, "parse_error")]
        for x in pair
    )
    assert "requested 18 = 18 ok + 0 parse_error + 0 api_error; 72 calls (36 parse retries)" in r.stdout


def test_dry_run_estimates_tokens_and_cost(run_job: Any, tmp_path: Path) -> None:
    """An API judge: prompt tokens = ceil(chars / 4) of every request's system + user prompt
    (counted here from --dump), completion = 200 per single call; cost at 2 and 10 USD/Mtok."""
    answers, out, dump = _answer_dir(tmp_path), tmp_path / "runs", tmp_path / "dump.jsonl"
    args = ["--judge-model", "openai/gpt-4o", "--dry-run", "--price-per-mtok", "2,10", "--dump", str(dump)]
    r = _judge(run_job, answers, out, *args, "--judge-samples", "2", env=API_ENV)
    assert r.returncode == 0, r.stderr
    reqs = _jsonl(dump)
    assert len(reqs) == 2 * ROWS
    prompt = math.ceil(sum(len(x["system_prompt"]) + len(x["user_prompt"]) for x in reqs) / 4)
    completion = 200 * 2 * ROWS
    usd = (prompt * 2 + completion * 10) / 1e6
    lines = r.stdout.splitlines()
    assert (
        f"~{prompt} prompt tokens (chars/4), ~{completion} completion tokens (assumed 200/call, single)"
        in lines[0]
    )
    assert (
        lines[1]
        == f"total: {2 * ROWS} calls, ~{prompt} prompt + ~{completion} completion tokens, ~${usd:.2f} at $2/$10 per Mtok"
    )


@pytest.mark.timeout(120)
def test_dry_run_uses_the_mean_completion_of_stored_judgments(
    run_job: Any, tmp_path: Path, make_openai_server: MakeServer
) -> None:
    """After a real run, the completion estimate is the mean the API reported per call."""
    srv = _server(make_openai_server, Judge(never="no such text", fail="no such text"))
    answers, out = _answer_dir(tmp_path), tmp_path / "runs"
    assert _judge(run_job, answers, out, *_api(srv), "--parse-retries", "1", env=API_ENV).returncode == 0
    done = sum(_words(r.reply or "") for r in srv.chat_requests)
    r = _judge(run_job, answers, out, *_api(srv), "--judge-samples", "2", "--dry-run", env=API_ENV)
    assert r.returncode == 0, r.stderr
    per_call = done / len(srv.chat_requests)
    assert f"~{round(per_call * ROWS)} completion tokens (mean of {2 * ROWS} stored calls)" in r.stdout


@pytest.mark.timeout(120)
def test_dry_run_counts_a_local_judges_prompt_with_its_tokenizer(
    run_job: Any, tmp_path: Path, tiny_model: Path
) -> None:
    from transformers import AutoTokenizer

    answers, out, dump = _answer_dir(tmp_path), tmp_path / "runs", tmp_path / "dump.jsonl"
    r = _judge(run_job, answers, out, "--judge-model", f"hf/{tiny_model}", "--dry-run", "--dump", str(dump))
    assert r.returncode == 0, r.stderr
    tok = AutoTokenizer.from_pretrained(tiny_model)
    reqs = _jsonl(dump)
    # the tiny model's template (smoke_model.CHAT_TEMPLATE), written out by hand
    texts = [
        "<s>"
        + (f"<|im_start|>system\n{x['system_prompt']}<|im_end|>\n" if x["system_prompt"] else "")
        + f"<|im_start|>user\n{x['user_prompt']}<|im_end|>\n<|im_start|>assistant\n"
        for x in reqs
    ]
    n = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert n > sum(len(x["user_prompt"]) for x in reqs) / 10  # tokens, not a count of fields
    assert f"~{n} prompt tokens (the judge's tokenizer and chat template)" in r.stdout


@pytest.mark.parametrize("price", ["2", "a,b", "1,-1", "1,2,3", "nan,1"])
def test_bad_price_is_a_one_line_error(run_job: Any, tmp_path: Path, price: str) -> None:
    r = _judge(
        run_job,
        _answer_dir(tmp_path),
        tmp_path / "runs",
        "--judge-model",
        "mock/judge",
        "--dry-run",
        "--price-per-mtok",
        price,
    )
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: --price-per-mtok"), (
        r.stderr
    )


def test_job_run_passes_the_judge_samples(run_job: Any, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    r = run_job("run", "--bench", "smoke", "--model", "mock/echo", "--model-name", "m", "--output", str(out),
                "--judge-model", "mock/judge", "--judge-name", "j", "--judge-samples", "2")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert Counter(x.get("sample", 0) for x in _rows(out)) == {0: ROWS, 1: ROWS}


@pytest.mark.timeout(120)
def test_a_pairwise_row_asked_again_for_one_game_keeps_the_other_games_usage(
    run_job: Any, tmp_path: Path, make_openai_server: MakeServer
) -> None:
    """Run 1: game 2 of every turn-1 pair gets a 400 (row api_error, usage = game 1's). Run 2
    asks only those 9 games; the rows written again hold both games' usage."""
    failing = [True]
    game2_turn1 = "[The Start of Assistant A's Answer]\nc\n"  # model n's turn-1 answer shown first

    def fault(body: dict[str, Any], n: int) -> str | None:
        return "400" if failing[0] and game2_turn1 in last_user(body) else None

    srv = make_openai_server(reply=lambda body: "Verdict: [[A]]", faults=fault)
    answers, out = _two_models(tmp_path), tmp_path / "runs"
    pair = ["--mode", "pairwise-all"]
    assert _judge(run_job, answers, out, *_api(srv), *pair, env=API_ENV).returncode == 0
    failing[0] = False
    r = _judge(run_job, answers, out, *_api(srv), *pair, env=API_ENV)
    assert r.returncode == 0 and "requested 9 = 9 ok" in r.stdout, r.stdout
    rows = _jsonl(out / "smoke" / "model_judgment" / "j_pair.jsonl")[-9:]
    assert {x["turn"] for x in rows} == {1} and {x["status"] for x in rows} == {"ok"}
    for x in rows:
        g1, g2 = _usage_of(srv, x["g1_user_prompt"]), _usage_of(srv, x["g2_user_prompt"])
        assert x["usage"] == {k: g1[k] + g2[k] for k in g1} and g1["prompt_tokens"] > 0


def test_bad_judge_temperature_is_a_one_line_error(run_job: Any, tmp_path: Path) -> None:
    r = _judge(
        run_job,
        _answer_dir(tmp_path),
        tmp_path / "runs",
        "--judge-model",
        "mock/judge",
        "--judge-temperature",
        "3",
    )
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and last.startswith("error: --judge-temperature: temperature must be"), r.stderr
