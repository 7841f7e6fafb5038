"""Hermetic mock backend: no network, no weights; drives tests and smoke runs.

Specs:
- mock/echo               the last user message, prefixed "echo: "
- mock/fixed:TEXT         always TEXT ("mock/fixed:Rating: [[7]]")
- mock/script:FILE        replies taken in order from a JSON list (or JSONL of strings) in FILE,
                          cycling; an entry {"error": "..."} yields an api_error result
- mock/digest             a short sha256 of the whole conversation (tests that turn 2 sees turn 1)
- mock/fail               every request fails with status api_error
- mock/judge              a deterministic judge with varied verdicts: "Rating: [[k]]" (k = 1..10
                          from a hash of the prompt), or [[A]]/[[B]]/[[C]] for pairwise prompts;
                          smoke runs and report tests get spread-out scores without an API
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from job.backends.base import API_ERROR, BatchBackend, GenRequest, GenResult, ProgressFn
from job.errors import JobError


class MockBackend(BatchBackend):
    def __init__(self, spec: str, model: str, **_options: Any):
        self.spec = spec
        self.behaviour, _sep, self.arg = model.partition(":")
        self.calls: list[GenRequest] = []
        self._script: list[Any] = []
        if self.behaviour == "script":
            self._script = _load_script(Path(self.arg))
        elif self.behaviour not in ("echo", "fixed", "digest", "fail", "judge"):
            raise JobError(
                f"unknown mock behaviour {self.behaviour!r}; use echo, fixed:TEXT, script:FILE, digest, judge or fail"
            )

    def _reply(self, req: GenRequest) -> GenResult:
        if self.behaviour == "fail":
            return GenResult.failure("mock/fail always fails", API_ERROR)
        if self.behaviour == "fixed":
            text = self.arg
        elif self.behaviour == "script":
            item: Any = self._script[(len(self.calls) - 1) % len(self._script)]
            if isinstance(item, dict):
                return GenResult.failure(str(item.get("error", "scripted error")), API_ERROR)
            text = str(item)
        elif self.behaviour == "digest":
            text = conversation_digest(req.messages)
        elif self.behaviour == "judge":
            text = mock_verdict(req.messages)
        else:
            last_user = next((m["content"] for m in reversed(req.messages) if m["role"] == "user"), "")
            text = f"echo: {last_user}"
        # token count: whitespace words, enough for progress and manifests
        return GenResult(text, finish_reason="stop", num_tokens=len(text.split()))

    def generate(self, requests: list[GenRequest], progress: ProgressFn | None = None) -> list[GenResult]:
        out = []
        for req in requests:
            self.calls.append(req)
            res = self._reply(req)
            out.append(res)
            if progress:
                progress(1, res.num_tokens)
        return out

    def close(self) -> None:
        pass


def _load_script(path: Path) -> list[Any]:
    try:
        text = path.read_text("utf-8")
    except OSError as e:
        raise JobError(f"mock script {path}: {e.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise JobError(f"mock script {path}: not a JSON list or JSONL ({e.msg})") from None
    if not isinstance(data, list) or not data:
        raise JobError(f"mock script {path}: expected a non-empty JSON list of replies")
    return data


def conversation_digest(messages: list[dict[str, str]]) -> str:
    """What mock/digest answers: a hash of every message, so tests can check the history sent."""
    blob = json.dumps(messages, ensure_ascii=False, sort_keys=True).encode("utf-8")
    return "digest " + hashlib.sha256(blob).hexdigest()[:16]


def mock_verdict(messages: list[dict[str, str]]) -> str:
    """What mock/judge answers: a verdict that depends on the whole prompt (so on the answer)."""
    h = int(hashlib.sha256(json.dumps(messages, ensure_ascii=False).encode("utf-8")).hexdigest()[:8], 16)
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    if "[[A]]" in system:
        return f"Mock comparison. [[{'ABC'[h % 3]}]]"
    return f"Mock explanation of the rating. Rating: [[{1 + h % 10}]]"
