"""A judge run's totals: what was asked and what came back (requested = ok + parse_error +
api_error + judge_error; answer_error rows are recorded without a call), the calls made
including --parse-retries, and the API's token usage. Printed at the end and kept in the
judge manifest (`totals`, `usage_run`; `usage_total` over the rows that count)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from job.judge.estimate import cost
from job.judge.manifest import merge_rows, update_manifest
from job.judge.plan import Plan
from job.judge.results import Usage, sum_usage
from job.judge.store import JudgmentStore, current_rows
from job.storage import Storage

REQUESTED = ("ok", "parse_error", "api_error", "judge_error")
"""The statuses of a requested row (its games' first failure, else ok)."""


@dataclass
class Totals:
    counts: Counter[str] = field(default_factory=Counter)
    """rows of this run by status"""
    calls: int = 0
    """judge replies received, retries included"""
    parse_retries: int = 0
    usage: Usage | None = None
    """the API's token counts over this run's calls; None when it reported none"""

    def add(self, counts: Counter[str], calls: int, parse_retries: int, usage: Usage | None) -> None:
        self.counts.update(counts)
        self.calls += calls
        self.parse_retries += parse_retries
        self.usage = sum_usage([self.usage, usage])

    def as_dict(self) -> dict[str, int]:
        c = self.counts
        return {
            "requested": sum(c[s] for s in REQUESTED),
            **{s: c[s] for s in (*REQUESTED, "answer_error")},
            "calls": self.calls,
            "parse_retries": self.parse_retries,
        }

    def line(self, price: tuple[float, float] | None) -> str:
        """requested N = a ok + b parse_error + c api_error [+ d judge_error]; calls; usage."""
        t = self.as_dict()
        parts = [f"{t[s]} {s}" for s in REQUESTED if s != "judge_error" or t[s]]
        out = f"requested {t['requested']} = {' + '.join(parts)}"
        if t["answer_error"]:
            out += f" ({t['answer_error']} answer_error not sent)"
        out += f"; {self.calls} calls ({self.parse_retries} parse retries)"
        if self.usage:
            p, c = self.usage["prompt_tokens"], self.usage["completion_tokens"]
            out += f"; usage {p} prompt + {c} completion tokens{cost(p, c, price)}"
        return out


def finish_manifest(
    storage: Storage,
    key: str,
    manifest: dict[str, Any],
    plan: Plan,
    judge: str,
    store: JudgmentStore,
    t: Totals,
) -> None:
    """The manifest once the run is over, merged again with the stored one (another run may
    have written it since): its totals, and the usage summed over the rows that count
    (reused rows included: what the judgments in the report cost; None when no row has
    any, e.g. local judges)."""
    stored = store.read()

    def build(prev: dict[str, Any] | None) -> dict[str, Any]:
        done = {**manifest, **merge_rows(plan, judge, prev, stored, warn=False)}
        rows = current_rows(stored, done)
        return {**done, "totals": t.as_dict(), "usage_run": t.usage,
                "usage_total": sum_usage(r.get("usage") for r in rows)}  # fmt: skip

    update_manifest(storage, key, build)
