"""The batch-first backend protocol shared by generation and judging."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

Message = dict[str, str]
"""{"role": "system" | "user" | "assistant", "content": str}"""

GREEDY_BELOW = 1e-4
"""FastChat decodes greedily when temperature < 1e-4."""


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    max_new_tokens: int = 1024
    seed: int | None = None

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


@dataclass
class GenResult:
    text: str
    status: str = "ok"
    """ok | api_error | error. A failed request has status != ok and text ''."""
    error: str | None = None
    finish_reason: str | None = None
    """stop | length | content_filter | None"""
    num_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


ProgressFn = Callable[[int, int], None]
"""progress(requests_done, tokens_generated) increments."""


class Backend(Protocol):
    spec: str

    def generate(self, requests: list[GenRequest], progress: ProgressFn | None = None) -> list[GenResult]:
        """One result per request, in order. Must not raise for a single failed request."""
        ...

    def close(self) -> None: ...
