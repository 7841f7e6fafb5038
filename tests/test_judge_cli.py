"""`job judge` and `job report` through the real CLI: end to end through the real openai
client against a real HTTP server on 127.0.0.1, resume after SIGKILL, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from servers.openai_server import OpenAIServer

MakeServer = Any


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def _section(stdout: str, title: str, model: str) -> float:
    """The number show_result prints for `model` under `########## <title> ##########`."""
    lines = stdout.split(f"########## {title} ##########")[1].splitlines()
    return float(next(x for x in lines if x.split()[:1] == [model]).split()[-1])


def rating_reply(body: dict[str, Any]) -> str:
    """Deterministic judge: a rating from the prompt length; 'no rating' for one question."""
    user = body["messages"][-1]["content"]
    if "lighthouse" in user and "rhymes" not in user:  # smoke q1, turn 1
        return "I cannot rate this."
    return f"Some explanation citing [2]. Rating: [[{len(user) % 9 + 1}]]"


@pytest.fixture
def answers(run_job: Any, tmp_path: Path) -> Path:
    return smoke_answers(run_job, tmp_path)


def smoke_answers(run_job: Any, tmp_path: Path) -> Path:
    """smoke bench, 2 choices of mock/echo, generated and reduced by the real CLI."""
    out = tmp_path / "runs"
    r = run_job(
        "generate", "--bench", "smoke", "--model", "mock/echo", "--num-choices", "2", "--output", str(out)
    )
    assert r.returncode == 0, r.stderr
    r = run_job("reduce", "--bench", "smoke", "--output", str(out))
    assert r.returncode == 0, r.stderr
    return out


def _judge_args(out: Path, srv: OpenAIServer, *extra: str) -> list[str]:
    return [
        "judge",
        "--bench",
        "smoke",
        "--output",
        str(out),
        "--judge-model",
        "openai/test-model",
        "--base-url",
        srv.url,
        *extra,
    ]


API_ENV = {"OPENAI_API_KEY": "sk-test", "JOB_API_BACKOFF_BASE": "0.01"}


@pytest.mark.timeout(120)
def test_generate_reduce_judge_report_end_to_end(
    answers: Path, run_job: Any, make_openai_server: MakeServer, tmp_path: Path
) -> None:
    srv = make_openai_server(
        reply=rating_reply, faults=["500", None, "429", None, None, "timeout"], hang_seconds=5
    )
    r = run_job(*_judge_args(answers, srv, "--request-timeout", "2"), env=API_ENV)
    assert r.returncode == 0, r.stderr
    path = answers / "smoke" / "model_judgment" / "test-model_single.jsonl"
    rows = _jsonl(path)
    assert len(rows) == 9 * 2 * 2  # 9 questions x 2 turns x 2 choices: every choice is judged
    assert {(x["choice"]) for x in rows} == {0, 1}
    # what went over the wire: [system, user], temperature 0, max_tokens 2048
    bodies = [q.body for q in srv.chat_requests if q.fault is None]
    assert all(
        b["temperature"] == 0 and b["max_tokens"] == 2048 and b["model"] == "test-model" for b in bodies
    )
    assert all([m["role"] for m in b["messages"]] == ["system", "user"] for b in bodies)
    prompts = {
        p["name"]: p
        for p in _jsonl(Path(__file__).resolve().parents[1] / "bench_data" / "smoke" / "judge_prompts.jsonl")
    }
    for row in rows:
        sent = next(b for b in bodies if b["messages"][1]["content"] == row["user_prompt"])
        assert sent["messages"][0]["content"] == prompts[row["judge"][1]]["system_prompt"]
    failed = [x for x in rows if x["status"] != "ok"]
    assert len(failed) == 2 and all(x["status"] == "parse_error" and x["score"] == -1 for x in failed)
    assert all(x["judgment"] != "$ERROR$" for x in rows)
    ok = [x for x in rows if x["status"] == "ok"]
    assert all(x["score"] == len(x["user_prompt"]) % 9 + 1 for x in ok)  # "[2]" citation not taken
    # report: FastChat pooled numbers and Swallow run means from the stored rows
    rep = tmp_path / "rep"
    r = run_job("report", "--bench", "smoke", "--output", str(answers), "--output-dir", str(rep))
    assert r.returncode == 0, r.stderr
    assert "########## First turn ##########" in r.stdout and "########## Average ##########" in r.stdout
    t1 = [x["score"] for x in ok if x["turn"] == 1]
    pooled = sum(x["score"] for x in ok) / len(ok)
    assert _section(r.stdout, "First turn", "echo") == pytest.approx(sum(t1) / len(t1), abs=1e-6)
    lines = (rep / "scores.csv").read_text().splitlines()
    assert lines[0] == "model,category,turn,mean,std,n_scored,n_failed,ci_low,ci_high"
    overall = next(line.split(",") for line in lines if line.startswith("echo,all,all,"))
    runs = [
        sum(x["score"] for x in ok if x["choice"] == c) / sum(1 for x in ok if x["choice"] == c)
        for c in (0, 1)
    ]
    assert float(overall[3]) == pytest.approx(sum(runs) / 2) and (overall[5], overall[6]) == ("34", "2")
    doc = json.loads((rep / "report.json").read_text())
    assert doc["fastchat"]["average"]["echo"] == pytest.approx(pooled)
    prov = doc["provenance"]
    assert prov["judges"] == ["test-model"] and prov["num_choices"] == {"echo": 2}
    assert (
        len(prov["judge_prompts_sha256"]) == 64
        and prov["reference"] == "smoke-reference"
        and len(prov["reference_sha256"]) == 64
    )
    assert "sk-test" not in (rep / "report.json").read_text() + r.stdout + r.stderr
    assert (rep / "report.md").read_text().startswith("# smoke")
    # pairwise through the same server
    srv2 = make_openai_server(reply=lambda body: "A is better. [[A]]")
    r = run_job("judge", "--bench", "smoke", "--output", str(answers), "--judge-model", "openai/test-model", "--base-url", srv2.url,
                "--mode", "pairwise-baseline", "--baseline-model", "echo", "--model-list", "echo", env=API_ENV)  # fmt: skip
    assert r.returncode == 0, r.stderr  # the only model is the baseline: nothing to play
    assert len(srv2.chat_requests) == 0


@pytest.mark.timeout(180)
def test_sigkill_mid_run_then_rerun_completes_without_duplicates(
    answers: Path, job_env: dict[str, str], make_openai_server: MakeServer, run_job: Any
) -> None:
    srv = make_openai_server(reply=rating_reply, latency=0.4)
    args = _judge_args(answers, srv, "--batch-size", "4", "--concurrency", "4")
    proc = subprocess.Popen([sys.executable, "-c", "from job.cli import main; main()", *args], env={**job_env, **API_ENV},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    path = answers / "smoke" / "model_judgment" / "test-model_single.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not path.exists() or path.read_text().count("\n") < 8):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    before = path.read_bytes()
    n_before = before.count(b"\n")
    assert 8 <= n_before < 36
    sent_first = len(srv.chat_requests)
    r = run_job(*args, env=API_ENV)
    assert r.returncode == 0, r.stderr
    rows = _jsonl(path)
    keys = [(tuple(x["judge"]), x["question_id"], x["turn"], x["model"], x["choice"]) for x in rows]
    assert len(rows) == 36 and len(set(keys)) == 36
    assert path.read_bytes().startswith(before[: before.rfind(b"\n") + 1])  # nothing stored was lost
    assert len(srv.chat_requests) - sent_first == 36 - n_before  # stored judgments were not asked again
    r = run_job(*args, env=API_ENV)
    assert r.returncode == 0 and "nothing new" in r.stdout and len(_jsonl(path)) == 36


@pytest.mark.timeout(60)
def test_invalid_api_key_fails_fast(answers: Path, run_job: Any, make_openai_server: MakeServer) -> None:
    srv = make_openai_server(reply=rating_reply, api_key="sk-right")
    t0 = time.monotonic()
    r = run_job(
        *_judge_args(answers, srv, "--concurrency", "2"), env={**API_ENV, "OPENAI_API_KEY": "sk-wrong-key"}
    )
    assert r.returncode == 2
    assert (
        r.stderr.strip().splitlines()[-1].startswith("error: ") and "sk-wrong-key" not in r.stderr + r.stdout
    )
    assert len(srv.chat_requests) <= 4 and time.monotonic() - t0 < 30  # no retry storm
    path = answers / "smoke" / "model_judgment" / "test-model_single.jsonl"
    assert not path.exists() or not [x for x in _jsonl(path) if x["status"] == "ok"]


def _custom_bench(tmp_path: Path, drop_ref: int | None = None) -> Path:
    """A custom bench folder (the smoke questions) with its own prompts and references."""
    src = Path(__file__).resolve().parents[1] / "bench_data" / "smoke"
    data = tmp_path / "data"
    (data / "mine" / "reference_answer").mkdir(parents=True)
    (data / "mine" / "question.jsonl").write_bytes((src / "question.jsonl").read_bytes())
    (data / "mine" / "judge_prompts.jsonl").write_bytes((src / "judge_prompts.jsonl").read_bytes())
    refs = [
        x for x in _jsonl(src / "reference_answer" / "smoke-reference.jsonl") if x["question_id"] != drop_ref
    ]
    (data / "mine" / "reference_answer" / "ref.jsonl").write_text("".join(json.dumps(x) + "\n" for x in refs))
    return data


def _answer_dir(tmp_path: Path, skip: tuple[int, ...] = ()) -> Path:
    d = tmp_path / "answers"
    d.mkdir()
    qs = _jsonl(Path(__file__).resolve().parents[1] / "bench_data" / "smoke" / "question.jsonl")
    rows = [
        {"question_id": q["question_id"], "choices": [{"index": 0, "turns": ["a", "b"]}]}
        for q in qs
        if q["question_id"] not in skip
    ]
    (d / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    return d


def test_missing_reference_lists_ids(tmp_path: Path, run_job: Any) -> None:
    data = _custom_bench(tmp_path, drop_ref=4)
    r = run_job("judge", "--bench", "mine", "--bench-data", str(data), "--answers-dir", str(_answer_dir(tmp_path)),
                "--judge-model", "mock/fixed:[[5]]", "--reference", "ref")  # fmt: skip
    assert r.returncode == 2 and "question(s) 4 " in r.stderr and "ref.jsonl" in r.stderr


def test_a_reference_with_too_few_turns_names_its_questions(tmp_path: Path, run_job: Any) -> None:
    data = _custom_bench(tmp_path)
    ref = data / "mine" / "reference_answer" / "ref.jsonl"
    refs = _jsonl(ref)
    for x in refs:
        if x["question_id"] == 4:  # turn 2 of question 4 is judged with ref_answer_2
            x["choices"][0]["turns"] = x["choices"][0]["turns"][:1]
    ref.write_text("".join(json.dumps(x) + "\n" for x in refs))
    r = run_job("judge", "--bench", "mine", "--bench-data", str(data), "--answers-dir", str(_answer_dir(tmp_path)),
                "--judge-model", "mock/fixed:[[5]]", "--reference", "ref", "--output", str(tmp_path / "out"))  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert (
        r.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: {ref}: the reference answer of question(s) 4 has")
    )


def test_missing_answers_listed_or_allowed(tmp_path: Path, run_job: Any) -> None:
    data = _custom_bench(tmp_path)
    ans = _answer_dir(tmp_path, skip=(2, 7))
    base = ["judge", "--bench", "mine", "--bench-data", str(data), "--answers-dir", str(ans), "--judge-model", "mock/fixed:[[5]]",
            "--judge-name", "mj", "--reference", "ref", "--output", str(tmp_path / "out")]  # fmt: skip
    r = run_job(*base)
    assert r.returncode == 2 and "m: 2, 7" in r.stderr and "--allow-missing" in r.stderr
    assert not (tmp_path / "out" / "mine" / "model_judgment").exists()
    r = run_job(*base, "--allow-missing")
    assert r.returncode == 0, r.stderr
    assert "answers missing for m: 2, 7" in r.stderr
    rows = _jsonl(tmp_path / "out" / "mine" / "model_judgment" / "mj_single.jsonl")
    assert len(rows) == 7 * 2 and {x["question_id"] for x in rows} == {1, 3, 4, 5, 6, 8, 9}
    man = json.loads((tmp_path / "out" / "mine" / "model_judgment" / "mj_single.manifest.json").read_text())
    assert man["missing"] == {"m": ["2", "7"]}


def test_report_reads_fastchat_files_unchanged(shared_bench_data: Path, tmp_path: Path, run_job: Any) -> None:
    f = tmp_path / "gpt-4_single.jsonl"
    rows = [
        {"question_id": 81, "model": "vicuna", "judge": ["gpt-4", "single-v1"], "user_prompt": "u", "judgment": "[[8]]", "score": 8, "turn": 1, "tstamp": 1.0},
        {"question_id": 82, "model": "vicuna", "judge": ["gpt-4", "single-v1"], "user_prompt": "u", "judgment": "x", "score": -1, "turn": 1, "tstamp": 1.0},
        {"question_id": 111, "model": "vicuna", "judge": ["gpt-4", "single-math-v1"], "user_prompt": "u", "judgment": "[[3]]", "score": 3, "turn": 1, "tstamp": 1.0},
        {"question_id": 81, "model": "vicuna", "judge": ["gpt-4", "single-v1-multi-turn"], "user_prompt": "u", "judgment": "[[9.5]]", "score": 9.5, "turn": 2, "tstamp": 1.0},
    ]  # fmt: skip
    f.write_text("".join(json.dumps(x) + "\n" for x in rows))
    out = tmp_path / "rep"
    r = run_job(
        "report",
        "--bench",
        "mt_bench",
        "--bench-data",
        str(shared_bench_data),
        "--judgments",
        str(f),
        "--output-dir",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    assert _section(r.stdout, "First turn", "vicuna") == pytest.approx(5.5)  # the -1 row is dropped
    assert _section(r.stdout, "Second turn", "vicuna") == pytest.approx(9.5)
    assert _section(r.stdout, "Average", "vicuna") == pytest.approx(20.5 / 3)
    lines = (out / "scores.csv").read_text().splitlines()
    assert any(line.startswith("vicuna,all,1,5.5,,2,1,") for line in lines)
    assert any(line.startswith("vicuna,math,all,3.0,,1,0,") for line in lines)
    # a corrupt line is a one-line error naming file and line
    f.write_text(f.read_text() + '{"question_id": 83, "model": "vicuna", "sco\n')
    r = run_job(
        "report",
        "--bench",
        "mt_bench",
        "--bench-data",
        str(shared_bench_data),
        "--judgments",
        str(f),
        "--output-dir",
        str(out),
    )
    assert r.returncode == 2 and f"{f}:5: malformed JSON" in r.stderr


def test_report_pairwise_cli(shared_bench_data: Path, tmp_path: Path, run_job: Any) -> None:
    f = tmp_path / "gpt-4_pair.jsonl"
    rows = [
        {"question_id": 81, "model_1": "x", "model_2": "gpt-3.5-turbo", "g1_winner": "model_1", "g2_winner": "model_1", "judge": ["gpt-4", "pair-v2"], "turn": 1},
        {"question_id": 82, "model_1": "x", "model_2": "gpt-3.5-turbo", "g1_winner": "model_1", "g2_winner": "model_2", "judge": ["gpt-4", "pair-v2"], "turn": 1},
    ]  # fmt: skip
    f.write_text("".join(json.dumps(x) + "\n" for x in rows))
    out = tmp_path / "rep"
    r = run_job("report", "--bench", "mt_bench", "--bench-data", str(shared_bench_data), "--judgments", str(f),
                "--mode", "pairwise-baseline", "--output-dir", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (out / "pairwise.csv").read_text().splitlines() == [
        "model,win,loss,tie,win_rate,loss_rate,win_rate_adjusted",
        "x,1,0,1,0.5,0.0,0.75",
    ]
