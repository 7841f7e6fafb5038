"""openai/<model> backend against a real HTTP server on 127.0.0.1 (tests/servers)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from servers.openai_server import Fault, OpenAIServer, Reply, rules_reply, scripted_reply

from job.backends import load_backend
from job.backends.base import GenRequest, GenResult, SamplingParams
from job.backends.openai_api import OpenAIBackend, parse_retry_after
from job.errors import JobError

KEY = "sk-test-Secret0123456789abcdef"
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("JOB_API_BACKOFF_BASE", raising=False)
    return KEY


_made: list[OpenAIBackend] = []


@pytest.fixture(autouse=True)
def _close_backends() -> Iterator[None]:
    yield
    while _made:
        _made.pop().close()


def make(srv: OpenAIServer | str, **kw: object) -> OpenAIBackend:
    url = srv if isinstance(srv, str) else srv.url
    opts: dict[str, object] = {"base_url": url, "backoff_base": 0.001, "request_timeout": 10.0}
    opts.update(kw)
    backend = load_backend("openai/test-model", **opts)
    assert isinstance(backend, OpenAIBackend)
    _made.append(backend)
    return backend


def req(
    text: str = "hello", temperature: float = 0.0, max_new_tokens: int = 64, seed: int | None = None
) -> GenRequest:
    return GenRequest([{"role": "user", "content": text}], SamplingParams(temperature, max_new_tokens, seed))


def test_sends_what_the_request_says(make_openai_server) -> None:
    srv = make_openai_server(reply=rules_reply({"poem": "roses are red", "long": "a b c d e f g h"}))
    backend = make(srv, system_prompt="You are terse.")
    with_system = GenRequest(
        [{"role": "system", "content": "Own system."}, {"role": "user", "content": "a poem"}],
        SamplingParams(0.7, 100, seed=3),
    )
    res = backend.generate([req("a poem", 0.7, 100, seed=3), with_system, req("long one", 0.0, 4)])
    assert [r.text for r in res] == ["roses are red", "roses are red", "a b c d"]
    assert [r.finish_reason for r in res] == ["stop", "stop", "length"]
    assert [r.num_tokens for r in res] == [3, 3, 4]
    # arrival order is not request order: sort by (last user message, system message)
    bodies = sorted(
        (r.body for r in srv.requests),
        key=lambda b: (b["messages"][-1]["content"], b["messages"][0]["content"]),
    )
    assert bodies[0]["messages"] == with_system.messages  # its own system message, not doubled
    assert bodies[1]["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "a poem"},
    ]
    for b in bodies[:2]:
        assert (b["model"], b["temperature"], b["max_tokens"], b["seed"], b["n"]) == (
            "test-model",
            0.7,
            100,
            3,
            1,
        )
    assert bodies[2]["max_tokens"] == 4 and "seed" not in bodies[2]
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in srv.requests)


@pytest.mark.parametrize(
    "fault",
    ["429", "500", "502", "503", "timeout", "truncated", "html", "empty_choices", "null_content"],
)
def test_each_transient_fault_is_retried(make_openai_server, fault: str) -> None:
    srv = make_openai_server(faults=[fault], hang_seconds=30)
    backend = make(srv, request_timeout=0.5)
    t0 = time.monotonic()
    [res] = backend.generate([req("x")])
    assert res.ok and res.text == "echo: x", res
    assert [r.fault for r in srv.requests] == [fault, None]
    assert backend.stats["retries"] == 1
    assert time.monotonic() - t0 < 5


def test_gives_up_after_the_last_retry(make_openai_server) -> None:
    srv = make_openai_server(faults=lambda body, n: "503")
    backend = make(srv, max_retries=3)
    [res] = backend.generate([req()])
    assert res.status == "api_error" and res.text == ""
    assert res.error is not None and "\n" not in res.error
    assert "HTTP 503" in res.error and "gave up after 4 attempts" in res.error
    assert len(srv.requests) == 4


def test_bad_responses_are_retried_a_bounded_number_of_times(make_openai_server) -> None:
    srv = make_openai_server(faults=lambda body, n: "empty_choices")
    [res] = make(srv, max_retries=6).generate([req()])
    assert res.status == "api_error" and "no choices" in (res.error or "")
    assert len(srv.requests) == 3  # 1 + MAX_BAD_RESPONSE_RETRIES, not 1 + max_retries


def test_content_filter(make_openai_server) -> None:
    srv = make_openai_server(faults=["content_filter", "content_filter_empty"])
    backend = make(srv, concurrency=1)
    kept, empty = backend.generate([req("a"), req("b")])
    assert kept.ok and kept.finish_reason == "content_filter" and kept.text == "echo: a"
    assert empty.status == "api_error" and "content_filter" in (empty.error or "")
    assert len(srv.requests) == 2  # a filtered reply is not retried


def test_retry_after_seconds_is_honoured(make_openai_server) -> None:
    srv = make_openai_server(faults=[Fault("429", retry_after="1")])
    [res] = make(srv, backoff_base=0.0).generate([req()])
    assert res.ok
    first, second = srv.requests
    assert first.end is not None
    assert second.start - first.end >= 0.95


def test_retry_after_http_date_and_too_long() -> None:
    now = 1_700_000_000.0
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 7))
    assert parse_retry_after(date, now=now) == pytest.approx(7.0)
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("garbage") is None and parse_retry_after(None) is None


def test_retry_after_longer_than_the_limit_fails_without_waiting(make_openai_server) -> None:
    srv = make_openai_server(faults=[Fault("503", retry_after="100")])
    t0 = time.monotonic()
    [res] = make(srv, retry_after_max=5).generate([req()])
    assert res.status == "api_error" and "Retry-After" in (res.error or "")
    assert len(srv.requests) == 1 and time.monotonic() - t0 < 5


@pytest.mark.parametrize("code", ["400", "422"])
def test_no_retry_on_request_errors(make_openai_server, code: str) -> None:
    srv = make_openai_server(faults=[code])
    backend = make(srv, concurrency=1)
    bad, good = backend.generate([req("a"), req("b")])
    assert bad.status == "api_error" and f"HTTP {code}" in (bad.error or "")
    assert good.ok  # a per-request error does not stop the run
    assert len(srv.requests) == 2 and backend.fatal_error is None


@pytest.mark.parametrize("code", ["401", "403", "404", "quota"])
def test_key_model_and_endpoint_errors_abort_the_run(make_openai_server, code: str) -> None:
    srv = make_openai_server(faults=lambda body, n: code, latency=0.02)
    backend = make(srv, concurrency=4)
    results = backend.generate([req(str(i)) for i in range(100)])
    assert all(r.status == "api_error" for r in results)
    assert len(srv.requests) <= 4  # only what was already in flight; no retry storm
    assert backend.fatal_error and f"HTTP {code.replace('quota', '429')}" in backend.fatal_error
    assert sum("not sent" in (r.error or "") for r in results) >= 96


def test_invalid_key_never_reaches_logs_or_errors(
    make_openai_server, caplog: pytest.LogCaptureFixture
) -> None:
    srv = make_openai_server(api_key="sk-the-right-one")  # a 401 body echoes the key sent
    caplog.set_level(logging.DEBUG)
    backend = make(srv, concurrency=2)
    results = backend.generate([req(str(i)) for i in range(10)])
    assert srv.requests and all(r.fault == "401" for r in srv.requests)
    assert srv.requests[0].headers["authorization"] == f"Bearer {KEY}"  # it was sent ...
    assert "OPENAI_API_KEY" in (backend.fatal_error or "")
    texts = [caplog.text, backend.fatal_error or "", *(r.error or "" for r in results)]
    assert "HTTP 401" in caplog.text
    for text in texts:  # ... and never shown, not even a prefix of it
        assert KEY not in text and KEY[:12] not in text


def test_concurrency_bound_is_respected_and_reached(make_openai_server) -> None:
    srv = make_openai_server(latency=0.05)
    results = make(srv, concurrency=5).generate([req(str(i)) for i in range(40)])
    assert all(r.ok for r in results)
    assert [r.text for r in results] == [f"echo: {i}" for i in range(40)]  # order kept
    assert srv.max_in_flight == 5


def test_connection_errors_are_retried_then_api_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens
    backend = make(f"http://127.0.0.1:{port}/v1", max_retries=2)
    [res] = backend.generate([req()])
    assert res.status == "api_error" and "connection error" in (res.error or "")
    assert backend.stats["retries"] == 2


def test_generate_works_inside_a_running_event_loop(openai_server: OpenAIServer) -> None:
    backend = make(openai_server)

    async def caller() -> list[GenResult]:
        return backend.generate([req("in a loop")])

    [res] = asyncio.run(caller())
    assert res.text == "echo: in a loop"


def test_each_conversation_advances_on_its_own(make_openai_server) -> None:
    """Conversation B's turn 2 goes out while A's slow turn 1 is still running."""

    def reply(body: dict) -> Reply:
        return Reply(f"answer to {body['messages'][-1]['content']}")

    srv = make_openai_server(reply=reply)
    slow_first = {"A1": 2.0}
    srv.latency = 0.0

    original = srv._sleep

    async def sleep(seconds: float) -> None:  # per-prompt latency: A's turn 1 is slow
        await original(slow_first.get(srv.requests[-1].last_user, 0.02))

    srv._sleep = sleep  # type: ignore[method-assign]
    backend = make(srv, concurrency=4)

    def follow_up(i: int, res: GenResult) -> GenRequest | None:
        name = "AB"[i]
        if res.text.endswith("1"):
            msgs = [
                {"role": "user", "content": f"{name}1"},
                {"role": "assistant", "content": res.text},
                {"role": "user", "content": f"{name}2"},
            ]
            return GenRequest(msgs, SamplingParams())
        return None

    runs = backend.generate_conversations([req("A1"), req("B1")], follow_up)
    assert [[r.text for r in run] for run in runs] == [
        ["answer to A1", "answer to A2"],
        ["answer to B1", "answer to B2"],
    ]
    by = {r.last_user: r for r in srv.requests}
    assert by["B2"].messages[1]["content"] == "answer to B1"
    assert by["A1"].end is not None and by["B2"].start < by["A1"].end - 1.0


def test_needs_a_key_or_a_base_url(monkeypatch: pytest.MonkeyPatch, openai_server: OpenAIServer) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(JobError, match="OPENAI_API_KEY"):
        load_backend("openai/gpt-4o")
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.url)  # local servers need no key
    backend = load_backend("openai/test-model")
    [res] = backend.generate([req("k")])
    backend.close()
    assert res.ok and openai_server.requests[0].headers["authorization"] == "Bearer EMPTY"


def test_clients_live_across_calls_until_close(make_openai_server) -> None:
    srv = make_openai_server(latency=0.01)
    backend = make(srv, concurrency=3)
    assert [r.text for r in backend.generate([req("a")])] == ["echo: a"]
    assert [r.text for r in backend.generate([req(str(i)) for i in range(9)])][-1] == "echo: 8"
    assert srv.max_in_flight <= 3
    assert backend._loop is not None
    thread = backend._loop.thread
    assert thread.is_alive() and thread in threading.enumerate()
    backend.close()
    assert not thread.is_alive()
    assert backend.generate([req("again")])[0].text == "echo: again"  # reopens lazily


def test_a_failing_callback_stops_the_run_and_the_backend_stays_usable(make_openai_server) -> None:
    srv = make_openai_server(latency=0.05)
    backend = make(srv, concurrency=2)

    def follow_up(i: int, res: GenResult) -> GenRequest | None:
        raise ValueError("caller bug")

    with pytest.raises(ValueError, match="caller bug"):
        backend.generate_conversations([req(str(i)) for i in range(20)], follow_up)
    assert len(srv.requests) < 20  # the rest was cancelled, not sent
    assert backend.generate([req("after")])[0].text == "echo: after"


@settings(max_examples=200, deadline=None)
@given(
    attempt=st.integers(0, 40),
    base=st.floats(0.0, 5.0),
    cap=st.floats(0.0, 120.0),
    retry_after=st.one_of(st.none(), st.floats(0.0, 1000.0)),
)
def test_backoff_is_full_jitter_under_the_cap_or_the_server_hint(
    attempt: int, base: float, cap: float, retry_after: float | None
) -> None:
    backend = OpenAIBackend(
        "openai/m", "m", base_url="http://127.0.0.1:9/v1", backoff_base=base, backoff_max=cap,
        retry_after_max=300.0,
    )  # fmt: skip
    delay = backend._delay(attempt, retry_after)
    if retry_after is None:
        assert delay is not None and 0.0 <= delay <= min(cap, base * 2.0**attempt)
    elif retry_after > 300.0:
        assert delay is None
    else:
        assert delay == retry_after


@given(prefix=st.text(max_size=400), suffix=st.text(max_size=400))
def test_scrub_never_lets_the_key_through(prefix: str, suffix: str) -> None:
    backend = OpenAIBackend("openai/m", "m", base_url="http://127.0.0.1:9/v1")
    out = backend._scrub(prefix + KEY + suffix)
    assert KEY not in out and "\n" not in out and len(out) <= 300


@pytest.mark.parametrize("text", ["", "  \n "])
@pytest.mark.parametrize("finish", ["stop", "length"])
def test_empty_completion_is_an_empty_answer(make_openai_server, text: str, finish: str) -> None:
    # a completed generation with no text is an answer (FastChat judges it), asked once
    srv = make_openai_server(reply=lambda body: Reply(text, finish_reason=finish, completion_tokens=64))
    [res] = make(srv).generate([req()])
    assert (res.status, res.text, res.finish_reason, res.error) == ("ok", text, finish, None)
    assert len(srv.requests) == 1


@pytest.mark.parametrize(
    ("model", "reasoning"),
    [("o1", True), ("o3-mini", True), ("o4-mini-2025-04-16", True), ("gpt-5", True), ("gpt-5.1", True),
     ("gpt-5-mini", True), ("openai/o3", True), ("gpt-4o-2024-08-06", False), ("gpt-5-chat-latest", False),
     ("gpt-4.1", False), ("omni-moderation", False), ("llama-3-o1-distill", False)],
)  # fmt: skip
def test_reasoning_models_are_known_by_name(model: str, reasoning: bool) -> None:
    from job.backends.openai_api import is_reasoning_model

    assert is_reasoning_model(model) is reasoning


def test_reasoning_model_gets_max_completion_tokens_and_no_temperature(make_openai_server) -> None:
    srv = make_openai_server(models=["o3-mini"], reasoning_models=["o3-mini"], reply=lambda b: "a b c d e")
    backend = load_backend("openai/o3-mini", base_url=srv.url, backoff_base=0.001)
    _made.append(backend)  # type: ignore[arg-type]
    res = backend.generate([req("x", 0.0, 3), req("y", 0.7, 100, seed=1)])
    assert [(r.ok, r.text, r.finish_reason) for r in res] == [
        (True, "a b c", "length"),
        (True, "a b c d e", "stop"),
    ]
    assert len(srv.requests) == 2, "no request was refused"
    for r in srv.requests:
        assert "max_tokens" not in r.body and "temperature" not in r.body
    assert sorted(r.body["max_completion_tokens"] for r in srv.requests) == [3, 100]


def test_deployment_hiding_a_reasoning_model_switches_on_the_first_refusal(make_openai_server) -> None:
    """An Azure-style deployment name: the server's 400 says what to send; asked again at once."""
    srv = make_openai_server(models=["my-deploy"], reasoning_models=["my-deploy"])
    backend = load_backend("openai/my-deploy", base_url=srv.url, backoff_base=0.001, concurrency=1)
    _made.append(backend)  # type: ignore[arg-type]
    res = backend.generate([req("a"), req("b")])
    assert all(r.ok for r in res), res
    assert "max_tokens" in srv.requests[0].body
    assert len(srv.requests) == 3 and all("max_completion_tokens" in r.body for r in srv.requests[1:])


