"""`openai/<model>`: any OpenAI-compatible chat-completions endpoint, fanned out with
bounded async concurrency.

Retries live here, once, for every API use (generation and judging): the client's
own retries are off so that backoff, Retry-After and the fail-fast rules are ours:

- 429, 408, 5xx, timeouts, connection errors, malformed or empty responses: retried
  with exponential backoff and full jitter (or the server's Retry-After), then the
  item gets status `api_error` and a one-line `error`. Nothing like `$ERROR$` is
  ever returned as text.
- other 4xx: fail at once. 401/403/404 concern the key, the model or the endpoint,
  not one request: the first one aborts the rest of the run (no retry storm) and is
  kept in `fatal_error` so callers can stop before committing anything.

The API key comes from OPENAI_API_KEY and is scrubbed from every error and log line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import time
from collections import Counter
from typing import Any

from job.backends.base import API_ERROR, FollowUp, GenRequest, GenResult, Message, ProgressFn
from job.backends.openai_wire import (
    FATAL_STATUS,
    MAX_BAD_RESPONSE_RETRIES,
    RETRY_STATUS,
    _ClientPool,
    _error_message,
    _Failed,
    _LoopThread,
    _public_url,
    _Retryable,
    _to_result,
    _wants_reasoning_params,
    add_usage,
    is_reasoning_model,
    parse_retry_after,
)
from job.errors import JobError

log = logging.getLogger(__name__)

__all__ = ["OpenAIBackend", "is_reasoning_model", "parse_retry_after"]


class OpenAIBackend:
    """Chat completions through the official `openai` client (AsyncOpenAI)."""

    streams_conversations = True

    def __init__(
        self,
        spec: str,
        model: str,
        *,
        base_url: str | None = None,
        concurrency: int = 32,
        request_timeout: float = 600.0,
        max_retries: int = 6,
        system_prompt: str | None = None,
        backoff_base: float | None = None,
        backoff_max: float = 60.0,
        retry_after_max: float = 300.0,
        base_url_env: str | None = "OPENAI_BASE_URL",
        api_key_env: str | None = "OPENAI_API_KEY",
        extra_body: dict[str, Any] | None = None,
        **_: Any,
    ):
        if concurrency < 1:
            raise JobError(f"--concurrency must be >= 1, got {concurrency}")
        if request_timeout <= 0:
            raise JobError(f"--request-timeout must be > 0, got {request_timeout}")
        if max_retries < 0:
            raise JobError(f"--max-retries must be >= 0, got {max_retries}")
        self.spec = spec
        self.model = model
        # the judge passes its own endpoint and key variable (None: read none), so it never
        # falls back to the generator's OPENAI_BASE_URL / OPENAI_API_KEY (job.backends.endpoints)
        self.base_url = base_url or (os.environ.get(base_url_env) if base_url_env else None) or None
        key = (os.environ.get(api_key_env) if api_key_env else None) or ""
        if not key:
            if not self.base_url:
                raise JobError(
                    f"{spec}: {api_key_env or 'the API key variable'} is not set; export it, or pass "
                    "--base-url (OPENAI_BASE_URL) for a local server that needs no key"
                )
            key = "EMPTY"  # local servers (vLLM, SGLang) accept any key
        self._key = key
        self.concurrency = concurrency
        self.request_timeout = float(request_timeout)
        self.max_retries = max_retries
        self.system_prompt = system_prompt
        self.extra_body = _check_extra_body(extra_body)
        """--extra-body: merged into every request body last (e.g. reasoning_effort)."""
        self.reasoning = is_reasoning_model(model)
        """Send max_completion_tokens and no temperature (set by name, or on the server's 400)."""
        # JOB_API_BACKOFF_BASE: tests and impatient users shrink the first backoff step
        env_base = os.environ.get("JOB_API_BACKOFF_BASE")
        self.backoff_base = backoff_base if backoff_base is not None else float(env_base or 1.0)
        self.backoff_max = backoff_max
        self.retry_after_max = retry_after_max
        self.fatal_error: str | None = None
        """Set when a 401/403/404 aborted the run; callers should stop, not commit."""
        self.stats: Counter[str] = Counter()
        """requests, ok, failed, retries, retry:<reason> over this backend's life."""
        self.endpoint = _public_url(self.base_url)
        self._loop: _LoopThread | None = None
        self._pool: _ClientPool | None = None
        for name in ("httpx", "httpx2"):  # they log every request at INFO
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.WARNING)
        log.info(
            "openai backend: model %s at %s (concurrency %d, timeout %.0fs, %d retries)",
            model, self.endpoint, concurrency, self.request_timeout, max_retries,
        )  # fmt: skip
        if self.reasoning:
            log.warning(
                "%s is a reasoning model: sending max_completion_tokens (it includes the reasoning) "
                "and no temperature (it takes only its default, so the requested one is not applied)",
                model,
            )

    # -- public API ------------------------------------------------------------------

    def generate(self, requests: list[GenRequest], progress: ProgressFn | None = None) -> list[GenResult]:
        """One result per request, in order; failures come back with status api_error."""
        runs = self.generate_conversations(requests, lambda i, r: None, progress)
        return [r[0] for r in runs]

    def generate_conversations(
        self,
        first: list[GenRequest],
        follow_up: FollowUp,
        progress: ProgressFn | None = None,
    ) -> list[list[GenResult]]:
        """Run len(first) independent conversations, each advancing on its own.

        After each result of conversation i, `follow_up(i, result)` returns its next
        request (e.g. turn 2 carrying that turn-1 answer) or None when it is done, so a
        conversation's next turn is sent as soon as its own previous turn returns and no
        wave waits on the slowest request. Callbacks run one at a time on the backend's
        event-loop thread (not the caller's). Returns every result of each conversation.
        """
        if not first:
            return []
        if self._loop is None:
            self._loop = _LoopThread()
        return self._loop.run(self._run(first, follow_up, progress))

    def close(self) -> None:
        if self._loop is None:
            return
        if self._pool is not None:
            self._loop.run(self._pool.close())
            self._pool = None
        self._loop.stop()
        self._loop = None

    # -- internals -------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        """One line, bounded, with the key (or any masked echo of it) removed."""
        text = " ".join(str(text).split())
        if self._key and self._key != "EMPTY":
            text = text.replace(self._key, "***")
        text = re.sub(r"\bsk-[A-Za-z0-9_*\-]{3,}", "sk-***", text)
        return text[:300]

    def _client(self) -> Any:
        from openai import AsyncOpenAI

        # retries are ours (max_retries=0); our own deadline wraps each call too
        return AsyncOpenAI(
            api_key=self._key, base_url=self.base_url, max_retries=0, timeout=self.request_timeout
        )

    async def _run(
        self, first: list[GenRequest], follow_up: FollowUp, progress: ProgressFn | None
    ) -> list[list[GenResult]]:
        if self._pool is None:  # one bound for the backend, whoever calls it
            self._pool = _ClientPool(self._client, self.concurrency)
        pool = self._pool
        out: list[list[GenResult]] = [[] for _ in first]
        t0 = time.monotonic()
        before = Counter(self.stats)

        async def conversation(i: int) -> None:
            req: GenRequest | None = first[i]
            while req is not None:
                res = await self._request(pool, req)
                out[i].append(res)
                if progress:
                    progress(1, res.num_tokens)
                req = follow_up(i, res)

        tasks = [asyncio.ensure_future(conversation(i)) for i in range(len(first))]
        try:
            await asyncio.gather(*tasks)
        except BaseException:  # a caller's callback raised: stop the rest, then re-raise
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        done = self.stats - before
        dt = time.monotonic() - t0
        log.info(
            "%s: %d requests in %.1fs (%.1f/s), %d retries, %d failed",
            self.spec, done["requests"], dt, done["requests"] / max(dt, 1e-9),
            done["retries"], done["failed"],
        )  # fmt: skip
        return out

    async def _request(self, pool: _ClientPool, req: GenRequest) -> GenResult:
        """One request with our retry loop; never raises for an API failure. The result's
        usage covers every attempt that got a billed reply, the retried ones too."""
        self.stats["requests"] += 1
        attempt = 0
        bad_responses = 0
        spent: dict[str, int] | None = None
        while True:
            if self.fatal_error:
                return self._fail(f"not sent: {self.fatal_error}", spent)
            try:
                async with pool.slot() as client:
                    if self.fatal_error:
                        return self._fail(f"not sent: {self.fatal_error}", spent)
                    res = await self._attempt(client, req)
                self.stats["ok"] += 1
                res.usage = add_usage(spent, res.usage)
                return res
            except _Failed as e:
                msg = self._scrub(str(e))
                if e.fatal and not self.fatal_error:
                    self.fatal_error = f"{self.spec} at {self.endpoint}: {msg}"
                    log.error("%s; aborting the remaining requests", self.fatal_error)
                return self._fail(msg, add_usage(spent, e.usage))
            except _Retryable as e:
                msg = self._scrub(str(e))
                spent = add_usage(spent, e.usage)
                bad_responses += e.bad_response
                bad_limit = min(self.max_retries, MAX_BAD_RESPONSE_RETRIES)
                if attempt >= self.max_retries or bad_responses > bad_limit:
                    tries = attempt + 1
                    return self._fail(f"{msg} (gave up after {tries} attempt{'s' * (tries > 1)})", spent)
                delay = self._delay(attempt, e.retry_after)
                if delay is None:
                    return self._fail(f"{msg} (Retry-After {e.retry_after:.0f}s is too long to wait)", spent)
                attempt += 1
                self.stats["retries"] += 1
                self.stats[f"retry:{msg.split(':')[0]}"] += 1
                log.debug("%s: %s; retry %d in %.2fs", req.key or "request", msg, attempt, delay)
                await asyncio.sleep(delay)
            except Exception as e:  # anything unforeseen fails this item, not the run
                msg = self._scrub(f"unexpected {type(e).__name__}: {e}")
                log.warning("%s: %s", req.key or "request", msg)
                return self._fail(msg, spent)

    def _limits(self, req: GenRequest) -> dict[str, Any]:
        """The length limit and temperature as this model takes them."""
        if self.reasoning:  # the limit covers reasoning tokens too; temperature: the model's own
            return {"max_completion_tokens": req.params.max_new_tokens}
        return {"temperature": req.params.temperature, "max_tokens": req.params.max_new_tokens}

    def _switch_to_reasoning(self, detail: str) -> None:
        if not self.reasoning:  # a deployment name that hides a reasoning model (Azure, routers)
            self.reasoning = True
            log.warning(
                "%s: %s; sending max_completion_tokens and no temperature from now on", self.spec, detail
            )

    def _fail(self, error: str, usage: dict[str, int] | None = None) -> GenResult:
        self.stats["failed"] += 1
        return GenResult.failure(error, API_ERROR, usage=usage)

    def _delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Retry-After if the server gave one, else full jitter: U(0, min(cap, base * 2^n))."""
        if retry_after is not None:
            if retry_after > self.retry_after_max:
                return None
            return retry_after
        return random.uniform(0.0, min(self.backoff_max, self.backoff_base * (2.0**attempt)))

    def _messages(self, req: GenRequest) -> list[Message]:
        msgs = list(req.messages)
        if self.system_prompt and not any(m["role"] == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": self.system_prompt})
        return msgs

    def _body(self, req: GenRequest) -> dict[str, Any]:
        """The chat-completions request body (also what a Batch API line carries)."""
        body: dict[str, Any] = {"model": self.model, "messages": self._messages(req), "n": 1}
        body.update(self._limits(req))
        if req.params.seed is not None:
            body["seed"] = req.params.seed
        body.update(self.extra_body)
        return body

    async def _attempt(self, client: Any, req: GenRequest) -> GenResult:
        import openai
        from openai.types.chat import ChatCompletion

        body = self._body(req)
        try:
            # the client's documented raw `post`: the same request as chat.completions.create
            # minus its generic TypedDict transform of the body (~1 ms of CPU per request)
            call = client.post("/chat/completions", body=body, cast_to=ChatCompletion)
            resp = await asyncio.wait_for(call, self.request_timeout + 1.0)
        except openai.APIStatusError as e:
            code = e.status_code
            retry_after = parse_retry_after(e.response.headers.get("retry-after"))
            detail = f"HTTP {code}: {_error_message(e)}"
            if getattr(e, "code", None) == "insufficient_quota":  # a 429 no wait will fix
                raise _Failed(detail + " (the account is out of quota)", fatal=True) from None
            if code in RETRY_STATUS or code >= 500:
                raise _Retryable(detail, retry_after) from None
            if code == 400 and _wants_reasoning_params(e):  # sent before the switch: ask again at once
                self._switch_to_reasoning(detail)
                raise _Retryable(detail, retry_after=0.0) from None
            if code == 401:
                detail += " (invalid API key? check OPENAI_API_KEY)"
            raise _Failed(detail, fatal=code in FATAL_STATUS) from None
        except (openai.APITimeoutError, asyncio.TimeoutError, TimeoutError):
            raise _Retryable(f"timeout: no reply within {self.request_timeout:g}s") from None
        except openai.APIConnectionError as e:
            raise _Retryable(f"connection error: {e.__cause__ or e}") from None
        except (openai.APIResponseValidationError, ValueError) as e:
            raise _Retryable(f"malformed response: {type(e).__name__}: {e}", bad_response=True) from None
        return _to_result(resp)


def _check_extra_body(extra: dict[str, Any] | None) -> dict[str, Any]:
    """The request's own fields stay ours: a model or messages in --extra-body is an error."""
    own = sorted({"model", "messages", "n"} & (extra or {}).keys())
    if own:
        raise JobError(f"--extra-body: {', '.join(own)} is set by the backend; drop it from the object")
    return dict(extra or {})
