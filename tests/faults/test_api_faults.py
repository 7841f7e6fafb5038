"""API faults through the real CLI and the real openai client against a real HTTP server
(tests/servers/openai_server.py) that misbehaves on ~20% of requests: 429 with Retry-After,
5xx, hangs past the client timeout, truncated JSON, an HTML error page, empty choices,
null content and content-filter replies. Every item ends ok or recorded with its status
after bounded retries, and the stored files reconcile with the server's request log."""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from servers.openai_server import Fault, OpenAIServer, Recorded

from faults.jobproc import (
    API_ENV,
    check_answers,
    check_judgments,
    check_shards,
    distinct_answers,
    jsonl,
    seeded_reply,
)

MakeServer = Any
MAX_RETRIES = 2
SUCCESS = (None, "content_filter")  # content_filter with its text kept is a usable reply
# every kind once, early in the run, then random faults at RATE
SCRIPTED = [
    Fault("429", retry_after="1"), Fault("429"), "500", "502", Fault("503", retry_after="0"), "timeout",
    "truncated", "html", "empty_choices", "null_content", "content_filter", "content_filter_empty",
]  # fmt: skip
RANDOM_KINDS = [
    "429",
    "500",
    "503",
    "timeout",
    "truncated",
    "empty_choices",
    "null_content",
    "content_filter",
]
RATE = 0.2


