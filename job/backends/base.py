"""The batch-first backend protocol shared by generation and judging."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from job.errors import JobError

Message = dict[str, str]
"""{"role": "system" | "user" | "assistant", "content": str}"""

GREEDY_BELOW = 1e-4
"""FastChat decodes greedily when temperature < 1e-4."""

OK = "ok"
API_ERROR = "api_error"
"""A remote endpoint failed this request (openai, mock/fail)."""
ENGINE_ERROR = "error"
"""A local engine (hf, vllm) failed this one request: the chat template rejected the
conversation, the prompt does not fit the context, an OOM on one row, vLLM finish_reason
"error"/"abort", or no text at all."""
FAILED_STATUSES = (API_ERROR, ENGINE_ERROR)
STATUSES = (OK, *FAILED_STATUSES)


def check_sampling(
    *,
    temperature: float,
    max_new_tokens: int,
    seed: int | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    where: str = "sampling",
    hint: str = "",
) -> None:
    """One rule set for every backend: what vLLM's SamplingParams._verify_args accepts
    (the strictest engine we drive), so a bad value fails before any model is loaded
    instead of crashing one engine mid-run or being silently clamped by another."""
    problem = _sampling_problem(temperature, max_new_tokens, seed, top_p, top_k, min_p, repetition_penalty)
    if problem:
        raise JobError(f"{where}: {problem}" + (f" ({hint})" if hint else ""))


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _sampling_problem(
    temperature: Any, max_new_tokens: Any, seed: Any, top_p: Any, top_k: Any, min_p: Any, rep: Any
) -> str | None:
    if not _is_num(temperature) or not 0.0 <= temperature <= 2.0:
        return f"temperature must be a number in [0, 2] (0 = greedy), got {temperature!r}"
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        return f"max new tokens must be an integer >= 1, got {max_new_tokens!r}"
    if seed is not None and not _is_int(seed):
        return f"seed must be an integer, got {seed!r}"
    if top_p is not None and (not _is_num(top_p) or not 0.0 < top_p <= 1.0):
        return f"top_p must be in (0, 1], got {top_p!r}"
    if top_k is not None and (not _is_int(top_k) or top_k < -1):
        return f"top_k must be an integer, 0 or -1 (off) or >= 1, got {top_k!r}"
    if min_p is not None and (not _is_num(min_p) or not 0.0 <= min_p <= 1.0):
        return f"min_p must be in [0, 1], got {min_p!r}"
    if rep is not None and (not _is_num(rep) or rep <= 0.0):
        return f"repetition_penalty must be a number > 0, got {rep!r}"
    return None


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    max_new_tokens: int = 1024
    seed: int | None = None

    def __post_init__(self) -> None:
        check_sampling(temperature=self.temperature, max_new_tokens=self.max_new_tokens, seed=self.seed)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GenRequest:
    messages: list[Message]
    params: SamplingParams = field(default_factory=SamplingParams)
    key: str = ""
    """Caller's id for logs and errors; backends do not interpret it."""


ANSWER_FINISHES = ("stop", "length")
"""Finish reasons of a completed generation: with them even an empty text is an answer."""


@dataclass
class GenResult:
    """One request's outcome. Never an ok result from a failed request: __post_init__ turns
    a finish_reason "error"/"abort", and an empty (or None) completion without a finish
    reason of a completed generation (ANSWER_FINISHES), into a failure, whichever backend
    built it. An empty text that stopped (EOS at once) or hit the length limit is an answer,
    as in FastChat: it is judged (usually a 1), never dropped from the means."""

    text: str
    status: str = OK
    """ok | api_error | error (STATUSES). A failed request has status != ok and text ''."""
    error: str | None = None
    finish_reason: str | None = None
    """stop | length | content_filter | None"""
    num_tokens: int = 0
    usage: dict[str, int] | None = None
    """{"prompt_tokens", "completion_tokens"} as the API reported them; None when it reports none."""
    reasoning: str | None = None
    """The API's separate reasoning text (`reasoning_content` / `reasoning`); `text` is then the answer."""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"GenResult status {self.status!r} is not one of {STATUSES}")
        if self.status == OK:
            if self.finish_reason in ("error", "abort"):
                self.status = ENGINE_ERROR
                self.error = f"the engine finished the request with finish_reason {self.finish_reason}"
            elif not (self.text or "").strip() and self.finish_reason not in ANSWER_FINISHES:
                self.status = ENGINE_ERROR
                self.error = (
                    f"empty completion (finish_reason {self.finish_reason}, {self.num_tokens} tokens)"
                )
        if self.status != OK:
            self.text = ""
            self.error = self.error or self.status
        self.text = self.text or ""

    @classmethod
    def failure(
        cls,
        error: str,
        status: str = ENGINE_ERROR,
        finish_reason: str | None = None,
        usage: dict[str, int] | None = None,
    ) -> GenResult:
        """A failed request; `usage`: what its replies that were of no use still cost."""
        return cls("", status=status, error=error[:300], finish_reason=finish_reason, usage=usage)

    @property
    def ok(self) -> bool:
        return self.status == OK


ProgressFn = Callable[[int, int], None]
"""progress(requests_done, tokens_generated) increments."""


FollowUp = Callable[[int, GenResult], "GenRequest | None"]
"""follow_up(conversation index, its latest result) -> its next request, or None when done."""


class Backend(Protocol):
    """What every backend is; callers read capabilities from here, never with hasattr."""

    spec: str
    streams_conversations: bool
    """True (API backends): generate_conversations sends each conversation's next turn as soon
    as its own previous turn returns. False: callers batch with generate (turn waves)."""
    fatal_error: str | None
    """Set when every further request would fail the same way (401/403/404, a bad endpoint):
    callers commit nothing and stop. Always None for backends without such a failure."""

    def generate(self, requests: list[GenRequest], progress: ProgressFn | None = None) -> list[GenResult]:
        """One result per request, in order. Must not raise for a single failed request;
        raises job.errors.BackendDead when the engine can take no more requests."""
        ...

    def generate_conversations(
        self, first: list[GenRequest], follow_up: FollowUp, progress: ProgressFn | None = None
    ) -> list[list[GenResult]]:
        """Only when streams_conversations: len(first) conversations, each advancing on its own."""
        ...

    def close(self) -> None: ...


class BatchBackend:
    """The capabilities of a backend that only batches (hf, vllm, mock): no streaming, no
    fatal error. Subclassing it is how such a backend declares them."""

    spec: str
    streams_conversations = False
    fatal_error: str | None = None

    def generate_conversations(
        self, first: list[GenRequest], follow_up: FollowUp, progress: ProgressFn | None = None
    ) -> list[list[GenResult]]:
        raise NotImplementedError(f"{self.spec} batches only (streams_conversations is False)")