def test_finish_reason_error_is_retried_never_an_answer(make_openai_server) -> None:
    """vllm serve ends a request it failed with finish_reason "error" (and partial text)."""
    srv = make_openai_server(reply=scripted_reply([Reply("half an", finish_reason="error"), "whole answer"]))
    [res] = make(srv).generate([req()])
    assert (res.ok, res.text, len(srv.requests)) == (True, "whole answer", 2)
    srv2 = make_openai_server(reply=lambda body: Reply("half an", finish_reason="error"))
    [bad] = make(srv2).generate([req()])
    assert (bad.status, bad.text) == ("api_error", "") and "finish_reason error" in (bad.error or "")


def test_usage_counts_every_billed_reply_retried_or_failed(make_openai_server) -> None:
    # the test server bills words: prompt "one two" = 2 tokens, reply "a b c" = 3 tokens per reply
    srv = make_openai_server(
        reply=lambda body: "a b c", faults=["null_content", None, "content_filter_empty"]
    )
    backend = make(srv)
    [retried] = backend.generate([req("one two")])
    [filtered] = backend.generate([req("one two")])
    assert retried.ok and len(srv.requests) == 3
    assert retried.usage == {"prompt_tokens": 4, "completion_tokens": 6}  # the null reply was billed too
    assert filtered.status == "api_error" and filtered.usage == {"prompt_tokens": 2, "completion_tokens": 3}