def mixed_faults(seed: int) -> Any:
    rng = random.Random(seed)

    def pick(body: dict[str, Any], n: int) -> str | Fault | None:
        if n % 3 == 0 and n // 3 < len(SCRIPTED):
            return SCRIPTED[n // 3]
        return rng.choice(RANDOM_KINDS) if rng.random() < RATE else None

    return pick


def rating_reply(body: dict[str, Any]) -> str:
    user = body["messages"][-1]["content"]
    if "lighthouse" in user and "rhymes" not in user:  # one question: the judge gives no rating
        return "I cannot rate this."
    return f"Explanation. Rating: [[{len(user) % 9 + 1}]]"


def by_prompt(srv: OpenAIServer) -> dict[str, list[Recorded]]:
    out: dict[str, list[Recorded]] = defaultdict(list)
    for r in sorted(srv.chat_requests, key=lambda r: r.start):
        out[r.messages[-1]["content"]].append(r)
    return out


def judge_args(out: Path, srv: OpenAIServer, *extra: str) -> list[str]:
    return ["judge", "--bench", "smoke", "--output", str(out), "--judge-model", "openai/test-model",
            "--base-url", srv.url, "--request-timeout", "1", "--max-retries", str(MAX_RETRIES),
            "--concurrency", "8", *extra]  # fmt: skip


@pytest.mark.timeout(180)
def test_judge_under_mixed_faults_reconciles_with_the_server_log(
    run_job: Any, make_openai_server: MakeServer, tmp_path: Path
) -> None:
    out = tmp_path / "runs"
    distinct_answers(run_job, out, make_openai_server(reply=seeded_reply).url)  # 9 x 2 turns x 2 choices
    srv = make_openai_server(reply=rating_reply, faults=mixed_faults(1), latency=0.05, hang_seconds=4)
    r = run_job(*judge_args(out, srv), env=API_ENV)
    assert r.returncode == 0, r.stderr
    path = out / "smoke" / "model_judgment" / "test-model_single.jsonl"
    rows = check_judgments(path, 36, "recorded")
    assert len(rows) == 36
    seen = Counter(q.fault for q in srv.chat_requests)
    injected = sum(n for k, n in seen.items() if k is not None)
    assert {f if isinstance(f, str) else f.kind for f in SCRIPTED} <= set(seen)
    assert 0.15 <= injected / len(srv.chat_requests) <= 0.45, seen

    # reconcile: requested = ok + parse_error + api_error, row by row with what the server saw
    log = by_prompt(srv)
    assert set(log) == {x["user_prompt"] for x in rows}  # every requested game has its row
    status = Counter(x["status"] for x in rows)
    assert status["ok"] + status["parse_error"] + status["api_error"] == 36 == len(log)
    for x in rows:
        sent = log[x["user_prompt"]]
        assert 1 <= len(sent) <= MAX_RETRIES + 1  # bounded retries
        assert all(q.fault not in SUCCESS for q in sent[:-1])  # no retry after a usable reply
        if sent[-1].fault in SUCCESS:
            assert x["judgment"] == sent[-1].reply and x["status"] in ("ok", "parse_error"), x
            assert (x["score"] == -1) == (x["status"] == "parse_error")
        else:  # gave up: a status and a reason, never a score or a "$ERROR$" text
            assert x["status"] == "api_error" and x["score"] == -1 and x["judgment"] == "", x
            assert x["error"] and "\n" not in x["error"]
    # Retry-After: 1 was honoured before the retry of that request
    first = next(q for q in srv.chat_requests if q.n == 0)
    retry = next(q for q in log[first.messages[-1]["content"]] if q.n != 0)
    assert first.end is not None and retry.start - first.end >= 0.95
    # the CLI's summary says the same
    for s in ("ok", "parse_error", "api_error"):
        if status[s]:
            assert f"{status[s]} {s}" in r.stdout, r.stdout
    assert status["api_error"] >= 1  # content_filter_empty is never retried
    print(f"judge: {len(srv.chat_requests)} requests, faults {dict(seen)}, rows {dict(status)}")
    assert API_ENV["OPENAI_API_KEY"] not in r.stdout + r.stderr + path.read_text()

    # a re-run (faults gone) asks exactly the api_error games again; then all are final
    srv2 = make_openai_server(reply=rating_reply)
    r = run_job(*judge_args(out, srv2), env=API_ENV)
    assert r.returncode == 0, r.stderr
    assert sorted(q.messages[-1]["content"] for q in srv2.chat_requests) == sorted(
        x["user_prompt"] for x in rows if x["status"] == "api_error"
    )
    after = check_judgments(path, 36)
    assert after[:36] == rows  # the first run's rows are untouched
    assert all(x["status"] != "api_error" for x in after[36:])


@pytest.mark.timeout(180)
def test_generate_under_faults_records_failures_never_empty_answers(
    run_job: Any, make_openai_server: MakeServer, tmp_path: Path
) -> None:
    out = tmp_path / "runs"
    srv = make_openai_server(faults=mixed_faults(2), latency=0.02, hang_seconds=4)
    gen = ["generate", "--bench", "smoke", "--model", "openai/test-model", "--base-url", srv.url,
           "--num-choices", "2", "--num-shards", "2", "--max-new-tokens", "64", "--output", str(out),
           "--request-timeout", "1", "--max-retries", "1", "--concurrency", "6"]  # fmt: skip
    r = run_job(*gen, env=API_ENV)
    assert r.returncode == 0, r.stderr
    committed, orphans = check_shards(out, "smoke", "test-model")
    assert committed == {0, 1} and not orphans
    items = [i for f in sorted((out / "smoke/shards/test-model").glob("shard-*.jsonl")) for i in jsonl(f)]
    assert len(items) == 18
    replies = {q.reply for q in srv.chat_requests if q.fault in SUCCESS}
    failed = [i for i in items if i["status"] != "ok"]
    assert failed, "the scripted content_filter_empty must fail one conversation"
    for i in items:
        assert len(i["finish_reasons"]) == len(i["turns"]) + (i["status"] != "ok")
        assert all(t and t in replies for t in i["turns"])  # every kept answer is a real reply, never ""
        if i["status"] == "ok":
            assert len(i["turns"]) == 2 and i["error"] is None
        else:
            assert i["status"] == "api_error" and re.match(r"turn [12]: \S", i["error"]), i
    # a reply cut by the provider's filter is kept with its finish_reason, on whatever item got it
    if any(q.fault == "content_filter" for q in srv.chat_requests):
        assert any("content_filter" in i["finish_reasons"] for i in items)
    faults = Counter(q.fault for q in srv.chat_requests)
    print(f"generate: {len(srv.chat_requests)} requests, faults {dict(faults)}, {len(failed)} of 18 failed")
    red = run_job("reduce", "--bench", "smoke", "--output", str(out))
    assert red.returncode == 2 and f"{len(failed)} conversations failed" in red.stderr
    assert not (out / "smoke/model_answer/test-model.jsonl").exists()  # nothing half-reduced
    red = run_job("reduce", "--bench", "smoke", "--output", str(out), "--allow-failed")
    assert red.returncode == 0, red.stderr
    answers = check_answers(out, "smoke", "test-model", 9, 2)
    kept = [c for a in answers for c in a["choices"] if c.get("status")]
    assert len(kept) == len(failed) and all(c["status"] == "api_error" and c["error"] for c in kept)

    # the judge records failed answers as answer_error and never asks about them
    jsrv = make_openai_server(reply=rating_reply)
    r = run_job(*judge_args(out, jsrv), env=API_ENV)
    assert r.returncode == 0, r.stderr
    rows = check_judgments(out / "smoke/model_judgment/test-model_single.jsonl", 36)
    bad = [x for x in rows if x["status"] == "answer_error"]
    assert len(bad) == 2 * len(failed) and all(x["score"] == -1 and x["user_prompt"] == "" for x in bad)
    assert len(jsrv.chat_requests) == 36 - len(bad)

    # re-running generate keeps the committed shards (failures included); --force redoes them
    n = len(srv.chat_requests)
    assert run_job(*gen, env=API_ENV).returncode == 0 and len(srv.chat_requests) == n
    srv.faults, srv.fault_rates = None, {}
    r = run_job(*gen, "--force", env=API_ENV)
    assert r.returncode == 0, r.stderr
    red = run_job("reduce", "--bench", "smoke", "--output", str(out))
    assert red.returncode == 0, red.stderr
    assert not [
        c for a in check_answers(out, "smoke", "test-model", 9, 2) for c in a["choices"] if c.get("status")
    ]
