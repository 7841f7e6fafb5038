"""Conversation-at-a-time generation for backends that can stream (API backends).

Waves send turn 2 only when every turn 1 of the shard has returned, so one slow
request stalls all the others. A backend with `generate_conversations` instead sends
each conversation's turn 2 as soon as its own turn 1 returns (issue 6).

Greedy dedupe (off by default here: an API's temperature-0 replies vary, so copying one
to every choice would not be exact; `--dedupe-greedy` forces it) keeps the waves'
meaning: greedy conversations with the same turns, temperature and max tokens send
identical requests at every turn (turn 2 carries the same turn-1 answer), so one of
them is generated and its answers copied to the rest, with tokens counted once. Unlike waves this does not merge two *different* questions
that merely share their first turn; that only costs one extra request for such a pair.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from job.backends.base import GenRequest, GenResult

if TYPE_CHECKING:
    from job.generate import Conversation

log = logging.getLogger(__name__)


def _request(c: Conversation, turn: int) -> GenRequest:
    key = f"{c.question.question_id}/{c.choice}/t{turn + 1}"
    return GenRequest(c.messages_for_turn(turn), c.params, key=key)


def run_conversations(
    backend: Any,
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
            c.answers.append(res.text)
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
