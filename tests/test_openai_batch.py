"""`job judge --openai-batch`: the judge's calls as one OpenAI Batch API batch, against the real
test server (tests/servers/batch_api.py) through the real openai client: results equal to the
streaming path, failed and expired lines as api_error (asked again by the next run), and a
run stopped after submission (SIGTERM, --openai-batch-wait) resuming the same batch."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai.types import Batch, FileObject
from servers.openai_server import OpenAIServer

from job.errors import JobError
from job.judge.batch_state import batch_state_key
from job.judge.runner import JudgeConfig, run

MakeServer = Any
QUESTIONS = [json.loads(x) for x in (Path(__file__).resolve().parents[1] / "bench_data" / "smoke" / "question.jsonl").read_text().splitlines() if x.strip()]  # fmt: skip
N_CALLS = sum(len(q["turns"]) for q in QUESTIONS)
"""one model, one choice, single mode: one judge call per question turn"""
ROWS = Path("smoke/model_judgment/test-model_single.jsonl")
STATE = Path(batch_state_key(ROWS.as_posix(), ["m1"]))
"""the batch state of a run judging m1"""


def rating(body: dict[str, Any]) -> str:
    """A rating from the prompt length; no rating at all for smoke q1 turn 1."""
    user = body["messages"][-1]["content"]
    if "lighthouse" in user and "rhymes" not in user:
        return "I cannot rate this."
    return f"Explanation. Rating: [[{len(user) % 9 + 1}]]"


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A FastChat model_answer folder written by hand: model m1 echoes each turn."""
    d = tmp_path_factory.mktemp("answers")
    lines = [
        {"question_id": q["question_id"], "answer_id": f"a{q['question_id']}", "model_id": "m1",
         "choices": [{"index": 0, "turns": [f"echo: {t}" for t in q["turns"]]}], "tstamp": 1.0}
        for q in QUESTIONS
    ]  # fmt: skip
    (d / "m1.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return d


@pytest.fixture(autouse=True)
def _api_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-batch")
    monkeypatch.setenv("JOB_BATCH_POLL_SECONDS", "0.01")
    monkeypatch.setenv("JOB_API_BACKOFF_BASE", "0.01")


def judge(out: Path, answers: Path, srv: OpenAIServer, batch: bool = True, **kw: Any) -> Any:
    """`job judge` in-process: the smoke bench, judge openai/test-model at srv."""
    opts = {"base_url": srv.url, "base_url_env": None, "api_key_env": "OPENAI_API_KEY", "max_retries": 1,
            "openai_batch": batch, "openai_batch_wait": kw.pop("wait", None)}  # fmt: skip
    cfg = JudgeConfig(bench="smoke", judge_model="openai/test-model", output=str(out), answers_dir=str(answers),
                      backend_options=opts, **kw)  # fmt: skip
    return run(cfg)


def rows_of(out: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (out / ROWS).read_text().splitlines() if x.strip()]


def by_game(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Rows keyed by game (the last one wins, as for every reader), without the write time."""
    return {
        (r["question_id"], r["turn"], r["choice"]): {k: v for k, v in r.items() if k != "tstamp"}
        for r in rows
    }


def batch_lines(srv: OpenAIServer, batch_id: str) -> list[dict[str, Any]]:
    api = srv.batch_api
    return [json.loads(x) for x in api.files[api.batches[batch_id].obj["input_file_id"]][1].splitlines()]


def check_final(stored: list[dict[str, Any]], n: int = N_CALLS) -> None:
    """Every game judged (a retried api_error row is replaced by its retry: the last row of a
    game counts): hand-computed scores, smoke q1 turn 1 without a rating."""
    rows = list(by_game(stored).values())
    assert len(rows) == n
    no_rating = [r for r in rows if r["question_id"] == 1 and r["turn"] == 1]
    assert [(r["status"], r["score"]) for r in no_rating] == [("parse_error", -1)]
    rest = [r for r in rows if r not in no_rating]
    assert all(r["status"] == "ok" and r["score"] == len(r["user_prompt"]) % 9 + 1 for r in rest)


@pytest.mark.timeout(60)
def test_batch_results_equal_the_streaming_path(
    answers: Path, make_openai_server: MakeServer, tmp_path: Path
) -> None:
    def refuse_q2(body: dict[str, Any], n: int) -> str | None:  # the same fault on either path
        return "400" if "museum guide" in body["messages"][-1]["content"] else None

    # one server for both runs: its URL is part of inputs_sha256, which must come out the same
    batched = make_openai_server(reply=rating, faults=refuse_q2)
    judge(tmp_path / "direct", answers, batched, batch=False)
    direct_bodies = [r.body for r in batched.requests]
    assert direct_bodies and not batched.batch_api.batches
    batched.reset()
    judge(tmp_path / "batch", answers, batched)
    a, b = by_game(rows_of(tmp_path / "direct")), by_game(rows_of(tmp_path / "batch"))
    assert a == b  # scores, judgments, statuses, errors, inputs_sha256, usage: the same rows
    refused = {k: (r["status"], r["error"], r["score"]) for k, r in b.items() if k[0] == 2}
    assert refused == {(2, t, 0): ("api_error", "HTTP 400: injected fault 400", -1) for t in (1, 2)}
    check_final([r for k, r in b.items() if k[0] != 2], N_CALLS - 2)
    # one upload, one batch, no direct call; each line the body the streaming path sent
    api = batched.batch_api
    assert len(api.uploads) == 1 and list(api.batches) == ["batch_0001"]
    assert all(r.batch_id == "batch_0001" for r in batched.requests) and len(batched.requests) == N_CALLS
    lines = batch_lines(batched, "batch_0001")
    assert {(x["method"], x["url"]) for x in lines} == {("POST", "/v1/chat/completions")}
    assert len({x["custom_id"] for x in lines}) == N_CALLS
    key = lambda body: json.dumps(body, sort_keys=True)  # noqa: E731
    assert sorted(key(x["body"]) for x in lines) == sorted(key(b) for b in direct_bodies)
    assert not (tmp_path / "batch" / STATE).exists()  # a finished batch leaves no state


def test_server_replies_parse_into_the_openai_types(make_openai_server: MakeServer) -> None:
    srv = make_openai_server(faults=[None, "400"], batch_expire_after=2)
    http = httpx.Client(base_url=srv.url, headers={"authorization": "Bearer x"})
    body = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
    data = "".join(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}) + "\n" for i in range(3))  # fmt: skip
    up = FileObject.model_validate(
        http.post("/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"}).json()
    )
    assert (up.purpose, up.bytes) == ("batch", len(data))
    created = Batch.model_validate(http.post("/batches", json={"input_file_id": up.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}).json())  # fmt: skip
    assert created.status == "validating" and created.input_file_id == up.id
    done = Batch.model_validate(http.get(f"/batches/{created.id}").json())
    assert done.status == "expired" and done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (3, 1, 2)
    assert done.output_file_id and done.error_file_id
    FileObject.model_validate(http.get(f"/files/{done.output_file_id}").json())
    out = [json.loads(x) for x in http.get(f"/files/{done.output_file_id}/content").text.splitlines()]
    err = [json.loads(x) for x in http.get(f"/files/{done.error_file_id}/content").text.splitlines()]
    assert [(x["custom_id"], x["response"]["status_code"], x["error"]) for x in out] == [("c0", 200, None)]
    assert [(x["custom_id"], (x["response"] or {}).get("status_code"), (x["error"] or {}).get("code")) for x in err] == [
        ("c1", 400, None), ("c2", None, "batch_expired"),
    ]  # fmt: skip
    bad = http.post("/files", files={"file": ("x.jsonl", "not json\n")}, data={"purpose": "batch"}).json()
    failed = http.post("/batches", json={"input_file_id": bad["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}).json()  # fmt: skip
    failed = Batch.model_validate(http.get(f"/batches/{failed['id']}").json())
    assert (
        failed.status == "failed" and failed.errors and failed.errors.data and failed.errors.data[0].line == 1
    )


@pytest.mark.timeout(60)
def test_failed_lines_are_api_errors_and_the_next_run_asks_only_them(
    answers: Path, make_openai_server: MakeServer, tmp_path: Path
) -> None:
    srv = make_openai_server(reply=rating, faults=[None, "400", None, "500"])
    judge(tmp_path, answers, srv)
    rows = rows_of(tmp_path)
    failed = sorted((r["error"], r["score"]) for r in rows if r["status"] == "api_error")
    assert failed == [("HTTP 400: injected fault 400", -1), ("HTTP 500: injected fault 500", -1)]
    assert sum(r["status"] == "ok" for r in rows) == N_CALLS - 3  # 2 failed, 1 without a rating
    judge(tmp_path, answers, srv)  # the script is used up: the two succeed now
    assert list(srv.batch_api.batches) == ["batch_0001", "batch_0002"]
    assert len(batch_lines(srv, "batch_0002")) == 2
    check_final(rows_of(tmp_path))


@pytest.mark.timeout(60)
def test_expired_batch_then_the_next_run_completes_it(
    answers: Path, make_openai_server: MakeServer, tmp_path: Path
) -> None:
    srv = make_openai_server(reply=rating, batch_expire_after=5, batch_polls=2)
    judge(tmp_path, answers, srv)
    rows = rows_of(tmp_path)
    expired = [r for r in rows if r["status"] == "api_error"]
    assert len(expired) == N_CALLS - 5 and {r["error"] for r in expired} == {"batch expired"}
    assert srv.batch_api.batches["batch_0001"].polls == 3  # in_progress twice, then expired
    assert not (tmp_path / STATE).exists()
    srv.batch_expire_after = None
    judge(tmp_path, answers, srv)
    assert len(batch_lines(srv, "batch_0002")) == N_CALLS - 5  # only the expired ones again
    check_final(rows_of(tmp_path))


@pytest.mark.timeout(60)
def test_wait_limit_keeps_the_batch_and_a_stale_one_is_not_reused(
    answers: Path, make_openai_server: MakeServer, tmp_path: Path
) -> None:
    srv = make_openai_server(reply=rating, batch_polls=10**6)
    with pytest.raises(
        JobError, match=r"batch batch_0001 is still in_progress .* run the same command again"
    ):
        judge(tmp_path, answers, srv, wait=0, question_ids=["1"])
    state = json.loads((tmp_path / STATE).read_text())
    assert state["batch_id"] == "batch_0001" and len(state["lines"]) == 2
    with pytest.raises(JobError, match="batch_0001 is still in_progress"):  # resumed, not resubmitted
        judge(tmp_path, answers, srv, wait=0, question_ids=["1"])
    assert (
        len(srv.batch_api.batches) == 1 and srv.batch_api.batches["batch_0001"].polls == 3
    )  # poll, check, poll
    srv.batch_polls = 0
    judge(tmp_path, answers, srv)  # every question: batch_0001 does not hold them all
    api = srv.batch_api
    assert (
        api.batches["batch_0001"].obj["status"] in ("cancelling", "cancelled")
        and not api.batches["batch_0001"].lines_sent
    )
    assert (
        list(api.batches) == ["batch_0001", "batch_0002"] and len(batch_lines(srv, "batch_0002")) == N_CALLS
    )
    check_final(rows_of(tmp_path))
    assert not (tmp_path / STATE).exists()


def test_openai_batch_needs_an_openai_judge(answers: Path, tmp_path: Path) -> None:
    cfg = JudgeConfig(bench="smoke", judge_model="mock/fixed:[[5]]", output=str(tmp_path), answers_dir=str(answers),
                      backend_options={"openai_batch": True})  # fmt: skip
    with pytest.raises(
        JobError, match=r"--openai-batch needs an openai/<model> judge, not 'mock/fixed:\[\[5\]\]'"
    ):
        run(cfg)


@pytest.mark.timeout(120)
def test_sigterm_after_submission_resumes_the_same_batch(
    answers: Path, make_openai_server: MakeServer, job_env: dict[str, str], tmp_path: Path
) -> None:
    srv = make_openai_server(reply=rating, batch_polls=10**6)
    out = tmp_path / "runs"
    args = [sys.executable, "-c", "from job.cli import main; main()", "judge", "--bench", "smoke", "--output", str(out),
            "--answers-dir", str(answers), "--judge-model", "openai/test-model", "--base-url", srv.url, "--openai-batch"]  # fmt: skip
    env = {**job_env, "OPENAI_API_KEY": "sk-test-batch", "JOB_BATCH_POLL_SECONDS": "0.01"}
    proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(b.polls for b in srv.batch_api.batches.values()):
        time.sleep(0.02)
    assert (out / STATE).exists()  # saved before the first poll
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "sk-test-batch" not in (out / STATE).read_text() + err
    srv.batch_polls = 0
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "resuming batch batch_0001" in r.stderr
    assert len(srv.batch_api.uploads) == 1 and list(srv.batch_api.batches) == [
        "batch_0001"
    ]  # never sent twice
    check_final(rows_of(out))
    assert not (out / STATE).exists()


@pytest.mark.timeout(60)
def test_batch_state_lives_in_s3_storage(answers: Path, make_openai_server: MakeServer, s3: Any) -> None:
    srv = make_openai_server(reply=rating, batch_polls=10**6)
    out = s3.uri("runs")
    with pytest.raises(JobError, match="batch_0001 is still in_progress"):
        judge(out, answers, srv, wait=0)
    key = f"runs/{STATE}"
    assert key in s3.list_keys("runs/") and json.loads(s3.get(key))["batch_id"] == "batch_0001"
    srv.batch_polls = 0
    judge(out, answers, srv)
    assert list(srv.batch_api.batches) == ["batch_0001"] and key not in s3.list_keys("runs/")
    check_final([json.loads(x) for x in s3.get(f"runs/{ROWS}").decode().splitlines() if x.strip()])


@pytest.mark.timeout(120)
def test_job_run_openai_batch(make_openai_server: MakeServer, run_job: Any, tmp_path: Path) -> None:
    srv = make_openai_server(reply=lambda body: "Rating: [[7]]")
    r = run_job("run", "--bench", "smoke", "--model", "mock/echo", "--judge-model", "openai/test-model",
                "--judge-base-url", srv.url, "--output", str(tmp_path / "runs"), "--openai-batch",
                env={"OPENAI_API_KEY": "sk-test-batch", "JOB_BATCH_POLL_SECONDS": "0.01"})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert list(srv.batch_api.batches) == ["batch_0001"] and len(batch_lines(srv, "batch_0001")) == N_CALLS
    assert all(x.batch_id == "batch_0001" for x in srv.requests)  # the judge made no direct call
    assert "RESULT (no baseline): echo 7.00" in r.stdout


def test_job_run_refuses_openai_batch_for_a_local_judge(run_job: Any, tmp_path: Path) -> None:
    r = run_job("run", "--bench", "smoke", "--model", "mock/echo", "--judge-model", "mock/fixed:[[5]]",
                "--output", str(tmp_path / "runs"), "--openai-batch")  # fmt: skip
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].endswith(
        "--openai-batch needs an openai/<model> judge, not 'mock/fixed:[[5]]'; drop it"
    )
    assert not (tmp_path / "runs").exists()  # refused before generation


@pytest.mark.timeout(60)
def test_a_stored_batch_the_server_does_not_know_is_submitted_again(
    answers: Path, make_openai_server: MakeServer, tmp_path: Path
) -> None:
    srv = make_openai_server(reply=rating, batch_polls=10**6)
    with pytest.raises(JobError, match="batch_0001 is still in_progress"):
        judge(tmp_path, answers, srv, wait=0)
    state = json.loads((tmp_path / STATE).read_text())
    (tmp_path / STATE).write_text(json.dumps({**state, "batch_id": "batch_gone"}))  # deleted, another account
    srv.batch_polls = 0
    judge(tmp_path, answers, srv)
    assert list(srv.batch_api.batches) == ["batch_0001", "batch_0002"]
    assert (
        srv.batch_api.batches["batch_0002"].lines_sent and not srv.batch_api.batches["batch_0001"].lines_sent
    )
    check_final(rows_of(tmp_path))


@pytest.mark.timeout(60)
def test_results_not_yet_stored_are_collected_from_the_same_batch(
    answers: Path, make_openai_server: MakeServer, tmp_path: Path
) -> None:
    rows = tmp_path / ROWS

    def rating_then_break_storage(body: dict[str, Any]) -> str:
        # while the batch runs, the judgment file becomes unwritable (a directory): the
        # results come back and cannot be stored, as if the run were killed at that moment
        rows.mkdir(parents=True, exist_ok=True)
        return rating(body)

    srv = make_openai_server(reply=rating_then_break_storage)
    with pytest.raises(JobError, match="test-model_single.jsonl"):
        judge(tmp_path, answers, srv)
    assert json.loads((tmp_path / STATE).read_text())["batch_id"] == "batch_0001"  # kept: nothing stored
    rows.rmdir()
    srv.reply = rating
    judge(tmp_path, answers, srv)
    assert len(srv.batch_api.uploads) == 1 and list(srv.batch_api.batches) == ["batch_0001"]  # paid once
    check_final(rows_of(tmp_path))
    assert not (tmp_path / STATE).exists()


@pytest.mark.timeout(60)
def test_parse_retries_go_out_as_a_new_batch(
    answers: Path, make_openai_server: MakeServer, tmp_path: Path
) -> None:
    asked = Counter[str]()

    def rating_on_retry(body: dict[str, Any]) -> str:  # smoke q1 turn 1 gets its rating when asked again
        user = body["messages"][-1]["content"]
        asked[user] += 1
        return "Rating: [[4]]" if asked[user] > 1 else rating(body)

    srv = make_openai_server(reply=rating_on_retry)
    judge(tmp_path, answers, srv, parse_retries=1)
    assert list(srv.batch_api.batches) == ["batch_0001", "batch_0002"]  # not the first batch's reply again
    assert len(batch_lines(srv, "batch_0002")) == 1
    retried = [r for r in rows_of(tmp_path) if (r["question_id"], r["turn"]) == (1, 1)]
    assert [(r["status"], r["score"]) for r in retried] == [("ok", 4)]
    assert not (tmp_path / STATE).exists()


def test_a_batch_line_of_no_use_keeps_its_usage(make_openai_server: MakeServer) -> None:
    from job.backends import load_backend
    from job.backends.base import GenRequest

    srv = make_openai_server(reply=lambda body: "a b c", faults=["content_filter_empty"])
    backend = load_backend("openai/test-model", base_url=srv.url, openai_batch=True)
    try:
        [res] = backend.generate([GenRequest([{"role": "user", "content": "one two"}])])
    finally:
        backend.close()
    # billed all the same (the test server bills words: 2 prompt, 3 completion)
    assert res.status == "api_error" and res.usage == {"prompt_tokens": 2, "completion_tokens": 3}


@pytest.mark.timeout(60)
def test_runs_judging_other_models_into_one_file_keep_their_own_batches(
    answers: Path, make_openai_server: MakeServer, tmp_path: Path
) -> None:
    both = tmp_path / "answers"  # m1's answers and m2's (other texts: other bodies)
    both.mkdir()
    text = (answers / "m1.jsonl").read_text()
    (both / "m1.jsonl").write_text(text)
    (both / "m2.jsonl").write_text(text.replace('"m1"', '"m2"').replace("echo: ", "m2 says: "))
    srv = make_openai_server(reply=rating, batch_polls=10**6)
    for model in ("m1", "m2"):  # two CI jobs, one per checkpoint, the same judge and --output
        with pytest.raises(JobError, match="still in_progress"):
            judge(tmp_path / "out", both, srv, wait=0, model_list=[model])
    api = srv.batch_api
    assert [b.obj["status"] for b in api.batches.values()] == ["in_progress", "in_progress"]  # none cancelled
    srv.batch_polls = 0
    for model in ("m1", "m2"):  # each collects its own batch
        judge(tmp_path / "out", both, srv, model_list=[model])
    assert list(api.batches) == ["batch_0001", "batch_0002"] and all(
        b.lines_sent for b in api.batches.values()
    )
    rows = rows_of(tmp_path / "out")
    check_final([r for r in rows if r["model"] == "m1"])
    check_final([r for r in rows if r["model"] == "m2"])
    assert not list((tmp_path / "out" / ROWS.parent).glob("*.batch-*.json"))


@pytest.mark.parametrize("text", ["not json", "[]", '{"batch_id": "b", "lines": []}', '{"lines": {}}'])
def test_a_hand_edited_batch_state_is_ignored_with_a_warning(
    text: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from job.judge.batch_state import StoredBatchState
    from job.storage import open_storage

    (tmp_path / "s.batch.json").write_text(text)
    assert StoredBatchState(open_storage(str(tmp_path)), "s.batch.json").load() is None
    assert "is not a batch state: ignored" in caplog.text


@pytest.mark.timeout(60)
def test_a_batch_that_ran_nothing_is_stored_whole_and_submitted_anew(
    answers: Path, make_openai_server: MakeServer, tmp_path: Path
) -> None:
    srv = make_openai_server(reply=rating, batch_expire_after=0)
    with pytest.raises(JobError, match=f"all {N_CALLS} judgments of this run failed"):
        judge(tmp_path, answers, srv, batch_size=4)  # a batch worth of failures does not stop it
    rows = rows_of(tmp_path)
    assert len(rows) == N_CALLS and {r["error"] for r in rows} == {"batch expired"}
    assert not (tmp_path / STATE).exists()  # stored: the expired batch is not collected again
    srv.batch_expire_after = None
    judge(tmp_path, answers, srv, batch_size=4)
    assert list(srv.batch_api.batches) == ["batch_0001", "batch_0002"]
    assert len(batch_lines(srv, "batch_0002")) == N_CALLS
    check_final(rows_of(tmp_path))


@pytest.mark.timeout(60)
def test_a_pending_batch_of_other_models_is_named(
    answers: Path, make_openai_server: MakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    srv = make_openai_server(reply=rating, batch_polls=10**6)
    with pytest.raises(JobError, match="still in_progress"):
        judge(tmp_path, answers, srv, wait=0, model_list=["m1"])
    assert json.loads((tmp_path / STATE).read_text())["models"] == ["m1"]
    (answers.parent / "more").mkdir(exist_ok=True)  # a model added since: another model set
    more = answers.parent / "more"
    (more / "m1.jsonl").write_text((answers / "m1.jsonl").read_text())
    (more / "m3.jsonl").write_text((answers / "m1.jsonl").read_text().replace('"m1"', '"m3"'))
    srv.batch_polls = 0
    judge(tmp_path, more, srv)
    assert (
        "batch batch_0001 of another set of models is pending; run again with --model-list m1" in caplog.text
    )
    assert (
        srv.batch_api.batches["batch_0001"].obj["status"] == "in_progress"
    )  # not cancelled: m1's to collect
