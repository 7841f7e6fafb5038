"""`job generate --model openai/<name> --base-url ...` + `job reduce` through the real CLI,
against the OpenAI-compatible test server on 127.0.0.1, on the packaged smoke bench."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from servers.openai_server import OpenAIServer

from job.benches import resolve_bench
from job.records import Answer, parse_records

KEY = "sk-cli-Secret0123456789abcdef"
pytestmark = pytest.mark.timeout(120)


def _numbered_reply() -> Any:
    counter = itertools.count()

    def reply(body: dict[str, Any]) -> str:  # unique per request, so copies are traceable
        return f"reply-{next(counter)} to {body['messages'][-1]['content'][:24]!r}"

    return reply


def test_generate_and_reduce_against_the_server(make_openai_server, run_job, tmp_path: Path) -> None:
    srv: OpenAIServer = make_openai_server(reply=_numbered_reply(), latency=0.01, jitter=0.01)
    out = tmp_path / "runs"
    env = {"OPENAI_API_KEY": KEY}
    gen = run_job(
        "generate", "--bench", "smoke", "--model", "openai/test-model", "--base-url", srv.url,
        "--num-choices", "2", "--max-new-tokens", "64", "--concurrency", "4", "--output", str(out),
        "--dedupe-greedy",  # forced: API models default to one request per choice
        env=env,
    )  # fmt: skip
    assert gen.returncode == 0, gen.stderr
    red = run_job("reduce", "--bench", "smoke", "--output", str(out), env=env)
    assert red.returncode == 0, red.stderr

    bench = resolve_bench("smoke", None)
    questions, _ = bench.load_questions()
    greedy = {q.question_id for q in questions if bench.behaviour.temperature(q.category) < 1e-4}
    # greedy questions: one conversation serves both choices; the others: two each
    expected = sum(len(q.turns) * (1 if q.question_id in greedy else 2) for q in questions)
    assert len(srv.requests) == expected
    assert srv.max_in_flight <= 4
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in srv.requests)

    # each turn-2 request carries its own conversation's turn-1 answer (same question, same seed)
    turn1 = {(r.messages[0]["content"], r.body["seed"]): r for r in srv.requests if len(r.messages) == 1}
    turn2 = [r for r in srv.requests if len(r.messages) == 3]
    assert len(turn1) == len(turn2) == expected // 2
    for r in turn2:
        first = turn1[(r.messages[0]["content"], r.body["seed"])]
        assert r.messages[1] == {"role": "assistant", "content": first.reply}
        assert first.end is not None and r.start >= first.end
    temps = {q.turns[0]: bench.behaviour.temperature(q.category) for q in questions}
    assert all(r.body["temperature"] == temps[r.messages[0]["content"]] for r in srv.requests)
    assert all(r.body["max_tokens"] == 64 and r.body["model"] == "test-model" for r in srv.requests)

    path = out / "smoke" / "model_answer" / "test-model.jsonl"
    answers = parse_records(path.read_bytes(), Answer, str(path))
    assert len(answers) == len(questions)
    replies = {
        (
            r.messages[0]["content"] if len(r.messages) == 1 else r.messages[2]["content"],
            r.body["seed"],
        ): r.reply
        for r in srv.requests
    }  # noqa: E501
    by_id = {q.question_id: q for q in questions}
    for a in answers:
        q = by_id[a.question_id]
        assert [c.index for c in a.choices] == [0, 1]
        for c in a.choices:
            seed = 0 if q.question_id in greedy else c.index  # greedy choices copy choice 0
            assert c.turns == [replies[(q.turns[0], seed)], replies[(q.turns[1], seed)]]
        if q.question_id not in greedy:
            assert a.choices[0].turns != a.choices[1].turns

    # the key went over the wire but nowhere else
    assert KEY not in gen.stdout + gen.stderr + red.stdout + red.stderr
    for f in out.rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f


def test_invalid_key_fails_fast_and_writes_nothing(make_openai_server, run_job, tmp_path: Path) -> None:
    srv: OpenAIServer = make_openai_server(api_key="sk-the-right-one", latency=0.01)
    out = tmp_path / "runs"
    res = run_job(
        "generate", "--bench", "smoke", "--model", "openai/test-model", "--base-url", srv.url,
        "--concurrency", "3", "--max-retries", "6", "--output", str(out),
        env={"OPENAI_API_KEY": KEY},
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    error_lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "HTTP 401" in error_lines[0] and "OPENAI_API_KEY" in error_lines[0]
    assert KEY not in res.stderr + res.stdout
    assert len(srv.requests) <= 3  # what was in flight when the first 401 came back; no retries
    assert not list(out.rglob("*.manifest.json")) and not list(out.rglob("*.jsonl"))


def test_base_url_from_the_environment_and_dry_run(make_openai_server, run_job, tmp_path: Path) -> None:
    srv: OpenAIServer = make_openai_server()
    res = run_job(
        "generate", "--bench", "smoke", "--model", "openai/test-model", "--dry-run",
        "--output", str(tmp_path / "runs"), env={"OPENAI_BASE_URL": srv.url},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert not srv.requests  # a dry run sends nothing
    res = run_job(
        "generate", "--bench", "smoke", "--model", "openai/test-model", "--first-n", "2",
        "--output", str(tmp_path / "runs"), env={"OPENAI_BASE_URL": srv.url},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert len(srv.requests) == 4
    assert {r.headers["authorization"] for r in srv.requests} == {"Bearer EMPTY"}
    manifest = next((tmp_path / "runs").rglob("*.manifest.json"))
    assert json.loads(manifest.read_text())["num_failed"] == 0
