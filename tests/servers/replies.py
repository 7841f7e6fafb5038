"""Replies and faults of the test OpenAI server (tests/servers/openai_server.py re-exports
them): the fault kinds, Fault, Reply, the reply helpers echo_reply, rules_reply,
scripted_reply, and the JSON/error responses (OpenAI's error shape, its 400 for reasoning models)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

FAULTS = {
    "429": "rate limited (429), with Retry-After when Fault.retry_after is set",
    "quota": "429 with code insufficient_quota (out of credit: waiting never helps)",
    "500": "internal server error (500)",
    "502": "bad gateway (502)",
    "503": "service unavailable (503), with Retry-After when set",
    "400": "bad request (400)",
    "401": "invalid API key (401); the message echoes the key as OpenAI's does",
    "403": "permission denied (403)",
    "404": "model not found (404)",
    "422": "unprocessable entity (422)",
    "timeout": "sleep `hang_seconds` before answering (past any sane client timeout)",
    "truncated": "200 with a cut-off JSON body",
    "html": "200 with a text/html body (a proxy's error page)",
    "empty_choices": "200 with choices: []",
    "null_content": "200 with message.content null",
    "content_filter": "200, finish_reason content_filter, the reply text kept",
    "content_filter_empty": "200, finish_reason content_filter, empty content",
}


@dataclass(frozen=True)
class Fault:
    kind: str
    retry_after: str | None = None
    """Retry-After header value ("0", "2", or an HTTP date) for 429/503."""

    def __post_init__(self) -> None:
        if self.kind not in FAULTS:
            raise ValueError(f"unknown fault {self.kind!r}; known: {', '.join(FAULTS)}")


@dataclass
class Reply:
    text: str
    finish_reason: str = "stop"
    completion_tokens: int | None = None
    reasoning_content: str | None = None
    """Sent as message.reasoning_content (vLLM's reasoning parser, DeepSeek) when set."""


ReplyFn = Callable[[dict[str, Any]], "str | Reply"]
FaultFn = Callable[[dict[str, Any], int], "str | Fault | None"]


def last_user(body: dict[str, Any]) -> str:
    msgs = body.get("messages") or []
    return next((str(m.get("content")) for m in reversed(msgs) if m.get("role") == "user"), "")


def echo_reply(body: dict[str, Any]) -> str:
    """'echo: <last user message>'."""
    return f"echo: {last_user(body)}"


def rules_reply(rules: dict[str, str], default: str = "no rule matched") -> ReplyFn:
    """The value of the first regex (searched in the last user message) that matches."""
    compiled = [(re.compile(k), v) for k, v in rules.items()]

    def reply(body: dict[str, Any]) -> str:
        text = last_user(body)
        return next((v for k, v in compiled if k.search(text)), default)

    return reply


def scripted_reply(replies: Sequence[str | Reply]) -> ReplyFn:
    """Replies in arrival order, cycling."""
    lock = threading.Lock()
    count = [0]

    def reply(body: dict[str, Any]) -> str | Reply:
        with lock:
            i = count[0]
            count[0] += 1
        return replies[i % len(replies)]

    return reply


def _json(status: int, obj: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    return status, {"content-type": "application/json", **(headers or {})}, json.dumps(obj).encode()


def _error(
    status: int, message: str, etype: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    return _json(status, {"error": {"message": message, "type": etype, "param": None, "code": None}}, headers)


def _reasoning_refusal(body: dict[str, Any]) -> tuple[int, dict[str, str], bytes] | None:
    """api.openai.com's 400 for a reasoning model (o1/o3/o4/gpt-5) sent chat-model parameters."""
    bad: tuple[str, str, str] | None = None
    if "max_tokens" in body:
        msg = "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."
        bad = ("max_tokens", "unsupported_parameter", msg)
    elif body.get("temperature") not in (None, 1):
        t = body["temperature"]
        msg = f"Unsupported value: 'temperature' does not support {t} with this model. Only the default (1) value is supported."
        bad = ("temperature", "unsupported_value", msg)
    if bad is None:
        return None
    param, code, msg = bad
    return _json(
        400, {"error": {"message": msg, "type": "invalid_request_error", "param": param, "code": code}}
    )
