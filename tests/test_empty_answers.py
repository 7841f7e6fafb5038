"""An empty completion of a completed generation (EOS at once, the limit used up) is an
answer, as in FastChat: kept, counted, judged (usually a 1), never dropped from the means.
Only a failed request is a failure. An empty *judge* reply is a parse_error (final, -1).

Real CLI against the OpenAI-compatible test server on 127.0.0.1, on the smoke bench."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from servers.openai_server import OpenAIServer, Reply
from servers.replies import last_user

from job.backends.base import GenResult
from job.benches import resolve_bench
from job.records import Answer, parse_records

pytestmark = pytest.mark.timeout(200)
ENV = {"OPENAI_API_KEY": "sk-test-empty0123456789", "JOB_JUDGE_API_KEY": "sk-judge-empty0123456789"}


@pytest.mark.parametrize(
    ("text", "finish", "ok"),
    [("", "stop", True), (" \n", "length", True), ("x", "stop", True), ("", None, False),
     ("", "content_filter", False), ("x", "abort", False), ("x", "error", False)],
)  # fmt: skip
def test_gen_result_fails_only_a_failed_request(text: str, finish: str | None, ok: bool) -> None:
    r = GenResult(text, finish_reason=finish)
    assert r.ok is ok and (r.error is None) is ok
    assert r.text == (text if ok else "")


def _first_turns() -> dict[int, str]:
    questions, _ = resolve_bench("smoke", None).load_questions()
    return {int(q.question_id): q.turns[0] for q in questions}


def test_empty_answers_are_kept_counted_and_judged(
    make_openai_server: Any, run_job: Any, tmp_path: Path
) -> None:
    firsts = _first_turns()
    empty_q = {1, 2}  # this checkpoint emits EOS at once on questions 1 and 2, both turns

    def gen(body: dict[str, Any]) -> Reply:
        q = next(q for q, t in firsts.items() if body["messages"][0]["content"] == t)
        return Reply("", completion_tokens=1) if q in empty_q else Reply("a fine answer")

    def judge(body: dict[str, Any]) -> str:
        prompt = body["messages"][-1]["content"]
        empty = "Answer]\n\n[The End" in prompt or "### Assistant A:\n\n\n<|The End" in prompt
        return "Nothing. Rating: [[1]]" if empty else "Good. Rating: [[9]]"

    g: OpenAIServer = make_openai_server(reply=gen, models=["ckpt"])
    j: OpenAIServer = make_openai_server(reply=judge, models=["judge"])
    out = tmp_path / "runs"
    p = run_job("run", "--bench", "smoke", "--model", "openai/ckpt", "--base-url", g.url, "--judge-model",
                "openai/judge", "--judge-base-url", j.url, "--output", str(out), "--max-retries", "0",
                "--num-choices", "1", env=ENV)  # fmt: skip
    # before: 2 conversations "failed in generation", reduce refused (exit 2)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "model ckpt: 4 empty answers" in p.stderr
    (manifest,) = (out / "smoke/shards/ckpt").glob("*.manifest.json")
    assert json.loads(manifest.read_text())["num_empty"] == 4
    summary = json.loads((out / "smoke/model_answer/ckpt.manifest.json").read_text())
    assert (summary["empty_answers"], summary["num_failed"]) == (4, 0)
    path = out / "smoke/model_answer/ckpt.jsonl"
    answers = {a.question_id: a.choices[0] for a in parse_records(path.read_bytes(), Answer, str(path))}
    assert [answers[q].turns for q in (1, 2, 3)] == [["", ""], ["", ""], ["a fine answer", "a fine answer"]]
    assert all(answers[q].status is None and answers[q].finish_reasons == ["stop", "stop"] for q in empty_q)
    # judged like FastChat: 4 of the 18 turns score 1, the other 14 score 9
    (jfile,) = (out / "smoke/model_judgment").glob("*.jsonl")
    rows = [json.loads(ln) for ln in jfile.read_text().splitlines()]
    assert sorted((r["question_id"], r["turn"], r["score"]) for r in rows if r["score"] == 1) == [
        (1, 1, 1), (1, 2, 1), (2, 1, 1), (2, 2, 1)
    ]  # fmt: skip
    assert len(rows) == 18 and all(r.get("status", "ok") == "ok" for r in rows)
    report = json.loads((out / "smoke/reports/report.json").read_text())
    (overall,) = [
        s for s in report["scores"] if (s["model"], s["category"], s["turn"]) == ("ckpt", "all", "all")
    ]
    assert overall["mean"] == pytest.approx((14 * 9 + 4 * 1) / 18)  # not 9.0 over the 14 answered


def test_api_failures_stay_failures(make_openai_server: Any) -> None:
    from job.backends import load_backend
    from job.backends.base import GenRequest

    replies = {
        "a": Reply("", finish_reason=None),
        "b": Reply("", finish_reason="length", reasoning_content="hmm"),
    }  # type: ignore[arg-type]
    srv: OpenAIServer = make_openai_server(reply=lambda body: replies[last_user(body)],
                                           faults=lambda body, n: "null_content" if last_user(body) == "b" else None)  # fmt: skip
    backend = load_backend("openai/test-model", base_url=srv.url, max_retries=1)
    try:
        no_finish, only_reasoning = backend.generate(
            [GenRequest([{"role": "user", "content": k}]) for k in "ab"]
        )
    finally:
        backend.close()
    # no finish_reason and no text from an API: a failed request, not asked again
    assert (no_finish.status, no_finish.text) == ("api_error", "") and "empty completion" in str(
        no_finish.error
    )
    # the limit used up inside the reasoning: an empty answer that ran out of length
    assert (only_reasoning.status, only_reasoning.text, only_reasoning.finish_reason) == ("ok", "", "length")
    assert only_reasoning.reasoning == "hmm" and len(srv.chat_requests) == 2


def test_an_empty_judge_reply_is_a_final_parse_error(
    make_openai_server: Any, run_job: Any, tmp_path: Path
) -> None:
    q1 = _first_turns()[1]
    answers = tmp_path / "answers"
    answers.mkdir()
    rows = [{"question_id": q, "answer_id": f"a{q}", "model_id": "m", "tstamp": 0.0,
             "choices": [{"index": 0, "turns": ["an answer", "another"]}]} for q in (1, 2)]  # fmt: skip
    (answers / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def judge(body: dict[str, Any]) -> Reply:  # says nothing about question 1
        return Reply("") if q1 in body["messages"][-1]["content"] else Reply("Rating: [[8]]")

    j: OpenAIServer = make_openai_server(reply=judge, models=["judge"])
    cmd = ["judge", "--bench", "smoke", "--answers-dir", str(answers), "--first-n", "2", "--judge-model",
           "openai/judge", "--judge-base-url", j.url, "--output", str(tmp_path / "runs"), "--max-retries", "0",
           "--parse-retries", "1"]  # fmt: skip
    p = run_job(*cmd, env=ENV)
    assert p.returncode == 0, p.stderr[-3000:]
    (jfile,) = (tmp_path / "runs/smoke/model_judgment").glob("*.jsonl")
    got = sorted(
        (r["question_id"], r["turn"], r["status"], r["score"])
        for r in map(json.loads, jfile.read_text().splitlines())
    )
    # before: an empty reply was an api_error, asked again on every resume
    assert got == [(1, 1, "parse_error", -1), (1, 2, "parse_error", -1), (2, 1, "ok", 8), (2, 2, "ok", 8)]
    assert len(j.chat_requests) == 6  # question 1's games asked once more (--parse-retries 1), then final
    again = run_job(*cmd, env=ENV)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(j.chat_requests) == 6  # a resume does not ask again: the judge's answer stands
