"""Judge replies turned into records and stored by finished match (--parse-retries asks a
game again from here); the run's counts, calls and token usage."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from job.backends.base import Backend, GenResult
from job.errors import JobError
from job.judge import GameResult, Match, game_key, game_result, make_record
from job.judge.plan import JudgeConfig, Plan
from job.judge.results import Usage, retried, sum_usage
from job.judge.store import JudgmentStore
from job.signals import critical


class Recorder:
    """Turns judge replies into records and stores finished matches in groups.

    Replies may arrive in any order (streaming API backends); a match is stored once all
    its games are in. Groups are flushed every --batch-size records or FLUSH_SECONDS, so
    an interrupted run loses at most one group, which a re-run sends again.
    """

    FLUSH_SECONDS = 5.0

    def __init__(self, cfg: JudgeConfig, plan: Plan, judge: str, store: JudgmentStore, backend: Backend):
        self.cfg, self.plan, self.judge, self.store, self.backend = cfg, plan, judge, store, backend
        self.counts: Counter[str] = Counter()
        self.games: dict[int, dict[int, GameResult]] = {}
        self.pending: list[dict[str, Any]] = []
        self.last_flush = time.monotonic()
        self.replies = 0
        self.stored = 0
        self.first_error: str | None = None
        self.retrying: dict[tuple[int, int], GameResult] = {}
        """games whose reply had no rating, asked again (--parse-retries): their last result"""
        self.retries = 0
        self.usage: Usage | None = None
        """the API's token counts over this run's calls"""
        self.stop_early = True
        """stop on a batch worth of rows that all failed; False (--openai-batch): the results
        are paid for, so all of them are stored before the run stops"""

    def add(self, m: Match, game: int, user: str, r: GenResult) -> bool:
        """Record one reply; True when the game is to be asked again (no rating, retries left)."""
        self.replies += 1
        self.usage = sum_usage([self.usage, r.usage])
        result = game_result(m, user, r.text, r.status, r.error)
        result.usage = r.usage
        earlier = self.retrying.pop((id(m), game), None)
        result = retried(earlier, result) if earlier else result
        if result.status == "parse_error" and len(result.attempts or []) < self.cfg.parse_retries:
            self.retrying[(id(m), game)] = result
            self.retries += 1
            return True
        got = self.games.setdefault(id(m), {})
        got[game] = result
        if result.status != "ok" and self.first_error is None:
            self.first_error = result.error
        if len(got) + sum(game_key(self.judge, m, g) in self.plan.cached for g in m.games) < len(m.games):
            return False
        del self.games[id(m)]
        games = {g: self.plan.cached.get(game_key(self.judge, m, g)) or got[g] for g in m.games}
        rec = make_record(self.judge, m, games, self.plan.inputs[m])
        self.counts[rec["status"]] += 1
        self.pending.append(rec)
        if (
            len(self.pending) >= self.cfg.batch_size
            or time.monotonic() - self.last_flush > self.FLUSH_SECONDS
        ):
            self.flush()
        return False

    def none_worked(self) -> bool:
        """No call got a reply at all (a reply without a rating is still a reply)."""
        return self.counts["ok"] + self.counts["parse_error"] == 0

    def all_failed(self, hint: str = "") -> JobError:
        """The one-line error of a run whose every judgment failed: count, first error, where."""
        summary = ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items()))
        return JobError(
            f"judge {self.cfg.judge_model}: all {self.counts.total()} judgments of this run failed ({summary}); "
            f"first error: {self.first_error}; stored with their status in {self.store.uri}{hint}"
        )

    def flush(self, final: bool = False) -> None:
        # "all failed" is decided at the end or on a batch worth of rows: one early failure
        # (a 400, retries exhausted) must not stop a run whose slow successes are on the way
        decided = final or (self.stop_early and self.counts.total() >= self.cfg.batch_size)
        stop = bool(self.pending) and self.none_worked() and decided
        with critical():  # a SIGTERM waits: stored and no longer pending, together
            self.store.append(self.pending)
            self.stored += len(self.pending)
            self.pending = []
        self.last_flush = time.monotonic()
        if stop:
            # every call failed and none ever worked (bad key, wrong URL, a template the
            # judge model rejects): stop instead of failing the same way on every call
            raise self.all_failed("; check --judge-model (and --base-url, OPENAI_API_KEY for API judges)")
        fatal = self.backend.fatal_error
        if fatal:
            # 401/403/404: every further call would fail the same way; stored work is kept
            raise JobError(f"judge {self.cfg.judge_model} stopped: {fatal}")

    def save_pending(self) -> None:
        """Interrupted: store the finished records not yet written (unless no call ever
        worked), so the judgments already paid for survive a preemption."""
        if self.pending and self.counts["ok"] + self.counts["parse_error"]:
            with critical():
                self.store.append(self.pending)
                self.stored += len(self.pending)
                self.pending = []
