"""The wave scheduler: every turn of every conversation, in batched waves (one backend call
per turn index) or, for a backend that streams conversations (API backends), each
conversation's turn 2 as soon as its own turn 1 returns (issue 6).

Waves send turn 2 only when every turn 1 of the shard has returned, so one slow
request stalls all the others; streaming does not.

Greedy dedupe (off by default here: an API's temperature-0 replies vary, so copying one
to every choice would not be exact; `--dedupe-greedy` forces it) keeps the waves'
meaning: greedy conversations with the same turns, temperature and max tokens send
identical requests at every turn (turn 2 carries the same turn-1 answer), so one of
them is generated and its answers copied to the rest, with tokens counted once. Unlike
waves this does not merge two *different* questions that merely share their first turn; that only costs one extra request for such a pair.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tqdm import tqdm

from job.backends.base import Backend, GenRequest, GenResult, Message, SamplingParams
from job.errors import JobError
from job.records import Question
from job.records.reasoning import DEFAULT_RE, Turn, split_turn

log = logging.getLogger(__name__)


@dataclass
class Conversation:
    question: Question
    choice: int
    params: SamplingParams
    answers: list[str] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)
    num_tokens: int = 0
    status: str = "ok"
    error: str | None = None
    reasoning_pattern: re.Pattern[str] | None = DEFAULT_RE
    """--reasoning-pattern: what split_turn removes from a turn (None: nothing)."""
    splits: list[Turn] = field(default_factory=list)
    """Each answered turn's raw text, answer and reasoning (job.records.reasoning)."""

    def add_answer(self, res: GenResult) -> None:
        """Turn 2's history (and the judge) get the answer without its reasoning."""
        turn = split_turn(res.text, self.reasoning_pattern, res.reasoning)
        self.splits.append(turn)
        self.answers.append(turn.answer)

    def messages_for_turn(self, turn: int) -> list[Message]:
        msgs: list[Message] = []
        for t in range(turn):
            msgs.append({"role": "user", "content": self.question.turns[t]})
            msgs.append({"role": "assistant", "content": self.answers[t]})
        msgs.append({"role": "user", "content": self.question.turns[turn]})
        return msgs


class Progress:
    """tqdm over conversation turns with a tokens/s postfix; calm output when not a TTY."""

    def __init__(self, total: int, desc: str):
        tty = sys.stderr.isatty()
        self.bar = tqdm(
            total=total, desc=desc, unit="turn", mininterval=0.5 if tty else 10.0, file=sys.stderr
        )
        self.tokens = 0
        self.start = time.monotonic()

    def __call__(self, done: int, tokens: int) -> None:
        self.tokens += tokens
        rate = self.tokens / max(time.monotonic() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{self.tokens} tok, {rate:.0f} tok/s", refresh=False)
        self.bar.update(done)

    def close(self) -> None:
        self.bar.close()


def run_waves(
    backend: Backend, convs: list[Conversation], dedupe_greedy: bool, progress: Callable[[int, int], None]
) -> None:
    """Generate every turn of every conversation: one backend call per turn index."""
    if backend.streams_conversations:
        # API backends: each conversation's turn 2 goes out when its own turn 1 returns
        return run_conversations(backend, convs, dedupe_greedy, progress)
    max_turns = max((len(c.question.turns) for c in convs), default=0)
    for turn in range(max_turns):
        live = [c for c in convs if c.status == "ok" and len(c.question.turns) > turn]
        if not live:
            continue
        # identical greedy requests (e.g. choices of a temperature-0 question) are generated once
        unique: dict[str, int] = {}
        slot_of: list[int] = []
        requests: list[GenRequest] = []
        for c in live:
            msgs = c.messages_for_turn(turn)
            params = c.params
            key = (
                json.dumps([msgs, params.temperature, params.max_new_tokens], ensure_ascii=False)
                if dedupe_greedy and params.greedy
                else f"#{len(requests)}-{id(c)}"
            )
            if key not in unique:
                unique[key] = len(requests)
                requests.append(
                    GenRequest(msgs, params, key=f"{c.question.question_id}/{c.choice}/t{turn + 1}")
                )
            slot_of.append(unique[key])
        t0 = time.monotonic()
        results: list[GenResult] = backend.generate(requests, progress=progress)
        if len(results) != len(requests):
            raise JobError(
                f"backend {backend.spec} returned {len(results)} results for {len(requests)} requests"
            )
        if len(live) > len(requests):
            progress(len(live) - len(requests), 0)
        tokens = sum(r.num_tokens for r in results)
        dt = time.monotonic() - t0
        log.info(
            "turn %d: %d conversations, %d requests, %d tokens in %.1fs (%.0f tok/s)",
            turn + 1,
            len(live),
            len(requests),
            tokens,
            dt,
            tokens / max(dt, 1e-9),
        )
        counted: set[int] = set()
        for c, slot in zip(live, slot_of, strict=True):
            res = results[slot]
            c.finish_reasons.append(res.finish_reason)
            if not res.ok:
                c.status, c.error = res.status, f"turn {turn + 1}: {res.error}"
                continue
            c.add_answer(res)
            # a copied greedy answer costs nothing extra; count tokens once per request
            if slot not in counted:
                counted.add(slot)
                c.num_tokens += res.num_tokens


def _request(c: Conversation, turn: int) -> GenRequest:
    key = f"{c.question.question_id}/{c.choice}/t{turn + 1}"
    return GenRequest(c.messages_for_turn(turn), c.params, key=key)


def run_conversations(
    backend: Backend,
    convs: list[Conversation],
    dedupe_greedy: bool,
    progress: Callable[[int, int], None],
) -> None:
    """Generate every turn of every conversation through backend.generate_conversations."""
    groups: dict[str, list[Conversation]] = {}
    for c in convs:
        if not c.question.turns or c.status != "ok":
            continue
        p = c.params
        key = (
            json.dumps([c.question.turns, p.temperature, p.max_new_tokens], ensure_ascii=False)
            if dedupe_greedy and p.greedy
            else f"#{id(c)}"
        )
        groups.setdefault(key, []).append(c)
    group_list = list(groups.values())
    if not group_list:
        return

    def follow_up(i: int, res: GenResult) -> GenRequest | None:
        group = group_list[i]
        lead = group[0]
        turn = len(lead.finish_reasons)
        for k, c in enumerate(group):
            c.finish_reasons.append(res.finish_reason)
            if not res.ok:
                c.status, c.error = res.status, f"turn {turn + 1}: {res.error}"
                continue
            c.add_answer(res)
            if k == 0:  # a copied greedy answer costs nothing extra
                c.num_tokens += res.num_tokens
        if len(group) > 1:
            progress(len(group) - 1, 0)
        if lead.status != "ok" or turn + 1 >= len(lead.question.turns):
            return None
        return _request(lead, turn + 1)

    t0 = time.monotonic()
    backend.generate_conversations([_request(g[0], 0) for g in group_list], follow_up, progress)
    tokens = sum(c.num_tokens for c in convs)
    dt = time.monotonic() - t0
    log.info(
        "%d conversations (%d generated, the rest greedy copies): %d tokens in %.1fs (%.0f tok/s)",
        sum(len(g) for g in group_list), len(group_list), tokens, dt, tokens / max(dt, 1e-9),
    )  # fmt: skip
