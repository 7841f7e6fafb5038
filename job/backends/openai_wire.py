"""The OpenAI backend's plumbing: retry rules and Retry-After, the event-loop thread, the
client pool that bounds requests in flight, and error/response translation."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from job.backends.base import ANSWER_FINISHES, GenResult

log = logging.getLogger(__name__)

T = TypeVar("T")

"""follow_up(conversation_index, result) -> that conversation's next request, or None."""

FATAL_STATUS = (401, 403, 404)
"""Statuses about the key, the model or the endpoint: every other request would fail too."""
RETRY_STATUS = (408, 429)
"""4xx statuses worth retrying (request timeout, rate limit); 5xx always are."""
CONNECTIONS_PER_CLIENT = 8
"""Requests in flight per AsyncOpenAI client (see _ClientPool)."""
MAX_BAD_RESPONSE_RETRIES = 2
"""Empty choices / null content / garbage JSON: retried, but fewer times than overload."""
REASONING_MODEL = re.compile(r"(o[1-9][0-9]*|gpt-5(?!-chat))([.-].*)?")
"""OpenAI's reasoning families (o1, o3-mini, o4-mini, gpt-5, gpt-5.1, gpt-5-mini, ...): they
take max_completion_tokens (max_tokens is a 400) and only their default temperature;
gpt-5-chat-* is a chat model."""


def is_reasoning_model(model: str) -> bool:
    """By name, the last path part (openai/o3 on a router, o3-mini-2025-01-31 pinned)."""
    return REASONING_MODEL.fullmatch(model.rsplit("/", 1)[-1].lower()) is not None


class _Retryable(Exception):
    """An attempt failed in a way a later attempt may not (carries the wait hint)."""

    usage: dict[str, int] | None = None
    """what a reply that was of no use still cost (_to_result)"""

    def __init__(self, message: str, retry_after: float | None = None, bad_response: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.bad_response = bad_response


class _Failed(Exception):
    """An attempt failed for good (no retry)."""

    usage: dict[str, int] | None = None

    def __init__(self, message: str, fatal: bool = False):
        super().__init__(message)
        self.fatal = fatal


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date; None if absent or unparsable."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _public_url(url: str | None) -> str:
    """The endpoint for logs, without any user:password@ part."""
    if not url:
        return "api.openai.com"
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class _LoopThread:
    """A private event loop in a daemon thread: sync callers (with or without a loop of
    their own) submit coroutines to it, and clients and their connections live across
    generate calls instead of being rebuilt (CA bundle loading included) each time."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="openai-backend", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("OpenAIBackend.generate called from its own callbacks")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()  # Ctrl-C: stop sending
            raise

    def stop(self) -> None:
        # an interrupted run (SIGTERM, Ctrl-C) leaves cancelled tasks unwinding: let them
        # finish first, or the loop dies with them pending ("Task was destroyed but it is pending!")
        fut = asyncio.run_coroutine_threadsafe(_cancel_pending(), self.loop)
        with contextlib.suppress(Exception):
            fut.result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()


async def _cancel_pending() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class _ClientPool:
    """The bound on requests in flight: `concurrency` slots spread over small clients.

    httpx's connection pool polls every connection of the pool for each request, so
    one client with 64+ connections burns milliseconds of CPU per request; clients of
    CONNECTIONS_PER_CLIENT connections keep that cost flat (bench_api.py measures it).
    """

    def __init__(self, make: Callable[[], Any], concurrency: int):
        n = -(-concurrency // CONNECTIONS_PER_CLIENT)
        self.clients = [make() for _ in range(n)]
        self.free: asyncio.Queue[int] = asyncio.Queue()  # FIFO: first come, first served
        for s in range(concurrency):
            self.free.put_nowait(s % n)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[Any]:
        i = await self.free.get()
        try:
            yield self.clients[i]
        finally:
            self.free.put_nowait(i)

    async def close(self) -> None:
        for c in self.clients:
            await c.close()


def _wants_reasoning_params(e: Any) -> bool:
    """OpenAI's 400 for max_tokens or a temperature sent to a reasoning model."""
    return getattr(e, "param", None) in ("max_tokens", "temperature") and getattr(e, "code", None) in (
        "unsupported_parameter",
        "unsupported_value",
    )


def _error_message(e: Any) -> str:
    """The server's own message ({"error": {"message": ...}}), else the client's."""
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict):
            body = inner
        if body.get("message"):
            return str(body["message"])
    return str(getattr(e, "message", "") or e)


def _to_result(resp: Any) -> GenResult:
    """A ChatCompletion -> GenResult; a reply no caller can use raises, carrying its usage:
    it was billed all the same."""
    try:
        return _reply(resp)
    except (_Retryable, _Failed) as e:
        e.usage = _usage(getattr(resp, "usage", None))
        raise


def add_usage(a: dict[str, int] | None, b: dict[str, int] | None) -> dict[str, int] | None:
    """Two token counts added up; None only when neither was reported."""
    if a is None or b is None:
        return a or b
    return {k: a.get(k, 0) + b.get(k, 0) for k in ("prompt_tokens", "completion_tokens")}


def _reply(resp: Any) -> GenResult:
    """A ChatCompletion -> GenResult; responses no caller can use are retryable errors."""
    choices = getattr(resp, "choices", None)
    if not isinstance(choices, list):
        raise _Retryable(
            f"malformed response: not a chat completion ({type(resp).__name__})", bad_response=True
        )
    if not choices:
        raise _Retryable("bad response: no choices", bad_response=True)
    choice = choices[0]
    finish = choice.finish_reason
    content = choice.message.content if choice.message is not None else None
    usage = getattr(resp, "usage", None)
    tokens = int(getattr(usage, "completion_tokens", 0) or 0)
    if finish == "content_filter" and not content:
        raise _Failed("content_filter: the provider filtered the reply and returned no text")
    if finish == "error":  # vllm serve: the engine failed this request (e.g. a KV transfer); may not again
        raise _Retryable(
            "bad response: finish_reason error (the server failed the request)", bad_response=True
        )
    reasoning = _reasoning(choice.message)
    # a completed generation with no text (EOS at once; the limit used up, maybe inside the
    # reasoning) is an empty answer, judged as FastChat does; only a failed request fails
    completed = finish in ANSWER_FINISHES
    if content is None and not (completed and reasoning):
        if reasoning:
            raise _Failed(f"no answer, only reasoning (finish_reason {finish}, {tokens} tokens)")
        refusal = getattr(choice.message, "refusal", None)
        reason = f"refusal: {refusal}" if refusal else f"null content (finish_reason {finish})"
        raise _Retryable(f"bad response: {reason}", bad_response=True)
    if not completed and not (content or "").strip():  # asking again would pay for the same nothing
        raise _Failed(f"empty completion (finish_reason {finish}, {tokens} tokens)")
    return GenResult(
        content or "", finish_reason=finish, num_tokens=tokens, usage=_usage(usage), reasoning=reasoning
    )


def _reasoning(message: Any) -> str | None:
    """The message's separate reasoning text: `reasoning_content` (vLLM, DeepSeek, SGLang) or
    `reasoning` (OpenRouter, newer vLLM), fields the openai client keeps as extras."""
    for name in ("reasoning_content", "reasoning"):
        value = getattr(message, name, None)
        if isinstance(value, str) and value.strip():
            return value
    return None


def _usage(usage: Any) -> dict[str, int] | None:
    """The reply's token counts (what the API bills), or None when it sent none."""
    if usage is None:
        return None
    return {k: int(getattr(usage, k, 0) or 0) for k in ("prompt_tokens", "completion_tokens")}
