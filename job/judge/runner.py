"""`job judge`: load answers, references and prompts, build FastChat's matches, send the
games not yet stored to the judge backend in batches, and append the judgments as they
arrive. Re-running completes an interrupted run without duplicate rows."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from contextlib import suppress
from pathlib import Path
from typing import Any

from tqdm import tqdm

from job.backends import load_backend
from job.backends.base import Backend, GenRequest, GenResult
from job.errors import JobError, Terminated
from job.judge import (
    GameResult,
    Match,
    game_key,
    game_result,
    judge_messages,
    make_record,
)
from job.judge.batch_state import batch_options
from job.judge.estimate import dry_run
from job.judge.plan import (
    JudgeConfig,
    Plan,
    _previous_manifest,
    current_rows_of,
    judge_fingerprint,
    judge_name_of,
    judgment_key,
    make_plan,
)
from job.judge.results import Usage, retried, sum_usage
from job.judge.store import JudgmentStore
from job.judge.totals import Totals, finish_manifest
from job.layout import manifest_key
from job.provenance import git_revision, package_version
from job.signals import critical
from job.storage import open_storage

log = logging.getLogger(__name__)

__all__ = ["JudgeConfig", "judge_fingerprint", "judge_name_of", "run"]


def _batches(plan: Plan, size: int) -> list[list[tuple[Match, int, str]]]:
    """Batches of whole matches, so both games of a pair are stored together."""
    out: list[list[tuple[Match, int, str]]] = [[]]
    for i, req in enumerate(plan.requests):
        starts_match = i == 0 or plan.requests[i - 1][0] is not req[0]
        if starts_match and len(out[-1]) >= size:
            out.append([])
        out[-1].append(req)
    return [b for b in out if b]


class _Recorder:
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

    def flush(self) -> None:
        stop = bool(self.pending) and self.none_worked()
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


def _record_answer_errors(plan: Plan, judge: str, store: JudgmentStore) -> int:
    """Answers that failed in generation are recorded once, without a judge call."""
    failed = [m for m in plan.matches if m.failed and game_key(judge, m, m.games[0]) not in plan.cached]
    store.append(
        [
            make_record(
                judge,
                m,
                {
                    g: GameResult("", "", "answer_error", m.failed, "error" if m.pairwise else -1)
                    for g in m.games
                },
                plan.inputs[m],
            )
            for m in failed
        ]
    )
    return len(failed)


def execute(cfg: JudgeConfig, plan: Plan, judge: str, store: JudgmentStore) -> Totals:
    answer_errors = _record_answer_errors(plan, judge, store)
    if not plan.requests:
        return Totals(Counter({"answer_error": answer_errors} if answer_errors else {}))
    backend = load_backend(cfg.judge_model, **batch_options(cfg.backend_options, store))
    params = plan.params
    rec = _Recorder(cfg, plan, judge, store, backend)
    bar = tqdm(
        total=len(plan.requests),
        desc=f"judge {judge}",
        unit="call",
        file=sys.stderr,
        mininterval=0.5 if sys.stderr.isatty() else 10.0,
    )

    def request(m: Match, g: int, u: str) -> GenRequest:
        key = f"{m.question.question_id}/t{m.turn}/c{m.choice}/g{g}" + (f"/s{m.sample}" if m.sample else "")
        return GenRequest(judge_messages(m.prompt.system_prompt, u), params, key=key)

    stopped: BaseException | None = None
    try:
        if backend.streams_conversations:
            # API judges: every call in one stream, bounded by the backend's concurrency,
            # each reply recorded as it arrives, so no batch waits on its slowest call
            reqs = plan.requests

            def on_reply(i: int, r: GenResult) -> GenRequest | None:
                if not rec.add(*reqs[i], r):
                    return None
                bar.total = (bar.total or 0) + 1  # asked again: the conversation's next request
                return request(*reqs[i])

            backend.generate_conversations(
                [request(*q) for q in reqs], on_reply, lambda n, _t: _advance(bar, n)
            )
        else:
            # local judges (hf, vllm): batches, so work is stored as it is done
            # --openai-batch: every call in one Batch API batch
            size = len(plan.requests) if cfg.backend_options.get("openai_batch") else cfg.batch_size
            for batch in _batches(plan, size):
                while batch:  # then the games asked again, until none is left
                    results = backend.generate([request(*q) for q in batch], lambda n, _t: _advance(bar, n))
                    if len(results) != len(batch):
                        raise JobError(
                            f"judge backend {cfg.judge_model} returned {len(results)} results for {len(batch)} requests"
                        )
                    batch = [q for q, r in zip(batch, results, strict=True) if rec.add(*q, r)]
                    bar.total = (bar.total or 0) + len(batch)
        rec.flush()
        if not rec.counts["ok"]:
            raise rec.all_failed()  # a failure is never a success, and never exit 0
    except (Terminated, KeyboardInterrupt) as e:
        stopped = e
        raise
    finally:
        bar.close()
        backend.close()  # API judges: joins the event-loop thread, so no reply is recorded after it
        if stopped is not None:
            rec.save_pending()
            if isinstance(stopped, Terminated):
                stopped.kept = (
                    f"{rec.stored} judgments stored by this run ({len(plan.cached)} games before) in {store.uri}; "
                    "a re-run asks only the rest"
                )
    if answer_errors:
        rec.counts["answer_error"] += answer_errors
    return Totals(rec.counts, rec.replies, rec.retries, rec.usage)


def _advance(bar: tqdm[Any], n: int) -> None:
    bar.update(n)


def run(cfg: JudgeConfig) -> Counter[str]:
    judge = judge_name_of(cfg)
    key = judgment_key(cfg.bench, judge, cfg.mode)
    storage = open_storage(cfg.output)
    store = JudgmentStore(storage, key)
    if cfg.batch_size < 1:
        raise JobError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    dump_path_ok(cfg.dump)
    plan = make_plan(cfg, store, judge)
    for m, ids in plan.missing.items():
        log.warning("answers missing for %s: %s (skipped, --allow-missing)", m, ", ".join(ids))
    if cfg.dry_run:
        dry_run(cfg, plan)
        return Counter()
    storage.check_writable()
    mkey = manifest_key(key)
    rows, models = current_rows_of(plan, judge, _previous_manifest(storage, mkey))
    # written before any row of this run: a crash leaves a manifest naming exactly the
    # rows that count (stored ones with these inputs), never stale ones
    manifest = {**plan.provenance, "models": models, "kind": "judgment", "file": key, "missing": plan.missing,
                "package_version": package_version(), "git_revision": git_revision(), "started_at": time.time(),
                "rows": rows}  # fmt: skip
    storage.write_bytes(mkey, json.dumps(manifest, indent=2, ensure_ascii=False).encode())
    if plan.stale:
        log.warning(
            "%d stored judgments were made with other inputs (answers, prompt file, reference or judge "
            "settings changed): they no longer count and are judged again",
            plan.stale,
        )
    log.info(
        "%d matches, %d calls to send, %d games already stored -> %s",
        len(plan.matches),
        len(plan.requests),
        len(plan.cached),
        store.uri,
    )
    try:
        totals = execute(cfg, plan, judge, store)
    except BaseException:
        # fold in what was stored if the storage still answers; the first error (often
        # the storage itself failing) is the one to report, not a second one from here
        with suppress(JobError):
            store.compact()
        raise
    store.compact()
    finish_manifest(storage, mkey, manifest, store, totals)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(totals.counts.items())) or "nothing new"
    print(
        f"judged {cfg.bench} with {judge}: {summary}; {len(plan.cached)} games were already stored -> {store.uri}"
    )
    print(totals.line(cfg.price_per_mtok))
    return totals.counts


def dump_path_ok(path: str | None) -> None:
    if path and not Path(path).parent.exists():
        raise JobError(f"--dump {path}: directory does not exist")
