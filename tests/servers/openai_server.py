"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks.

It speaks `POST /v1/chat/completions`, `GET /v1/models` and `GET /health` over real
HTTP (uvicorn in a background thread, one asyncio loop, so thousands of slow requests
cost nothing), and can misbehave on purpose.

    with OpenAIServer(reply=rules_reply({"Rating": "[[8]]"}), latency=0.2, jitter=0.05) as srv:
        client = OpenAI(base_url=srv.url, api_key="sk-test")
        ...
        srv.requests[0].body["messages"], srv.max_in_flight

Replies: `reply(body) -> str | Reply`; helpers `echo_reply` (default), `rules_reply`,
`scripted_reply`. A reply longer than `max_tokens` words is cut and finishes "length".

Faults (the kinds are FAULTS' keys):
- `faults=[...]`: a script consumed one entry per chat request in arrival order
  (None = behave); or a callable `faults(body, n) -> kind | None` (n = 0-based count).
- `fault_rates={"429": 0.1, "timeout": 0.01}`: random faults, seeded by `seed`.
- `api_key="sk-..."`: requests with another bearer token get 401.
- `hold_after=N` (or `hold(after=N)`): answer the first N chat requests, hold every later
  one until `release()`; `held` counts those waiting. Signal tests use it so the run under
  test can neither finish nor store more before the signal (no timing involved).
- `reasoning_models=[ids]`: those served ids answer `max_tokens` or a temperature other than 1
  with OpenAI's 400 (unsupported_parameter / unsupported_value), as o1/o3/o4/gpt-5 do.
A fault entry is a kind ("429") or a `Fault(kind, retry_after=...)`.

Every chat request is recorded (`requests`: headers, JSON body, fault, reply text,
times); `in_flight` / `max_in_flight` count concurrent chat requests. `stop()` (or the
context manager / pytest fixture) ends hanging "timeout" requests and the thread.
Run `python tests/servers/openai_server.py --port 8000 --latency 0.2` for a standalone one.

The Batch API (`/v1/files`, `/v1/batches`; knobs `batch_polls`, `batch_expire_after`) is in
tests/servers/batch_api.py: its lines go through the same replies and faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

if __name__ == "__main__" and not __package__:  # run as a script (benchmarks/): tests/ on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from servers.batch_api import BatchAPI  # noqa: E402
from servers.replies import (  # noqa: E402
    FAULTS,
    Fault,
    FaultFn,
    Reply,
    ReplyFn,
    _error,
    _json,
    _reasoning_refusal,
    echo_reply,
    last_user,
    rules_reply,
    scripted_reply,
)

__all__ = [
    "FAULTS",
    "Fault",
    "OpenAIServer",
    "Recorded",
    "Reply",
    "echo_reply",
    "last_user",
    "rules_reply",
    "scripted_reply",
]


@dataclass
class Recorded:
    """One chat request as the server saw it."""

    n: int
    headers: dict[str, str]
    body: Any
    fault: str | None = None
    reply: str | None = None
    start: float = 0.0
    end: float | None = None
    held: bool = False
    batch_id: str | None = None
    """Set for a line of a Batch API batch (None: a direct chat request)."""

    @property
    def messages(self) -> list[dict[str, str]]:
        return list(self.body.get("messages", [])) if isinstance(self.body, dict) else []

    @property
    def last_user(self) -> str:
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")


class OpenAIServer:
    def __init__(
        self,
        reply: ReplyFn = echo_reply,
        *,
        latency: float = 0.0,
        jitter: float = 0.0,
        faults: Sequence[str | Fault | None] | FaultFn | None = None,
        fault_rates: dict[str, float] | None = None,
        api_key: str | None = None,
        models: Sequence[str] = ("test-model",),
        hang_seconds: float = 60.0,
        seed: int = 0,
        hold_after: int | None = None,
        reasoning_models: Sequence[str] = (),
        batch_polls: int = 0,
        batch_expire_after: int | None = None,
    ):
        self.reply = reply
        self.latency = latency
        self.jitter = jitter
        self.faults = faults
        self.fault_rates = dict(fault_rates or {})
        for kind in self.fault_rates:
            Fault(kind)
        self.api_key = api_key
        self.models = list(models)
        self.hang_seconds = hang_seconds
        self.rng = random.Random(seed)
        self.hold_after = hold_after
        self.reasoning_models = set(reasoning_models)
        """Served ids that refuse chat-model parameters as OpenAI's o-series/gpt-5 do."""
        self.batch_polls = batch_polls
        self.batch_expire_after = batch_expire_after
        self.batch_api = BatchAPI(self)
        self.requests: list[Recorded] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL for OpenAI clients: http://127.0.0.1:PORT/v1"""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, port: int = 0) -> OpenAIServer:
        # proto IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only then (else
        # every reply waits ~40 ms on Nagle + delayed ACK between its head and its body)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app, interface="asgi3", log_level="warning", access_log=False, lifespan="off", ws="none",
            timeout_graceful_shutdown=2, backlog=4096, timeout_keep_alive=30,
        )  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test OpenAI server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        self._server = None

    def __enter__(self) -> OpenAIServer:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inspection -----------------------------------------------------------------

    @property
    def chat_requests(self) -> list[Recorded]:
        return list(self.requests)

    @property
    def held(self) -> int:
        """Chat requests waiting for release()."""
        return sum(r.held for r in list(self.requests))

    def hold(self, after: int) -> None:
        """Hold chat requests from the `after`-th on (0-based, in arrival order, all time)."""
        self.hold_after = after

    def release(self) -> None:
        """Answer the held requests, and hold no more."""
        self.hold_after = None
        for r in list(self.requests):
            r.held = False

    def reset(self) -> None:
        self.requests.clear()
        self.max_in_flight = 0

    # -- behaviour ------------------------------------------------------------------

    def _pick_fault(self, body: Any, n: int) -> Fault | None:
        entry: str | Fault | None = None
        if callable(self.faults):
            entry = self.faults(body, n)
        elif self.faults is not None and n < len(self.faults):
            entry = self.faults[n]
        if entry is None:
            for kind, rate in self.fault_rates.items():
                if self.rng.random() < rate:
                    entry = kind
                    break
        if entry is None:
            return None
        return entry if isinstance(entry, Fault) else Fault(entry)

    async def _sleep(self, seconds: float) -> None:
        """Sleep that ends early when the server stops."""
        if seconds <= 0:
            return
        assert self._stopping is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _chat(self, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, str], bytes]:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        rec = Recorded(n=len(self.requests), headers=headers, body=body, start=time.monotonic())
        self.requests.append(rec)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self._hold(rec)
            return await self._chat_reply(rec)
        finally:
            self.in_flight -= 1
            rec.end = time.monotonic()

    async def batch_line(self, headers: dict[str, str], body: Any, batch_id: str) -> tuple[int, Any]:
        """One Batch API line through the chat machinery: (status code, JSON body)."""
        rec = Recorded(
            n=len(self.requests), headers=headers, body=body, start=time.monotonic(), batch_id=batch_id
        )
        self.requests.append(rec)
        status, _, payload = await self._chat_reply(rec)
        rec.end = time.monotonic()
        try:
            return status, json.loads(payload)
        except ValueError:  # a "truncated"/"html" fault: the batch reports a server error
            return 500, {"error": {"message": "The server had an error", "type": "server_error"}}

    async def _hold(self, rec: Recorded) -> None:
        # polled, so hold()/release() work from any thread without touching the loop
        assert self._stopping is not None
        rec.held = self.hold_after is not None and rec.n >= self.hold_after
        while rec.held and not self._stopping.is_set():
            await asyncio.sleep(0.01)
            rec.held = self.hold_after is not None and rec.n >= self.hold_after
        rec.held = False

    def _unauthorized(self, rec: Recorded) -> tuple[int, dict[str, str], bytes]:
        # like api.openai.com, echo the key back: clients must not put it in logs/errors
        token = rec.headers.get("authorization", "").removeprefix("Bearer ")
        return _error(401, f"Incorrect API key provided: {token}.", "invalid_request_error")

    async def _chat_reply(self, rec: Recorded) -> tuple[int, dict[str, str], bytes]:
        body = rec.body
        if self.api_key is not None and rec.headers.get("authorization") != f"Bearer {self.api_key}":
            rec.fault = "401"
            return self._unauthorized(rec)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "body must be a JSON object with messages", "invalid_request_error")
        fault = self._pick_fault(body, rec.n)
        rec.fault = fault.kind if fault else None
        delay = self.latency + (self.rng.uniform(-self.jitter, self.jitter) if self.jitter else 0.0)
        await self._sleep(delay)
        extra = {"retry-after": fault.retry_after} if fault and fault.retry_after is not None else {}
        kind = fault.kind if fault else None
        if kind == "timeout":
            await self._sleep(self.hang_seconds)
        elif kind == "401":
            return self._unauthorized(rec)
        elif kind == "quota":
            body_ = {"error": {"message": "You exceeded your current quota.", "type": "insufficient_quota",
                               "param": None, "code": "insufficient_quota"}}  # fmt: skip
            return _json(429, body_, extra)
        elif kind in ("429", "500", "502", "503", "400", "403", "404", "422"):
            status = int(kind)
            etype = {429: "rate_limit_exceeded", 401: "invalid_request_error"}.get(status, "server_error")
            return _error(status, f"injected fault {kind}", etype, extra)
        elif kind == "truncated":
            return (
                200,
                {"content-type": "application/json"},
                b'{"id": "chatcmpl-x", "object": "chat.completion", "choi',
            )
        elif kind == "html":
            return 200, {"content-type": "text/html"}, b"<html><body>502 Bad Gateway</body></html>"
        model = body.get("model")
        if self.models and model not in self.models:
            return _error(404, f"The model `{model}` does not exist.", "invalid_request_error")
        if model in self.reasoning_models and (refusal := _reasoning_refusal(body)):
            return refusal
        out = self.reply(body)
        r = out if isinstance(out, Reply) else Reply(out)
        words = r.text.split(" ")
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        text, finish = r.text, r.finish_reason
        if isinstance(limit, int) and len(words) > limit:
            text, finish = " ".join(words[:limit]), "length"
        content: str | None = text
        if kind == "content_filter":
            finish = "content_filter"
        elif kind == "content_filter_empty":
            content, finish = "", "content_filter"
        elif kind == "null_content":
            content = None
        rec.reply = content
        tokens = r.completion_tokens if r.completion_tokens is not None else len(text.split())
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        choices = [] if kind == "empty_choices" else [
            {"index": 0, "message": {"role": "assistant", "content": content,
                                     **({"reasoning_content": r.reasoning_content} if r.reasoning_content else {})},
             "finish_reason": finish, "logprobs": None}
        ]  # fmt: skip
        return _json(200, {
            "id": f"chatcmpl-{rec.n}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                      "total_tokens": prompt_tokens + tokens},
        })  # fmt: skip

    # -- ASGI -----------------------------------------------------------------------

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if self._stopping is None:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
        raw = b""
        while True:
            msg = await receive()
            raw += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        method, path = scope["method"], scope["path"].rstrip("/")
        if method == "POST" and path in ("/v1/chat/completions", "/chat/completions"):
            status, hdrs, payload = await self._chat(headers, raw)
        elif method == "GET" and path in ("/v1/models", "/models"):
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "test"} for m in self.models]
            status, hdrs, payload = _json(200, {"object": "list", "data": data})
        elif path.startswith(("/v1/files", "/v1/batches")):
            status, hdrs, payload = await self.batch_api.handle(method, path, headers, raw)
        elif method == "GET" and path == "/health":
            status, hdrs, payload = 200, {"content-type": "text/plain"}, b"ok"
        else:
            status, hdrs, payload = _error(404, f"no route {method} {path}", "invalid_request_error")
        hdrs["content-length"] = str(len(payload))  # not chunked: one write less per reply
        await send({
            "type": "http.response.start", "status": status,
            "headers": [(k.encode(), v.encode()) for k, v in hdrs.items()],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": payload})


if __name__ == "__main__":
    from servers.standalone import main

    main()
